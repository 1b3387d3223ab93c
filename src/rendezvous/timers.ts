/**
 * Timers for the rendezvous server's parts, injected beside the Clock (protocol/log.ts)
 * so a test can run their expiry handlers under fake time instead of waiting for real.
 *
 * Every timer the server sets is unref'd where it is set: the listening sockets keep the
 * process alive, and a pending deadline (a lingering connection, a relay's time limit, a
 * Redis batch) must not keep a stopped server's process, or a test worker, running.
 *
 * Apart from the Clock on purpose for now: issue #14 gives that Clock timers in another
 * change. This interface has the same shape (setTimeout and setInterval returning an
 * unref-able Timer, clear), so a clock with timers serves here as it is, and once it has
 * landed this file folds into it.
 */

/** A pending timer; unref() lets the process exit while it is pending. */
export interface Timer {
  unref(): this
}

export interface Timers {
  /** Runs `fn` once, `ms` from now. */
  setTimeout(fn: () => void, ms: number): Timer
  /** Runs `fn` every `ms` until cleared. */
  setInterval(fn: () => void, ms: number): Timer
  /** Cancels a timeout or an interval; null, undefined and one that already ran are fine. */
  clear(timer: Timer | null | undefined): void
}

/** Node's timers. */
export const systemTimers: Timers = {
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  setInterval: (fn, ms) => setInterval(fn, ms),
  clear: (timer) => clearTimeout(timer as NodeJS.Timeout | undefined) // clearTimeout clears an interval too (Node docs: timers)
}
