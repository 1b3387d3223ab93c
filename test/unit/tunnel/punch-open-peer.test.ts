// UDP punching to a peer with no NAT (src/tunnel/punch.ts PunchInit.peerOpen), under
// vitest's fake timers, through a small simulated network:
//
//   P 198.51.100.1:4000 (public: no NAT) ──internet── HARD-NAT 203.0.113.2 ── H (agent socket 0,
//                                          (hop 2)     (hop 1)                  birthday sockets 1..n)
//
// The hard NAT maps every (local socket, destination) pair to a port of its own, in
// order from 40000, even for a packet that dies at TTL 2, and lets in only what comes
// from the destination a mapping was made for. A probe with TTL ≤ 2 dies at the internet
// router. P may sit behind a firewall that lets in only endpoints it has sent to.
// P opens (initiator, 'spray' toward the hard NAT), H answers ('birthday').
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { formatEndpoint, sameEndpoint, type Endpoint } from '../../../src/protocol/endpoint.js'
import { silentLogger, systemClock } from '../../../src/protocol/log.js'
import { decode, encode, type Message } from '../../../src/protocol/rendezvous.js'
import { BIRTHDAY_BATCH, PROBE_START_DELAY_MS, Puncher, type PunchInit } from '../../../src/tunnel/punch.js'
import { seq, track } from '../helpers.js'

const T0 = 1_700_000_000_000
const INTRO_ID = seq(0x50, 16)
const PUNCH_KEY = seq(0x70, 32)
const WAN_LATENCY_MS = 5
const P: Endpoint = { host: '198.51.100.1', port: 4000 }
const NAT_HOST = '203.0.113.2'
/** H's mapping as the rendezvous server saw it: useless to P (the NAT maps per destination). */
const H_SEEN: Endpoint = { host: NAT_HOST, port: 31000 }
const FIRST_MAPPED_PORT = 40000
const BIRTHDAY = 4

type Probe = Extract<Message, { type: 'probe' }>

class HardNatNet {
  /** `${socket} ${destination}` → the NAT's port for it. */
  private readonly mappings = new Map<string, number>()
  /** Endpoints P sent to (its firewall lets them in). */
  private readonly pSentTo = new Set<string>()
  p: Puncher | null = null
  h: Puncher | null = null
  /** Probes P received, by the NAT port they came from. */
  readonly reachedP: number[] = []

  constructor(private readonly pFirewalled: boolean) {}

  /** H sends from local socket `socket` (0: the agent's). */
  fromH(buf: Uint8Array, to: Endpoint, ttl: number | undefined, socket = 0): void {
    const key = `${socket} ${formatEndpoint(to)}`
    const port = this.mappings.get(key) ?? FIRST_MAPPED_PORT + this.mappings.size
    this.mappings.set(key, port)
    if ((ttl !== undefined && ttl <= 2) || !sameEndpoint(to, P)) return
    const from = { host: NAT_HOST, port }
    if (this.pFirewalled && !this.pSentTo.has(formatEndpoint(from))) return
    this.reachedP.push(port)
    const m = probeOf(buf)
    setTimeout(() => this.p?.onProbe(m, from), WAN_LATENCY_MS)
  }

  fromP(buf: Uint8Array, to: Endpoint, ttl: number | undefined): void {
    this.pSentTo.add(formatEndpoint(to))
    if ((ttl !== undefined && ttl <= 2) || to.host !== NAT_HOST) return
    const mapping = [...this.mappings].find(([k, port]) => port === to.port && k.endsWith(` ${formatEndpoint(P)}`))
    if (!mapping) return // no mapping for that port, or one made for another destination
    const socket = Number(mapping[0].split(' ')[0])
    const m = probeOf(buf)
    setTimeout(() => this.h?.onProbe(m, P, socket), WAN_LATENCY_MS)
  }

  /** The NAT's port for H's `socket` toward P (undefined: never sent there). */
  portFor(socket: number): number | undefined {
    return this.mappings.get(`${socket} ${formatEndpoint(P)}`)
  }
}

function probeOf(buf: Uint8Array): Probe {
  const m = decode(buf)
  if (m.type !== 'probe') throw new Error(`sent a ${m.type}`)
  return m
}

/** P (initiator, spraying with `random`) and H (responder, birthday sockets; `peerOpen` as paths.ts sets it: P's verdict is 'none'). */
function pair(net: HardNatNet, random: () => number, peerOpen: boolean): { p: Puncher; h: Puncher } {
  const base = { introId: INTRO_ID, punchKey: PUNCH_KEY, deadlineMs: 3_000 }
  const pInit: PunchInit = { ...base, initiator: true, localStreamId: 101, candidates: [{ endpoint: H_SEEN, kind: 'public' }], strategy: 'spray', sprayHost: NAT_HOST }
  const hInit: PunchInit = { ...base, initiator: false, localStreamId: 202, candidates: [{ endpoint: P, kind: 'public' }], strategy: 'birthday', sockets: BIRTHDAY, peerOpen }
  net.p = new Puncher(pInit, { send: (b, to, ttl) => net.fromP(b, to, ttl), random, clock: systemClock, log: silentLogger })
  net.h = new Puncher(hInit, { send: (b, to, ttl, socket) => net.fromH(b, to, ttl, socket), clock: systemClock, log: silentLogger })
  return { p: net.p, h: net.h }
}

/** A spray that only ever hits port 1024, where the NAT maps nothing. */
const missing = (): number => 0

beforeEach(() => {
  vi.useFakeTimers()
  vi.setSystemTime(T0)
})

