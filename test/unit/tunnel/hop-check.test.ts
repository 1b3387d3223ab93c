// The hop check (src/tunnel/hop-check.ts, NatCheck.hops in src/tunnel/nat-check.ts): the
// first-probe TTL learnt from the TTL-limited STUN requests the server answers. The
// probe runner talks to the server's real StunResponder through a simulated path of
// routers, under fake timers:
//
//   NatCheck ── router 1 ── … ── router R ── server (StunResponder)
//
// A datagram sent with TTL t reaches the server when t > R (each router takes one);
// every hop costs HOP_MS each way. The lab's sites (test/lab/lab.ts) are R = 1 (public
// host: inet), 2 (host → home NAT → inet) and 3 (host → home NAT → CGN → inet).
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import type { Endpoint } from '../../../src/protocol/endpoint.js'
import { systemClock } from '../../../src/protocol/clock.js'
import { decodeStun } from '../../../src/protocol/stun.js'
import { StunResponder } from '../../../src/rendezvous/stun-responder.js'
import { classifyHops, FIRST_PROBE_TTL, firstProbeTtlFor, HOP_PROBE_COPIES, HOP_PROBE_TTLS, learnedTtl, MAX_LEARNED_TTL, type HopVerdict } from '../../../src/tunnel/hop-check.js'
import { NAT_CHECK_TIMEOUT_MS, NatCheck } from '../../../src/tunnel/nat-check.js'

const SERVER: Endpoint = { host: '198.51.100.1', port: 3478 }
const PUBLIC: Endpoint = { host: '203.0.113.7', port: 41641 }
const HOP_MS = 5
const DEFAULT_TTL = 64

interface PathOpts {
  routers: number
  /** Indexes (in send order) of requests lost on the way. */
  lose?: number[]
  /** Extra delay for the answer to the request of this index. */
  late?: Record<number, number>
  /** The server's answer policy (a lying server): answer a request sent with this TTL? */
  answers?: (ttl: number) => boolean
}

function path(o: PathOpts) {
  const responder = new StunResponder({ host: SERVER.host, port: SERVER.port, altPort: 0, altHost: null })
  const sent: Array<{ to: Endpoint; ttl: number | undefined }> = []
  const send = (buf: Uint8Array, to: Endpoint, ttl?: number): void => {
    const i = sent.length
    sent.push({ to, ttl })
    const t = ttl ?? DEFAULT_TTL
    if (o.lose?.includes(i) || t <= o.routers) return // lost, or died at router `t`
    if (o.answers && !o.answers(t)) return
    const answer = responder.respond(buf, 'main', PUBLIC)
    if (!answer) return
    setTimeout(() => check.onStun(answer.bytes, SERVER), 2 * (o.routers + 1) * HOP_MS + (o.late?.[i] ?? 0))
  }
  const check: NatCheck = new NatCheck(send, systemClock)
  return { check, sent }
}

/** Runs one check on fake time, 1 ms at a time: the verdict, when it came, what was sent. */
async function run(o: PathOpts): Promise<{ verdict: HopVerdict; tookMs: number; sent: Array<{ to: Endpoint; ttl: number | undefined }> }> {
  const p = path(o)
  const t0 = Date.now()
  let verdict: HopVerdict | null = null
  let tookMs = -1
  void p.check.hops(SERVER).then((v) => {
    verdict = v
    tookMs = Date.now() - t0
  })
  for (let i = 0; i <= NAT_CHECK_TIMEOUT_MS + 10 && verdict === null; i++) await vi.advanceTimersByTimeAsync(1)
  expect(verdict, 'hops() resolved').not.toBeNull()
  return { verdict: verdict!, tookMs, sent: p.sent }
}

describe('hop check: classification (pure)', () => {
  it.each<[string, Array<number | null>, HopVerdict, number]>([
    ['the lowest TTL probed answered: the server is 2 routers away or nearer', [3, 4, 5, null], { kind: 'near', serverTtl: 3 }, FIRST_PROBE_TTL],
    ['behind a CGN in the lab: TTL 4 is the least that reaches the server', [5, 4, null, 4], { kind: 'near', serverTtl: 4 }, 3],
    ['TTL 5 is the least: 4 routers, the most counted', [5, null], { kind: 'near', serverTtl: 5 }, MAX_LEARNED_TTL],
    ['only the control answered: the server is far (the internet)', [null], { kind: 'far' }, FIRST_PROBE_TTL],
    ['nothing answered', [], { kind: 'unknown' }, FIRST_PROBE_TTL]
  ])('%s', (_label, answered, verdict, ttl) => {
    expect(classifyHops({ answered })).toEqual(verdict)
    expect(learnedTtl(verdict)).toBe(ttl)
  })

  it(`a learnt TTL is never above MAX_LEARNED_TTL (${MAX_LEARNED_TTL}) nor below FIRST_PROBE_TTL: farther than that counts as far`, () => {
    for (let serverTtl = 1; serverTtl <= 64; serverTtl++) {
      const ttl = learnedTtl({ kind: 'near', serverTtl })
      expect(ttl).toBeGreaterThanOrEqual(FIRST_PROBE_TTL)
      expect(ttl).toBeLessThanOrEqual(MAX_LEARNED_TTL)
      if (serverTtl - 1 > MAX_LEARNED_TTL) expect(ttl).toBe(FIRST_PROBE_TTL)
    }
  })

  it('a peer at our own public address (behind our outermost NAT, e.g. one CGN) gets FIRST_PROBE_TTL; others the learnt TTL', () => {
    expect(firstProbeTtlFor(3, '198.18.12.2', '198.18.12.2')).toBe(FIRST_PROBE_TTL)
    expect(firstProbeTtlFor(3, '198.18.12.2', '198.18.2.2')).toBe(3)
    expect(firstProbeTtlFor(3, '198.18.12.2', undefined)).toBe(3) // the peer offered no public IPv4 candidate
  })

  it('a peer in our public /24 (another address of one CGN\'s pool) gets FIRST_PROBE_TTL, and every peer while our public address is unknown', () => {
    expect(firstProbeTtlFor(3, '198.18.12.2', '198.18.12.77')).toBe(FIRST_PROBE_TTL)
    expect(firstProbeTtlFor(4, '198.18.12.2', '198.18.13.2')).toBe(4) // the next /24: another network
    expect(firstProbeTtlFor(3, '198.18.12.2', '2001:db8::1')).toBe(3) // not IPv4: no /24 to share
    expect(firstProbeTtlFor(3, null, '198.18.2.2')).toBe(FIRST_PROBE_TTL) // our address not known (NAT check failed, not registered)
    expect(firstProbeTtlFor(3, null, undefined)).toBe(FIRST_PROBE_TTL)
  })
})

