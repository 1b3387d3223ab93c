/**
 * config.json while natd runs: held in memory, written in the background (atomic, fsync,
 * 0600, one write at a time: common/background-json-file.ts). conf reads and
 * validates it at start; after that, a change (a forward, an expose, a peer pinned on
 * first use or by `natctl trust`) must not write on the event loop: conf writes and
 * fsyncs synchronously, and a disk that took 29 s to sync (CI, issue 17) would freeze
 * heartbeats, tunnels and the API for as long.
 *
 * What a change promises (`set`): it takes effect at once (in memory); an API call that made it
 * answers only once it is on disk (`durable()`), or fails with STATE_WRITE_FAILED when
 * the write failed or is not done within DURABLE_WAIT_MS (the change stays in effect and
 * the write goes on). A change conf would refuse at the next start (STORE_SCHEMA) is
 * refused with INVALID_ARGUMENT and not made. A change made
 * without a caller (a peer's key pinned on first use) is lost if natd dies before the
 * write lands: the peer is then pinned on first use again (docs/SECURITY.md). A crash
 * never leaves a torn file (rename of an fsynced temp file).
 */
import { BackgroundJsonFile } from '../common/background-json-file.js'
import { writeFileAtomicAsync, writeJsonAtomic } from '../common/state-files.js'
import { NatdError } from '../protocol/errors.js'
import { checkStore } from './config-schema.js'

/**
 * How long an API call waits for its change to reach the disk before it answers
 * STATE_WRITE_FAILED "not yet saved": below natctl's 20 s (ipc/call-deadline.ts
 * CALL_DEADLINE_MS), so a disk that stalls (CI saw a 29 s fsync) or a write waiting out a
 * retry delay (1, 5, 30 s) gives an answer that says so, not natctl's TIMEOUT.
 */
export const DURABLE_WAIT_MS = 15_000

export class ConfigJson<T extends object> {
  private store: T
  private readonly bg: BackgroundJsonFile

  constructor(
    readonly file: string,
    /** What conf read and validated at start. */
    initial: T,
    write: (file: string, text: string) => Promise<void> = writeFileAtomicAsync,
    onError: (err: Error, file: string) => void = () => undefined,
    /** Throws INVALID_ARGUMENT for content conf would refuse at the next start (config-schema.ts). */
    private readonly check: (store: T, file: string) => void = checkStore
  ) {
    this.store = structuredClone(initial)
    this.bg = new BackgroundJsonFile(file, write, onError)
  }

  /** The store with `key` changed, checked against the schema (INVALID_ARGUMENT); nothing is changed when it throws. */
  private changed<K extends keyof T>(key: K, value: T[K]): T {
    const next = { ...this.store, [key]: structuredClone(value) }
    this.check(next, this.file)
    return next
  }

  /** A copy: callers cannot change the store behind its writer. */
  get<K extends keyof T>(key: K): T[K] {
    return structuredClone(this.store[key])
  }

  /**
   * The stored value itself, no copy: for a lookup on a hot path (a pinned key, checked on
   * every introduction), where get()'s copy of every pin made each one cost as much as
   * the pins held. The caller must not change it.
   */
  peek<K extends keyof T>(key: K): Readonly<T[K]> {
    return this.store[key]
  }

  /** In effect at once; on disk in the background. */
  set<K extends keyof T>(key: K, value: T[K]): void {
    this.store = this.changed(key, value)
    this.bg.save(this.store)
  }

  /**
   * On disk before it returns (atomic, fsync): only at start, before natd serves anything
   * (its config from flags and the config file, a one-time migration), where a command
   * that exits next must find it written. A background write still running is followed
   * by one of this value, so the newest lands last.
   */
  setNow<K extends keyof T>(key: K, value: T[K]): void {
    this.store = this.changed(key, value)
    writeJsonAtomic(this.file, this.store)
    if (this.bg.writing) this.bg.save(this.store)
  }

  /**
   * Resolves once every change so far is on disk; STATE_WRITE_FAILED when a write of it
   * failed, or when it is not on disk within `waitMs` (the write goes on).
   */
  async durable(waitMs = DURABLE_WAIT_MS): Promise<void> {
    await durableWithin(this.bg, 'the change', waitMs)
  }

  /** Resolves when every write so far has ended (shutdown). Never rejects. */
  flushed(): Promise<void> {
    return this.bg.flushed()
  }
}

/**
 * Resolves once every save of `bg` so far is on disk; STATE_WRITE_FAILED (naming `what`)
 * when a write of it failed, or when it is not on disk within `waitMs` (the write goes on):
 * an API call waiting for the disk answers before natctl's deadline.
 */
export async function durableWithin(bg: BackgroundJsonFile, what: string, waitMs = DURABLE_WAIT_MS): Promise<void> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<'late'>((resolve) => {
    timer = setTimeout(() => resolve('late'), waitMs)
    timer.unref()
  })
  try {
    const onDisk = await Promise.race([bg.durable(), late])
    if (onDisk === 'late') throw new NatdError('STATE_WRITE_FAILED', `${what} is in effect but not yet saved to ${bg.file} after ${waitMs / 1000} s (a slow or failing disk, see natd's log); the write goes on`)
    if (!onDisk) throw new NatdError('STATE_WRITE_FAILED', `${what} is in effect but could not be saved to ${bg.file} (see natd's log); it is tried again`)
  } finally {
    clearTimeout(timer)
  }
}
