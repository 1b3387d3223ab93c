/**
 * What each peer holds in the inbox (received files still there, and partials), kept as
 * counters in memory so that a file OFFER is checked in O(1) with no file-system call
 * (review 7 #3: each offer re-read files.jsonl and stat'ed every partial of every peer,
 * 31 ms of blocked event loop per offer with 1,000 partials, 148 ms with 10,000).
 *
 * The counters are built once at start, off the event loop (files.jsonl read, then one
 * async stat per listed file and per partial, BUILD_BATCH at a time), and then follow
 * what natd does: a partial reserved for an offer, settled when its transfer ends (kept
 * with its bytes, or gone), a file placed. What natd does not see (the user deleting a
 * received file or a partial, or a partial put there behind its back) is picked up by
 * recheck(): `natctl files` and the inbox upkeep (partial-pruner.ts) run it.
 */
import fsp from 'node:fs/promises'
import path from 'node:path'
import { PARTIAL_DIR } from './partial-dir.js'

/** Async stats in flight at once while the counters are built or rechecked: bounded, so the thread pool stays free for transfers. */
export const BUILD_BATCH = 64

export interface Held {
  /** Received files still in the inbox, plus partials not being received. */
  files: number
  bytes: number
  /** Partials not being received (a subset of `files`). */
  partials: number
}

interface ReceivedEntry {
  peerId: string
  bytes: number
}

/** A partial natd knows of. A transfer's end (settle) replaces it with a new entry: recheck() tells by identity that one ran during its stat. */
interface PartialEntry {
  readonly peerId: string
  readonly bytes: number
  /** When its transfer last ended (wall ms, as a file's mtime): pruning goes by it. */
  readonly updatedMs: number
  /** Being received: counted in the inbox total, not in its sender's quota (the transfer counts at its announced size). */
  active: boolean
}

/** Runs `fn` over `items`, at most `limit` at once. */
export async function inBatches<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  for (let i = 0; i < items.length; i += limit) await Promise.all(items.slice(i, i + limit).map(fn))
}

async function sizeOf(file: string): Promise<{ size: number; mtimeMs: number } | null> {
  try {
    const st = await fsp.stat(file)
    return st.isFile() ? { size: st.size, mtimeMs: st.mtimeMs } : null
  } catch {
    return null // gone (deleted by the user)
  }
}

export class InboxUsage {
  /** Received files by path (a later file placed at the same path replaces the entry). */
  private readonly received = new Map<string, ReceivedEntry>()
  /** Partials by key (partialKey: the sender's ID, a dot, a hash). */
  private readonly partials = new Map<string, PartialEntry>()
  private readonly byPeer = new Map<string, Held>()
  private rechecking: Promise<void> | null = null
  /** Resolves once the counters match the disk at start (never rejects). */
  readonly ready: Promise<void>

  constructor(
    private readonly inbox: string,
    /** files.jsonl: the received files, one JSON line each ({ path, size, fromId }). */
    private readonly listFile: string,
    private readonly onError: (err: Error) => void
  ) {
    this.ready = this.build().catch((err: unknown) => this.onError(err as Error))
  }

  /** What `peerId` holds (files and bytes, partials being received left out). O(1). */
  of(peerId: string): Held {
    const h = this.byPeer.get(peerId)
    return h ? { ...h } : { files: 0, bytes: 0, partials: 0 }
  }

  /** Files and partials (being received or not) of all peers: what the inbox-wide cap counts. O(1). */
  get total(): number {
    return this.received.size + this.partials.size
  }

  /** Whether natd knows of partial `key` (a resume, or another attempt of a transfer being received). */
  has(key: string): boolean {
    return this.partials.has(key)
  }

  /** The bytes of partial `key` natd knows of (0 when none). */
  partialBytes(key: string): number {
    return this.partials.get(key)?.bytes ?? 0
  }

  /**
   * A transfer of partial `key` begins: it counts in the inbox total from now on and no
   * longer in its sender's quota. Returns the bytes it held before (null: a new partial),
   * which settle() restores when the transfer ends before it knows better.
   */
  reserve(key: string, peerId: string): number | null {
    const e = this.partials.get(key)
    if (!e) {
      this.partials.set(key, { peerId, bytes: 0, updatedMs: 0, active: true })
      return null
    }
    if (!e.active) this.count(e.peerId, -1, -e.bytes, -1)
    e.active = true
    return e.bytes
  }

  /** A transfer of `key` ended: the partial is kept with `bytes` (as of `nowMs`), or gone (null). */
  settle(key: string, bytes: number | null, nowMs: number): void {
    const e = this.partials.get(key)
    if (!e) return
    if (!e.active) this.count(e.peerId, -1, -e.bytes, -1)
    if (bytes === null) {
      this.partials.delete(key)
      return
    }
    // A new entry, not this one changed: a recheck that stat'ed the partial before this transfer must not take its old size for this one's.
    this.partials.set(key, { peerId: e.peerId, bytes, updatedMs: nowMs, active: false })
    this.count(e.peerId, 1, bytes, 1)
  }

