/**
 * The message IDs this agent has stored, per sender, so a retried message (the same ID
 * again: a resend after a lost ACK, `natctl send` run again after a failure) is
 * acknowledged as delivered without being stored twice (messages.ts).
 *
 * Scoped by the sender's whole key: an ID means something only together with the key
 * that sent it, so a peer that replays or guesses another peer's IDs can only ever
 * suppress its own messages.
 *
 * Bounded, and what is remembered is the window: an ID counts for DEDUPE_WINDOW_MS after
 * it was stored, among its sender's newest DEDUPE_IDS_PER_PEER, and among the newest
 * DEDUPE_MAX_IDS of all senders (a retry of anything older is stored again). Persisted in
 * message-ids.jsonl in the state directory (0600; one line per stored message, compacted
 * once it holds twice what is live), and seeded from the inbox as well, so a restart
 * still dedupes. A line is not fsynced on its own: the message's line in the (fsynced)
 * inbox records its ID until `messages --clear` removes it, and clear fsyncs this file
 * first (flush()), so a crash never loses an ID whose message it kept or removed.
 *
 * Written off the event loop (StateLog: one queue, in order): add() counts in memory at
 * once, its line lands behind. The queue holds at most what the inbox quotas let in.
 */
import path from 'node:path'
import { readJsonLines, StateLog, writeFileAtomic, type StateLogIo } from '../common/state-files.js'

export const MESSAGE_IDS_FILE = 'message-ids.jsonl'
/** A week: a retry comes seconds to hours after the first try; a laptop shut for a weekend still dedupes. */
export const DEDUPE_WINDOW_MS = 7 * 24 * 3_600_000
/** Per sender: more than the inbox holds of it at once (messagesPerPeer, default 1,000). */
export const DEDUPE_IDS_PER_PEER = 1_024
/** In all: ~100 bytes each in memory and on disk, so at most ~5 MB however many peers write to us. */
export const DEDUPE_MAX_IDS = 50_000

/** The bounds; each defaults to the constant of the same meaning above. */
export interface MessageIdsInit {
  windowMs: number
  perPeer: number
  max: number
}

export interface StoredId {
  /** The sender's whole peer ID. */
  from: string
  /** The message ID, 32 hex digits. */
  id: string
  /** When it was stored (ms since the epoch). */
  at: number
}

export class MessageIds {
  private readonly file: string
  private readonly log: StateLog
  /** A background write failed: the file may lack IDs, flush() rewrites it whole. */
  private lost = false
  /** `from/id` → when stored, oldest first (Map keeps insertion order). */
  private readonly all = new Map<string, number>()
  /** Each sender's IDs, oldest first. */
  private readonly bySender = new Map<string, string[]>()
  /** Lines in the file now (live or not): compaction runs when it is twice the live ones. */
  private fileLines = 0

  private readonly init: MessageIdsInit

  /** `inbox`: the messages in the inbox, remembered too (they may lack their line here after a crash). */
  constructor(dir: string, inbox: readonly StoredId[], now = Date.now(), init: Partial<MessageIdsInit> = {}, io?: StateLogIo) {
    this.init = { windowMs: DEDUPE_WINDOW_MS, perPeer: DEDUPE_IDS_PER_PEER, max: DEDUPE_MAX_IDS, ...init }
    this.file = path.join(dir, MESSAGE_IDS_FILE)
    this.log = new StateLog(this.file, io)
    const lines = readJsonLines<StoredId>(this.file).filter(isStoredId)
    this.fileLines = lines.length
    for (const e of [...lines, ...inbox].sort((a, b) => a.at - b.at)) this.remember(e)
    this.expire(now)
    // At start, before natd serves anything: written on the spot.
    if (this.fileLines > 2 * this.all.size) {
      writeFileAtomic(this.file, this.text())
      this.fileLines = this.all.size
    }
  }

  get size(): number {
    return this.all.size
  }

  /** Whether `from` has had a message with this ID stored within the window. */
  has(from: string, id: string, now = Date.now()): boolean {
    this.expire(now)
    return this.all.has(key(from, id))
  }

  /** Records a stored message's ID: in memory at once, its line written behind (durable with its message's line in the inbox; see flush()). */
  add(e: StoredId): void {
    if (!this.remember(e)) return
    this.background(this.log.append([e], { sync: false }))
    this.fileLines++
    this.expire(e.at)
    if (this.fileLines > 2 * Math.max(this.all.size, this.init.perPeer)) this.compact()
  }

  /** Adds to memory, evicting past the bounds; false when it was there already. */
  private remember(e: StoredId): boolean {
    const k = key(e.from, e.id)
    if (this.all.has(k)) return false
    this.all.set(k, e.at)
    const ids = this.bySender.get(e.from) ?? []
    ids.push(e.id)
    this.bySender.set(e.from, ids)
    if (ids.length > this.init.perPeer) this.forgetOldestOf(e.from)
    while (this.all.size > this.init.max) this.forgetOldest()
    return true
  }

  private expire(now: number): void {
    for (const at of this.all.values()) {
      if (now - at <= this.init.windowMs) break
      this.forgetOldest()
    }
  }

  /** The oldest of all is also the oldest of its sender. */
  private forgetOldest(): void {
    const k = this.all.keys().next().value
    if (k === undefined) return
    this.forgetOldestOf(k.slice(0, k.indexOf('/')))
  }

  private forgetOldestOf(from: string): void {
    const ids = this.bySender.get(from)
    const id = ids?.shift()
    if (id === undefined) return
    this.all.delete(key(from, id))
    if (ids!.length === 0) this.bySender.delete(from)
  }

  /** Makes every ID recorded so far durable: before their messages leave the inbox. Rejects when it could not. */
  async flush(): Promise<void> {
    if (!this.lost) return this.log.fsync()
    this.lost = false
    await this.log.replace(this.text()).catch((err: unknown) => {
      this.lost = true
      throw err
    })
  }

  /** Resolves when every write so far ended (shutdown, tests). Never rejects. */
  flushed(): Promise<void> {
    return this.log.flushed()
  }

  /** A write nobody waits for: a failure only marks the file as missing IDs (flush() then rewrites it). */
  private background(p: Promise<void>): void {
    p.catch(() => (this.lost = true))
  }

  private compact(): void {
    this.background(this.log.replace(this.text())) // the IDs as they are now, after the appends queued before
    this.fileLines = this.all.size
  }

  private text(): string {
    const out: string[] = []
    for (const [k, at] of this.all) {
      const i = k.indexOf('/')
      out.push(JSON.stringify({ from: k.slice(0, i), id: k.slice(i + 1), at } satisfies StoredId) + '\n')
    }
    return out.join('')
  }
}

function key(from: string, id: string): string {
  return `${from}/${id}`
}

function isStoredId(e: unknown): e is StoredId {
  const x = e as Partial<StoredId> | null
  return typeof x?.from === 'string' && !x.from.includes('/') && typeof x.id === 'string' && typeof x.at === 'number' && Number.isFinite(x.at)
}
