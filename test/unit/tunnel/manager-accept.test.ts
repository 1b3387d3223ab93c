// TunnelManager (src/tunnel/manager.ts) on the side that is introduced, and when a
// tunnel's path dies: accept spends only the punching budget, a newer introduction from
// the same peer stops the older one, one sent again is punched once; a tunnel resumes on
// a new path (and only for the peer it belongs to), never after the relay ended it. Two
// managers on real loopback UDX sockets (./manager-agents.ts).
import { createHash, randomBytes } from 'node:crypto'
import { afterEach, describe, expect, it } from 'vitest'
import { NatdError } from '../../../src/protocol/errors.js'
import { generateKeyPair } from '../../../src/protocol/identity.js'
import { encodeMux } from '../../../src/protocol/mux.js'
import type { Introduction, TunnelManagerComponents } from '../../../src/tunnel/manager.js'
import type { Tunnel } from '../../../src/tunnel/tunnel.js'
import { freePort } from '../helpers.js'
import { agent, closeAgents, introducesTo, pair, record, type Agent } from './manager-agents.js'
import { until } from './pipe.js'
import { tcpPeer } from './tcp-peer.js'

/** Bob echoes every channel. */
const echoChannel: TunnelManagerComponents['onChannel'] = (_t, req) => {
  req.accept()
  req.channel.pipe(req.channel)
}

/** The tunnel's session, which a test kills as a reset path would. */
function sessionOf(t: Tunnel): { destroy(): void } {
  return (t as unknown as { session: { destroy(): void } }).session
}

/** Counts the peer-key checks of `side`: one per introduction it acts on. */
function countChecks(side: Pick<Agent, 'pins'>): { n: number } {
  const checks = { n: 0 }
  const check = side.pins.check.bind(side.pins)
  side.pins.check = (peer, expected) => {
    checks.n++
    check(peer, expected)
  }
  return checks
}

afterEach(closeAgents)

describe('TunnelManager.accept spends only what the punching budget allows', () => {
  it('a peer asking for 50 introductions at once gets its burst acted on, 2 punching at once; the rest are refused before a packet is sent', async () => {
    const { bob } = pair()
    const checks = countChecks(bob)
    const mallory = { ...record({ name: 'mallory', keyPair: generateKeyPair(), port: 9 }), udp: { host: '127.0.0.1', port: 9 } }
    for (let i = 0; i < 50; i++) bob.manager.accept({ introId: randomBytes(16), punchKey: randomBytes(32), initiator: false, via: 'udp', peer: mallory }, 300)
    expect(checks.n).toBe(bob.manager.budget.init.peerIntroBurst)
    expect(bob.manager.budget.inUse.punches).toBe(bob.manager.budget.init.peerPunches)
    await new Promise((resolve) => setTimeout(resolve, 500))
    expect(bob.manager.budget.inUse.punches).toBe(0)
  })
})

