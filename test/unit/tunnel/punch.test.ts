// UDP hole punching (src/tunnel/punch.ts) under vitest's fake timers: the probe schedule
// (TTL-2 first probes, then regular ones), acks, the initiator's choice of path (LAN
// grace), the responder's accept(), peer-reflexive candidates, the deadline, stop() and
// abort. Two punchers are also wired through a small simulated network:
//
//   A 192.168.1.10:4000 ─ NAT-A 198.51.100.1:4000 ──┐          ┌── NAT-B 203.0.113.2:5000 ─ B 10.0.2.2:5000
//     (site "a")                                    └─internet─┘                             (site "b")
//
// Each NAT keeps a mapping for every endpoint its host has sent to (even a packet that
// dies at TTL 2) and drops inbound packets from endpoints it holds no mapping for
// (endpoint-dependent filtering). LAN addresses are reachable only within one site.
// Probes are sealed with the introduction's punch key; one that does not open with it
// (a forgery, or a probe of another introduction) is ignored.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { formatEndpoint, sameEndpoint, type Endpoint } from '../../../src/protocol/endpoint.js'
import { NatdError } from '../../../src/protocol/errors.js'
import { silentLogger, systemClock } from '../../../src/protocol/log.js'
import { decode, encode, type Message, opened } from '../../../src/protocol/rendezvous.js'
import {
  BIRTHDAY_REFRESH_MS,
  LAN_GRACE_MS,
  V6_GRACE_MS,
  MAX_LEARNT_CANDIDATES,
  PROBE_FAST_MS,
  PROBE_INTERVAL_MS,
  PROBE_SLOW_INTERVAL_MS,
  PROBE_START_DELAY_MS,
  Puncher,
  type Candidate,
  type PunchInit
} from '../../../src/tunnel/punch.js'
import { seq, track } from '../helpers.js'

const clock = systemClock
const T0 = 1_700_000_000_000
const INTRO_ID = seq(0x50, 16)
/** The introduction's punch key: both punchers seal with it and open with it. */
const PUNCH_KEY = seq(0x70, 32)
const OTHER_KEY = seq(0x71, 32)

type Probe = Extract<Message, { type: 'probe' }>

/** A probe from the peer as it arrives: encoded (sealed with `key`) and decoded. */
function probe(streamId: number, ack: boolean, key: Uint8Array = PUNCH_KEY): Probe {
  const m = decode(encode({ type: 'probe', introId: INTRO_ID, streamId, seq: 1, ack, key }))
  if (m.type !== 'probe') throw new Error(`decoded ${m.type}`)
  return m
}

/** A probe whose stream id was changed on the way (the tag no longer matches the bytes). */
function tampered(streamId: number, ack: boolean): Probe {
  const wire = encode({ type: 'probe', introId: INTRO_ID, streamId, seq: 1, ack, key: PUNCH_KEY })
  wire[4 + 16 + 3]! ^= 0x01 // the low byte of streamId
  const m = decode(wire)
  if (m.type !== 'probe' || m.streamId !== (streamId ^ 1)) throw new Error('not tampered')
  return m
}

/** The same probe with a zeroed tag, as a sender without the key would make it. */
function unsealed(streamId: number, ack: boolean): Probe {
  return { ...probe(streamId, ack), tag: Buffer.alloc(16) }
}

const A_LAN: Endpoint = { host: '192.168.1.10', port: 4000 }
const A_PUBLIC: Endpoint = { host: '198.51.100.1', port: 4000 }
const B_LAN: Endpoint = { host: '10.0.2.2', port: 5000 }
const B_PUBLIC: Endpoint = { host: '203.0.113.2', port: 5000 }
const STRANGER: Endpoint = { host: '192.0.2.99', port: 9999 }
const B_V6: Endpoint = { host: '2001:db8:2::2', port: 5000 }

const lan = (endpoint: Endpoint): Candidate => ({ endpoint, kind: 'lan' })
const pub = (endpoint: Endpoint): Candidate => ({ endpoint, kind: 'public' })

interface Sent {
  at: number
  to: Endpoint
  ttl: number | undefined
  ack: boolean
  streamId: number
  seq: number
  introId: string
  /** Opens with PUNCH_KEY. */
  sealed: boolean
}

/** A fake `send` that decodes and records every probe. */
function recorder(): { sent: Sent[]; send: (buf: Uint8Array, to: Endpoint, ttl?: number) => void } {
  const sent: Sent[] = []
  return {
    sent,
    send: (buf, to, ttl) => {
      const m = decode(buf)
      if (m.type !== 'probe') throw new Error(`sent a ${m.type}, not a probe`)
      sent.push({ at: Date.now() - T0, to, ttl, ack: m.ack, streamId: m.streamId, seq: m.seq, introId: Buffer.from(m.introId).toString('hex'), sealed: opened(m, PUNCH_KEY) })
    }
  }
}

