// TunnelManager (src/tunnel/manager.ts) against a stub introducer: a tunnel goes only to
// the peer the user named. Two managers on real loopback UDX sockets punch to each other
// for the cases that must succeed; the refusals happen before any packet is sent.
//
//   alice 127.0.0.1:A ◀──── UDP (loopback) ────▶ bob 127.0.0.1:B
//         └── introduce(target) is a stub: it hands out whatever intro the test says
import { createHash, randomBytes } from 'node:crypto'
import dgram from 'node:dgram'
import UDX from 'udx-native'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { NatdError } from '../../../src/protocol/errors.js'
import { generateKeyPair, peerId, type KeyPair } from '../../../src/protocol/identity.js'
import { silentLogger, systemClock } from '../../../src/protocol/log.js'
import { encodeMux } from '../../../src/protocol/mux.js'
import { isTarget, resolvePeer, type PeerRef, type PeerTarget } from '../../../src/protocol/peer-ref.js'
import { isRendezvousFrame, MSG, type PeerRecord, type Via } from '../../../src/protocol/rendezvous.js'
import { mostTelling, TunnelManager, type Introduction, type PeerPolicy, type PinSource, type PunchOutcome, type TunnelManagerComponents } from '../../../src/tunnel/manager.js'
import type { Tunnel } from '../../../src/tunnel/tunnel.js'
import { freePort } from '../helpers.js'
import { until } from './pipe.js'
import { tcpPeer } from './tcp-peer.js'

/** The daemon's policy in miniature: pinned names, first-use pinning, the same checks. */
class Pins implements PeerPolicy {
  readonly pins = new Map<string, string>()
  async expect(typed: string): Promise<PeerTarget> {
    const t = resolvePeer(typed, [...this.pins].map(([name, id]) => ({ name, id })))
    if (!t) throw new NatdError('PEER_UNKNOWN', typed)
    return t
  }
  check(peer: PeerRef, expected: PeerTarget | null): void {
    const pinned = this.pins.get(peer.name)
    if (pinned !== undefined && pinned !== peer.id) throw new NatdError('KEY_MISMATCH', `${peer.name} presents another key`)
    if (expected && !isTarget(peer, expected)) throw new NatdError('PEER_MISMATCH', `asked for ${expected.name ?? expected.id}, introduced ${peer.name}`)
  }
  /** Who each pin was asked by ('ours': we opened the tunnel; 'inbound': the peer did). */
  readonly sources = new Map<string, PinSource>()
  pin(peer: PeerRef, by: PinSource): void {
    if (!this.pins.has(peer.name)) this.pins.set(peer.name, peer.id)
    if (!this.sources.has(peer.name)) this.sources.set(peer.name, by)
  }
}

interface Agent {
  name: string
  keyPair: KeyPair
  id: string
  port: number
  manager: TunnelManager
  pins: Pins
  asked: string[]
  /** Checks of tunnels whose peer was reported offline, by peer ID (the daemon's TunnelHost runs them). */
  offline: Map<string, Promise<void>>
  close(): Promise<void>
}

const udx = new UDX()
const agents: Agent[] = []

function record(a: { name: string; keyPair: KeyPair; port: number }): PeerRecord {
  return { publicKey: a.keyPair.publicKey, name: a.name, online: true, lastSeenAgoMs: 0, nat: 'easy', udp: { host: '127.0.0.1', port: a.port }, tcp: null, lan: [] }
}

