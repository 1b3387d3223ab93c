/**
 * The inbox's upkeep, on a timer instead of on every offer (review 7 #3: each accepted
 * offer read the partials' directory and stat'ed every partial, on the event loop): every
 * UPKEEP_INTERVAL_MS the usage counters are checked against the disk (a file the user
 * deleted gives its sender room again), then partials nobody came back for in
 * PARTIAL_MAX_AGE_MS are removed, PRUNE_BATCH at a time, off the event loop.
 */
import fsp from 'node:fs/promises'
import path from 'node:path'
import type { Timer, TimerClock } from '../protocol/clock.js'
import type { Logger } from '../protocol/log.js'
import { BUILD_BATCH, inBatches, type InboxUsage } from './inbox-usage.js'
import { PARTIAL_DIR } from './partial-dir.js'

/** A partial untouched this long (its transfer never retried, or its file changed) is removed by the upkeep. */
export const PARTIAL_MAX_AGE_MS = 7 * 24 * 3600_000
/**
 * How often the upkeep runs: a partial lives at most this much past PARTIAL_MAX_AGE_MS,
 * and a received file the user deleted frees its sender's quota at most this late (at
 * once with `natctl files`). A run costs one async stat per file and partial in the inbox
 * (at most INBOX_FILES_MAX), so not much more often than this.
 */
export const UPKEEP_INTERVAL_MS = 10 * 60_000
/** Stale partials removed per batch (the removals in flight at once). */
export const PRUNE_BATCH = BUILD_BATCH

/** Why a partial goes: untouched for PARTIAL_MAX_AGE_MS, or its sender's oldest past PARTIALS_PER_PEER (file-receiver.ts). */
export type PruneReason = 'age' | 'per-peer-cap'

export class PartialPruner {
  private timer: Timer | null = null
  private running: Promise<void> | null = null
  /** Removals in flight, by partial key. */
  private readonly removing = new Map<string, Promise<void>>()

  /** The removal of partial `key` in flight, if any (a new attempt of its transfer waits for it); null: none. */
  removal(key: string): Promise<void> | null {
    return this.removing.get(key) ?? null
  }

  constructor(
    private readonly inbox: () => string,
    private readonly usage: InboxUsage,
    private readonly clock: TimerClock,
    private readonly log: Logger
  ) {}

  start(): void {
    this.timer ??= this.clock.setInterval(() => void this.onUpkeepDue(), UPKEEP_INTERVAL_MS).unref()
  }

  stop(): void {
    this.clock.clear(this.timer)
    this.timer = null
  }

  /** One upkeep run (a run still going is joined). Never rejects. */
  onUpkeepDue(): Promise<void> {
    if (this.running) return this.running
    const run = this.upkeep()
      .catch((err: unknown) => {
        this.log.error('the inbox upkeep failed', { err: (err as Error).message })
      })
      .finally(() => {
        this.running = null
      })
    this.running = run
    return run
  }

  private async upkeep(): Promise<void> {
    await this.usage.recheck()
    const cutoff = this.clock.now() - PARTIAL_MAX_AGE_MS // wall time, as the mtimes the counters were built from
    for (let keys = this.usage.stale(cutoff, PRUNE_BATCH); keys.length > 0; keys = this.usage.stale(cutoff, PRUNE_BATCH)) {
      await inBatches(keys, PRUNE_BATCH, (key) => this.remove(key, 'age'))
    }
  }

  /** Removes partial `key` unless a transfer took it up again; the counters forget it first (a removal that fails is retried by the next recheck). */
  async remove(key: string, reason: PruneReason): Promise<void> {
    if (!this.usage.drop(key)) return
    const rm = fsp.rm(path.join(this.inbox(), PARTIAL_DIR, key), { force: true })
    const gone = rm.then(() => undefined, () => undefined).finally(() => this.removing.delete(key))
    this.removing.set(key, gone)
    await rm
    const age = reason === 'age' ? { maxAgeDays: Math.floor(PARTIAL_MAX_AGE_MS / 86_400_000) } : {}
    // Past the cap, at debug: the peer's own oldest partial, and it may leave one-byte partials as fast as it opens channels (review 9 #3).
    this.log[reason === 'age' ? 'info' : 'debug']('removed a partial file', { partial: key.slice(0, 16), reason, ...age })
  }
}
