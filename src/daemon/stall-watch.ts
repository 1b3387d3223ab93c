/** The stall deadline of a file transfer (file-transfer.ts, file-receiver.ts). */
import type { Timer, TimerClock } from '../protocol/clock.js'

/**
 * Either end cuts a transfer off after this long without a byte of progress (a sender that
 * announced more than it sends, a stalled caller): TIMEOUT on both ends. Long enough for a
 * relayed path to recover from a loss burst; files.policy `stallTimeoutMs` changes it.
 */
export const STALL_TIMEOUT_MS = 30_000

/**
 * Calls `onExpired` when `touch()` was not called for `ms` (a transfer phase that made no
 * progress). Time while `waiting()` holds (the tunnel is migrating: its path is gone and
 * the bytes wait for a new one, tunnel.ts) is no stall: the watch starts over.
 * touch() runs per chunk, so it only notes the time; the timer, when it fires early,
 * waits again for what is left.
 */
export class StallWatch {
  private timer: Timer | null = null
  private last: number

  constructor(
    private readonly clock: TimerClock,
    private readonly ms: number,
    private readonly onExpired: () => void,
    private readonly waiting: () => boolean = () => false
  ) {
    this.last = clock.hrNow()
    this.arm(ms)
  }

  touch(): void {
    this.last = this.clock.hrNow()
  }

  stop(): void {
    this.clock.clear(this.timer)
    this.timer = null
  }

  private arm(ms: number): void {
    this.timer = this.clock.setTimeout(() => this.onStallExpired(), ms)
  }

  private onStallExpired(): void {
    const quiet = this.clock.hrNow() - this.last
    if (quiet < this.ms) return this.arm(this.ms - quiet)
    if (this.waiting()) {
      this.last = this.clock.hrNow()
      return this.arm(this.ms)
    }
    this.timer = null
    this.onExpired()
  }
}