/**
 * Small durable files in a state directory, for the agent (messages, file transfer, its
 * key pair; config.ts owns config.json) and the rendezvous server (its key, its name
 * bindings): JSON written atomically, and append-only JSON-lines logs. Everything is
 * mode 0600 and fsynced before the caller acknowledges anything.
 */
import fs from 'node:fs'
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

/** Writes `text` through a temp file (mode 0600), fsync and rename, then fsyncs the directory. */
export function writeFileAtomic(file: string, text: string): void {
  const tmp = `${file}.${process.pid}.tmp`
  const fd = fs.openSync(tmp, 'w', STATE_FILE_MODE)
  try {
    fs.writeSync(fd, text)
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
  fs.renameSync(tmp, file)
  fsyncDir(path.dirname(file))
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

/** fsyncs a file written earlier (nothing when it does not exist). */
export function fsyncFile(file: string): void {
  let fd: number
  try {
    fd = fs.openSync(file, 'r')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return
    throw err
  }
  try {
    fs.fsyncSync(fd)
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