function makePuncher(init: Partial<PunchInit> & { candidates: Candidate[] }, send = recorder().send): Puncher {
  return new Puncher({ introId: INTRO_ID, punchKey: PUNCH_KEY, initiator: true, localStreamId: 11, deadlineMs: 10_000, ...init }, { send, clock, log: silentLogger })
}

beforeEach(() => {
  vi.useFakeTimers()
  vi.setSystemTime(T0)
})

afterEach(() => {
  vi.useRealTimers()
})

describe('Puncher: probe schedule', () => {
  it('the first probe to every public candidate has TTL 2; LAN candidates get no TTL', () => {
    const { sent, send } = recorder()
    const other = { host: '203.0.113.2', port: 5001 }
    const p = makePuncher({ candidates: [lan(B_LAN), pub(B_PUBLIC), pub(other), pub({ ...B_PUBLIC })] }, send)
    track(p.run())
    expect(sent.map((s) => [formatEndpoint(s.to), s.ttl])).toEqual([
      ['10.0.2.2:5000', undefined],
      ['203.0.113.2:5000', 2], // TTL 2: opens our NAT's mapping, dies at the next router
      ['203.0.113.2:5001', 2]
    ]) // the duplicate candidate is probed once
    for (const s of sent) expect(s).toMatchObject({ at: 0, ack: false, streamId: 11, introId: Buffer.from(INTRO_ID).toString('hex'), sealed: true })
    expect(new Set(sent.map((s) => s.seq)).size).toBe(sent.length)
    p.stop()
  })

  it('a learnt first TTL (hop-check.ts: behind a CGN) goes on every first probe to an IPv4 public candidate; IPv6 keeps hop limit 2, LAN none, later probes none', async () => {
    const { sent, send } = recorder()
    const p = makePuncher({ candidates: [lan(B_LAN), pub(B_PUBLIC), pub(B_V6)], firstTtl: 3 }, send)
    track(p.run())
    expect(sent.map((s) => [formatEndpoint(s.to), s.ttl])).toEqual([
      ['10.0.2.2:5000', undefined],
      ['203.0.113.2:5000', 3], // past the home NAT and the CGN, dies at the router after
      ['[2001:db8:2::2]:5000', 2]
    ])
    await vi.advanceTimersByTimeAsync(PROBE_START_DELAY_MS + PROBE_INTERVAL_MS)
    expect(sent.slice(3).every((s) => s.ttl === undefined)).toBe(true)
    p.stop()
  })

  it('birthday: every birthday socket probes with the learnt first TTL, at the start and at each refresh', async () => {
    const sends: Array<[string, number | undefined, number]> = []
    const p = new Puncher(
      { introId: INTRO_ID, punchKey: PUNCH_KEY, initiator: true, localStreamId: 11, deadlineMs: 10_000, candidates: [pub(B_PUBLIC)], strategy: 'birthday', sockets: 3, firstTtl: 3 },
      { send: (_buf, to, ttl, socket) => void sends.push([formatEndpoint(to), ttl, socket ?? 0]), clock, log: silentLogger }
    )
    track(p.run())
    expect(sends).toEqual([1, 2, 3].map((i) => ['203.0.113.2:5000', 3, i]))
    await vi.advanceTimersByTimeAsync(BIRTHDAY_REFRESH_MS)
    expect(sends.filter(([, , i]) => i > 0)).toEqual([1, 2, 3, 1, 2, 3].map((i) => ['203.0.113.2:5000', 3, i]))
    p.stop()
  })

  it('normal probes (no TTL) follow PROBE_START_DELAY_MS later and repeat every PROBE_INTERVAL_MS', async () => {
    const { sent, send } = recorder()
    const p = makePuncher({ candidates: [lan(B_LAN), pub(B_PUBLIC)] }, send)
    track(p.run())
    await vi.advanceTimersByTimeAsync(PROBE_START_DELAY_MS - 1)
    expect(sent).toHaveLength(2)
    await vi.advanceTimersByTimeAsync(1)
    expect(sent.slice(2).map((s) => [s.at, formatEndpoint(s.to), s.ttl])).toEqual([
      [PROBE_START_DELAY_MS, '10.0.2.2:5000', undefined],
      [PROBE_START_DELAY_MS, '203.0.113.2:5000', undefined]
    ])
    await vi.advanceTimersByTimeAsync(PROBE_INTERVAL_MS - 1)
    expect(sent).toHaveLength(4)
    await vi.advanceTimersByTimeAsync(1)
    expect(sent.slice(4).map((s) => s.at)).toEqual([PROBE_START_DELAY_MS + PROBE_INTERVAL_MS, PROBE_START_DELAY_MS + PROBE_INTERVAL_MS])
    expect(sent.every((s, i) => i < 2 || s.ttl === undefined)).toBe(true)
    p.stop()
  })

  it(`after PROBE_FAST_MS the period slows to PROBE_SLOW_INTERVAL_MS`, async () => {
    const { sent, send } = recorder()
    const p = makePuncher({ candidates: [pub(B_PUBLIC)] }, send)
    track(p.run())
    await vi.advanceTimersByTimeAsync(PROBE_FAST_MS + 5 * PROBE_SLOW_INTERVAL_MS)
    const times = sent.slice(1).map((s) => s.at)
    const gaps = times.slice(1).map((t, i) => [times[i]!, t - times[i]!] as const)
    expect(gaps.filter(([at]) => at < PROBE_FAST_MS).every(([, gap]) => gap === PROBE_INTERVAL_MS)).toBe(true)
    const slow = gaps.filter(([at]) => at >= PROBE_FAST_MS)
    expect(slow.length).toBeGreaterThanOrEqual(4)
    expect(slow.every(([, gap]) => gap === PROBE_SLOW_INTERVAL_MS)).toBe(true)
    p.stop()
  })

  it('a probe is answered at once with an ack to its source and a triggered probe, without TTL, carrying our stream id', () => {
    const { sent, send } = recorder()
    const p = makePuncher({ candidates: [pub(B_PUBLIC)], localStreamId: 77 }, send)
    track(p.run())
    sent.length = 0
    p.onProbe(probe(5, false), B_PUBLIC)
    p.onProbe(probe(5, false), STRANGER)
    expect(sent.map((s) => [formatEndpoint(s.to), s.ttl, s.ack, s.streamId])).toEqual([
      ['203.0.113.2:5000', undefined, true, 77],
      ['203.0.113.2:5000', undefined, false, 77], // triggered check (RFC 8445 §7.3.1.4)
      ['192.0.2.99:9999', undefined, true, 77],
      ['192.0.2.99:9999', undefined, false, 77]
    ])
    p.stop()
  })
})