afterEach(() => {
  vi.useRealTimers()
})

describe('Puncher: a hard NAT toward a peer with no NAT (public×hard)', () => {
  it('the hard side probes the public peer from its agent socket at full TTL at once: the path is up in three one-way trips, no spray needed', async () => {
    const net = new HardNatNet(false)
    const { p, h } = pair(net, missing, true)
    const tp = track(p.run())
    const th = track(h.run())
    await vi.advanceTimersByTimeAsync(3 * WAN_LATENCY_MS)
    // H's probe reaches P from the mapping of H's agent socket; P answers it, H acks P's triggered probe.
    const main = net.portFor(0)!
    expect(tp.result).toMatchObject({ endpoint: { host: NAT_HOST, port: main }, kind: 'public', remoteStreamId: 202, socket: 0, tookMs: 3 * WAN_LATENCY_MS })
    expect(h.accept({ ...P }, 0)).toBe(true)
    await vi.advanceTimersByTimeAsync(0)
    expect(th.result).toMatchObject({ endpoint: P, remoteStreamId: 101, socket: 0 })
  })

  it('the agent socket probes before any birthday socket (paths.ts opens those at their first probe: 256 binds need not delay the public peer)', () => {
    const sockets: number[] = []
    const x = new Puncher(
      { introId: INTRO_ID, punchKey: PUNCH_KEY, initiator: false, localStreamId: 1, deadlineMs: 1_000, candidates: [{ endpoint: P, kind: 'public' }], strategy: 'birthday', sockets: BIRTHDAY, peerOpen: true },
      { send: (_b, _to, _ttl, socket) => void sockets.push(socket ?? 0), clock: systemClock, log: silentLogger }
    )
    track(x.run())
    expect(sockets).toEqual([0, 1, 2, 3, 4])
    x.stop()
  })

  it(`birthday sockets probe BIRTHDAY_BATCH per turn of the event loop: a probe that arrives meanwhile is answered before the next batch`, async () => {
    const sends: Array<[number, boolean]> = []
    const x = new Puncher(
      { introId: INTRO_ID, punchKey: PUNCH_KEY, initiator: false, localStreamId: 1, deadlineMs: 5_000, candidates: [{ endpoint: P, kind: 'public' }], strategy: 'birthday', sockets: 100 },
      { send: (b, _to, _ttl, socket) => void sends.push([socket ?? 0, probeOf(b).ack]), clock: systemClock, log: silentLogger }
    )
    track(x.run())
    expect(sends.map(([i]) => i)).toEqual(Array.from({ length: BIRTHDAY_BATCH }, (_, k) => k + 1))
    x.onProbe(probeOf(encode({ type: 'probe', introId: INTRO_ID, streamId: 9, seq: 1, ack: false, key: PUNCH_KEY })), P)
    expect(sends[BIRTHDAY_BATCH]).toEqual([0, true]) // the ack, at once
    await vi.advanceTimersByTimeAsync(PROBE_START_DELAY_MS - 1) // the remaining batches, each a turn later, before the regular probes
    expect(sends.filter(([i]) => i > 0).map(([i]) => i)).toEqual(Array.from({ length: 100 }, (_, k) => k + 1))
    x.stop()
  })

  it('without peerOpen only the birthday sockets probe (TTL-limited) and a spray that misses never connects', async () => {
    const net = new HardNatNet(false)
    const { p, h } = pair(net, missing, false)
    const tp = track(p.run())
    track(h.run())
    await vi.advanceTimersByTimeAsync(1_000)
    expect(net.portFor(0)).toBeUndefined()
    expect(net.reachedP).toEqual([])
    expect(tp.result).toBeNull()
    p.stop()
    h.stop()
  })

  it('a public peer behind a firewall: the agent socket’s probes are dropped, the spray lands on a birthday socket as before', async () => {
    const net = new HardNatNet(true)
    // The spray hits the NAT port of H's second birthday socket (mapped when H's punch starts).
    let target = 1024
    const { p, h } = pair(net, () => (target - 1024 + 0.5) / (65536 - 1024), true)
    const tp = track(p.run())
    const th = track(h.run())
    target = net.portFor(2)!
    await vi.advanceTimersByTimeAsync(PROBE_START_DELAY_MS + 4 * WAN_LATENCY_MS)
    expect(tp.result).toMatchObject({ endpoint: { host: NAT_HOST, port: target }, kind: 'public', socket: 0 })
    expect(h.accept({ ...P }, 2)).toBe(true)
    await vi.advanceTimersByTimeAsync(0)
    expect(th.result).toMatchObject({ endpoint: P, socket: 2 })
  })

  it('peerOpen under the normal strategy: the first probe to an IPv4 public candidate has no TTL limit (IPv6 keeps hop limit 2)', () => {
    const sent: Array<[string, number | undefined]> = []
    const v6 = { host: '2001:db8::1', port: 4000 }
    const x = new Puncher(
      { introId: INTRO_ID, punchKey: PUNCH_KEY, initiator: true, localStreamId: 1, deadlineMs: 1_000, candidates: [{ endpoint: P, kind: 'public' }, { endpoint: v6, kind: 'public' }], peerOpen: true },
      { send: (_b, to, ttl) => void sent.push([formatEndpoint(to), ttl]), clock: systemClock, log: silentLogger }
    )
    track(x.run())
    expect(sent).toEqual([
      ['198.51.100.1:4000', undefined],
      ['[2001:db8::1]:4000', 2]
    ])
    x.stop()
  })
})
