// The mux's in-flight limit (src/tunnel/inflight-cap.ts) on a fake clock, no sockets:
// the floor before anything is measured, the probe only from an idle mux, a slow start
// that doubles per round trip, a limit that settles at floor + gain × rate × RTT behind
// a bottleneck, the replay bound as ceiling, and a pong nobody asked for changing nothing.
import { describe, expect, it } from 'vitest'
import { IDLE_INFLIGHT_BYTES, INFLIGHT_FLOOR_BYTES, INFLIGHT_GAIN, InflightCap, RATE_SAMPLES, RTT_PROBE_EVERY_MS, RTT_PROBE_RETRY_MS, RTT_PROBE_SEQ, RTT_PROBE_SEQ_MIN, RTT_SAMPLES, isProbeSeq, SHORT_PATH_FLOOR_BYTES, SHORT_PATH_SAMPLES, SHORT_RTT_MS } from '../../../src/tunnel/inflight-cap.js'
import { ACK_EVERY_BYTES } from '../../../src/tunnel/ack-pacer.js'
import { FakeClock } from '../helpers.js'

const MAX = 16 * 1024 * 1024

/** A cap whose probe was answered after `rttMs`. */
function measured(clock: FakeClock, rttMs: number, max = MAX): InflightCap {
  const cap = new InflightCap(clock, max)
  const seq = sendProbe(cap)
  clock.t += rttMs
  cap.onProbePong(seq)
  return cap
}

/** The probe due now (one must be): its seq, for the PONG. */
function sendProbe(cap: InflightCap, inflight = 0): number {
  const seq = cap.probeSeqToSend(inflight)
  expect(seq).not.toBeNull()
  return seq!
}

/**
 * Runs `rounds` round trips of `rttMs` in which the sender has min(limit, what the path
 * carries in a round trip) in flight and all of it is acknowledged over the round trip,
 * one ACK per `ackEvery` bytes (the peer's ACK_EVERY_BYTES; an older peer's was 1 MiB),
 * evenly spaced.
 */
function run(clock: FakeClock, cap: InflightCap, rttMs: number, bytesPerMs: number, rounds: number, ackEvery = ACK_EVERY_BYTES): number[] {
  const limits: number[] = []
  for (let i = 0; i < rounds; i++) {
    const inFlight = Math.min(cap.limit, bytesPerMs * rttMs)
    const acks = Math.max(1, Math.ceil(inFlight / ackEvery))
    for (let k = 0; k < acks; k++) {
      clock.t += rttMs / acks
      cap.onAcked(Math.min(ackEvery, inFlight - k * ackEvery))
    }
    limits.push(cap.limit)
  }
  return limits
}