// CI (test/lab/messages-files.test.ts, /work/notes/ci-replaced.log): bob still answered
// an older introduction of alice's (its TCP attempt dialing her port, 131 SYNs over 14 s)
// when alice restarted and opened again. The new introduction's UDP tunnel came up; its
// late TCP path met the OLD race's socket (same ports both ends, and the handshake names
// no introduction), so alice's "this one" ping made bob a second fresh tunnel, which
// replaced the new one: alice's tunnel closed, "peer closed the tunnel (replaced by a
// newer tunnel)".
describe('TunnelManager.accept: a newer introduction from the same peer', () => {
  it("stops our answer to the older one: alice's late TCP path landing on that race makes no second tunnel; one tunnel stays, open on both sides", async () => {
    const newer = Buffer.alloc(16, 0xff) // the larger id: the old race's tunnel would not lose the tie-break (resume.ts onFreshTunnel), as in CI
    let bob: Agent | null = null
    const alice = agent('alice', async (self, _target, via) => {
      const punchKey = randomBytes(32)
      bob!.manager.accept({ introId: newer, punchKey, initiator: false, via, peer: record(self) }, 5_000)
      return { introId: newer, punchKey, initiator: true, via, peer: record(bob!) }
    })
    bob = agent('bob', () => Promise.reject(new NatdError('PEER_UNKNOWN', 'bob opens nothing here')), undefined, await freePort())
    alice.pins.pins.set('bob', bob.id)
    const alicesTcp = await tcpPeer(alice.keyPair, true) // bob answers the handshake: he is the responder
    try {
      // The older introduction: bob's TCP attempt connects and authenticates, and waits for alice's choice.
      const older = { ...record(alice), tcp: { host: '127.0.0.1', port: alicesTcp.port } }
      bob.manager.accept({ introId: Buffer.alloc(16, 0), punchKey: randomBytes(32), initiator: false, via: 'tcp', peer: older }, 15_000)
      await until(() => alicesTcp.sessions.length > 0, "bob's older race to connect to alice's TCP port")
      const stale = alicesTcp.sessions[0]!
      await stale.opened
      const { tunnel: alices } = await alice.manager.open('bob', 'udp', 5_000)
      await until(() => bob!.manager.get(alice.id)?.isUp === true, "bob's tunnel of the newer introduction")
      const bobs = bob.manager.get(alice.id)!
      // Alice moves her new tunnel to a late TCP path that met the old race's socket: "this one".
      stale.write(encodeMux({ type: 'ping', channel: 0, seq: 0 }))
      await new Promise((resolve) => setTimeout(resolve, 500)) // bob would make and register a tunnel of it by now
      // Plain values: a failed match must not try to print a Tunnel (native handles).
      const seen = {
        bobsTunnels: bob.manager.list().length,
        bobKeepsTheNewer: bob.manager.get(alice.id) === bobs && bobs.isOpen,
        aliceKeepsHers: alice.manager.get(bob.id) === alices && alices.isOpen,
        staleSessionDropped: stale.destroyed // bob ended the old race
      }
      expect(seen).toEqual({ bobsTunnels: 1, bobKeepsTheNewer: true, aliceKeepsHers: true, staleSessionDropped: true })
    } finally {
      alicesTcp.close()
    }
  })
})

describe('TunnelManager.accept: an introduction the server sends again', () => {
  it('is punched once: the same introduction id a second time (our new control connection) is ignored', async () => {
    const { bob } = pair()
    const checks = countChecks(bob)
    const alice = { ...record({ name: 'alice', keyPair: generateKeyPair(), port: 9 }), udp: { host: '127.0.0.1', port: 9 } }
    const intro = { introId: randomBytes(16), punchKey: randomBytes(32), initiator: false, via: 'udp' as const, peer: alice }
    bob.manager.accept(intro, 300)
    bob.manager.accept({ ...intro }, 300)
    expect(checks.n).toBe(1)
    bob.manager.accept({ ...intro, introId: randomBytes(16) }, 300)
    expect(checks.n).toBe(2)
    await new Promise((resolve) => setTimeout(resolve, 500))
  })
})

