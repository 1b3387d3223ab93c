/**
 * Whether a file or directory natd reads its trust from (the state directory, config.json,
 * learnt.json, the --config file) can only have been written by natd or root. Whoever may
 * write one of them can add an expose that lets their key in, pin their own key for a
 * peer's name, or point natd at their own server (docs/SECURITY.md "Local users").
 *
 * The rule: owned by natd's uid (or root, where natd did not write it itself), no group or
 * other write bit, a regular file (not a symlink: natd writes its state files itself, by
 * rename), and no larger than the reader's bound (a start never parses megabytes).
 *
 * A directory's parents count too (review 6): whoever may rename an entry of a parent could
 * swap the state directory for their own between our check and our reads. They are walked
 * like the API socket's (ipc/socket-dir.ts): each owned by root or natd, not writable by
 * group or others unless sticky (/tmp, /dev/shm: others cannot rename what we own there).
 */
import fs from 'node:fs'
import path from 'node:path'
import { collectDirChain, judgeSocketDirChain } from '../ipc/socket-dir.js'
import { NatdError } from '../protocol/errors.js'

/** Permission bits that let group or others write. */
const WRITE_GROUP_OTHER = 0o022

export interface TrustRule {
  /** Root may own it too (a file an administrator wrote: the --config file, a state directory made by systemd). */
  rootMayOwn: boolean
  /** Largest size for a file (ignored for a directory). */
  maxBytes?: number
  /** It must be a directory, not a file. */
  directory?: boolean
}

/**
 * Why `st` is not natd's alone under `rule` (null: it is). `uid` is natd's
 * (process.getuid(); undefined where the platform has no uids: nothing is checked then).
 */
export function untrustedBecause(st: fs.Stats, rule: TrustRule, uid: number | undefined = process.getuid?.()): string | null {
  if (rule.directory ? !st.isDirectory() : !st.isFile()) return rule.directory ? 'not a directory' : 'not a regular file'
  if (uid === undefined) return null
  if (st.uid !== uid && !(rule.rootMayOwn && st.uid === 0)) return `owned by uid ${st.uid}, not by natd (uid ${uid})${rule.rootMayOwn ? ' or root' : ''}`
  if ((st.mode & WRITE_GROUP_OTHER) !== 0) return `group or others may write it (mode ${(st.mode & 0o7777).toString(8).padStart(4, '0')})`
  if (!rule.directory && rule.maxBytes !== undefined && st.size > rule.maxBytes) return `larger than ${rule.maxBytes} bytes`
  return null
}

/**
 * The same for a path (null also when nothing is there). A file is judged without following
 * a symlink at it; a directory through its symlinks (systemd's DynamicUser= links
 * /var/lib/natd to /var/lib/private/natd), by what it resolves to.
 */
export function untrustedPath(file: string, rule: TrustRule): string | null {
  let st: fs.Stats
  try {
    st = rule.directory ? fs.statSync(file) : fs.lstatSync(file)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null
    return (err as Error).message
  }
  return untrustedBecause(st, rule) ?? (rule.directory ? untrustedParents(file) : null)
}

/**
 * Why a parent of directory `dir` (symlinks resolved: systemd's /var/lib/private) lets
 * someone else swap `dir` (null: none does). `uid` as in untrustedBecause().
 */
export function untrustedParents(dir: string, uid: number | undefined = process.getuid?.()): string | null {
  let real
  try {
    real = fs.realpathSync(dir)
  } catch (err) {
    return (err as Error).message
  }
  return untrustedChain(path.dirname(real), uid)
}

/**
 * Why directory `dir` or one of its parents (symlinks resolved) lets someone else rename
 * the entries it holds (null: none does). `uid` as in untrustedBecause().
 */
export function untrustedChain(dir: string, uid: number | undefined = process.getuid?.()): string | null {
  if (uid === undefined) return null
  let chain
  try {
    chain = collectDirChain(dir)
  } catch (err) {
    return (err as Error).message
  }
  const verdict = judgeSocketDirChain(chain, uid, false)
  return verdict.kind === 'safe' ? null : `its parent ${verdict.path} ${verdict.reason.replace('not by us', 'not by natd')}, so it could be swapped`
}

/** Throws UNSAFE_STATE for `file` (what it is, `what`) when untrustedPath() finds a reason, saying how to fix it. */
export function refuseUntrusted(file: string, what: string, rule: TrustRule): void {
  const why = untrustedPath(file, rule)
  if (why !== null) throw unsafeState(file, what, why, rule)
}

/** The UNSAFE_STATE error for `file`: what it is, why, and how to make it natd's. */
export function unsafeState(file: string, what: string, why: string, rule: TrustRule): NatdError {
  const fix = rule.directory ? `make it natd's alone (chown to natd's user, chmod 700 ${file}; its parents root's or natd's, chmod go-w)` : `make it natd's alone (chown to natd's user${rule.rootMayOwn ? ' or root' : ''}, chmod 600 ${file}), or move it away`
  return new NatdError('UNSAFE_STATE', `refusing ${what} ${file}: ${why}; whoever may write it could let their key in (exposes, pinned peers) or pin their own server; ${fix}`)
}
