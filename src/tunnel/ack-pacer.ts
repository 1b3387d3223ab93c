/**
 * When a tunnel (mux.ts) acknowledges the peer's sequenced frames. ACKs are cumulative:
 * each carries how many sequenced frames we received in all, so one ACK stands for every
 * one before it, and one held back loses nothing.
 */
import type { Timer, TimerClock } from '../protocol/clock.js'

/** We acknowledge after this many sequenced frames … */
export const ACK_EVERY_FRAMES = 32
/**
 * … or this many bytes of them (one full DATA frame: the sender keeps at most
 * SHORT_PATH_FLOOR_BYTES, 256 KiB, in flight on a LAN, inflight-cap.ts, and must hear of
 * the first bytes long before the last are read; an ACK frame is ~30 bytes on the wire,
 * sealed into the same write as the frames around it) …
 */
export const ACK_EVERY_BYTES = 64 * 1024
/** … or this long after the first frame not yet acknowledged (coalesces ACKs of small frames). */
export const ACK_DELAY_MS = 20

export class AckPacer {
  /** Sequenced frames received in all. */
  private received = 0
  private unackedFrames = 0
  private unackedBytes = 0
  private timer: Timer | null = null
  /**
   * An ACK came due while the session waited for a drain: it goes out (with the count
   * then) at sendOwed(), once the session drains. A peer that sends and never reads got
   * one ACK per 32 frames queued (~3% of what it sent).
   */
  private owed = false

  constructor(
    private readonly clock: Pick<TimerClock, 'setTimeout' | 'clear'>,
    /** The session waits for a drain: an ACK due now is owed instead of sent. */
    private readonly mustHold: () => boolean,
    /** Writes the ACK frame carrying `received`. */
    private readonly sendAck: (received: number) => void
  ) {}

  /** A sequenced frame of `bytes` arrived. */
  onSequenced(bytes: number): void {
    this.received++
    this.unackedFrames++
    this.unackedBytes += bytes
    if (this.unackedFrames >= ACK_EVERY_FRAMES || this.unackedBytes >= ACK_EVERY_BYTES) this.sendNow()
    else this.timer ??= this.clock.setTimeout(() => this.sendNow(), ACK_DELAY_MS)
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
