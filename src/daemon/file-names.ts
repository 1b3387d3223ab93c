/**
 * Names and IDs of transferred files: a peer's name made safe for the inbox and a
 * terminal, the free-name suffixes, the transfer ID a resume must match, the partial's key.
 */
import { createHash } from 'node:crypto'
import type fs from 'node:fs'
import path from 'node:path'
import { UNSAFE_TEXT_CHARS } from '../protocol/unsafe-text.js'

/** Longest name the receiver keeps, in UTF-8 bytes (room left for a `-NNN` suffix under NAME_MAX 255). */
export const MAX_NAME_BYTES = 200
/**
 * Numbered names tried (`a.txt`, `a-1.txt` … `a-9.txt`) before a random one: a bound on
 * the link() calls per file, and no name strangers can use up (review 7: 10,000 numbered
 * names, so ten keys × 1,000 files named `report.pdf` blocked every later one, and each
 * try cost up to 10,000 link() calls).
 */
export const MAX_NAME_SUFFIX = 9
/** Random names (`a-<16 hex>.txt`, 64 bits: nobody can take them ahead) tried after the numbered ones. */
export const RANDOM_NAME_TRIES = 3

/** Characters a received name may not keep, each replaced by `_` (UNSAFE_TEXT_CHARS: controls, bidi and invisible format characters). */
export const UNSAFE_NAME_CHARS = UNSAFE_TEXT_CHARS

/**
 * A peer's name for a file made safe to create in the inbox and to show in a terminal:
 * path separators, `.` and `..` segments, UNSAFE_NAME_CHARS and leading dots go; what is
 * left is one plain file name (`../../etc/evil` → `etc_evil`, `a\u202Etxt.exe` →
 * `a_txt.exe`), never empty, at most MAX_NAME_BYTES.
 */
export function sanitizeName(name: string): string {
  const segments = name
    .split(/[/\\]+/)
    .map((s) => s.replace(UNSAFE_NAME_CHARS, '_').trim())
    .filter((s) => s !== '' && s !== '.' && s !== '..')
  let out = segments.join('_').replace(/^\.+/, (dots) => '_'.repeat(dots.length))
  if (Buffer.byteLength(out) > MAX_NAME_BYTES) {
    const ext = path.extname(out).slice(0, 16)
    let stem = out.slice(0, out.length - ext.length)
    while (Buffer.byteLength(stem + ext) > MAX_NAME_BYTES) stem = stem.slice(0, -1)
    out = stem + ext
  }
  return out || 'file'
}

/** `report.pdf`, then `report-1.pdf`, `report-2.pdf`, … (or `report-<suffix>.pdf` for a string suffix). */
export function suffixedName(name: string, i: number | string): string {
  if (i === 0 || i === '') return name
  const ext = path.extname(name)
  return `${name.slice(0, name.length - ext.length)}-${i}${ext}`
}

/** The sender's name for this version of a file: what a resume must match. */
export function transferIdOf(senderId: string, name: string, st: Pick<fs.Stats, 'size' | 'mtimeMs' | 'ino'>): Buffer {
  return createHash('sha256').update(`natd-transfer\0${senderId}\0${name}\0${st.size}\0${st.mtimeMs}\0${st.ino}`).digest()
}

/** A partial's file name: the sender's whole ID (so quotas and listings know whose), a dot, a hash of sender and transfer. */
export function partialKey(peerId: string, transferId: string): string {
  return `${peerId}.${createHash('sha256').update(`${peerId}\0${transferId}`).digest('hex')}`
}
