/**
 * Name bindings in `<state-dir>/names.jsonl`: an append-only log of JSON lines, replayed
 * into a MemoryNameStore when opened.
 *
 *   {"op":"bind","name":"alice","key":"<64 hex>","t":1700000000000,"seen":1700000000000,"w":"1f2e3d4c"}
 *   {"op":"seen","name":"alice","t":1700000000000,"w":"1f2e3d4c"}
 *   {"op":"release","name":"alice","t":1700000000000}
 *
 * `seen` on bind is optional (compaction writes it); `w` names the server that wrote the
 * line, so its poller skips its own lines and applies only other writers' (the operator's
 * `natd-rendezvous names rm`, which appends a release line). Lines that do not parse, or
 * parse to something else, are skipped with a warning; a torn last line (a crash mid
 * write) is skipped too.
 *
 * Bounds: opening compacts the file (one bind line per binding, rewritten atomically with
 * fsync), and between opens only changes are appended: bind and release when they
 * happen, `seen` at most once a day per name (so heartbeats and re-registrations are not
 * writes; last-seen times are kept to the day, which is plenty against a TTL of months).
 * At 100,000 online agents that is ~10 MB a day until the next start; compaction on open
 * is enough for now (a server that runs for months could compact when the log is several
 * times its compacted size).
 *
 * Appends go through one O_APPEND descriptor without waiting: the lines of one tick are
 * written together, then fsynced in the background (a crash may lose the last ~100 ms of
 * bindings, which their holders make again when they re-register).
 */
import fs from 'node:fs'
import path from 'node:path'
import { randomBytes } from '../protocol/identity.js'
import { systemClock, type Clock, type Logger } from '../protocol/log.js'
import { KEY_BYTES } from '../protocol/rendezvous.js'
import { STATE_FILE_MODE, writeFileAtomic } from '../common/state-files.js'
import { hexBytes, isJsonObject, parseJson } from '../common/untrusted-json.js'
import { MemoryNameStore, type NameBinding, type NameStore } from './name-store.js'
import { systemTimers, type Timer, type Timers } from './timers.js'

export const NAMES_FILE = 'names.jsonl'
/** How often a running server looks for lines another process appended (`names rm`): "within a few seconds". */
export const NAMES_POLL_MS = 2_000
/** A name's last-seen time is written at most this often: a day is fine-grained enough for a TTL of months. */
export const SEEN_WRITE_INTERVAL_MS = 24 * 3_600_000
/** Background fsync after appends, at most this often. */
const FSYNC_DELAY_MS = 100
/** Bytes read per poll at most; the rest waits for the next poll. */
const MAX_POLL_READ_BYTES = 4 * 1024 * 1024

export type NameLine =
  | { op: 'bind'; name: string; key: string; t: number; seen?: number; w?: string }
  | { op: 'seen'; name: string; t: number; w?: string }
  | { op: 'release'; name: string; t: number; w?: string }

/** A parsed line, or null when it is not a valid one. */
export function parseNameLine(text: string): NameLine | null {
  const r = parseJson(text)
  if (!isJsonObject(r)) return null
  if (typeof r.name !== 'string' || !r.name || typeof r.t !== 'number' || !Number.isFinite(r.t)) return null
  if (r.w !== undefined && typeof r.w !== 'string') return null
  if (r.op === 'bind') {
    if (!hexBytes(r.key, KEY_BYTES)) return null
    if (r.seen !== undefined && (typeof r.seen !== 'number' || !Number.isFinite(r.seen))) return null
    return r as NameLine
  }
  return r.op === 'seen' || r.op === 'release' ? (r as NameLine) : null
}

type Apply = (line: NameLine) => void

/** Applies one line through `store`'s methods (bind, seen or release). */
export function applyNameLine(store: Pick<NameStore, 'bind' | 'seen' | 'release'>, line: NameLine): void {
  if (line.op === 'bind') {
    store.bind(line.name, Buffer.from(line.key, 'hex'), line.t)
    if (line.seen !== undefined) store.seen(line.name, line.seen)
  } else if (line.op === 'seen') store.seen(line.name, line.t)
  else store.release(line.name)
}

/** Replays `text` line by line; returns the numbers of non-empty lines skipped as malformed (a torn last line included). */
export function replayNames(apply: Apply, text: string): { skipped: number[] } {
  const skipped: number[] = []
  const lines = text.split('\n')
  for (let i = 0; i < lines.length; i++) {
    if (!lines[i]!.trim()) continue
    const line = parseNameLine(lines[i]!)
    if (line) apply(line)
    else skipped.push(i + 1)
  }
  return { skipped }
}