describe('Puncher: the initiator chooses', () => {
  it('resolves with the candidate whose ack arrived, kind public, remoteStreamId from the peer', async () => {
    const p = makePuncher({ candidates: [pub(B_PUBLIC), pub({ host: '203.0.113.3', port: 5000 })] })
    const t = track(p.run())
    await vi.advanceTimersByTimeAsync(35)
    p.onProbe(probe(0xabcdef, false), B_PUBLIC)
    p.onProbe(probe(0xabcdef, true), B_PUBLIC)
    await vi.advanceTimersByTimeAsync(0)
    expect(t.result).toMatchObject({ endpoint: B_PUBLIC, kind: 'public', remoteStreamId: 0xabcdef, tookMs: 35 })
    expect(t.result!.probesSent).toBeGreaterThan(2)
    expect(vi.getTimerCount()).toBe(0) // probing stopped
  })

  it('when a public and then a LAN candidate validate within LAN_GRACE_MS, LAN wins', async () => {
    const p = makePuncher({ candidates: [lan(B_LAN), pub(B_PUBLIC)] })
    const t = track(p.run())
    await vi.advanceTimersByTimeAsync(12)
    p.onProbe(probe(3, true), B_PUBLIC)
    await vi.advanceTimersByTimeAsync(LAN_GRACE_MS - 1)
    expect(t.settled()).toBe(false)
    p.onProbe(probe(3, true), B_LAN)
    await vi.advanceTimersByTimeAsync(0)
    expect(t.result).toMatchObject({ endpoint: B_LAN, kind: 'lan', remoteStreamId: 3, tookMs: 12 + LAN_GRACE_MS - 1 })
    expect(vi.getTimerCount()).toBe(0)
  })

  it('when the LAN candidate stays silent, the public one wins LAN_GRACE_MS after it validated', async () => {
    const p = makePuncher({ candidates: [lan(B_LAN), pub(B_PUBLIC)] })
    const t = track(p.run())
    await vi.advanceTimersByTimeAsync(12)
    p.onProbe(probe(3, true), B_PUBLIC)
    await vi.advanceTimersByTimeAsync(LAN_GRACE_MS)
    expect(t.result).toMatchObject({ endpoint: B_PUBLIC, kind: 'public', tookMs: 12 + LAN_GRACE_MS })
  })

  it('a LAN ack alone resolves at once', async () => {
    const p = makePuncher({ candidates: [pub(B_PUBLIC), lan(B_LAN)] })
    const t = track(p.run())
    await vi.advanceTimersByTimeAsync(3)
    p.onProbe(probe(4, true), B_LAN)
    await vi.advanceTimersByTimeAsync(0)
    expect(t.result).toMatchObject({ endpoint: B_LAN, kind: 'lan', remoteStreamId: 4, tookMs: 3 })
  })

  it('with no LAN candidate, a public ack resolves at once', async () => {
    const p = makePuncher({ candidates: [pub(B_PUBLIC)] })
    const t = track(p.run())
    p.onProbe(probe(4, true), B_PUBLIC)
    await vi.advanceTimersByTimeAsync(0)
    expect(t.result).toMatchObject({ endpoint: B_PUBLIC, kind: 'public', tookMs: 0 })
  })

  it('a peer-reflexive source (not among the candidates) is learnt, probed, and can validate', async () => {
    const { sent, send } = recorder()
    const reflexive = { host: '203.0.113.2', port: 61001 } // B's NAT mapped it elsewhere than the server saw
    const p = makePuncher({ candidates: [pub(B_PUBLIC)] }, send)
    const t = track(p.run())
    await vi.advanceTimersByTimeAsync(PROBE_START_DELAY_MS + 1)
    p.onProbe(probe(21, false), reflexive)
    sent.length = 0
    await vi.advanceTimersByTimeAsync(PROBE_INTERVAL_MS)
    expect(sent.map((s) => formatEndpoint(s.to))).toEqual(['203.0.113.2:5000', '203.0.113.2:61001'])
    p.onProbe(probe(21, true), reflexive)
    await vi.advanceTimersByTimeAsync(0)
    expect(t.result).toMatchObject({ endpoint: reflexive, kind: 'public', remoteStreamId: 21 })
  })

  it(`learns at most MAX_LEARNT_CANDIDATES (${MAX_LEARNT_CANDIDATES}) peer-reflexive endpoints`, async () => {
    const { sent, send } = recorder()
    const p = makePuncher({ candidates: [pub(B_PUBLIC)] }, send)
    track(p.run())
    for (let i = 0; i < MAX_LEARNT_CANDIDATES + 3; i++) p.onProbe(probe(1, false), { host: '192.0.2.1', port: 1000 + i })
    sent.length = 0
    await vi.advanceTimersByTimeAsync(PROBE_START_DELAY_MS)
    expect(sent).toHaveLength(1 + MAX_LEARNT_CANDIDATES)
    p.stop()
  })
})

