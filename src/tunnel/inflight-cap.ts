/**
 * How many bytes the mux may have sent and not yet had acknowledged (issue 18).
 *
 * Below the mux, the session's socket and the kernels queue whatever they are given: a
 * TCP tunnel's send buffer and the peer's receive buffer grow with autotuning (this
 * kernel lets `tcp_rmem` reach 32 MiB), UDX keeps its own window. Bounded only by the
 * replay buffer (REPLAY_MAX_BYTES, 16 MiB), a bulk transfer kept up to 16 MiB queued
 * there, and a 1-byte request on another channel of the same tunnel waited behind all of
 * it: ~450 ms at the receiving agent's 40 MB/s (docs/BENCHMARKS.md). The mux cannot
 * reorder bytes once they are below it, so it hands down no more than the path needs.
 *
 * What is "below the mux" is measured end to end from the mux's own ACKs: bytes kept for
 * replay = sent and not yet read by the peer's mux (socket queue, both kernels, the wire,
 * the peer's unread input). `socket.writableLength` would see only libuv's queue (empty
 * while the kernel takes everything) and Node has neither TCP_NOTSENT_LOWAT nor TCP_INFO;
 * the ACKs cover TCP, UDX and the relay alike.
 *
 *   limit = floor + INFLIGHT_GAIN × rate × rtt     (at most the replay bound)
 *
 * - rate: the most bytes per ms acknowledged over any of the last RATE_SAMPLES intervals
 *   (each at least RATE_INTERVAL_MIN_MS and one RTT long: on a loaded machine an agent
 *   stalls for tens of ms and then reads a burst of ACKs, which over 10 ms intervals
 *   looked like a path several times faster: the limit reached the replay bound). Measured while the limit holds the sender back it is limit / RTT, so
 *   with a gain of 2 the limit doubles each round trip until the path (or the slower
 *   agent) is the bottleneck: a slow start.
 * - rtt: the least of the last RTT_SAMPLES round trips of a PING the mux sends in front
 *   of a frame when next to nothing of its own is queued (at most one per
 *   RTT_PROBE_EVERY_MS): its PONG comes back without waiting behind our data. The least,
 *   because a probe that met a busy event loop at either end measured the scheduler. A round trip measured through our own queue would grow the limit
 *   that grows the queue; the ACKs' timing is also no round trip (the peer delays them).
 *   With no round trip at all (a new path after a switch or resume, or the first probe's
 *   PONG lost) the probe goes out busy or not: a transfer held at the floor never goes
 *   idle, and waiting for idle kept it at 1 MiB per round trip for good (10 MiB/s at
 *   100 ms). Measured through our own queue it overestimates (by at most the floor's
 *   worth of queue: a bounded limit, not a growing one, as no second busy probe follows);
 *   the next idle probes replace it (the least of RTT_SAMPLES).
 * - the floor: what keeps the pipe full at any RTT the estimate misses (none yet, a short
 *   one under CPU load): INFLIGHT_FLOOR_BYTES until SHORT_PATH_SAMPLES round trips under
 *   SHORT_RTT_MS are known, then SHORT_PATH_FLOOR_BYTES (four of the peer's ACK intervals while it
 *   sees more than one channel send, ACK_EVERY_BYTES, ack-pacer.ts: the next bytes are on their way
 *   while it reads the rest). On a LAN, where rate × rtt
 *   is small, the floor is most of the limit, and the limit is the queue a small request
 *   on another channel waits behind: 1 MiB was ~10 ms at the receiving agent's 100 MB/s
 *   in the lab, against ~3 ms through `ssh -L` (docs/BENCHMARKS.md, 2026-12-06 evening).
 *   A peer that acknowledges less often (every 256 KiB while one channel alone sends,
 *   ACK_EVERY_BYTES_ALONE; an older agent every 256 KiB or 1 MiB) would make that
 *   stop-and-wait, so the floor is at least twice the most bytes one of the last
 *   ACK_SAMPLES ACKs covered (512 KiB for a single bulk channel).
 *
 * A peer could lie with its PONG or its ACKs: it only moves this limit between the floor
 * and the replay bound that held before (its own tunnel's latency or throughput).
 */
import type { TimerClock } from '../protocol/clock.js'