/** An agent whose introducer answers with `introduce(target, via)` from the test. */
function agent(name: string, introduce: (self: Agent, target: string, via: Via) => Promise<Introduction>, onChannel: TunnelManagerComponents['onChannel'] = (_t, req) => req.reject('NOT_EXPOSED', 'test'), tcpPort = 0): Agent {
  const socket = udx.createSocket()
  socket.bind(0, '127.0.0.1')
  const keyPair = generateKeyPair()
  const pins = new Pins()
  const asked: string[] = []
  const a: Agent = {
    name,
    keyPair,
    id: peerId(keyPair.publicKey),
    port: socket.address().port,
    pins,
    asked,
    offline: new Map(),
    manager: null as unknown as TunnelManager,
    close: async () => {
      a.manager.closeAll('test over')
      await socket.close()
    }
  }
  a.manager = new TunnelManager(
    { keepaliveMs: 1_000, deadMs: 5_000 },
    {
      udx,
      socket,
      keyPair,
      clock: systemClock,
      random: Math.random,
      log: silentLogger,
      natVerdict: () => 'easy',
      relayServer: () => null,
      localTcpPort: () => tcpPort,
      refreshNat: async () => undefined,
      offlineCheck: (id) => a.offline.get(id) ?? Promise.resolve(),
      onChannel,
      peers: pins,
      introduce: (target, via) => {
        asked.push(target)
        return introduce(a, target, via)
      }
    }
  )
  socket.on('message', (buf, rinfo) => {
    if (isRendezvousFrame(buf) && buf[3] === MSG.PROBE) a.manager.onProbe(buf, { host: rinfo.host, port: rinfo.port })
  })
  agents.push(a)
  return a
}

/** An introducer that introduces its agent to `to()` whatever it asks for (renamed `name` when given). */
function introducesTo(to: () => Agent, name?: string): (self: Agent, target: string, via: Via) => Promise<Introduction> {
  return async (self, _target, via) => {
    const introId = randomBytes(16)
    const punchKey = randomBytes(32) // both sides get the same one, as from the server
    const peer = { ...record(to()), name: name ?? to().name }
    to().manager.accept({ introId, punchKey, initiator: false, via, peer: record(self) }, 5_000)
    return { introId, punchKey, initiator: true, via, peer }
  }
}

/** alice and bob, with a server that introduces them to each other whatever alice asks for (or `impostor` instead). */
function pair(opts: { introducedName?: string; bobChannel?: TunnelManagerComponents['onChannel'] } = {}): { alice: Agent; bob: Agent } {
  let bob: Agent | null = null
  const alice = agent('alice', introducesTo(() => bob!, opts.introducedName))
  bob = agent('bob', () => Promise.reject(new NatdError('PEER_UNKNOWN', 'bob opens nothing here')), opts.bobChannel)
  return { alice, bob }
}

/** Bob echoes every channel. */
const echoChannel: TunnelManagerComponents['onChannel'] = (_t, req) => {
  req.accept()
  req.channel.pipe(req.channel)
}

/** The tunnel's session, which a test kills as a reset path would. */
function sessionOf(t: Tunnel): { destroy(): void } {
  return (t as unknown as { session: { destroy(): void } }).session
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  return p.then(() => 'resolved', (err: unknown) => (err instanceof NatdError ? err.code : String(err)))
}

afterEach(async () => {
  for (const a of agents.splice(0)) await a.close()
})

