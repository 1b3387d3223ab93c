// A silent tunnel makes the agent check both sides of its path at once
// (src/daemon/path-check.ts): our mapping through the server's heartbeat answer, the
// peer's through its record on the server. Stubs for the client and the tunnel.
import { describe, expect, it } from 'vitest'
import { CHECK_MIN_INTERVAL_MS, PathCheck, peerMoved, type SilentTunnel } from '../../../src/daemon/path-check.js'
import type { ProbeResult } from '../../../src/daemon/path-probe.js'
import { silentLogger } from '../../../src/protocol/log.js'
import type { PeerRecord } from '../../../src/protocol/rendezvous.js'
import type { PathKind } from '../../../src/protocol/tunnel-snapshot.js'
import { FakeClock } from '../helpers.js'

const OLD_UDP = { host: '198.18.2.2', port: 40000 }
const OLD_TCP = { host: '198.18.2.2', port: 40000 }
const NEW = { host: '198.18.2.2', port: 21234 }

function tunnel(path: PathKind): SilentTunnel & { changed: string[] } {
  const changed: string[] = []
  return { peer: { name: 'bob', id: 'b0b' }, path, isUp: true, peerEndpoints: { udp: OLD_UDP, tcp: OLD_TCP }, changed, pathChanged: (r) => changed.push(r) }
}

function record(udp = OLD_UDP, tcp = OLD_TCP): PeerRecord {
  return { publicKey: new Uint8Array(32), name: 'bob', online: true, lastSeenAgoMs: 0, nat: 'easy', udp, tcp, lan: [] }
}

function setUp(probe: ProbeResult | null, peer: PeerRecord | null) {
  const clock = new FakeClock()
  const calls = { probes: 0, lists: 0, ours: [] as string[] }
  const check = new PathCheck({
    probe: async () => {
      calls.probes++
      return probe
    },
    peerRecord: async () => {
      calls.lists++
      return peer
    },
    pathChanged: (r) => calls.ours.push(r),
    clock,
    log: silentLogger
  })
  return { clock, calls, check }
}

const settle = (): Promise<void> => new Promise((r) => setImmediate(r))

describe('peerMoved: the peer record against the endpoints the tunnel was introduced with', () => {
  it('a direct-udp tunnel looks at the UDP endpoint, a direct-tcp one at both (its UDP one moves first: the heartbeat), lan and relay never', () => {
    expect(peerMoved(tunnel('direct-udp'), record(NEW, OLD_TCP))).toBe(true)
    expect(peerMoved(tunnel('direct-udp'), record(OLD_UDP, NEW))).toBe(false)
    expect(peerMoved(tunnel('direct-tcp'), record(OLD_UDP, NEW))).toBe(true)
    expect(peerMoved(tunnel('direct-tcp'), record(NEW, OLD_TCP))).toBe(true)
    expect(peerMoved(tunnel('direct-tcp'), record(OLD_UDP, OLD_TCP))).toBe(false)
    expect(peerMoved(tunnel('relay'), record(NEW, NEW))).toBe(false)
    expect(peerMoved(tunnel('lan'), record(NEW, NEW))).toBe(false)
    expect(peerMoved({ path: 'direct-udp', peerEndpoints: null }, record(NEW, NEW))).toBe(false)
    expect(peerMoved(tunnel('direct-udp'), record(OLD_UDP, OLD_TCP))).toBe(false)
  })
})

describe('PathCheck', () => {
  it('our heartbeat seen from another mapping: every direct tunnel migrates (pathChanged), the peer is not asked', async () => {
    const { calls, check } = setUp({ mapping: 'moved', control: 'lost' }, record())
    const t = tunnel('direct-tcp')
    check.onSuspect(t)
    await settle()
    expect(calls.ours).toEqual(['our NAT mapping or address changed'])
    expect(calls.lists).toBe(0)
    expect(t.changed).toEqual([])
  })

  it('our side unchanged, the peer registered from another mapping: only that tunnel migrates', async () => {
    const { calls, check } = setUp({ mapping: 'same', control: 'alive' }, record(NEW, NEW))
    const t = tunnel('direct-udp')
    check.onSuspect(t)
    await settle()
    expect(calls.ours).toEqual([])
    expect(t.changed).toEqual(["the peer's NAT mapping or address changed"])
  })

  it('neither side changed (a lossy path): nothing migrates', async () => {
    const { calls, check } = setUp({ mapping: 'same', control: 'alive' }, record())
    const t = tunnel('direct-udp')
    check.onSuspect(t)
    await settle()
    expect([calls.probes, calls.lists]).toEqual([1, 1])
    expect(calls.ours).toEqual([])
    expect(t.changed).toEqual([])
  })

  it(`at most one check per ${CHECK_MIN_INTERVAL_MS} ms, however many tunnels are silent`, async () => {
    const { clock, calls, check } = setUp({ mapping: 'same', control: 'alive' }, record())
    for (let i = 0; i < 10; i++) check.onSuspect(tunnel('direct-udp'))
    await settle()
    expect(calls.probes).toBe(1)
    await clock.pass(CHECK_MIN_INTERVAL_MS - 10)
    check.onSuspect(tunnel('direct-udp'))
    await settle()
    expect(calls.probes).toBe(1)
    await clock.pass(20)
    check.onSuspect(tunnel('direct-udp'))
    await settle()
    expect(calls.probes).toBe(2)
  })
})
