/**
 * Attempts shared by the callers that ask for the same thing at once (the manager's
 * opens, keyed by the peer asked for): the first caller starts it, later ones wait for
 * the same promise. Each caller's signal cancels its own wait; the attempt's signal
 * aborts only when the last caller waiting cancelled, so a client that goes away leaves
 * no work running, and a later caller starts a new attempt.
 */
import type { NatdError } from '../protocol/errors.js'

interface Shared<T> {
  attempt: Promise<T>
  /** Aborted when the last caller waiting for the attempt cancelled (its signal aborted). */
  abort: AbortController
  waiters: number
}

export class SharedAttempts<T> {
  private readonly running = new Map<string, Shared<T>>()

  /** Attempts under way (the ones every caller cancelled are gone). */
  get size(): number {
    return this.running.size
  }

  /**
   * Waits for the attempt running under `key`, or starts one with `start` (given the
   * attempt's signal). Rejects with `cancelled()` when `signal` aborts first.
   */
  join(key: string, start: (signal: AbortSignal) => Promise<T>, signal: AbortSignal | undefined, cancelled: () => NatdError): Promise<T> {
    let shared = this.running.get(key)
    if (!shared) {
      const abort = new AbortController()
      const entry: Shared<T> = { attempt: start(abort.signal), abort, waiters: 0 }
      shared = entry
      this.running.set(key, entry)
      // Handled here: when every caller cancelled, no one else awaits the attempt.
      entry.attempt.finally(() => this.running.get(key) === entry && this.running.delete(key)).catch(() => undefined)
    }
    return this.waitFor(key, shared, signal, cancelled)
  }

  /**
   * Waits for a shared attempt until `signal` aborts. The last caller to cancel aborts
   * the attempt, and a later join starts a new one.
   */
  private async waitFor(key: string, shared: Shared<T>, signal: AbortSignal | undefined, cancelled: () => NatdError): Promise<T> {
    shared.waiters++
    let onAbort = (): void => undefined
    const gone = new Promise<never>((_, reject) => {
      onAbort = () => reject(cancelled())
      signal?.addEventListener('abort', onAbort, { once: true })
    })
    try {
      return await Promise.race([shared.attempt, gone])
    } finally {
      signal?.removeEventListener('abort', onAbort)
      shared.waiters--
      if (shared.waiters === 0 && signal?.aborted) {
        shared.abort.abort()
        if (this.running.get(key) === shared) this.running.delete(key)
      }
    }
  }
}
