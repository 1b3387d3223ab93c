/**
 * Message IDs of sends whose outcome the user has not seen (messages.ts), so that running
 * `natctl send` again after a failure (a timeout, a lost tunnel, natd killed or restarted,
 * natctl interrupted) sends the same ID, and the receiver, which remembers IDs per sender
 * (message-ids.ts), stores the message once.
 *
 * An entry is keyed by the peer's whole ID and the sha256 of the text; it is written
 * (fsynced) before the message leaves, and removed once the caller got a definite answer
 * (delivered, or refused). So sending the same text again after a success is a new
 * message, and a send that is already under way does not lend its ID to a second one.
 * Bounded: OUTBOX_MAX entries, each for OUTBOX_TTL_MS. Kept in outbox.jsonl (0600) in the
 * state directory, an append-only log (an entry, or a settled ID) compacted once it holds
 * twice what is live. A settled line is not fsynced: lost in a crash, its entry comes
 * back, and a rerun of that very send is answered "duplicate" instead of stored again.
 *
 * Written off the event loop (StateLog: one queue, in order): take() resolves once its
 * entry is fsynced, so a disk that stalls holds that send, not the agent. At most
 * OUTBOX_MAX entries live; each send in flight waits on at most one write.
 */
import { createHash, randomBytes } from 'node:crypto'
import path from 'node:path'
import { NatdError } from '../protocol/errors.js'
import { readJsonLines, StateLog, type StateLogIo } from '../common/state-files.js'

export const OUTBOX_FILE = 'outbox.jsonl'
/** A day: long enough for a rerun after a failure, short enough that an unseen send does not swallow a deliberate repeat much later. */
export const OUTBOX_TTL_MS = 24 * 3_600_000
/** The oldest entries go first past this many. */
export const OUTBOX_MAX = 1_000

interface Entry {
  peer: string
  digest: string
  id: string
  at: number
}

/** A line of the log: an entry, or the ID of one that was settled. */
type Line = Entry | { settled: string }

export interface Pending {
  /** The message ID, 32 hex digits. */
  readonly id: string
  /** The caller saw the outcome (delivered or refused): forget the entry. */
  settle(): void
  /** The attempt ended (settled or not): the ID may be lent to a later send. */
  release(): void
}

export class Outbox {
  private readonly file: string
  private readonly log: StateLog
  private entries: Entry[] = []
  /** IDs of sends under way now. */
  private readonly busy = new Set<string>()
  private fileLines = 0

  /** `max`: OUTBOX_MAX unless a test says otherwise. */
  constructor(
    dir: string,
    private readonly max = OUTBOX_MAX,
    io?: StateLogIo
  ) {
    this.file = path.join(dir, OUTBOX_FILE)
    this.log = new StateLog(this.file, io)
    const lines = readJsonLines<Line>(this.file)
    this.fileLines = lines.length
    for (const l of lines) {
      if (isEntry(l)) this.entries.push(l)
      else if (typeof (l as { settled?: unknown } | null)?.settled === 'string') this.entries = this.entries.filter((e) => e.id !== (l as { settled: string }).settled)
    }
    this.entries = this.entries.slice(-this.max)
  }

  /**
   * The ID for sending `text` to `peer` (a whole ID): the unsettled one's, else a new one
   * (fsynced before this resolves; STATE_WRITE_FAILED when it could not be).
   */
  async take(peer: string, text: string, now = Date.now()): Promise<Pending> {
    const digest = createHash('sha256').update(text).digest('hex')
    this.entries = this.entries.filter((e) => now - e.at <= OUTBOX_TTL_MS)
    let entry = this.entries.find((e) => e.peer === peer && e.digest === digest && !this.busy.has(e.id))
    if (!entry) {
      entry = { peer, digest, id: randomBytes(16).toString('hex'), at: now }
      this.entries.push(entry)
      if (this.entries.length > this.max) this.entries.splice(0, this.entries.length - this.max)
      const fresh = entry
      this.busy.add(fresh.id) // not lent to a second send while it is written
      try {
        await this.append(fresh, true)
      } catch (err) {
        this.busy.delete(fresh.id)
        this.entries = this.entries.filter((e) => e !== fresh)
        throw new NatdError('STATE_WRITE_FAILED', `the message was not sent: its ID could not be saved to ${this.file}`, { cause: err })
      }
    }
    const { id } = entry
    this.busy.add(id)
    return {
      id,
      settle: () => {
        const before = this.entries.length
        this.entries = this.entries.filter((e) => e.id !== id)
        if (this.entries.length !== before) this.append({ settled: id }, false).catch(() => undefined) // lost: the entry comes back at start (see above)
      },
      release: () => this.busy.delete(id)
    }
  }

  get size(): number {
    return this.entries.length
  }

  /** Queues `line` (or a compaction that holds it) behind the writes before it. */
  private append(line: Line, sync: boolean): Promise<void> {
    if (this.fileLines >= 2 * Math.max(this.entries.length, 64)) {
      // Compact: the live entries only (the settled ones and their lines are gone).
      const compacted = this.log.replace(this.entries.map((e) => JSON.stringify(e) + '\n').join(''))
      this.fileLines = this.entries.length
      if ('settled' in line) return compacted
      if (this.entries.includes(line)) return compacted // written with the rest, and fsynced
    }
    this.fileLines++
    return this.log.append([line], { sync })
  }

  /** Resolves when every write so far ended (shutdown, tests). Never rejects. */
  flushed(): Promise<void> {
    return this.log.flushed()
  }
}

function isEntry(e: unknown): e is Entry {
  const x = e as Partial<Entry> | null
  return typeof x?.peer === 'string' && typeof x.digest === 'string' && typeof x.id === 'string' && /^[0-9a-f]{32}$/.test(x.id) && typeof x.at === 'number'
}
