/**
 * Small durable files in a state directory, for the agent (messages, file transfer, its
 * key pair; config.ts owns config.json) and the rendezvous server (its key, its name
 * bindings): JSON written atomically, and append-only JSON-lines logs. Everything is
 * mode 0600 and fsynced before the caller acknowledges anything, except what
 * BackgroundJsonFile (background-json-file.ts) holds (written behind, never on the event loop).
 *
 * A running agent writes only through BackgroundJsonFile and StateLog (async fs, off the
 * event loop: issue 17). The synchronous writers are for start-up, before anything is
 * served, for commands that exit next (natd-server names), and for the server.
 */
import fs from 'node:fs'
import fsp from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'

export const STATE_FILE_MODE = 0o600

/** Where `app` keeps its state: $STATE_DIRECTORY (systemd's StateDirectory=), /var/lib/APP as root, else $XDG_STATE_HOME/APP (~/.local/state/APP). */
export function defaultStateDirFor(app: string, env: NodeJS.ProcessEnv = process.env, uid = process.getuid?.() ?? 0): string {
  if (env.STATE_DIRECTORY) return env.STATE_DIRECTORY.split(':')[0]!
  if (uid === 0) return `/var/lib/${app}`
  const base = env.XDG_STATE_HOME || path.join(os.homedir(), '.local', 'state')
  return path.join(base, app)
}