describe('TunnelManager: a tunnel whose path dies resumes on a new one', () => {
  it('the opener re-punches and resumes: a channel streaming through it finishes byte-exact, same tunnel object on both sides, no reset', async () => {
    const { alice, bob } = pair({ bobChannel: echoChannel })
    const { tunnel } = await alice.manager.open('bob', 'udp', 5_000)
    await until(() => bob.manager.get('alice') !== undefined, 'bob to keep the tunnel')
    const bobsTunnel = bob.manager.get('alice')
    const ch = tunnel.mux.openChannel(7)
    const chunks: Buffer[] = []
    ch.on('data', (d: Buffer) => chunks.push(d))
    const errors: Error[] = []
    ch.on('error', (e) => errors.push(e))
    const data = randomBytes(8 * 1024 * 1024)
    ch.end(data)
    while (chunks.reduce((n, c) => n + c.length, 0) < 1024 * 1024) await new Promise((resolve) => setTimeout(resolve, 5))
    const states: string[] = []
    tunnel.on('migrating', () => states.push('migrating'))
    tunnel.on('resumed', () => states.push('resumed'))
    sessionOf(tunnel).destroy() // the path dies under the transfer
    await new Promise<void>((resolve) => ch.once('end', resolve))
    expect(createHash('sha256').update(Buffer.concat(chunks)).digest('hex')).toBe(createHash('sha256').update(data).digest('hex'))
    expect(errors).toEqual([])
    expect(states).toEqual(['migrating', 'resumed'])
    expect(alice.manager.get('bob')).toBe(tunnel)
    expect(bob.manager.get('alice')).toBe(bobsTunnel)
    expect(alice.asked.length).toBeGreaterThanOrEqual(2) // the open, then a re-introduction (more if an attempt failed)
  })

  it("a RESUME naming alice's tunnel over a session authenticated as mallory resumes nothing of alice's: bob keeps alice's tunnel and gives mallory a fresh one", async () => {
    const { alice, bob } = pair({ bobChannel: echoChannel })
    const { tunnel } = await alice.manager.open('bob', 'udp', 5_000)
    await until(() => bob.manager.get('alice') !== undefined, 'bob to keep the tunnel')
    const bobsAlice = bob.manager.get('alice')!
    const mallory = agent('mallory', introducesTo(() => bob))
    // Mallory knows the tunnel id (as the server that introduced alice would) and claims it.
    const resumed: string[] = []
    const claim = {
      id: tunnel.id, opener: true, introKey: tunnel.introKey, isUp: false, isMigrating: true, isOpen: true, ageMs: 60_000, peer: { name: 'bob', id: bob.id },
      detach: () => 0,
      resume: () => resumed.push('resume') > 0,
      close: () => undefined,
      once: () => undefined
    }
    const m = mallory.manager as unknown as { tunnels: Map<string, unknown>; establish(intro: Introduction, ms: number, expected: null, resuming: unknown): Promise<Tunnel> }
    m.tunnels.set(bob.id, claim)
    const intro = await mallory.manager['c'].introduce('bob', 'udp')
    const fresh = await m.establish(intro, 5_000, null, claim)
    expect(resumed).toEqual([]) // bob answered with another tunnel id: mallory's claim was not resumed
    expect(fresh).not.toBe(claim)
    expect(Buffer.from(fresh.id).equals(Buffer.from(tunnel.id))).toBe(false)
    expect(bob.manager.get('alice')).toBe(bobsAlice)
    expect(bobsAlice.isUp).toBe(true)
    expect(bob.manager.get('mallory')?.peer.id).toBe(mallory.id)
    expect(await tunnel.ping(2_000)).toBeGreaterThanOrEqual(0) // alice's tunnel still carries
  })
})

describe('TunnelManager: a tunnel the relay ended (RELAY_LIMIT) is never resumed', () => {
  it('bob got the RELAY_END, alice only saw her session close: her resume is refused with a GOODBYE, her tunnel closes, no fresh one is made; a new open still works', async () => {
    const { alice, bob } = pair({ bobChannel: echoChannel })
    const { tunnel } = await alice.manager.open('bob', 'udp', 5_000)
    await until(() => bob.manager.get('alice') !== undefined, 'bob to keep the tunnel')
    const bobsAlice = bob.manager.get('alice')!
    const states: string[] = []
    tunnel.on('migrating', () => states.push('migrating'))
    tunnel.on('resumed', () => states.push('resumed'))
    // Bob's session dies as the relay client's does on RELAY_END: an error with the code, then close.
    const bobsSession = sessionOf(bobsAlice) as unknown as { emit(e: string, err: Error): void; destroy(): void }
    bobsSession.emit('error', new NatdError('RELAY_LIMIT', 'relayed tunnel reached its byte limit'))
    bobsSession.destroy()
    await until(() => !bobsAlice.isOpen, 'bob closes his tunnel')
    expect(bobsAlice.closedWith).toBe('RELAY_LIMIT')
    const alicesSession = sessionOf(tunnel) as { destroy(): void } | null // null if she already detached it for a resume
    alicesSession?.destroy() // alice never got her RELAY_END
    await until(() => !tunnel.isOpen, 'alice closes hers', 10_000)
    expect(states).toEqual(['migrating'])
    expect(tunnel.state).toMatchObject({ kind: 'closed', reason: expect.stringMatching(/RELAY_LIMIT/) })
    expect(alice.asked.length).toBeGreaterThanOrEqual(2) // the open, then a resume attempt, refused
    expect(alice.manager.get('bob')).toBeUndefined() // no fresh tunnel on the resume's session
    expect(bob.manager.get('alice')).toBeUndefined()
    // The user may open again: a new tunnel (a new relayed one would count afresh).
    const again = await alice.manager.open('bob', 'udp', 5_000)
    expect(again.reused).toBe(false)
    expect(Buffer.from(again.tunnel.id).equals(Buffer.from(tunnel.id))).toBe(false)
    expect(await again.tunnel.ping(2_000)).toBeGreaterThanOrEqual(0)
  })
})

