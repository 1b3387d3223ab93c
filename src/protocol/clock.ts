/**
 * Time and chance, injected: state machines and loops take a Clock (and a `random`
 * source where a decision depends on chance), so unit tests drive them with a fake clock
 * (test/unit/helpers.ts FakeClock) instead of waiting for real.
 *
 *   Clock        now() only: pure state (token buckets, registries, budgets)
 *   TimerClock   now() + timers and sleep: whatever schedules work (tunnels, loops)
 */

/** Injected time source, so state machines run under a fake clock in tests. */
export interface Clock {
  now(): number
}

/** A scheduled callback; unref() lets the process exit while it is pending. */
export interface Timer {
  unref(): this
}

/** A clock that also schedules: timers, intervals and an abortable sleep on the same time. */
export interface TimerClock extends Clock {
  /** Monotonic, sub-millisecond: for durations (RTTs), never for dates. */
  hrNow(): number
  setTimeout(fn: () => void, ms: number): Timer
  setInterval(fn: () => void, ms: number): Timer
  /** Cancels a timeout or an interval; null and undefined are ignored. */
  clear(timer: Timer | null | undefined): void
  /**
   * Resolves after `ms` (never keeps the process alive), or at once when `signal` aborts:
   * it never rejects, the caller reads `signal.aborted`.
   */
  sleep(ms: number, signal?: AbortSignal): Promise<void>
}

/** A number in [0, 1): Math.random's contract, injected where a decision depends on chance. */
export type Random = () => number

/** sleep() for any TimerClock: a timer the abort clears. */
export function clockSleep(clock: Pick<TimerClock, 'setTimeout' | 'clear'>, ms: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted) return Promise.resolve()
  return new Promise((resolve) => {
    const done = (): void => {
      clock.clear(timer)
      signal?.removeEventListener('abort', done)
      resolve()
    }
    const timer = clock.setTimeout(done, ms).unref()
    signal?.addEventListener('abort', done, { once: true })
  })
}

/** Wall-clock milliseconds and Node's timers. */
export const systemClock: TimerClock = {
  now: () => Date.now(),
  hrNow: () => performance.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  setInterval: (fn, ms) => setInterval(fn, ms),
  clear: (timer) => clearTimeout(timer as NodeJS.Timeout | undefined),
  sleep: (ms, signal) => clockSleep(systemClock, ms, signal)
}

/** For durations (RTTs): never steps with the wall clock; its zero is the process start. */
export const monotonicClock: TimerClock = { ...systemClock, now: () => performance.now() }

/** Math.random: not for keys or tokens (those come from sodium), only for jitter and spread. */
export const systemRandom: Random = () => Math.random()