describe('TunnelManager.open reaches only the peer the user named', () => {
  it('open bob punches to bob, pins its key on first use, and reuses the tunnel by name, ID and abbreviation', async () => {
    const { alice, bob } = pair()
    const r = await alice.manager.open('bob', 'udp', 5_000)
    expect(r.tunnel.peer).toEqual({ name: 'bob', id: bob.id })
    expect(alice.asked).toEqual(['bob'])
    expect(alice.pins.pins.get('bob')).toBe(bob.id)
    // The opener pins a peer it chose (never capped); the peer that was opened to pins a stranger (capped: known-peers.ts).
    expect(alice.pins.sources.get('bob')).toBe('ours')
    await vi.waitFor(() => expect(bob.pins.sources.get('alice')).toBe('inbound'))
    expect((await alice.manager.open(bob.id, 'udp', 5_000)).reused).toBe(true)
    // The default --via auto (plan.upgrade set: a relayed tunnel would look for a direct path) is ours too.
    const auto = pair()
    await auto.alice.manager.open('bob', 'auto', 5_000)
    expect(auto.alice.pins.sources.get('bob')).toBe('ours')
    expect(alice.manager.get(bob.id.slice(0, 8))).toBe(r.tunnel)
    expect(alice.manager.get('bob')).toBe(r.tunnel)
    expect(alice.manager.get('bob_')).toBeUndefined()
  })

  it('open waits for the check of a tunnel whose peer was reported offline: reused when the peer answered, a new tunnel punched when the check closed it', async () => {
    const { alice, bob } = pair()
    const first = (await alice.manager.open('bob', 'udp', 5_000)).tunnel
    let answered!: () => void
    alice.offline.set(bob.id, new Promise<void>((resolve) => (answered = resolve)))
    let settled = false
    const again = alice.manager.open('bob', 'udp', 5_000).finally(() => (settled = true))
    await new Promise((resolve) => setTimeout(resolve, 100))
    expect(settled).toBe(false) // the check is still running: open waits
    alice.offline.delete(bob.id)
    answered()
    expect(await again).toMatchObject({ reused: true, tunnel: first })
    alice.offline.set(bob.id, Promise.resolve().then(() => first.close('bob went offline and does not answer', { goodbye: true, code: 'PEER_OFFLINE' })))
    const fresh = await alice.manager.open('bob', 'udp', 5_000)
    expect(fresh.reused).toBe(false)
    expect(fresh.tunnel).not.toBe(first)
    expect(alice.asked).toEqual(['bob', 'bob'])
  })

  it('an introduction renamed to "bob_" is refused with PEER_MISMATCH, pinned or not, and nothing is pinned for it', async () => {
    const { alice, bob } = pair({ introducedName: 'bob_' })
    expect(await codeOf(alice.manager.open('bob', 'udp', 2_000))).toBe('PEER_MISMATCH')
    expect(alice.pins.pins.size).toBe(0)
    alice.pins.pins.set('bob', bob.id) // even with bob's real key behind the other name
    expect(await codeOf(alice.manager.open('bob', 'udp', 2_000))).toBe('PEER_MISMATCH')
    expect(alice.manager.list()).toEqual([])
  })

  it('a pinned name presenting another key is KEY_MISMATCH', async () => {
    const { alice } = pair()
    alice.pins.pins.set('bob', peerId(generateKeyPair().publicKey))
    expect(await codeOf(alice.manager.open('bob', 'udp', 2_000))).toBe('KEY_MISMATCH')
    expect(alice.manager.list()).toEqual([])
  })

  it('open <full peer ID> asks the server for that ID and accepts only that key', async () => {
    const { alice, bob } = pair()
    const other = peerId(generateKeyPair().publicKey)
    expect(await codeOf(alice.manager.open(other, 'udp', 2_000))).toBe('PEER_MISMATCH')
    expect(alice.asked).toEqual([other])
    const r = await alice.manager.open(bob.id, 'udp', 5_000)
    expect(alice.asked).toEqual([other, bob.id])
    expect(r.tunnel.peer).toEqual({ name: 'bob', id: bob.id })
  })

  it('an abbreviated ID shared by two pinned peers is refused before asking the server, naming both', async () => {
    const { alice, bob } = pair()
    // Shares bob's first 10 characters, never the 11th (bob's key is random: it may have an 'a' there).
    const twin = bob.id.slice(0, 10) + (bob.id[10] === 'a' ? 'b' : 'a') + 'a'.repeat(40) + 'q'
    alice.pins.pins.set('bob', bob.id)
    alice.pins.pins.set('carol', twin)
    const err = await alice.manager.open(bob.id.slice(0, 8), 'udp', 2_000).catch((e: unknown) => e as NatdError)
    expect(err).toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(/matches 2 peers: bob \(.{8}…\), carol/) })
    expect(alice.asked).toEqual([])
    expect((await alice.manager.open(bob.id.slice(0, 11), 'udp', 5_000)).tunnel.peer.id).toBe(bob.id)
  })

  it('the incoming side refuses a name pinned to another key', async () => {
    const { alice, bob } = pair()
    bob.pins.pins.set('alice', peerId(generateKeyPair().publicKey))
    expect(await codeOf(alice.manager.open('bob', 'udp', 1_500))).toBe('PUNCH_TIMEOUT')
    expect(bob.manager.list()).toEqual([])
  })
})

