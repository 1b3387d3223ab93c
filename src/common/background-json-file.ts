/**
 * A small JSON state file written behind, off the event loop (state-files.ts
 * writeFileAtomicAsync), with bounded retries: for what a running agent learns and can
 * learn again, and for settings whose API answer waits until they are durable.
 */
import { setTimeout as sleepMs } from 'node:timers/promises'
import { writeFileAtomicAsync } from './state-files.js'

/**
 * A failed background write is tried again after each of these (a disk full for a moment,
 * an I/O error): 3 more attempts over 36 s, then not until the next save. Bounded, so a
 * dead disk costs a few writes, not a loop.
 */
export const BACKGROUND_RETRY_DELAYS_MS: readonly number[] = [1_000, 5_000, 30_000]

export interface BackgroundRetry {
  delaysMs: readonly number[]
  /** Waits between attempts (tests resolve at once); must not keep the process alive. */
  sleep(ms: number): Promise<void>
}

/**
 * A small JSON file that the process keeps in memory and writes in the background
 * (writeFileAtomicAsync): save() returns at once, one write runs at a time, and saves
 * made while one runs end in one more write of the latest value. For what natd learns
 * while it runs and can learn again (its port, a server key pinned on first use, a
 * silent gateway): a crash before the write lands costs that lesson, never a stall. A
 * failed write is tried again a few times (BACKGROUND_RETRY_DELAYS_MS).
 */
export class BackgroundJsonFile {
  private next: string | null = null
  /** The newest value saved (what a fresh write after a give-up writes). */
  private latest: { text: string; save: number } | null = null
  private running: Promise<void> | null = null
  /** Saves so far, the one `next` holds, and the newest on disk. */
  private saves = 0
  private nextSave = 0
  private written = 0
  private readonly waiters: Array<{ save: number; resolve: (onDisk: boolean) => void }> = []

  constructor(
    readonly file: string,
    private readonly write: (file: string, text: string) => Promise<void> = writeFileAtomicAsync,
    /** A failed write of `file` (each attempt; the value stays in memory, retried as `retry` says, then at the next save or durable()). */
    private readonly onError: (err: Error, file: string) => void = () => undefined,
    private readonly retry: BackgroundRetry = { delaysMs: BACKGROUND_RETRY_DELAYS_MS, sleep: (ms) => sleepMs(ms, undefined, { ref: false }) }
  ) {}

  save(value: unknown): void {
    this.next = JSON.stringify(value, null, 2) + '\n'
    this.nextSave = ++this.saves
    this.latest = { text: this.next, save: this.nextSave }
    this.running ??= this.drain()
  }

  /**
   * Whether every save made so far reached the disk: true once a write of it (or of a
   * later value) landed, false as soon as one attempt at it failed (retries go on in the
   * background). For a caller that must not say "done" before the change is durable.
   *
   * When saves are missing from disk and no write runs or is due (the retries of a failed
   * write gave up), a fresh write of the newest value starts: without it nothing would
   * ever settle this answer (an API call that changed nothing, e.g. `natctl trust` of the
   * ID already pinned, waited for natctl's deadline, its waiter kept). Every waiter is
   * settled when the writes stop; a caller that must answer sooner bounds its own wait
   * (config-json.ts DURABLE_WAIT_MS).
   */
  durable(): Promise<boolean> {
    const save = this.saves
    if (this.written >= save) return Promise.resolve(true)
    const answer = new Promise<boolean>((resolve) => this.waiters.push({ save, resolve }))
    if (this.running === null && this.latest !== null) {
      this.next = this.latest.text
      this.nextSave = this.latest.save
      this.running = this.drain()
    }
    return answer
  }

  private settle(upTo: number, onDisk: boolean): void {
    for (let i = this.waiters.length - 1; i >= 0; i--) {
      const w = this.waiters[i]!
      if (w.save > upTo) continue
      this.waiters.splice(i, 1)
      w.resolve(onDisk)
    }
  }

  /** Whether a write is running or due. */
  get writing(): boolean {
    return this.running !== null
  }

  /** Resolves when every save so far is on disk (or failed). Never rejects. */
  flushed(): Promise<void> {
    return this.running ?? Promise.resolve()
  }

  private async drain(): Promise<void> {
    try {
      let failures = 0
      while (this.next !== null) {
        const text = this.next
        const save = this.nextSave
        this.next = null
        try {
          await this.write(this.file, text)
          failures = 0
          this.written = Math.max(this.written, save)
          this.settle(save, true)
        } catch (err) {
          this.settle(save, false)
          this.onError(err as Error, this.file)
          const delay = this.retry.delaysMs[failures++]
          if (delay === undefined) continue // given up: the next save tries again
          if (this.next === null) {
            this.next = text // a newer save replaces it
            this.nextSave = save
          }
          await this.retry.sleep(delay)
        }
      }
    } finally {
      this.running = null
      // No write runs or is due: no waiter may be left (a later durable() starts a fresh write).
      this.settle(Infinity, false)
    }
  }
}