describe('InflightCap', () => {
  it('starts at the floor and stays there until a round trip is measured, whatever the rate', () => {
    const clock = new FakeClock()
    const cap = new InflightCap(clock, MAX)
    expect(cap.limit).toBe(INFLIGHT_FLOOR_BYTES)
    run(clock, cap, 10, 1_000_000, 20)
    expect(cap.rate).toBeGreaterThan(0)
    expect(cap.limit).toBe(INFLIGHT_FLOOR_BYTES)
  })

  it('asks for a probe only when the mux is idle, one at a time, at most one per RTT_PROBE_EVERY_MS; the round trip is the least of the last RTT_SAMPLES', () => {
    const clock = new FakeClock()
    const cap = new InflightCap(clock, MAX)
    sendProbe(cap)
    expect(cap.probeSeqToSend(0)).toBeNull() // one is out
    clock.t += RTT_PROBE_RETRY_MS
    const again = sendProbe(cap) // that one was lost: again
    clock.t += 5
    cap.onProbePong(again)
    expect(cap.rtt).toBe(5)
    expect(cap.probeSeqToSend(0)).toBeNull() // too soon
    clock.t += RTT_PROBE_EVERY_MS
    expect(cap.probeSeqToSend(IDLE_INFLIGHT_BYTES + 1)).toBeNull() // busy: the pong would wait behind our data
    const probe = (rttMs: number): void => {
      clock.t += RTT_PROBE_EVERY_MS
      const seq = sendProbe(cap)
      clock.t += rttMs
      cap.onProbePong(seq)
    }
    probe(50) // a probe that met a busy event loop
    expect(cap.rtt).toBe(5)
    probe(3)
    expect(cap.rtt).toBe(3)
    for (let i = 0; i < RTT_SAMPLES; i++) probe(40)
    expect(cap.rtt).toBe(40) // the old ones aged out
  })

  it('ignores a pong it did not ask for', () => {
    const clock = new FakeClock()
    const cap = new InflightCap(clock, MAX)
    clock.t += 50
    cap.onProbePong(RTT_PROBE_SEQ)
    expect(cap.rtt).toBeNull()
    expect(cap.limit).toBe(INFLIGHT_FLOOR_BYTES)
  })

  it('grows about twofold per round trip while the limit holds the sender back (slow start)', () => {
    const clock = new FakeClock()
    const cap = measured(clock, 100)
    // A path far faster than the floor per round trip: 1 GB/s × 100 ms = 100 MB.
    const limits = run(clock, cap, 100, 1_000_000, 7)
    expect(limits[0]).toBe(INFLIGHT_FLOOR_BYTES) // the first ACK starts the count
    expect(limits[1]).toBeGreaterThan(2 * INFLIGHT_FLOOR_BYTES)
    // ACKs spread over the round trip and rate intervals of a round trip do not line up
    // while the limit grows (the sender here refills only at a round's start): compared
    // two round trips apart, at least twofold.
    for (let i = 2; i < limits.length && limits[i]! < MAX; i++) expect(limits[i]! / limits[i - 2]!).toBeGreaterThan(2)
    expect(limits.at(-1)).toBe(MAX) // and never past the replay bound
  })

  it('settles at floor + gain × rate × RTT behind a bottleneck', () => {
    const clock = new FakeClock()
    const rttMs = 30
    const bytesPerMs = 50_000 // 50 MB/s: 1.5 MB per round trip
    const cap = measured(clock, rttMs)
    run(clock, cap, rttMs, bytesPerMs, 30)
    const expected = INFLIGHT_FLOOR_BYTES + INFLIGHT_GAIN * bytesPerMs * rttMs
    expect(cap.limit).toBeGreaterThan(expected * 0.95)
    expect(cap.limit).toBeLessThan(expected * 1.05)
  })

  it('keeps the fastest recent rate for RATE_SAMPLES intervals after a transfer slows, then follows it down', () => {
    const clock = new FakeClock()
    const rttMs = 100 // one rate interval per round trip
    const cap = measured(clock, rttMs)
    run(clock, cap, rttMs, 50_000, 30)
    const high = cap.limit
    run(clock, cap, rttMs, 1_000, RATE_SAMPLES - 1)
    expect(cap.limit).toBe(high)
    run(clock, cap, rttMs, 1_000, 2)
    expect(cap.limit).toBeLessThan(INFLIGHT_FLOOR_BYTES + INFLIGHT_GAIN * 2_000 * rttMs)
  })

  it('on reset (another path) forgets rate and round trip: back to the floor, and probes again', () => {
    const clock = new FakeClock()
    const cap = measured(clock, 30)
    run(clock, cap, 30, 50_000, 30)
    expect(cap.limit).toBeGreaterThan(INFLIGHT_FLOOR_BYTES)
    cap.reset()
    expect(cap.limit).toBe(INFLIGHT_FLOOR_BYTES)
    expect(cap.rtt).toBeNull()
    sendProbe(cap)
  })

  it('with no round trip known (a new path; the first PONG lost) probes busy or not, again RTT_PROBE_RETRY_MS after a lost one: a transfer held at the floor grows', () => {
    const clock = new FakeClock()
    const rttMs = 100
    const bytesPerMs = 20_000 // 20 MB/s: 2 MB per round trip, more than the floor
    const cap = measured(clock, rttMs)
    run(clock, cap, rttMs, bytesPerMs, 30)
    cap.reset() // a path switch (or a resume) with 900 KiB unacknowledged
    const busy = 900 * 1024
    sendProbe(cap, busy)
    clock.t += RTT_PROBE_RETRY_MS // its PONG was lost
    run(clock, cap, rttMs, bytesPerMs, 5)
    expect(cap.limit).toBe(INFLIGHT_FLOOR_BYTES)
    const seq = sendProbe(cap, busy) // not waiting for an idle moment that never comes
    clock.t += rttMs + busy / bytesPerMs // behind our own queue: an overestimate
    cap.onProbePong(seq)
    run(clock, cap, rttMs, bytesPerMs, 20)
    expect(cap.limit).toBeGreaterThan(INFLIGHT_FLOOR_BYTES + bytesPerMs * rttMs)
    expect(cap.limit).toBeLessThan(MAX)
    clock.t += RTT_PROBE_EVERY_MS
    expect(cap.probeSeqToSend(busy)).toBeNull() // a round trip is known: busy probes no more
  })

  it('an older peer that acknowledges every 1 MiB gets twice that as the floor, not stop-and-wait; a current one leaves the floor alone', () => {
    const clock = new FakeClock()
    const old = new InflightCap(clock, MAX)
    run(clock, old, 1, 10_000_000, 20, 1024 * 1024) // a LAN: the floor is the limit
    expect(old.limit).toBeGreaterThanOrEqual(2 * 1024 * 1024)
    old.reset() // the peer's ACK spacing is the peer's, not the path's
    expect(old.limit).toBeGreaterThanOrEqual(2 * 1024 * 1024)
    const current = new InflightCap(clock, MAX)
    run(clock, current, 1, 10_000_000, 20)
    expect(current.limit).toBe(INFLIGHT_FLOOR_BYTES)
    const small = new InflightCap(clock, 512 * 1024)
    run(clock, small, 1, 10_000_000, 20, 1024 * 1024)
    expect(small.limit).toBe(512 * 1024) // never past the replay bound
  })

  it('on a short path (least round trip under SHORT_RTT_MS) the floor is SHORT_PATH_FLOOR_BYTES; unknown or longer round trips keep INFLIGHT_FLOOR_BYTES; an older peer\'s ACK spacing still raises it', () => {
    const clock = new FakeClock()
    const probe = (cap: InflightCap, rttMs: number): void => {
      clock.t += RTT_PROBE_EVERY_MS
      const seq = sendProbe(cap)
      clock.t += rttMs
      cap.onProbePong(seq)
    }
    const lan = measured(clock, 0.3)
    expect(lan.floor).toBe(INFLIGHT_FLOOR_BYTES) // one short round trip may be a PONG timed against the wrong probe
    for (let i = 1; i < SHORT_PATH_SAMPLES; i++) probe(lan, 0.3)
    run(clock, lan, 0.3, 100_000, 2000) // 100 MB/s, acknowledged every full frame
    expect(lan.floor).toBe(SHORT_PATH_FLOOR_BYTES)
    // 256 KiB + 2 × 100 KB/ms × 0.3 ms: ~2.9 ms of queue at that rate, where 1 MiB was ~10.
    expect(lan.limit).toBeLessThan(SHORT_PATH_FLOOR_BYTES + 70_000)
    expect(new InflightCap(clock, MAX).floor).toBe(INFLIGHT_FLOOR_BYTES) // none measured yet
    const wan = measured(clock, SHORT_RTT_MS)
    probe(wan, SHORT_RTT_MS)
    expect(wan.floor).toBe(INFLIGHT_FLOOR_BYTES)
    const stray = measured(clock, 100) // a 100 ms path, one of whose PONGs came just after the next probe
    probe(stray, 0.2)
    probe(stray, 100)
    expect(stray.rtt).toBeCloseTo(0.2)
    expect(stray.floor).toBe(INFLIGHT_FLOOR_BYTES)
    const older = measured(clock, 0.3)
    for (let i = 1; i < SHORT_PATH_SAMPLES; i++) probe(older, 0.3)
    run(clock, older, 0.3, 1_000_000, 200, 256 * 1024) // a peer that acknowledges every 256 KiB
    expect(older.floor).toBe(512 * 1024)
  })

  it('a tunnel opened under CPU load (first probes 10 ms on a 0.3 ms path) finds the path\'s round trip within half a second of idle moments, and its limit comes down to the short-path floor', () => {
    const clock = new FakeClock()
    const cap = measured(clock, 10)
    run(clock, cap, 10, 100_000, 20)
    expect(cap.limit).toBeGreaterThan(INFLIGHT_FLOOR_BYTES + INFLIGHT_GAIN * 100_000 * 10 * 0.9)
    // Small requests every 10 ms, each after an idle moment; every other probe meets a busy event loop.
    let probes = 0
    for (let ms = 0; ms < 500; ms += 10) {
      clock.t += 10
      const seq = cap.probeSeqToSend(0)
      if (seq === null) continue
      clock.t += probes++ % 2 === 0 ? 10 : 0.3
      cap.onProbePong(seq)
    }
    expect(cap.rtt).toBeCloseTo(0.3)
    expect(cap.limit).toBeLessThan(SHORT_PATH_FLOOR_BYTES + INFLIGHT_GAIN * 100_000 * 0.3 * 1.05)
  })

  it('times a PONG only against the probe it answers: a late PONG of an earlier probe (after a retry) is not the round trip of the one out', () => {
    const clock = new FakeClock()
    const cap = new InflightCap(clock, MAX)
    const first = sendProbe(cap)
    clock.t += RTT_PROBE_RETRY_MS // no PONG yet on a 100 ms path with a lossy moment: sent again
    const second = sendProbe(cap)
    expect(second).not.toBe(first)
    clock.t += 0.2
    cap.onProbePong(first) // the first probe's PONG, 2 s late: 0.2 ms after the second went out
    expect(cap.rtt).toBeNull()
    clock.t += 100
    cap.onProbePong(second)
    expect(cap.rtt).toBeCloseTo(100.2)
    // Twice more, as on a path that drops a PONG now and then: never a short round trip, so the long floor stays.
    for (let i = 0; i < SHORT_PATH_SAMPLES; i++) {
      clock.t += RTT_PROBE_EVERY_MS
      const lost = sendProbe(cap)
      clock.t += RTT_PROBE_RETRY_MS
      const next = sendProbe(cap)
      clock.t += 0.2
      cap.onProbePong(lost)
      clock.t += 100
      cap.onProbePong(next)
    }
    expect(cap.rtt).toBeCloseTo(100.2)
    expect(cap.floor).toBe(INFLIGHT_FLOOR_BYTES)
    cap.onProbePong(second) // and one answered twice is timed once
    expect(cap.rtt).toBeCloseTo(100.2)
  })

  it('numbers its probes from RTT_PROBE_SEQ down to RTT_PROBE_SEQ_MIN and then again from the top (never Tunnel.ping()\'s small numbers nor 0)', () => {
    const clock = new FakeClock()
    const cap = new InflightCap(clock, MAX)
    const seqs: number[] = []
    for (let i = 0; i <= RTT_PROBE_SEQ - RTT_PROBE_SEQ_MIN + 1; i++) {
      const seq = sendProbe(cap)
      seqs.push(seq)
      cap.onProbePong(seq)
      clock.t += RTT_PROBE_EVERY_MS
    }
    expect(seqs[0]).toBe(RTT_PROBE_SEQ)
    expect(seqs.at(-2)).toBe(RTT_PROBE_SEQ_MIN)
    expect(seqs.at(-1)).toBe(RTT_PROBE_SEQ)
    expect(seqs.every(isProbeSeq)).toBe(true)
    expect([0, 1, 2 ** 31, RTT_PROBE_SEQ_MIN - 1, 0xffffffff].some(isProbeSeq)).toBe(false)
  })

  it('is never above a replay bound smaller than the floor', () => {
    const clock = new FakeClock()
    const cap = measured(clock, 30, 512 * 1024)
    expect(cap.limit).toBe(512 * 1024)
    run(clock, cap, 30, 1_000_000, 5)
    expect(cap.limit).toBe(512 * 1024)
  })
})