describe('Puncher: the responder follows', () => {
  it('accept(from) is false for an endpoint it never heard a probe from, true for one it did, and resolves run()', async () => {
    const p = makePuncher({ initiator: false, candidates: [lan(A_LAN), pub(A_PUBLIC)], localStreamId: 22 })
    const t = track(p.run())
    expect(p.accept(A_PUBLIC)).toBe(false) // a candidate, but no probe from it yet
    expect(p.accept(STRANGER)).toBe(false)
    p.onProbe(probe(33, false), A_PUBLIC)
    p.onProbe(probe(33, true), A_PUBLIC)
    await vi.advanceTimersByTimeAsync(0)
    expect(t.settled()).toBe(false) // the responder never chooses by itself
    expect(p.accept(STRANGER)).toBe(false)
    expect(p.accept(A_PUBLIC)).toBe(true)
    await vi.advanceTimersByTimeAsync(0)
    expect(t.result).toMatchObject({ endpoint: A_PUBLIC, kind: 'public', remoteStreamId: 33 })
    expect(p.remoteStream).toBe(33)
    // Done: the chosen endpoint stays accepted, nothing else is.
    expect(p.accept(A_PUBLIC)).toBe(true)
    expect(p.accept(A_LAN)).toBe(false)
    expect(vi.getTimerCount()).toBe(0)
  })

  it('accept() from a LAN candidate resolves with kind lan', async () => {
    const p = makePuncher({ initiator: false, candidates: [lan(A_LAN), pub(A_PUBLIC)] })
    const t = track(p.run())
    p.onProbe(probe(1, false), A_LAN)
    expect(p.accept(A_LAN)).toBe(true)
    await vi.advanceTimersByTimeAsync(0)
    expect(t.result).toMatchObject({ endpoint: A_LAN, kind: 'lan' })
  })

  it('the initiator never accepts', () => {
    const p = makePuncher({ candidates: [pub(B_PUBLIC)] })
    track(p.run())
    p.onProbe(probe(1, false), B_PUBLIC)
    expect(p.accept(B_PUBLIC)).toBe(false)
    p.stop()
  })
})

