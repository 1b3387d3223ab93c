// TunnelManager (src/tunnel/manager.ts) against a stub introducer: a tunnel goes only to
// the peer the user named. Two managers on real loopback UDX sockets (./manager-agents.ts)
// punch to each other for the cases that must succeed; the refusals happen before any
// packet is sent. Also: each punch reported, LAN candidates probed only where allowed,
// open's AbortSignal, and which failure an open reports (mostTelling).
import { randomBytes } from 'node:crypto'
import dgram from 'node:dgram'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { NatdError } from '../../../src/protocol/errors.js'
import { generateKeyPair, peerId } from '../../../src/protocol/identity.js'
import { mostTelling, type PunchOutcome } from '../../../src/tunnel/manager.js'
import { agent, closeAgents, pair, record, type Agent } from './manager-agents.js'
import { until } from './pipe.js'

async function codeOf(p: Promise<unknown>): Promise<string> {
  return p.then(() => 'resolved', (err: unknown) => (err instanceof NatdError ? err.code : String(err)))
}

afterEach(closeAgents)

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