/** The bindings in a names file, read without changing it (for `names ls` and `names rm`). */
export function readNamesFile(file: string): { store: MemoryNameStore; skipped: number[] } {
  const store = new MemoryNameStore()
  let text = ''
  try {
    text = fs.readFileSync(file, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
  return { store, ...replayNames((line) => applyNameLine(store, line), text) }
}

export class FileNameStore extends MemoryNameStore {
  readonly file: string
  /** Tags this instance's lines, so its poller skips them. */
  private readonly writer = randomBytes(4).toString('hex')
  private fd: number
  private ino: number
  /** Bytes of the file read and applied so far. */
  private offset: number
  private pending: string[] = []
  private fsyncTimer: Timer | null = null
  private readonly pollTimer: Timer | null = null
  private closed = false

  /** Opens (and compacts) `<dir>/names.jsonl`, creating the directory (0700) and the file (0600). */
  constructor(
    dir: string,
    private readonly log: Logger,
    opts: { pollMs?: number } = {},
    private readonly time: { clock: Clock; timers: Timers } = { clock: systemClock, timers: systemTimers }
  ) {
    super()
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
    this.file = path.join(dir, NAMES_FILE)
    let text = ''
    try {
      text = fs.readFileSync(this.file, 'utf8')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    }
    const { skipped } = replayNames((line) => this.applyQuietly(line), text)
    if (skipped.length) this.log.warn('skipped malformed lines in the names file', { file: this.file, lines: skipped.slice(0, 10), count: skipped.length })
    writeFileAtomic(this.file, this.list().map((b) => JSON.stringify(bindLine(b)) + '\n').join(''))
    this.fd = fs.openSync(this.file, 'a', STATE_FILE_MODE)
    const st = fs.fstatSync(this.fd)
    this.ino = st.ino
    this.offset = st.size
    if (opts.pollMs !== 0) {
      this.pollTimer = time.timers.setInterval(() => this.onPollExpired(), opts.pollMs ?? NAMES_POLL_MS).unref()
    }
  }

  override bind(name: string, publicKey: Uint8Array, now: number): void {
    const held = super.get(name)
    if (held && Buffer.from(held.publicKey).equals(publicKey)) return this.seen(name, now)
    super.bind(name, publicKey, now)
    this.append({ op: 'bind', name, key: Buffer.from(publicKey).toString('hex'), t: now, w: this.writer })
  }

  override seen(name: string, now: number): void {
    const last = this.lastSeenOf(name)
    if (last === undefined || now - last < SEEN_WRITE_INTERVAL_MS) return
    super.seen(name, now)
    this.append({ op: 'seen', name, t: now, w: this.writer })
  }

  override release(name: string): boolean {
    if (!super.release(name)) return false
    this.append({ op: 'release', name, t: this.time.clock.now(), w: this.writer })
    return true
  }

  override close(): void {
    if (this.closed) return
    this.closed = true
    this.time.timers.clear(this.pollTimer)
    this.time.timers.clear(this.fsyncTimer)
    this.flush()
    fs.fsyncSync(this.fd)
    fs.closeSync(this.fd)
  }

  /** Applies lines other processes appended since the last poll. Never throws. */
  poll(): void {
    if (this.closed) return
    try {
      this.flush()
      const st = fs.statSync(this.file)
      if (st.ino !== this.ino || st.size < this.offset) {
        // Replaced or truncated behind our back (not by natd-rendezvous, which only appends
        // while a server runs): read it again from the start, and append to the new file.
        this.log.warn('names file replaced, reading it again', { file: this.file })
        fs.closeSync(this.fd)
        this.fd = fs.openSync(this.file, 'a', STATE_FILE_MODE)
        this.ino = fs.fstatSync(this.fd).ino
        this.offset = 0
      }
      if (st.size > this.offset) this.readFrom(st.size)
    } catch (err) {
      this.log.warn('cannot read the names file', { file: this.file, err: (err as Error).message })
    }
  }

  private onPollExpired(): void {
    this.poll()
  }

  private readFrom(size: number): void {
    const want = Math.min(size - this.offset, MAX_POLL_READ_BYTES)
    const buf = Buffer.alloc(want)
    const fd = fs.openSync(this.file, 'r')
    let got: number
    try {
      got = fs.readSync(fd, buf, 0, want, this.offset)
    } finally {
      fs.closeSync(fd)
    }
    const end = buf.subarray(0, got).lastIndexOf(0x0a) // whole lines only: the writer may be mid-line
    if (end < 0) return
    this.offset += end + 1
    let skipped = 0
    for (const text of buf.subarray(0, end).toString('utf8').split('\n')) {
      if (!text.trim()) continue
      const line = parseNameLine(text)
      if (!line) {
        skipped++
        continue
      }
      if (line.w === this.writer) continue // ours: already applied
      const before = super.get(line.name)
      this.applyQuietly(line)
      if (line.op === 'release' && before) this.log.info('name released by another process', { name: line.name })
      else if (line.op === 'bind') this.log.info('name bound by another process', { name: line.name })
    }
    if (skipped) this.log.warn('skipped malformed lines in the names file', { file: this.file, count: skipped })
  }

  /** Applies a line read from the file to memory only (the base class's methods: nothing is written back). */
  private applyQuietly(line: NameLine): void {
    applyNameLine({ bind: (n, k, t) => super.bind(n, k, t), seen: (n, t) => super.seen(n, t), release: (n) => super.release(n) }, line)
  }

  private append(line: NameLine): void {
    if (this.closed) throw new Error('the name store is closed')
    if (!this.pending.length) queueMicrotask(() => this.flush())
    this.pending.push(JSON.stringify(line) + '\n')
  }

  /** Writes the lines of this tick in one write; fsyncs them in the background. */
  private flush(): void {
    if (!this.pending.length) return
    const text = this.pending.join('')
    this.pending = []
    try {
      fs.writeSync(this.fd, text)
    } catch (err) {
      this.log.error('cannot write the names file', { file: this.file, err: (err as Error).message })
      return
    }
    this.fsyncTimer ??= this.time.timers.setTimeout(() => this.onFsyncExpired(), FSYNC_DELAY_MS).unref()
  }

  private onFsyncExpired(): void {
    this.fsyncTimer = null
    fs.fsync(this.fd, (err) => {
      if (err && !this.closed) this.log.error('cannot fsync the names file', { file: this.file, err: err.message })
    })
  }
}

function bindLine(b: NameBinding): NameLine {
  return { op: 'bind', name: b.name, key: Buffer.from(b.publicKey).toString('hex'), t: b.boundAt, seen: b.lastSeenAt }
}