describe('hop check: NatCheck.hops against a path of routers', () => {
  beforeEach(() => vi.useFakeTimers())
  afterEach(() => vi.useRealTimers())

  it(`sends ${HOP_PROBE_TTLS.length * HOP_PROBE_COPIES + 1} Binding requests to the server at once: TTL 3..${MAX_LEARNED_TTL + 1}, twice each, and one with the default TTL`, async () => {
    const { sent } = await run({ routers: 12 })
    expect(sent.map((s) => s.ttl)).toEqual([3, 3, 4, 4, 5, 5, undefined])
    expect(sent.every((s) => s.to === SERVER)).toBe(true)
  })

  it.each<[string, number, number]>([
    ['a public host in the lab', 1, FIRST_PROBE_TTL],
    ['one home NAT in the lab', 2, FIRST_PROBE_TTL],
    ['a home NAT behind a CGN in the lab', 3, 3],
    ['one more router', 4, MAX_LEARNED_TTL],
    ['farther than counted', 5, FIRST_PROBE_TTL],
    ['the internet', 14, FIRST_PROBE_TTL]
  ])('%s (R = %i): learns TTL %i', async (_label, routers, ttl) => {
    const { verdict } = await run({ routers })
    expect(learnedTtl(verdict)).toBe(ttl)
    expect(verdict.kind).toBe(routers + 1 <= MAX_LEARNED_TTL + 1 ? 'near' : 'far')
  })

  it('ends at once when the lowest TTL probed answers; else as long after the first answer as it took; never past NAT_CHECK_TIMEOUT_MS', async () => {
    const rtt = (r: number): number => 2 * (r + 1) * HOP_MS
    expect((await run({ routers: 2 })).tookMs).toBe(rtt(2))
    expect((await run({ routers: 3 })).tookMs).toBe(2 * rtt(3))
    expect((await run({ routers: 14 })).tookMs).toBe(2 * rtt(14))
    expect((await run({ routers: 3, answers: () => false })).tookMs).toBe(NAT_CHECK_TIMEOUT_MS)
  })

  it('one lost copy of the deciding TTL does not make the server look farther (nor the TTL reach past it)', async () => {
    const { verdict } = await run({ routers: 3, lose: [2] }) // the first TTL-4 request
    expect(verdict).toEqual({ kind: 'near', serverTtl: 4 })
    expect(learnedTtl(verdict)).toBe(3)
  })

  it('a lower TTL answered late (jitter, reordering) within the settling time still counts', async () => {
    const { verdict } = await run({ routers: 3, late: { 2: 20, 3: 20 } }) // both TTL-4 answers after the TTL-5 ones
    expect(verdict).toEqual({ kind: 'near', serverTtl: 4 })
  })

  it('nothing answers: unknown (the monitor keeps what it learnt before)', async () => {
    const { verdict } = await run({ routers: 2, answers: () => false })
    expect(verdict).toEqual({ kind: 'unknown' })
  })

  it(`a lying server chooses at most TTL ${MAX_LEARNED_TTL}, and how many datagrams we send does not depend on its answers`, async () => {
    const far = await run({ routers: 1, answers: (t) => t === DEFAULT_TTL })
    expect(learnedTtl(far.verdict)).toBe(FIRST_PROBE_TTL)
    const highest = await run({ routers: 1, answers: (t) => t >= MAX_LEARNED_TTL + 1 })
    expect(learnedTtl(highest.verdict)).toBe(MAX_LEARNED_TTL)
    expect([far.sent.length, highest.sent.length]).toEqual([HOP_PROBE_TTLS.length * HOP_PROBE_COPIES + 1, HOP_PROBE_TTLS.length * HOP_PROBE_COPIES + 1])
  })

  it('an answer to another transaction changes nothing', async () => {
    const p = path({ routers: 3 })
    let verdict: HopVerdict | null = null
    void p.check.hops(SERVER).then((v) => (verdict = v))
    // A stray success (another transaction) and a STUN request are ignored.
    const stray = new StunResponder({ host: SERVER.host, port: SERVER.port, altPort: 0, altHost: null }).respond(Buffer.from(encodeRequest()), 'main', PUBLIC)!
    p.check.onStun(stray.bytes, SERVER)
    await vi.advanceTimersByTimeAsync(NAT_CHECK_TIMEOUT_MS + 100)
    expect(verdict).toEqual({ kind: 'near', serverTtl: 4 })
    expect(decodeStun(stray.bytes).method).toBe('binding-success')
  })
})

function encodeRequest(): Uint8Array {
  const b = Buffer.alloc(20)
  b.writeUInt16BE(0x0001, 0)
  b.writeUInt32BE(0x2112a442, 4)
  b.fill(7, 8, 20)
  return b
}
