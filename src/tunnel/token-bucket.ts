/**
 * A token bucket on an injected clock: the agent's punching budgets (budget.ts) and the
 * rendezvous server's rate limits (rendezvous/limits.ts) both pace with it.
 */
import type { Clock } from '../protocol/log.js'

/** Holds up to `burst` tokens, refilled continuously at `ratePerS` (a burst, then a steady rate). */
export class TokenBucket {
  private tokens: number
  private at: number

  constructor(
    readonly ratePerS: number,
    readonly burst: number,
    private readonly clock: Clock
  ) {
    this.tokens = burst
    this.at = clock.now()
  }

  private refill(): void {
    const now = this.clock.now()
    this.tokens = Math.min(this.burst, this.tokens + (Math.max(0, now - this.at) * this.ratePerS) / 1000)
    this.at = now
  }

  available(): number {
    this.refill()
    return this.tokens
  }

  /** Takes one token if there is one. */
  take(): boolean {
    this.refill()
    if (this.tokens < 1) return false
    this.tokens -= 1
    return true
  }

  /** Milliseconds until a token is there (0: one is there now). */
  waitMs(): number {
    this.refill()
    return this.tokens >= 1 ? 0 : Math.ceil(((1 - this.tokens) * 1000) / this.ratePerS)
  }

  get full(): boolean {
    this.refill()
    return this.tokens >= this.burst
  }
}