describe('Puncher: ending', () => {
  it('after the deadline it rejects PUNCH_TIMEOUT naming the candidates tried', async () => {
    const { sent, send } = recorder()
    const p = makePuncher({ candidates: [lan(B_LAN), pub(B_PUBLIC)], deadlineMs: 1_000 }, send)
    const t = track(p.run())
    await vi.advanceTimersByTimeAsync(999)
    expect(t.settled()).toBe(false)
    await vi.advanceTimersByTimeAsync(PROBE_INTERVAL_MS)
    expect(t.error).toBeInstanceOf(NatdError)
    const err = t.error as NatdError
    expect(err.code).toBe('PUNCH_TIMEOUT')
    expect(err.message).toContain('lan 10.0.2.2:5000')
    expect(err.message).toContain('public 203.0.113.2:5000')
    expect(err.message).toContain('no probe from the peer arrived')
    const count = sent.length
    await vi.advanceTimersByTimeAsync(5_000)
    expect(sent).toHaveLength(count)
    expect(vi.getTimerCount()).toBe(0)
  })

  it('the PUNCH_TIMEOUT message says when the peer was heard but never answered', async () => {
    const p = makePuncher({ candidates: [pub(B_PUBLIC)], deadlineMs: 200 })
    const t = track(p.run())
    p.onProbe(probe(1, false), B_PUBLIC)
    await vi.advanceTimersByTimeAsync(200 + PROBE_INTERVAL_MS)
    expect(t.error).toMatchObject({ code: 'PUNCH_TIMEOUT', message: expect.stringContaining('heard from 203.0.113.2:5000') })
  })

  it('after finishing, late probes still get acks (the peer may still be choosing); late acks get nothing', async () => {
    const { sent, send } = recorder()
    const p = makePuncher({ candidates: [pub(B_PUBLIC)] }, send)
    const t = track(p.run())
    p.onProbe(probe(1, true), B_PUBLIC)
    await vi.advanceTimersByTimeAsync(0)
    expect(t.result).not.toBeNull()
    sent.length = 0
    p.onProbe(probe(1, false), B_PUBLIC)
    p.onProbe(probe(1, true), B_PUBLIC)
    expect(sent.map((s) => [formatEndpoint(s.to), s.ack])).toEqual([['203.0.113.2:5000', true]])
  })

  it('stop() rejects run() with ABORTED and stops every timer (no more sends)', async () => {
    const { sent, send } = recorder()
    const p = makePuncher({ candidates: [lan(B_LAN), pub(B_PUBLIC)] }, send)
    const t = track(p.run())
    await vi.advanceTimersByTimeAsync(50)
    p.onProbe(probe(1, true), B_PUBLIC) // now in the LAN grace period: two timers
    p.stop()
    await vi.advanceTimersByTimeAsync(0)
    expect(t.error).toMatchObject({ code: 'ABORTED' })
    const count = sent.length
    await vi.advanceTimersByTimeAsync(20_000)
    expect(sent).toHaveLength(count)
    expect(vi.getTimerCount()).toBe(0)
  })

  it('aborting the signal rejects run() with ABORTED', async () => {
    const ac = new AbortController()
    const p = makePuncher({ candidates: [pub(B_PUBLIC)] })
    const t = track(p.run(ac.signal))
    await vi.advanceTimersByTimeAsync(30)
    ac.abort()
    await vi.advanceTimersByTimeAsync(0)
    expect(t.error).toMatchObject({ code: 'ABORTED' })
    expect(vi.getTimerCount()).toBe(0)
  })

  // Bug (reported): run(signal) only listens for a future 'abort'; a signal that is
  // already aborted is ignored and punching runs to its deadline. Fix: check
  // `signal?.aborted` (or signal.throwIfAborted()) at the top of run().
  it('run() with an already-aborted signal rejects at once', async () => {
    const p = makePuncher({ candidates: [pub(B_PUBLIC)] })
    const t = track(p.run(AbortSignal.abort()))
    await vi.advanceTimersByTimeAsync(PROBE_START_DELAY_MS)
    expect(t.error).toMatchObject({ code: 'ABORTED' })
    p.stop()
  })
})

