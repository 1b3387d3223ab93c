/**
 * learnt.json: what the running agent learns (its port, server keys pinned on first use),
 * written in the background by StateStore (config.ts); here its name and how it is read.
 */
import { isPeerId } from '../protocol/peer-ref.js'
import { readJson } from '../common/state-files.js'
import { untrustedPath } from './trusted-file.js'

/**
 * What the running agent learns and records without waiting for the disk: the port it
 * was given at its first start (when none was asked for), and server keys pinned on
 * first use. conf writes config.json synchronously with an fsync, on the event loop; in
 * CI a 1 KB config write right after start once waited over 29 s for a busy disk, and
 * the agent neither registered nor answered natctl meanwhile. This file is written in
 * the background (common/background-json-file.ts), so no disk write lies
 * between natd's start and its registration. A crash before it lands costs the lesson:
 * the next start takes a port again, or pins the server's key on first use again.
 */
export const LEARNT_FILE = 'learnt.json'

export interface Learnt {
  port?: number
  serverKeys?: Record<string, string>
}

/**
 * learnt.json as read. Entries that are malformed are dropped (it is a cache of lessons);
 * a file that is there but does not read as a JSON object (empty, truncated, garbage) is
 * not: it may hold server keys pinned on first use, and reading it as `{}` would pin
 * again, silently, whatever key answers next. `bad` says why (StateStore sets it aside).
 */
export function readLearnt(file: string): { learnt: Learnt; bad: string | null } {
  const unsafe = unsafeLearnt(file)
  if (unsafe !== null) return { learnt: {}, bad: unsafe }
  let raw: unknown
  try {
    raw = readJson<unknown>(file)
  } catch (err) {
    return { learnt: {}, bad: (err as Error).message }
  }
  if (raw === null) return { learnt: {}, bad: null } // not there: a first start
  if (typeof raw !== 'object' || Array.isArray(raw)) return { learnt: {}, bad: 'not a JSON object' }
  const r = raw as Record<string, unknown>
  const out: Learnt = {}
  if (typeof r.port === 'number' && Number.isInteger(r.port) && r.port > 0 && r.port < 65536) out.port = r.port
  if (r.serverKeys && typeof r.serverKeys === 'object') {
    const keys = Object.entries(r.serverKeys as Record<string, unknown>).filter((e): e is [string, string] => typeof e[1] === 'string' && isPeerId(e[1]))
    if (keys.length) out.serverKeys = Object.fromEntries(keys)
  }
  return { learnt: out, bad: null }
}

/** A learnt.json above this is no cache of a port and a few keys: set aside unread (a start must not parse megabytes). */
export const LEARNT_MAX_BYTES = 1024 * 1024

/**
 * Why learnt.json cannot be trusted before it is read (null: it can, or it is not there):
 * natd writes it as a regular file of its own uid, mode 0600. One that group or others may
 * write, or that another uid (root too: natd never leaves it root's) owns, may hold a key
 * someone else pinned for us (trusted-file.ts).
 */
function unsafeLearnt(file: string): string | null {
  return untrustedPath(file, { rootMayOwn: false, maxBytes: LEARNT_MAX_BYTES })
}
