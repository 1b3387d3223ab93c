// A peer whose gateway mapped its port (issue 17): the plan (race-entries.ts, path-plan.ts)
// and the probes paths.ts sends for it, with stub sockets and a fake clock.
//
//   B 10.2.0.2 (us) ── HARD-NAT ──internet── A's gateway 198.18.1.2 (maps A's port: PCP,
//                                             NAT-PMP or UPnP) ── A 10.1.0.2
//
// A gateway like miniupnpd also sends the mapped port's outbound traffic from the mapped
// port, so A's NAT check finds an easy NAT and the mapped endpoint IS the public one the
// server saw. A mapped endpoint accepts what comes unasked, so B's agent socket probes it
// at full TTL at once, as it does a peer without NAT, and neither side searches: no
// birthday sockets (B), no spray (A). The lab's 3-site port-mapping test failed under load
// while the mapping was dropped as a duplicate of the public endpoint and B searched.
// A stale or forged mapping never answers: after MAPPED_PUNCH_MS each side searches as
// the verdicts call for (birthday on B, spray on A), before the relay.
import { afterEach, describe, expect, it } from 'vitest'
import type UDX from 'udx-native'
import type { UDXSocket, UDXStream } from 'udx-native'
import { formatEndpoint, type Endpoint } from '../../../src/protocol/endpoint.js'
import { generateKeyPair } from '../../../src/protocol/identity.js'
import { silentLogger } from '../../../src/protocol/log.js'
import { encode, type NatVerdict, type PeerRecord } from '../../../src/protocol/rendezvous.js'
import { PunchBudget, RefusalLog } from '../../../src/tunnel/budget.js'
import { Paths, type Introduction } from '../../../src/tunnel/paths.js'
import { MAPPED_PUNCH_MS } from '../../../src/tunnel/punch.js'
import { raceEntries } from '../../../src/tunnel/race-entries.js'
import { FakeClock, seq } from '../helpers.js'

const A_PUBLIC: Endpoint = { host: '198.18.1.2', port: 41000 }
/** A second mapping of A's, on another port than the one the server saw (a gateway that only forwards inbound). */
const A_MAPPED_OTHER: Endpoint = { host: '198.18.1.2', port: 52000 }
const B_PUBLIC: Endpoint = { host: '198.18.2.2', port: 33000 }

interface Sent {
  to: string
  ttl: number | undefined
  /** 0: the agent's socket; 1..: the sockets opened beside it (birthday). */
  socket: number
}

interface Rig {
  paths: Paths
  sent: Sent[]
  opened: () => number
  clock: FakeClock
  /** A datagram from `from` arrives on local socket `index` (0: the agent's socket). */
  deliver: (index: number, buf: Uint8Array, from: Endpoint) => void
  /** Where the stream was connected (the path chosen): the local socket's index and the remote endpoint. */
  connected: Array<{ socket: number; to: string }>
}

/** Stub sockets that record what they send, and a UDX that opens more of them. */
function rig(): Rig {
  const clock = new FakeClock()
  const sent: Sent[] = []
  const onMessage = new Map<number, (buf: Buffer, rinfo: { host: string; port: number }) => void>()
  const connected: Rig['connected'] = []
  let sockets = 0
  const socket = (index: number): UDXSocket =>
    ({
      index,
      trySend: (_buf: Uint8Array, port: number, host: string, ttl?: number) => void sent.push({ to: formatEndpoint({ host, port }), ttl, socket: index }),
      bind: () => undefined,
      on: (event: string, fn: (buf: Buffer, rinfo: { host: string; port: number }) => void) => void (event === 'message' && onMessage.set(index, fn)),
      close: async () => undefined,
      address: () => ({ host: '0.0.0.0', family: 4, port: 40000 + index })
    }) as unknown as UDXSocket
  // write: the encrypted handshake (paths.ts) starts on the chosen path; nothing answers it here.
  const stream = { on: () => undefined, write: () => true, destroy: () => undefined, connect: (sock: { index: number }, _id: number, port: number, host: string) => void connected.push({ socket: sock.index, to: formatEndpoint({ host, port }) }) } as unknown as UDXStream
  const udx = { createSocket: () => socket(++sockets), createStream: () => stream } as unknown as UDX
  const paths = new Paths(
    { udx, socket: socket(0), keyPair: generateKeyPair(), clock, random: () => 0.5, log: silentLogger, natVerdict: () => 'hard', relayServer: () => null, localTcpPort: () => 0 },
    new PunchBudget(clock),
    new RefusalLog(silentLogger, clock)
  )
  const deliver = (index: number, buf: Uint8Array, from: Endpoint): void => {
    if (index === 0) paths.onProbe(Buffer.from(buf), from)
    else onMessage.get(index)?.(Buffer.from(buf), from)
  }
  return { paths, sent, opened: () => sockets, clock, deliver, connected }
}

function intro(peer: Partial<PeerRecord> & Pick<PeerRecord, 'nat'>, initiator = true): Introduction {
  const record: PeerRecord = { publicKey: generateKeyPair().publicKey, name: 'alice', online: true, lastSeenAgoMs: 0, udp: A_PUBLIC, tcp: null, lan: [], ...peer }
  return { introId: seq(0x10, 16), punchKey: seq(0x30, 32), initiator, via: 'auto', peer: record }
}

const running: Array<() => void> = []
afterEach(() => {
  for (const stop of running.splice(0)) stop()
})

/** Plans and starts the attempts for `i` as `mine` (holding a mapping of our own when `ours`), and lets 1 ms pass. */
function start(r: ReturnType<typeof rig>, i: Introduction, mine: NatVerdict, ours = false): string | null {
  const { plan, entries } = raceEntries(i, 5_000, r.paths, { clock: r.clock, natVerdict: () => mine, hasPortMapping: () => ours, hasIPv6: () => false })
  for (const e of entries) e.attempt.catch(() => undefined)
  running.push(() => entries.forEach((e) => e.abort.abort()))
  r.clock.advance(1)
  return plan.udp
}