  /** Partials not being received, last touched before `cutoffMs`, at most `limit`: what the pruner removes. */
  stale(cutoffMs: number, limit: number): string[] {
    const out: string[] = []
    for (const [key, e] of this.partials) {
      if (out.length >= limit) break
      if (!e.active && e.updatedMs < cutoffMs) out.push(key)
    }
    return out
  }

  /** The oldest partial of `peerId` not being received, when it keeps more than `max` (null otherwise). O(partials) in memory. */
  oldestBeyond(peerId: string, max: number): string | null {
    if ((this.byPeer.get(peerId)?.partials ?? 0) <= max) return null
    let oldest: [string, number] | null = null
    for (const [key, e] of this.partials) if (e.peerId === peerId && !e.active && (!oldest || e.updatedMs < oldest[1])) oldest = [key, e.updatedMs]
    return oldest?.[0] ?? null
  }

  /** Forgets a partial not being received (the pruner removed it); false when it is being received again. */
  drop(key: string): boolean {
    const e = this.partials.get(key)
    if (!e || e.active) return false
    this.count(e.peerId, -1, -e.bytes, -1)
    this.partials.delete(key)
    return true
  }

  /** A received file was placed at `file`; a file listed at the same path before is no longer there. */
  placed(file: string, peerId: string, bytes: number): void {
    this.forgetReceived(file)
    this.received.set(file, { peerId, bytes })
    this.count(peerId, 1, bytes, 0)
  }

  /**
   * Stats every received file and partial again (async, BUILD_BATCH at a time) and
   * forgets what the user deleted, so its sender has room again. One at a time: a call
   * while one runs joins it. Never rejects.
   */
  recheck(): Promise<void> {
    if (this.rechecking) return this.rechecking
    const run = this.recheckAll()
      .catch((err: unknown) => this.onError(err as Error))
      .finally(() => {
        this.rechecking = null
      })
    this.rechecking = run
    return run
  }

  private async recheckAll(): Promise<void> {
    await this.ready
    await inBatches([...this.received], BUILD_BATCH, async ([file, e]) => {
      const st = await sizeOf(file)
      if (this.received.get(file) !== e) return // placed again meanwhile
      this.forgetReceived(file)
      if (st) this.placed(file, e.peerId, st.size)
    })
    await inBatches([...this.partials], BUILD_BATCH, async ([key, e]) => {
      if (e.active) return
      const st = await sizeOf(path.join(this.inbox, PARTIAL_DIR, key))
      if (this.partials.get(key) !== e || e.active) return // received meanwhile (settled since, or still going): the transfer's end counted it
      this.drop(key)
      if (st) this.addPartial(key, st.size, st.mtimeMs)
    })
    await this.addPartialsOnDisk()
  }

  private async build(): Promise<void> {
    let text = ''
    try {
      text = await fsp.readFile(this.listFile, 'utf8')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    }
    // The last line for a path wins: an earlier file there was deleted before this one took its name.
    const listed = new Map<string, string>()
    for (const line of text.split('\n')) {
      try {
        const f = JSON.parse(line) as { path?: unknown; fromId?: unknown }
        if (typeof f.path === 'string' && typeof f.fromId === 'string') listed.set(f.path, f.fromId)
      } catch {
        // a blank line or a torn write
      }
    }
    await inBatches([...listed], BUILD_BATCH, async ([file, peerId]) => {
      const st = await sizeOf(file)
      if (st) this.placed(file, peerId, st.size)
    })
    await this.addPartialsOnDisk()
  }

  /** Counts the partials on disk natd does not know of (at start: all of them). */
  private async addPartialsOnDisk(): Promise<void> {
    let keys: string[] = []
    try {
      keys = await fsp.readdir(path.join(this.inbox, PARTIAL_DIR))
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    }
    await inBatches(keys.filter((k) => !this.partials.has(k)), BUILD_BATCH, async (key) => {
      const st = await sizeOf(path.join(this.inbox, PARTIAL_DIR, key))
      if (st && !this.partials.has(key)) this.addPartial(key, st.size, st.mtimeMs)
    })
  }

  private addPartial(key: string, bytes: number, updatedMs: number): void {
    const peerId = key.split('.')[0] ?? ''
    this.partials.set(key, { peerId, bytes, updatedMs, active: false })
    this.count(peerId, 1, bytes, 1)
  }

  private forgetReceived(file: string): void {
    const old = this.received.get(file)
    if (!old) return
    this.received.delete(file)
    this.count(old.peerId, -1, -old.bytes, 0)
  }

  private count(peerId: string, files: number, bytes: number, partials: number): void {
    const h = this.byPeer.get(peerId) ?? { files: 0, bytes: 0, partials: 0 }
    h.files += files
    h.bytes += bytes
    h.partials += partials
    if (h.files === 0 && h.partials === 0) this.byPeer.delete(peerId)
    else this.byPeer.set(peerId, h)
  }
}