describe('Puncher: only probes sealed with the punch key count', () => {
  const forgeries: Array<[string, (streamId: number, ack: boolean) => Probe]> = [
    ['sealed with another key', (streamId, ack) => probe(streamId, ack, OTHER_KEY)],
    ['unsealed', unsealed],
    ['whose stream id was changed on the way', tampered]
  ]

  for (const [label, forged] of forgeries) {
    it(`an ack ${label} does not pick the path; the peer's real ack then does`, async () => {
      const p = makePuncher({ candidates: [pub(B_PUBLIC)] })
      const t = track(p.run())
      p.onProbe(forged(66, true), STRANGER)
      p.onProbe(forged(66, true), B_PUBLIC)
      await vi.advanceTimersByTimeAsync(LAN_GRACE_MS + PROBE_INTERVAL_MS)
      expect(t.settled()).toBe(false)
      p.onProbe(probe(5, true), B_PUBLIC)
      await vi.advanceTimersByTimeAsync(0)
      expect(t.result).toMatchObject({ endpoint: B_PUBLIC, kind: 'public', remoteStreamId: 5 })
    })

    it(`a probe ${label} gets no answer, is not learnt, and the responder does not accept its source`, async () => {
      const { sent, send } = recorder()
      const p = makePuncher({ initiator: false, candidates: [pub(A_PUBLIC)] }, send)
      const t = track(p.run())
      sent.length = 0
      p.onProbe(forged(66, false), STRANGER)
      p.onProbe(forged(66, false), A_PUBLIC)
      expect(sent).toEqual([]) // no ack, no triggered probe: a forger cannot aim our probes
      expect(p.accept(STRANGER)).toBe(false)
      expect(p.accept(A_PUBLIC)).toBe(false)
      await vi.advanceTimersByTimeAsync(PROBE_START_DELAY_MS)
      expect(sent.map((s) => formatEndpoint(s.to))).toEqual(['198.51.100.1:4000']) // STRANGER was not learnt
      expect(t.settled()).toBe(false)
      p.onProbe(probe(7, false), A_PUBLIC)
      expect(p.accept(A_PUBLIC)).toBe(true)
      await vi.advanceTimersByTimeAsync(0)
      expect(t.result).toMatchObject({ endpoint: A_PUBLIC, remoteStreamId: 7 })
    })
  }

  it('after finishing, a forged probe gets no ack (only the peer keeps getting answers)', async () => {
    const { sent, send } = recorder()
    const p = makePuncher({ candidates: [pub(B_PUBLIC)] }, send)
    track(p.run())
    p.onProbe(probe(1, true), B_PUBLIC)
    await vi.advanceTimersByTimeAsync(0)
    sent.length = 0
    p.onProbe(probe(1, false, OTHER_KEY), STRANGER)
    p.onProbe(unsealed(1, false), STRANGER)
    expect(sent).toEqual([])
    p.onProbe(probe(1, false), B_PUBLIC)
    expect(sent.map((s) => [formatEndpoint(s.to), s.ack, s.sealed])).toEqual([['203.0.113.2:5000', true, true]])
  })

  it('every probe and ack we send opens with the punch key, and only with it', () => {
    const all: Uint8Array[] = []
    const p = makePuncher({ candidates: [lan(B_LAN), pub(B_PUBLIC)] }, (buf) => void all.push(buf))
    track(p.run())
    p.onProbe(probe(3, false), B_PUBLIC)
    expect(all.length).toBeGreaterThanOrEqual(4)
    for (const buf of all) {
      const m = decode(buf)
      if (m.type !== 'probe') throw new Error(`sent a ${m.type}`)
      expect(opened(m, PUNCH_KEY)).toBe(true)
      expect(opened(m, OTHER_KEY)).toBe(false)
    }
    p.stop()
  })
})

// ---------------------------------------------------------------------------------------
// Two punchers through a simulated network (see the drawing at the top).

const WAN_LATENCY_MS = 5
const LAN_LATENCY_MS = 1

interface SimHost {
  name: string
  site: string
  lan: Endpoint
  public: Endpoint
  /** Remote endpoints this host's NAT holds a mapping for (it sent to them). */
  mapped: Set<string>
  puncher: Puncher | null
  sent: Sent[]
}

interface Delivery {
  at: number
  from: string
  to: string
  ttl: number | undefined
  ack: boolean
  fate: 'delivered' | 'ttl expired' | 'nat dropped' | 'unroutable'
}

class SimNet {
  readonly hosts: SimHost[] = []
  readonly log: Delivery[] = []

  host(name: string, site: string, lanEp: Endpoint, publicEp: Endpoint): SimHost {
    const h: SimHost = { name, site, lan: lanEp, public: publicEp, mapped: new Set(), puncher: null, sent: [] }
    this.hosts.push(h)
    return h
  }

  sender(from: SimHost): (buf: Uint8Array, to: Endpoint, ttl?: number) => void {
    const rec = recorder()
    from.sent = rec.sent
    return (buf, to, ttl) => {
      rec.send(buf, to, ttl)
      const m = decode(buf)
      if (m.type !== 'probe') return
      const entry = (fate: Delivery['fate']): void => {
        this.log.push({ at: Date.now() - T0, from: from.name, to: formatEndpoint(to), ttl, ack: m.ack, fate })
      }
      const local = this.hosts.find((h) => h !== from && h.site === from.site && sameEndpoint(h.lan, to))
      if (local) {
        entry('delivered')
        setTimeout(() => local.puncher?.onProbe(m, from.lan), LAN_LATENCY_MS)
        return
      }
      const remote = this.hosts.find((h) => h !== from && sameEndpoint(h.public, to))
      if (!remote) return entry('unroutable')
      from.mapped.add(formatEndpoint(to)) // our NAT maps the flow, whatever the TTL
      if (ttl !== undefined && ttl <= 2) return entry('ttl expired')
      if (!remote.mapped.has(formatEndpoint(from.public))) return entry('nat dropped')
      entry('delivered')
      setTimeout(() => remote.puncher?.onProbe(m, from.public), WAN_LATENCY_MS)
    }
  }

