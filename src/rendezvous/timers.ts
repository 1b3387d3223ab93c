/**
 * Timers for the rendezvous server's modules, injected beside the Clock (protocol/log.ts)
 * so a test can run their expiry handlers under fake time instead of waiting for real.
 *
 * Every timer the server sets is unref'd: its listening sockets keep the process alive,
 * and a pending deadline (a lingering connection, a relay's time limit, a Redis batch)
 * must not keep a stopped server's process, or a test worker, running.
 *
 * Apart from the Clock on purpose for now: issue #14 gives that Clock timers in another
 * change; once it has them this interface folds into it (`Clock` carries both).
 */

/** A pending timer: opaque, only `clearTimer` reads it. */
export type Timer = object

export interface Timers {
  /** Runs `fn` once, `ms` from now. */
  setTimeout(fn: () => void, ms: number): Timer
  /** Runs `fn` every `ms` until cleared. */
  setInterval(fn: () => void, ms: number): Timer
  /** Cancels a timeout or an interval; null or one that already ran is fine. */
  clearTimer(timer: Timer | null): void
}

/** Node's timers, unref'd. */
export const systemTimers: Timers = {
  setTimeout: (fn, ms) => setTimeout(fn, ms).unref(),
  setInterval: (fn, ms) => setInterval(fn, ms).unref(),
  clearTimer: (timer) => {
    if (timer) clearTimeout(timer as NodeJS.Timeout) // clearTimeout also clears an interval (Node docs: timers)
  }
}