describe('a peer whose gateway mapped its port', () => {
  it('we are hard, the peer easy with a mapping equal to its public endpoint: no birthday search, the agent socket probes that endpoint at full TTL at once', () => {
    const r = rig()
    const strategy = start(r, intro({ nat: 'easy', lan: [A_PUBLIC, { host: '10.1.0.2', port: 41000 }] }), 'hard')
    expect(strategy).toBe('normal')
    expect(r.opened()).toBe(0) // no birthday socket
    expect(r.sent.filter((s) => s.to === formatEndpoint(A_PUBLIC))[0]).toEqual({ to: formatEndpoint(A_PUBLIC), ttl: undefined, socket: 0 })
  })

  it('without the mapping, the same peer is still searched for (birthday sockets, TTL-limited): the mapping is what changes the plan', () => {
    const r = rig()
    const strategy = start(r, intro({ nat: 'easy', lan: [{ host: '10.1.0.2', port: 41000 }] }), 'hard')
    expect(strategy).toBe('birthday')
    expect(r.opened()).toBeGreaterThan(0)
    expect(r.sent.filter((s) => s.to === formatEndpoint(A_PUBLIC)).every((s) => s.ttl !== undefined)).toBe(true)
  })

  it('we hold the mapping and the peer is hard: no spray at random ports of its NAT, only plain probes to what it offers', () => {
    const r = rig()
    const strategy = start(r, intro({ name: 'bob', nat: 'hard', udp: B_PUBLIC }, false), 'easy', true)
    expect(strategy).toBe('normal')
    r.clock.advance(200)
    expect(new Set(r.sent.map((s) => s.to))).toEqual(new Set([formatEndpoint(B_PUBLIC)]))
  })

  it('we are hard, the peer easy with a mapping that never answers (stale or forged): after MAPPED_PUNCH_MS the birthday search runs, and the path is up when the peer\'s spray reaches a birthday socket', async () => {
    const r = rig()
    const i = intro({ nat: 'easy', lan: [A_PUBLIC] })
    expect(start(r, i, 'hard')).toBe('normal')
    r.clock.advance(MAPPED_PUNCH_MS - 10)
    expect(r.opened()).toBe(0) // still trusting the mapping
    r.clock.advance(20)
    expect(r.opened()).toBeGreaterThan(0)
    const birthday = r.sent.filter((s) => s.socket > 0)
    expect(birthday.length).toBeGreaterThan(0)
    expect(birthday.every((s) => s.to === formatEndpoint(A_PUBLIC) && s.ttl === 2)).toBe(true)
    // The peer's spray lands on birthday socket 7 (its probe comes from its public endpoint); then it acks ours.
    const probe = (ack: boolean): Uint8Array => encode({ type: 'probe', introId: i.introId, streamId: 77, seq: 1, ack, key: i.punchKey })
    r.deliver(7, probe(false), A_PUBLIC)
    expect(r.sent.some((s) => s.socket === 7 && s.ttl === undefined)).toBe(true) // answered at full TTL from that socket
    expect(r.connected).toEqual([])
    r.deliver(7, probe(true), A_PUBLIC)
    await Promise.resolve()
    await Promise.resolve()
    expect(r.connected).toEqual([{ socket: 7, to: formatEndpoint(A_PUBLIC) }])
  })

  it('the mapping holder is hard and its mapping never answers: after MAPPED_PUNCH_MS we (easy) spray its address, not before', () => {
    const r = rig()
    expect(start(r, intro({ name: 'bob', nat: 'hard', udp: B_PUBLIC, lan: [B_PUBLIC] }, false), 'easy')).toBe('normal')
    const sprayed = (): Sent[] => r.sent.filter((s) => s.to !== formatEndpoint(B_PUBLIC))
    r.clock.advance(MAPPED_PUNCH_MS - 10)
    expect(sprayed()).toEqual([])
    r.clock.advance(100)
    expect(sprayed().length).toBeGreaterThan(0)
    expect(sprayed().every((s) => s.to.startsWith(`${B_PUBLIC.host}:`) && s.socket === 0)).toBe(true)
    expect(r.opened()).toBe(0)
  })

  it('a mapped endpoint that answers: no search afterwards', async () => {
    const r = rig()
    const i = intro({ nat: 'easy', lan: [A_PUBLIC] })
    start(r, i, 'hard')
    r.deliver(0, encode({ type: 'probe', introId: i.introId, streamId: 77, seq: 1, ack: true, key: i.punchKey }), A_PUBLIC)
    await Promise.resolve()
    expect(r.connected).toEqual([{ socket: 0, to: formatEndpoint(A_PUBLIC) }])
    r.clock.advance(MAPPED_PUNCH_MS * 2)
    expect(r.opened()).toBe(0)
  })

  it('hard×hard with a mapping on another port than the public one: that mapped endpoint too gets a full-TTL probe at once; the public one a TTL-limited one', () => {
    const r = rig()
    const strategy = start(r, intro({ nat: 'hard', lan: [A_MAPPED_OTHER] }), 'hard')
    expect(strategy).toBe('normal')
    const first = (ep: Endpoint): Sent | undefined => r.sent.find((s) => s.to === formatEndpoint(ep))
    expect(first(A_MAPPED_OTHER)).toEqual({ to: formatEndpoint(A_MAPPED_OTHER), ttl: undefined, socket: 0 })
    expect(first(A_PUBLIC)?.ttl).toBe(2)
  })
})