describe('TunnelManager reports each punch (for natd --metrics)', () => {
  it('a punch that works gives the path and its time; one to a peer that never answers gives its error code', async () => {
    const { alice, bob } = pair()
    const seen: PunchOutcome[] = []
    alice.manager.on('punched', (p) => seen.push(p))
    const r = await alice.manager.open('bob', 'udp', 5_000)
    expect(seen).toEqual([{ via: 'udp', path: r.tunnel.path, code: null, ms: expect.any(Number) as number }])
    expect(seen[0]!.ms).toBeLessThanOrEqual(r.tookMs)
    const silent = dgram.createSocket('udp4')
    await new Promise<void>((resolve) => silent.bind(0, '127.0.0.1', resolve))
    try {
      const ghost = { name: 'ghost', keyPair: generateKeyPair(), port: silent.address().port }
      const carol = agent('carol', async (_self, _target, via) => ({ introId: randomBytes(16), punchKey: randomBytes(32), initiator: true, via, peer: record(ghost) }))
      carol.pins.pins.set('ghost', peerId(ghost.keyPair.publicKey))
      const failed: PunchOutcome[] = []
      carol.manager.on('punched', (p) => failed.push(p))
      const code = await codeOf(carol.manager.open('ghost', 'udp', 1_000))
      expect(code).not.toBe('resolved')
      expect(failed).toEqual([{ via: 'udp', path: null, code, ms: expect.any(Number) as number }])
    } finally {
      silent.close()
    }
    expect(bob.manager.list()).toHaveLength(1)
  })
})

describe('TunnelManager probes only the LAN candidates it may', () => {
  it('an introduction naming a LAN candidate outside the private ranges (here loopback) gets no probe there; the tunnel opens on the public path', async () => {
    // What a malicious server (or one that did not filter) could hand out: "bob's LAN" at an address of its choosing.
    // 127.0.0.2, not bob's public host 127.0.0.1: a candidate there would count as a port mapping of bob's (protocol/lan.ts).
    const trap = dgram.createSocket('udp4')
    let probes = 0
    trap.on('message', () => probes++)
    await new Promise<void>((resolve) => trap.bind(0, '127.0.0.2', resolve))
    try {
      let bob: Agent | null = null
      const alice = agent('alice', async (self, _target, via) => {
        const introId = randomBytes(16)
        const punchKey = randomBytes(32)
        bob!.manager.accept({ introId, punchKey, initiator: false, via, peer: record(self) }, 5_000)
        return { introId, punchKey, initiator: true, via, peer: { ...record(bob!), lan: [{ host: '127.0.0.2', port: trap.address().port }] } }
      })
      bob = agent('bob', () => Promise.reject(new NatdError('PEER_UNKNOWN', 'bob opens nothing here')))
      const r = await alice.manager.open('bob', 'udp', 5_000)
      expect(r.tunnel.peer.id).toBe(bob.id)
      await new Promise((resolve) => setTimeout(resolve, 300)) // any probe sent at the start has arrived on loopback by now
      expect(probes).toBe(0)
    } finally {
      trap.close()
    }
  })
})