  attach(h: SimHost, init: Partial<PunchInit> & { candidates: Candidate[] }): Puncher {
    h.puncher = makePuncher(init, this.sender(h))
    return h.puncher
  }
}

describe('Puncher: two agents behind NATs', () => {
  it('both NATs open with TTL-2 probes; the initiator picks B’s public endpoint and the responder accepts A’s', async () => {
    const net = new SimNet()
    const a = net.host('A', 'a', A_LAN, A_PUBLIC)
    const b = net.host('B', 'b', B_LAN, B_PUBLIC)
    const pa = net.attach(a, { initiator: true, candidates: [lan(B_LAN), pub(B_PUBLIC)], localStreamId: 101 })
    const pb = net.attach(b, { initiator: false, candidates: [lan(A_LAN), pub(A_PUBLIC)], localStreamId: 202 })
    const ta = track(pa.run())
    const tb = track(pb.run())

    await vi.advanceTimersByTimeAsync(200)
    // Nothing crossed the internet before both sides had sent: the TTL-2 probes died on
    // the way, so no NAT saw an unsolicited packet.
    const wan = net.log.filter((d) => d.to === formatEndpoint(A_PUBLIC) || d.to === formatEndpoint(B_PUBLIC))
    expect(wan.filter((d) => d.at === 0).map((d) => d.fate)).toEqual(['ttl expired', 'ttl expired'])
    expect(wan.filter((d) => d.fate === 'nat dropped')).toEqual([])
    expect(Math.min(...wan.filter((d) => d.fate === 'delivered').map((d) => d.at))).toBe(PROBE_START_DELAY_MS)

    // The LAN candidate (another site) never answers, so A waits out the grace period.
    expect(ta.result).toMatchObject({ endpoint: B_PUBLIC, kind: 'public', remoteStreamId: 202 })
    expect(ta.result!.tookMs).toBe(PROBE_START_DELAY_MS + 2 * WAN_LATENCY_MS + LAN_GRACE_MS)

    // A's first stream packet arrives at B from A's public endpoint.
    expect(tb.settled()).toBe(false)
    expect(pb.accept(STRANGER)).toBe(false)
    expect(pb.accept(A_PUBLIC)).toBe(true)
    await vi.advanceTimersByTimeAsync(0)
    expect(tb.result).toMatchObject({ endpoint: A_PUBLIC, kind: 'public', remoteStreamId: 101 })
  })

  it('a NAT that drops until its host has sent: one side starting late still connects', async () => {
    const net = new SimNet()
    const a = net.host('A', 'a', A_LAN, A_PUBLIC)
    const b = net.host('B', 'b', B_LAN, B_PUBLIC)
    const pa = net.attach(a, { initiator: true, candidates: [pub(B_PUBLIC)], localStreamId: 101 })
    const pb = net.attach(b, { initiator: false, candidates: [pub(A_PUBLIC)], localStreamId: 202 })
    const ta = track(pa.run())
    await vi.advanceTimersByTimeAsync(100) // B heard of the introduction late
    expect(net.log.filter((d) => d.fate === 'nat dropped').length).toBeGreaterThan(0)
    const tb = track(pb.run())
    await vi.advanceTimersByTimeAsync(100)
    expect(ta.result).toMatchObject({ endpoint: B_PUBLIC, kind: 'public', remoteStreamId: 202 })
    expect(pb.accept(A_PUBLIC)).toBe(true)
    await vi.advanceTimersByTimeAsync(0)
    expect(tb.result).toMatchObject({ endpoint: A_PUBLIC, remoteStreamId: 101 })
  })

  it('on one LAN the LAN path validates first and wins at once', async () => {
    const net = new SimNet()
    const bLan = { host: '192.168.1.20', port: 5000 }
    const a = net.host('A', 'home', A_LAN, A_PUBLIC)
    const b = net.host('B', 'home', bLan, B_PUBLIC)
    const pa = net.attach(a, { initiator: true, candidates: [lan(bLan), pub(B_PUBLIC)], localStreamId: 101 })
    const pb = net.attach(b, { initiator: false, candidates: [lan(A_LAN), pub(A_PUBLIC)], localStreamId: 202 })
    const ta = track(pa.run())
    const tb = track(pb.run())
    await vi.advanceTimersByTimeAsync(2 * LAN_LATENCY_MS)
    expect(ta.result).toMatchObject({ endpoint: bLan, kind: 'lan', remoteStreamId: 202, tookMs: 2 * LAN_LATENCY_MS })
    expect(pb.accept(A_LAN)).toBe(true)
    await vi.advanceTimersByTimeAsync(0)
    expect(tb.result).toMatchObject({ endpoint: A_LAN, kind: 'lan', remoteStreamId: 101 })
  })

  it('with every path blocked both sides fail with PUNCH_TIMEOUT at the deadline', async () => {
    const net = new SimNet()
    const a = net.host('A', 'a', A_LAN, A_PUBLIC)
    const b = net.host('B', 'b', B_LAN, B_PUBLIC)
    // B's advertised public endpoint is wrong (e.g. a stale registration): nothing routes there.
    const stale = { host: '203.0.113.200', port: 5000 }
    const pa = net.attach(a, { initiator: true, candidates: [pub(stale)], deadlineMs: 500 })
    const pb = net.attach(b, { initiator: false, candidates: [pub({ host: '198.51.100.200', port: 4000 })], deadlineMs: 500 })
    const ta = track(pa.run())
    const tb = track(pb.run())
    await vi.advanceTimersByTimeAsync(500 + PROBE_INTERVAL_MS)
    expect(ta.error).toMatchObject({ code: 'PUNCH_TIMEOUT', message: expect.stringContaining('public 203.0.113.200:5000') })
    expect(tb.error).toMatchObject({ code: 'PUNCH_TIMEOUT' })
    expect(net.log.every((d) => d.fate === 'unroutable')).toBe(true)
  })
})

