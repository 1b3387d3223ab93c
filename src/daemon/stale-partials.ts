/**
 * The removal of partials nobody came back for (file-receiver.ts): a partial untouched for
 * PARTIAL_MAX_AGE_MS (its transfer never retried, or its file changed) goes when a later
 * file arrives. Off the event loop and bounded: the directory is read a few entries at a
 * time (opendir), each entry stat'ed and removed in the thread pool, so a `.partial`
 * holding many thousands of entries (keys are free to make) never holds the event loop;
 * one sweep runs at a time, at most once per SWEEP_INTERVAL_MS, so a stream of small
 * files does not make the receiver list the directory once per file.
 *
 * A partial being removed may be the one a new attempt of its transfer is about to open:
 * removing(key) says so, and the receiver waits for it before opening the partial (the
 * sweep checks that the key is not being received, in the same turn as the removal
 * starts), so an attempt never writes into a file that is unlinked under it.
 */
import fsp from 'node:fs/promises'
import path from 'node:path'
import type { Clock } from '../protocol/clock.js'
import type { Logger } from '../protocol/log.js'

/** A partial untouched this long (its transfer never retried, or its file changed) is removed when a later file arrives. */
export const PARTIAL_MAX_AGE_MS = 7 * 24 * 3600_000
/** Sweeps start at most this often: partials live a week, so a sweep an hour late costs nothing. */
export const SWEEP_INTERVAL_MS = 3600_000
/** Directory entries read per call (opendir's buffer): each read is one small step of the thread pool. */
export const SWEEP_READ_ENTRIES = 64

export class StalePartials {
  private running: Promise<number> | null = null
  private lastStart = Number.NEGATIVE_INFINITY
  private readonly removals = new Map<string, Promise<void>>()

  constructor(
    /** Whether the partial with this key is being received (never removed then). */
    private readonly active: (key: string) => boolean,
    private readonly log: Logger,
    /** Wall time: its now() is compared with the file system's mtimes. */
    private readonly clock: Clock
  ) {}

  /**
   * Starts a sweep of `dir` unless one runs or one started within SWEEP_INTERVAL_MS (then
   * null). Resolves with the number of partials removed; never rejects (a failure is logged).
   */
  sweep(dir: string): Promise<number> | null {
    const now = this.clock.now()
    if (this.running || now - this.lastStart < SWEEP_INTERVAL_MS) return null
    this.lastStart = now
    const run = this.removeOlderThan(dir, now - PARTIAL_MAX_AGE_MS)
      .catch((err: unknown) => {
        this.log.warn('could not look for stale partial files', { dir, err: (err as Error).message })
        return 0
      })
      .finally(() => {
        this.running = null
      })
    this.running = run
    return run
  }

  /** The removal of the partial `key` if one runs now (wait for it before opening that partial). */
  removing(key: string): Promise<void> | undefined {
    return this.removals.get(key)
  }

  private async removeOlderThan(dir: string, cutoff: number): Promise<number> {
    let removed = 0
    for await (const entry of await fsp.opendir(dir, { bufferSize: SWEEP_READ_ENTRIES })) {
      const key = entry.name
      if (this.active(key)) continue
      try {
        const st = await fsp.lstat(path.join(dir, key))
        // Checked again in the turn the removal starts: a transfer of this key may have begun meanwhile.
        if (st.mtimeMs >= cutoff || this.active(key)) continue
        const removal = fsp.rm(path.join(dir, key), { force: true })
        this.removals.set(key, removal.catch(() => undefined))
        try {
          await removal
        } finally {
          this.removals.delete(key)
        }
        removed++
        this.log.info('removed a stale partial file', { partial: key.slice(0, 16), days: Math.floor(PARTIAL_MAX_AGE_MS / 86_400_000) })
      } catch {
        // gone already
      }
    }
    return removed
  }
}