describe('TunnelManager.open takes an AbortSignal', () => {
  it('a caller that goes away mid-open (punching a peer that never answers): ABORTED at once, its punch slot released, no probe sent after', async () => {
    const silent = dgram.createSocket('udp4')
    let probes = 0
    silent.on('message', () => void probes++)
    await new Promise<void>((resolve) => silent.bind(0, '127.0.0.1', resolve))
    try {
      const ghost = { name: 'ghost', keyPair: generateKeyPair(), port: silent.address().port }
      const alice = agent('alice', async (_self, _target, via) => ({ introId: randomBytes(16), punchKey: randomBytes(32), initiator: true, via, peer: record(ghost) }))
      alice.pins.pins.set('ghost', peerId(ghost.keyPair.publicKey))
      const caller = new AbortController()
      const open = codeOf(alice.manager.open('ghost', 'udp', 60_000, caller.signal))
      await until(() => probes > 0, 'probes to reach the silent peer', 5_000)
      expect(alice.manager.budget.inUse.punches).toBe(1) // positive control: punching now
      caller.abort()
      expect(await open).toBe('ABORTED')
      await until(() => alice.manager.budget.inUse.punches === 0, 'the punch slot to be released', 2_000)
      await new Promise((resolve) => setTimeout(resolve, 300)) // a probe in flight lands
      const after = probes
      await new Promise((resolve) => setTimeout(resolve, 1_500))
      expect(probes).toBe(after)
      expect(alice.manager.list()).toEqual([])
    } finally {
      silent.close()
    }
  })

  it('of two callers sharing one attempt, the one that cancels gets ABORTED; the other still gets the tunnel', async () => {
    const { alice, bob } = pair()
    alice.pins.pins.set('bob', bob.id)
    const caller = new AbortController()
    const leaving = codeOf(alice.manager.open('bob', 'udp', 5_000, caller.signal))
    const staying = alice.manager.open('bob', 'udp', 5_000)
    await until(() => alice.asked.length > 0, 'the introduction')
    caller.abort()
    expect(await leaving).toBe('ABORTED')
    expect((await staying).tunnel.peer).toEqual({ name: 'bob', id: bob.id })
    expect(alice.asked).toEqual(['bob'])
  })
})

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

describe('mostTelling: what failed attempts tell the user (pure)', () => {
  const e = (code: ConstructorParameters<typeof NatdError>[0], message = code.toLowerCase()): NatdError => new NatdError(code, message)

  it.each<[string, NatdError[], string]>([
    ['a wrong peer beats everything', [e('PUNCH_TIMEOUT'), e('KEY_MISMATCH'), e('UNSUPPORTED_PATH')], 'KEY_MISMATCH'],
    ['a refusal the user can act on beats a deadline', [e('PUNCH_TIMEOUT'), e('UNSUPPORTED_PATH')], 'UNSUPPORTED_PATH'],
    ['the relay\'s limit beats a deadline', [e('PUNCH_TIMEOUT'), e('PUNCH_TIMEOUT'), e('RELAY_LIMIT')], 'RELAY_LIMIT'],
    ['a path that could not be tried, with its reason, beats a deadline', [e('PUNCH_TIMEOUT'), e('PUNCH_FAILED')], 'PUNCH_FAILED'],
    ['a deadline beats our own budget', [e('BUSY'), e('PUNCH_TIMEOUT')], 'PUNCH_TIMEOUT'],
    ['BUSY only when every path was refused', [e('BUSY'), e('BUSY')], 'BUSY'],
    ['an attempt given up is never the reason when another failed', [e('ABORTED'), e('BUSY')], 'BUSY'],
    ['codes not ranked sit between refusals and punching failures', [e('PUNCH_FAILED'), e('TUNNEL_CLOSED')], 'TUNNEL_CLOSED']
  ])('%s', (_, errors, want) => {
    expect(mostTelling(errors).code).toBe(want)
  })

  it('one failure is returned as it is', () => {
    const only = e('PUNCH_TIMEOUT', 'no direct UDP path in 3000 ms')
    expect(mostTelling([only])).toBe(only)
  })

  it('several: the winner\'s message (not a join), every failure kept as an AggregateError cause', () => {
    const udp = e('PUNCH_TIMEOUT', 'no direct UDP path in 3000 ms')
    const relay = e('RELAY_LIMIT', 'relay: too many relayed tunnels')
    const err = mostTelling([udp, relay])
    expect(err).toMatchObject({ code: 'RELAY_LIMIT', message: 'relay: too many relayed tunnels' })
    expect(err.cause).toBeInstanceOf(AggregateError)
    expect((err.cause as AggregateError).errors).toEqual([udp, relay])
  })

  it('anything thrown that is not a NatdError becomes INTERNAL with the original as cause', () => {
    const boom = new TypeError('boom')
    const err = mostTelling([boom])
    expect(err).toMatchObject({ code: 'INTERNAL', message: 'boom' })
    expect(err.cause).toBe(boom)
  })
})