/** Bytes always allowed in flight until a short round trip is known (see above), unless the peer's ACKs are further apart. */
export const INFLIGHT_FLOOR_BYTES = 1024 * 1024
/**
 * The floor once a round trip under SHORT_RTT_MS is known: four of the peer's ACK
 * intervals while more than one channel sends (ACK_EVERY_BYTES, 64 KiB), ~2.5 ms of
 * queue at 100 MB/s.
 */
export const SHORT_PATH_FLOOR_BYTES = 256 * 1024
/**
 * A path whose least probe round trip is under this is short (a LAN, the same host): the
 * lab's measured 0.3-2 ms with both agents busy; a 20 ms path keeps INFLIGHT_FLOOR_BYTES.
 */
export const SHORT_RTT_MS = 5
/**
 * Probe round trips under SHORT_RTT_MS before the path counts as short. One is not enough:
 * a 100 ms path held at SHORT_PATH_FLOOR_BYTES carries ~2 MB/s (2 of 6 forwards at 100 ms
 * did, against 9-14 MB/s), and one PONG timed against the wrong probe (one answered late,
 * after the next went out) is a short round trip of a long path.
 */
export const SHORT_PATH_SAMPLES = 2
/** The limit is this many times rate × rtt over the floor (room to find more bandwidth, as BBR's cwnd gain). */
export const INFLIGHT_GAIN = 2
/** Rate intervals the maximum is taken over (a second or more: the rate of a path changes slowly). */
export const RATE_SAMPLES = 10
/** A rate interval lasts at least this (ACKs read in one burst after a busy moment would look like a fast path). */
export const RATE_INTERVAL_MIN_MS = 100
/** Probe round trips the least is taken over (a second or more of probes). */
export const RTT_SAMPLES = 16
/**
 * At most one probe per this (a probe costs a PING and a PONG frame): ten a second while
 * the tunnel carries traffic in idle moments, so that the least of RTT_SAMPLES is soon
 * one that met no busy event loop (a tunnel opened under CPU load measured 5-11 ms for a
 * 0.1 ms path with its first probes, and 2 × rate × that made the limit 3-6 MiB).
 */
export const RTT_PROBE_EVERY_MS = 100
/** A probe whose PONG did not come (lost on a lossy path) may be sent again after this. */
export const RTT_PROBE_RETRY_MS = 2_000
/** Unacknowledged bytes under which the mux counts as idle: a probe sent then waits behind at most this. */
export const IDLE_INFLIGHT_BYTES = 64 * 1024
/**
 * ACKs whose largest coverage sets the floor (an older peer acknowledges every 1 MiB; ours
 * every 256 KiB while one channel alone sends, then every 64 KiB once another channel
 * sends: the floor falls to 256 KiB over this many of those, 1 MiB of data).
 */
export const ACK_SAMPLES = 16
/** The floor is at least this many times the most bytes one recent ACK covered (one ACK's worth on the way while the peer reads the next). */
export const ACK_FLOOR_GAIN = 2
/**
 * The PING sequence numbers of the mux's own probes, RTT_PROBE_SEQ_MIN to RTT_PROBE_SEQ
 * (counting down, then again from the top): Tunnel.ping() counts from 1 (it never gets near
 * 2^32) and 0 is the "this one" ping of a new path (late-switch.ts, manager.ts). Each probe
 * has its own number, so a PONG answering an earlier probe (late, after a retry or a path
 * switch) is not timed as the round trip of the one out. A peer echoes whatever seq it gets;
 * an older agent sent only RTT_PROBE_SEQ, and ignores a PONG it has no ping for.
 */
export const RTT_PROBE_SEQ = 0xfffffffe
export const RTT_PROBE_SEQ_MIN = 0xffffff00

/** Whether a PONG's seq is one of our probes' (RTT_PROBE_SEQ_MIN to RTT_PROBE_SEQ). */
export const isProbeSeq = (seq: number): boolean => seq >= RTT_PROBE_SEQ_MIN && seq <= RTT_PROBE_SEQ

export class InflightCap {
  /** The last probes' round trips, oldest first. */
  private rtts: number[] = []
  /** When the last probe went out (answered or not). */
  private lastProbeAt = -Infinity
  private probeSentAt: number | null = null
  /** The seq of the probe out (meaningful while probeSentAt is set), and of the next one. */
  private probeSeq = RTT_PROBE_SEQ
  private nextProbeSeq = RTT_PROBE_SEQ
  /** Bytes per ms of the last intervals, oldest first. */
  private rates: number[] = []
  private intervalStart: number | null = null
  private intervalBytes = 0
  /** Bytes each of the last ACKs covered, oldest first (the peer's ACK spacing: kept across paths, it is the peer's). */
  private ackSizes: number[] = []
  /** Bytes the mux may have unacknowledged before channel data waits. */
  limit: number