/** fsyncs a directory, so a rename or a new entry in it survives a crash. */
export function fsyncDir(dir: string): void {
  const fd = fs.openSync(dir, 'r')
  try {
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
}

/** Writes `value` as JSON through a temp file, fsync and rename: readers see the old or the new file, never half. */
export function writeJsonAtomic(file: string, value: unknown): void {
  writeFileAtomic(file, JSON.stringify(value, null, 2) + '\n')
}

/**
 * How temp files are created: O_EXCL, so never through a symlink someone who may write the
 * directory put at the (predictable) temp name; with O_TRUNC through it, a write of
 * learnt.json overwrote the link's target with natd's rights (test/abuse/state.test.ts).
 */
const TEMP_FLAGS = 'wx'

/** Writes `text` through a temp file (mode 0600), fsync and rename, then fsyncs the directory. */
export function writeFileAtomic(file: string, text: string): void {
  const tmp = `${file}.${process.pid}.tmp`
  fs.rmSync(tmp, { force: true }) // a leftover, or a symlink someone planted: removed, never opened (TEMP_FLAGS)
  const fd = fs.openSync(tmp, TEMP_FLAGS, STATE_FILE_MODE)
  try {
    fs.writeSync(fd, text)
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
  fs.renameSync(tmp, file)
  fsyncDir(path.dirname(file))
}

/** The temp files of writeFileAtomicAsync: `<file>.<pid>.bg.tmp`. */
const BG_TMP_SUFFIX = '.bg.tmp'

/**
 * Removes the temp files of background writes (`*.<pid>.bg.tmp`) in `dir` that a process
 * no longer running left behind (it died mid-write): called at start, before any write of
 * ours. Returns the names removed. Never throws (a directory it cannot read keeps them).
 */
export function removeStaleTemps(dir: string): string[] {
  let names: string[]
  try {
    names = fs.readdirSync(dir)
  } catch {
    return []
  }
  const removed: string[] = []
  for (const name of names) {
    const m = /\.(\d+)\.bg\.tmp$/.exec(name)
    if (!m || processRuns(Number(m[1]))) continue
    try {
      fs.rmSync(path.join(dir, name), { force: true })
      removed.push(name)
    } catch {
      // left for the next start
    }
  }
  return removed
}

/** Whether process `pid` runs (EPERM: it runs under another user). */
function processRuns(pid: number): boolean {
  if (pid === process.pid) return true
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/**
 * writeFileAtomic() off the event loop: the write, the fsyncs and the rename run in
 * libuv's thread pool. A disk that takes tens of seconds to sync (seen in CI: one
 * fsync of a 1 KB file took over 29 s while other jobs wrote) then stalls this write,
 * not the agent's heartbeats, registration and API.
 */
export async function writeFileAtomicAsync(file: string, text: string): Promise<void> {
  const tmp = `${file}.${process.pid}${BG_TMP_SUFFIX}`
  try {
    await fsp.rm(tmp, { force: true }) // see writeFileAtomic
    const fh = await fsp.open(tmp, TEMP_FLAGS, STATE_FILE_MODE)
    try {
      await fh.writeFile(text)
      await fh.sync()
    } finally {
      await fh.close()
    }
    await fsp.rename(tmp, file)
  } catch (err) {
    await fsp.rm(tmp, { force: true }).catch(() => undefined) // a full disk: do not leave half a file behind
    throw err
  }
  await fsyncDirAsync(path.dirname(file))
}

/** fsyncDir() in the thread pool. */
export async function fsyncDirAsync(dir: string): Promise<void> {
  const fh = await fsp.open(dir, 'r')
  try {
    await fh.sync()
  } finally {
    await fh.close()
  }
}

/** The disk operations of a StateLog (async, in libuv's thread pool); tests stall them. */
export interface StateLogIo {
  /**
   * Appends `text` (whole lines) to `file` (created mode 0600); fsyncs it when `sync` (and
   * its directory when the append created it). A torn last line (a crash mid-append) is
   * closed with a newline first, so the record appended is never glued to it; a failed
   * append is cut back off, so it leaves no half record for the next one to join.
   */
  append(file: string, text: string, sync: boolean): Promise<void>
  /** Replaces `file` with `text` atomically (writeFileAtomicAsync). */
  replace(file: string, text: string): Promise<void>
  /** fsyncs `file` (nothing when it does not exist). */
  fsync(file: string): Promise<void>
}

async function appendAsync(file: string, text: string, sync: boolean): Promise<void> {
  const fh = await fsp.open(file, 'a+', STATE_FILE_MODE) // a+: the last byte is read (a torn line?)
  let size: number
  try {
    size = (await fh.stat()).size
    let prefix = ''
    if (size > 0) {
      const last = Buffer.alloc(1)
      await fh.read(last, 0, 1, size - 1)
      if (last[0] !== 0x0a) prefix = '\n' // a torn line: closed, and skipped by readJsonLines
    }
    try {
      await fh.appendFile(prefix + text)
      if (sync) await fh.sync()
    } catch (err) {
      await fh.truncate(size).catch(() => undefined)
      throw err
    }
  } finally {
    await fh.close()
  }
  if (sync && size === 0) {
    await fsyncDirAsync(path.dirname(file)) // maybe created just now: its directory entry must survive a crash too
  }
}

async function fsyncAsync(file: string): Promise<void> {
  let fh: fsp.FileHandle
  try {
    fh = await fsp.open(file, 'r')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return
    throw err
  }
  try {
    await fh.sync()
  } finally {
    await fh.close()
  }
}

export const asyncStateIo: StateLogIo = { append: appendAsync, replace: writeFileAtomicAsync, fsync: fsyncAsync }

/**
 * A JSON-lines file of a running agent (its inbox of messages, the IDs it stored, its
 * outbox, the files it received), written off the event loop: one queue per file, so
 * writes land in the order they were made and never overlap, and each returns a promise
 * the caller awaits before it acknowledges anything. A disk that stalls (CI once took 29 s
 * for one fsync) then holds those callers, never heartbeats, tunnels or the API. What
 * may queue meanwhile is bounded by the caller (its quotas, its in-memory bounds).
 */
export class StateLog {
  private tail: Promise<unknown> = Promise.resolve()
  private waiting = 0

  constructor(
    readonly file: string,
    private readonly io: StateLogIo = asyncStateIo
  ) {}

  /** Appends one JSON line per value; resolves once written (and fsynced when `sync`). */
  append(values: readonly unknown[], opts: { sync: boolean }): Promise<void> {
    const text = values.map((v) => JSON.stringify(v) + '\n').join('')
    return this.run(() => this.io.append(this.file, text, opts.sync))
  }

  /** Replaces the whole file (atomic, fsynced). */
  replace(text: string): Promise<void> {
    return this.run(() => this.io.replace(this.file, text))
  }

  /** fsyncs what was appended so far. */
  fsync(): Promise<void> {
    return this.run(() => this.io.fsync(this.file))
  }

  /** Runs `op` once every write queued before it ended, and before any queued after it. */
  run<T>(op: () => Promise<T>): Promise<T> {
    this.waiting++
    const p = this.tail.then(op).finally(() => this.waiting--)
    this.tail = p.catch(() => undefined)
    return p
  }

  /** Writes queued or running. */
  get queued(): number {
    return this.waiting
  }

  /** Resolves when every write so far ended. Never rejects. */
  flushed(): Promise<void> {
    return this.tail.then(() => undefined)
  }
}

export function readJson<T>(file: string): T | null {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as T
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null
    throw err
  }
}

/**
 * Appends one JSON line and fsyncs it: once this returns, the record survives a crash.
 * `sync: false` leaves it to the page cache (it survives the process, not the machine):
 * for records that something else already makes durable, or that fsyncFile() syncs later.
 */
export function appendJsonLine(file: string, value: unknown, opts: { sync: boolean } = { sync: true }): void {
  const fd = fs.openSync(file, 'a', STATE_FILE_MODE)
  try {
    fs.writeSync(fd, JSON.stringify(value) + '\n')
    if (opts.sync) fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
}

/** Every parsable line of a JSON-lines file (a torn last line after a crash is skipped). */
export function readJsonLines<T>(file: string): T[] {
  let text: string
  try {
    text = fs.readFileSync(file, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return []
    throw err
  }
  const out: T[] = []
  for (const line of text.split('\n')) {
    if (!line.trim()) continue
    try {
      out.push(JSON.parse(line) as T)
    } catch {
      // a torn write
    }
  }
  return out
}
