/**
 * When a tunnel (mux.ts) acknowledges the peer's sequenced frames. ACKs are cumulative:
 * each carries how many sequenced frames we received in all, so one ACK stands for every
 * one before it, and one held back loses nothing.
 *
 * How often depends on what the peer's channels do, as far as we can see it (issue 18).
 * The peer keeps at most its in-flight limit unacknowledged (inflight-cap.ts), and its
 * floor is twice the most bytes one of our recent ACKs covered: ACKs every 64 KiB let it
 * keep 256 KiB in flight on a LAN, every 256 KiB 512 KiB. What waits behind those bytes
 * is another channel's frame (a 1-byte request behind a bulk transfer: 4.7 ms with 64 KiB
 * ACKs in the lab, 7.7 with 128 KiB, ssh -L 5.5; docs/BENCHMARKS.md). We cannot see the
 * peer's queue, but we see its channels: while frames of more than one channel came
 * within MIXED_HOLD_MS, another channel's frame may be waiting behind the bulk, and we
 * acknowledge every ACK_EVERY_BYTES; while one channel alone sends, nothing of another
 * channel waits behind it, and every ACK_EVERY_BYTES_ALONE (a quarter of the ACKs: each
 * is a frame sealed and written here and opened there, and wakes the peer's sender).
 * A channel's first frame after a quiet moment is its OPEN, or its DATA waiting at the
 * peer behind at most the 512 KiB floor of the coarser ACKs; its frames after it get the
 * finer ones (and the peer's floor falls back to 256 KiB over its next ACK_SAMPLES ACKs).
 */
import type { Timer, TimerClock } from '../protocol/clock.js'

/** We acknowledge after this many sequenced frames … */
export const ACK_EVERY_FRAMES = 32
/**
 * … or this many bytes of them while frames of more than one channel arrive (one full
 * DATA frame: the peer keeps at most SHORT_PATH_FLOOR_BYTES, 256 KiB, in flight on a LAN,
 * inflight-cap.ts, and must hear of the first bytes long before the last are read; an ACK
 * frame is ~30 bytes on the wire, sealed into the same write as the frames around it) …
 */
export const ACK_EVERY_BYTES = 64 * 1024
/**
 * … or this many while one channel alone sends (four full DATA frames, what agents
 * acknowledged before issue 18's fairness work; the peer's floor is then 512 KiB) …
 */
export const ACK_EVERY_BYTES_ALONE = 256 * 1024
/** … or this long after the first frame not yet acknowledged (coalesces ACKs of small frames). */
export const ACK_DELAY_MS = 20
/**
 * Frames of more than one channel count as mixed this long after the last change of
 * channel: longer than the gaps of a request/response exchange beside a bulk transfer
 * (keystrokes, a poll every few hundred ms), so that its next request finds the finer ACKs.
 */
export const MIXED_HOLD_MS = 1_000

/** No sequenced frame seen yet. */
const NO_CHANNEL = -1

export class AckPacer {
  /** Sequenced frames received in all. */
  private received = 0
  private unackedFrames = 0
  private unackedBytes = 0
  private timer: Timer | null = null
  /** The channel of the last sequenced frame, and when a frame last came on another channel than the one before it. */
  private lastChannel = NO_CHANNEL
  private mixedAt = -Infinity
  /**
   * An ACK came due while the session waited for a drain: it goes out (with the count
   * then) at sendOwed(), once the session drains. A peer that sends and never reads got
   * one ACK per 32 frames queued (~3% of what it sent).
   */
  private owed = false

  constructor(
    private readonly clock: Pick<TimerClock, 'setTimeout' | 'clear' | 'hrNow'>,
    /** The session waits for a drain: an ACK due now is owed instead of sent. */
    private readonly mustHold: () => boolean,
    /** Writes the ACK frame carrying `received`. */
    private readonly sendAck: (received: number) => void
  ) {}

  /** A sequenced frame of `bytes` arrived on `channel`. */
  onSequenced(bytes: number, channel: number): void {
    this.received++
    this.unackedFrames++
    this.unackedBytes += bytes
    if (channel !== this.lastChannel) {
      if (this.lastChannel !== NO_CHANNEL) this.mixedAt = this.clock.hrNow()
      this.lastChannel = channel
    }
    if (this.unackedFrames >= ACK_EVERY_FRAMES || this.bytesDue()) this.sendNow()
    else this.timer ??= this.clock.setTimeout(() => this.sendNow(), ACK_DELAY_MS)
  }

  /** Whether the bytes unacknowledged are enough for an ACK (ACK_EVERY_BYTES while mixed, else ACK_EVERY_BYTES_ALONE). */
  private bytesDue(): boolean {
    if (this.unackedBytes >= ACK_EVERY_BYTES_ALONE) return true
    return this.unackedBytes >= ACK_EVERY_BYTES && this.clock.hrNow() - this.mixedAt < MIXED_HOLD_MS
  }

  /** Sends the ACK held back while the session waited for a drain, if there is one. */
  sendOwed(): void {
    if (this.owed) this.sendNow()
  }

  /** Stops the delayed ACK (the tunnel closes). */
  stop(): void {
    this.clock.clear(this.timer)
    this.timer = null
  }

  /** Forgets every ACK due (a RESUME carries the count instead) and returns the count. */
  detach(): number {
    this.stop()
    this.unackedFrames = 0
    this.unackedBytes = 0
    this.owed = false
    return this.received
  }

  /** Sends our cumulative ACK now, or once the session drains (owed). */
  private sendNow(): void {
    this.stop()
    this.unackedFrames = 0
    this.unackedBytes = 0
    this.owed = this.mustHold()
    if (!this.owed) this.sendAck(this.received)
  }
}
