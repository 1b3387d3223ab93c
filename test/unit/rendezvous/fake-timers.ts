/**
 * Fake time for the rendezvous server's parts: one clock (protocol/log.ts's Clock) and
 * the timers they take (src/rendezvous/timers.ts). advance() moves the clock and runs
 * every timer that falls due on the way, in order, at its own time. (The same shape as
 * the FakeClock with timers that issue #14's clock change brings: one replaces the other.)
 */
import type { Clock } from '../../../src/protocol/log.js'
import type { Timer, Timers } from '../../../src/rendezvous/timers.js'

interface Pending {
  at: number
  fn: () => void
  /** Re-armed this long after it runs (an interval), or null. */
  every: number | null
  seq: number
  unref(): Pending
}

export class FakeTime implements Clock, Timers {
  private readonly timers = new Set<Pending>()
  private seq = 0

  constructor(public t = 1_700_000_000_000) {}

  now(): number {
    return this.t
  }

  setTimeout(fn: () => void, ms: number): Timer {
    return this.add(fn, ms, null)
  }

  setInterval(fn: () => void, ms: number): Timer {
    return this.add(fn, ms, Math.max(1, ms))
  }

  clear(timer: Timer | null | undefined): void {
    if (timer) this.timers.delete(timer as Pending)
  }

  /** Timers not yet run (intervals count until cleared). */
  get pending(): number {
    return this.timers.size
  }

  /** Moves time `ms` on, running what falls due at its own time. */
  advance(ms: number): void {
    const until = this.t + ms
    for (;;) {
      let next: Pending | null = null
      for (const p of this.timers) if (p.at <= until && (!next || p.at < next.at || (p.at === next.at && p.seq < next.seq))) next = p
      if (!next) break
      this.t = Math.max(this.t, next.at)
      if (next.every === null) this.timers.delete(next)
      else next.at += next.every
      next.fn()
    }
    this.t = until
  }

  private add(fn: () => void, ms: number, every: number | null): Pending {
    const p: Pending = { at: this.t + Math.max(0, ms), fn, every, seq: this.seq++, unref: () => p }
    this.timers.add(p)
    return p
  }
}