describe('Puncher: IPv6 candidates (protocol/ipv6.ts)', () => {
  it('the first probe to an IPv6 candidate has hop limit 2 too, whatever the strategy; birthday sockets never probe it', async () => {
    const { sent, send } = recorder()
    const sends: Array<[string, number | undefined]> = []
    const p = new Puncher(
      { introId: INTRO_ID, punchKey: PUNCH_KEY, initiator: true, localStreamId: 11, deadlineMs: 10_000, candidates: [pub(B_V6), pub(B_PUBLIC)], strategy: 'birthday', sockets: 2 },
      {
        send: (buf, to, ttl, socket) => {
          sends.push([formatEndpoint(to), socket])
          send(buf, to, ttl)
        },
        clock,
        log: silentLogger
      }
    )
    track(p.run())
    expect(sent.filter((s) => s.to === B_V6).map((s) => s.ttl)).toEqual([2])
    await vi.advanceTimersByTimeAsync(PROBE_START_DELAY_MS + 2 * PROBE_INTERVAL_MS)
    // The IPv6 candidate: probed plainly from the agent's socket (0); the IPv4 one: TTL-2 from the birthday sockets only
    expect(sends.filter(([to]) => to === '[2001:db8:2::2]:5000').every(([, i]) => (i ?? 0) === 0)).toBe(true)
    expect(sent.filter((s) => s.to === B_V6 && s.ttl === undefined).length).toBeGreaterThanOrEqual(3)
    expect(sends.filter(([to]) => to === '203.0.113.2:5000').every(([, i]) => (i ?? 0) > 0)).toBe(true)
    p.stop()
  })

  it('an IPv6 candidate validating within V6_GRACE_MS of an IPv4 one wins', async () => {
    const p = makePuncher({ candidates: [pub(B_PUBLIC), pub(B_V6)] })
    const t = track(p.run())
    await vi.advanceTimersByTimeAsync(12)
    p.onProbe(probe(3, true), B_PUBLIC)
    await vi.advanceTimersByTimeAsync(V6_GRACE_MS - 1)
    expect(t.settled()).toBe(false)
    p.onProbe(probe(3, true), B_V6)
    await vi.advanceTimersByTimeAsync(0)
    expect(t.result).toMatchObject({ endpoint: B_V6, kind: 'public', tookMs: 12 + V6_GRACE_MS - 1 })
  })

  it('a silent IPv6 candidate costs V6_GRACE_MS: then the IPv4 one wins; an IPv6 one that validates first wins at once', async () => {
    const p = makePuncher({ candidates: [pub(B_PUBLIC), pub(B_V6)] })
    const t = track(p.run())
    await vi.advanceTimersByTimeAsync(12)
    p.onProbe(probe(3, true), B_PUBLIC)
    await vi.advanceTimersByTimeAsync(V6_GRACE_MS)
    expect(t.result).toMatchObject({ endpoint: B_PUBLIC, tookMs: 12 + V6_GRACE_MS })
    const q = makePuncher({ candidates: [pub(B_PUBLIC), pub(B_V6)] })
    const u = track(q.run())
    await vi.advanceTimersByTimeAsync(12)
    q.onProbe(probe(3, true), B_V6)
    await vi.advanceTimersByTimeAsync(0)
    expect(u.result).toMatchObject({ endpoint: B_V6, tookMs: 12 })
  })
})
