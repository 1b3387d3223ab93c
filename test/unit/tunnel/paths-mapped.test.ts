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
import { afterEach, describe, expect, it } from 'vitest'
import type UDX from 'udx-native'
import type { UDXSocket, UDXStream } from 'udx-native'
import { formatEndpoint, type Endpoint } from '../../../src/protocol/endpoint.js'
import { generateKeyPair } from '../../../src/protocol/identity.js'
import { silentLogger } from '../../../src/protocol/log.js'
import type { NatVerdict, PeerRecord } from '../../../src/protocol/rendezvous.js'
import { PunchBudget, RefusalLog } from '../../../src/tunnel/budget.js'
import { Paths, type Introduction } from '../../../src/tunnel/paths.js'
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

/** Stub sockets that record what they send, and a UDX that opens more of them. */
function rig(): { paths: Paths; sent: Sent[]; opened: () => number; clock: FakeClock } {
  const clock = new FakeClock()
  const sent: Sent[] = []
  let sockets = 0
  const socket = (index: number): UDXSocket =>
    ({
      trySend: (_buf: Uint8Array, port: number, host: string, ttl?: number) => void sent.push({ to: formatEndpoint({ host, port }), ttl, socket: index }),
      bind: () => undefined,
      on: () => undefined,
      close: async () => undefined,
      address: () => ({ host: '0.0.0.0', family: 4, port: 40000 + index })
    }) as unknown as UDXSocket
  const stream = { on: () => undefined, destroy: () => undefined, connect: () => undefined } as unknown as UDXStream
  const udx = { createSocket: () => socket(++sockets), createStream: () => stream } as unknown as UDX
  const paths = new Paths(
    { udx, socket: socket(0), keyPair: generateKeyPair(), clock, random: () => 0.5, log: silentLogger, natVerdict: () => 'hard', relayServer: () => null, localTcpPort: () => 0 },
    new PunchBudget(clock),
    new RefusalLog(silentLogger, clock)
  )
  return { paths, sent, opened: () => sockets, clock }
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

  it('hard×hard with a mapping on another port than the public one: that mapped endpoint too gets a full-TTL probe at once; the public one a TTL-limited one', () => {
    const r = rig()
    const strategy = start(r, intro({ nat: 'hard', lan: [A_MAPPED_OTHER] }), 'hard')
    expect(strategy).toBe('normal')
    const first = (ep: Endpoint): Sent | undefined => r.sent.find((s) => s.to === formatEndpoint(ep))
    expect(first(A_MAPPED_OTHER)).toEqual({ to: formatEndpoint(A_MAPPED_OTHER), ttl: undefined, socket: 0 })
    expect(first(A_PUBLIC)?.ttl).toBe(2)
  })
})