  constructor(
    private readonly clock: Pick<TimerClock, 'hrNow'>,
    /** The replay bound: the limit never exceeds it. */
    private readonly max: number
  ) {
    this.limit = Math.min(INFLIGHT_FLOOR_BYTES, max)
  }

  /** The round trip the limit uses, null before the first probe came back. */
  get rtt(): number | null {
    return this.rtts.length === 0 ? null : Math.min(...this.rtts)
  }

  /** The fastest recent rate, bytes per ms (0 before the first interval). */
  get rate(): number {
    return this.rates.length === 0 ? 0 : Math.max(...this.rates)
  }

  /** Bytes always allowed in flight: INFLIGHT_FLOOR_BYTES (SHORT_PATH_FLOOR_BYTES on a short path), or twice the most a recent ACK covered. */
  get floor(): number {
    const ackMax = this.ackSizes.length === 0 ? 0 : Math.max(...this.ackSizes)
    const short = this.rtts.filter((r) => r < SHORT_RTT_MS).length >= SHORT_PATH_SAMPLES
    const base = short ? SHORT_PATH_FLOOR_BYTES : INFLIGHT_FLOOR_BYTES
    return Math.max(base, ACK_FLOOR_GAIN * ackMax)
  }

  /**
   * A sequenced frame is about to be sent with `inflight` bytes unacknowledged: the seq of
   * a probe (a PING) to send first, or null (the mux is idle, or no round trip is known at
   * all; the last probe is RTT_PROBE_EVERY_MS old, none is out, or the one out is
   * RTT_PROBE_RETRY_MS old); the probe counts as sent.
   */
  probeSeqToSend(inflight: number): number | null {
    if (inflight > IDLE_INFLIGHT_BYTES && this.rtts.length > 0) return null
    const now = this.clock.hrNow()
    if (this.probeSentAt !== null && now - this.probeSentAt < RTT_PROBE_RETRY_MS) return null
    if (now - this.lastProbeAt < RTT_PROBE_EVERY_MS) return null
    this.probeSentAt = now
    this.lastProbeAt = now
    this.probeSeq = this.nextProbeSeq
    this.nextProbeSeq = this.probeSeq === RTT_PROBE_SEQ_MIN ? RTT_PROBE_SEQ : this.probeSeq - 1
    return this.probeSeq
  }

  /** The PONG of a probe came: timed only when it answers the probe out (a late one of an earlier probe is ignored). */
  onProbePong(seq: number): void {
    if (this.probeSentAt === null || seq !== this.probeSeq) return
    this.rtts.push(this.clock.hrNow() - this.probeSentAt)
    if (this.rtts.length > RTT_SAMPLES) this.rtts.shift()
    this.probeSentAt = null
    this.update()
  }

  /** The peer acknowledged `bytes` more. */
  onAcked(bytes: number): void {
    const now = this.clock.hrNow()
    this.ackSizes.push(bytes)
    if (this.ackSizes.length > ACK_SAMPLES) this.ackSizes.shift()
    if (this.intervalStart === null) {
      this.update() // the floor may have moved
      // These bytes were sent before we started counting: the first interval starts here.
      this.intervalStart = now
      this.intervalBytes = 0
      return
    }
    this.intervalBytes += bytes
    const dt = now - this.intervalStart
    if (dt < Math.max(RATE_INTERVAL_MIN_MS, this.rtt ?? 0)) return
    this.rates.push(this.intervalBytes / dt)
    if (this.rates.length > RATE_SAMPLES) this.rates.shift()
    this.intervalStart = now
    this.intervalBytes = 0
    this.update()
  }

  /**
   * The tunnel moved to another session (path): what was measured was another path's. The
   * ACK spacing is the peer's, not the path's: it stays.
   */
  reset(): void {
    this.rtts = []
    this.lastProbeAt = -Infinity
    this.probeSentAt = null
    this.rates = []
    this.intervalStart = null
    this.intervalBytes = 0
    this.update()
  }

  private update(): void {
    const rtt = this.rtt
    const bdp = rtt === null ? 0 : INFLIGHT_GAIN * this.rate * rtt
    this.limit = Math.min(this.max, Math.round(this.floor + bdp))
  }
}
