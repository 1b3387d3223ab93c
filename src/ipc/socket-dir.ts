/**
 * Whether the directory that holds the API socket can be trusted, checked by natd before
 * it listens and by natctl before it connects.
 *
 * The attack (issue "Abuse resistance"): without XDG_RUNTIME_DIR the user's socket is
 * under /tmp/natd-$UID, a name anyone can create first. A directory another user made
 * (or one others may write) lets them plant their own socket there, so the victim's
 * natctl talks to the attacker and natd cannot take its own path.
 *
 * The rule, like OpenSSH's safe_path(): walk the real path (symlinks resolved) from `/`
 * down to the socket's directory. Every directory on the way must be
 *   - owned by us or root — or, for the socket's own directory only, by another user
 *     when its parent is writable by root alone (only root can have put it there:
 *     systemd makes /run/natd natd:natd 0750, and a natctl run by a member of group
 *     natd must accept that; an ancestor owned by another user could have its subtree
 *     swapped by them, so that is refused), and
 *   - writable by nobody else: no group or other write bit, except a sticky directory
 *     above the socket's own (/tmp is 1777: others cannot rename or remove what we own).
 * The socket's own directory may not be group- or world-writable even when sticky:
 * another user could pre-create the socket's name in it.
 */
import fs from 'node:fs'
import path from 'node:path'
import { NatdError } from '../protocol/errors.js'

const WRITE_GROUP_OTHER = 0o022
const STICKY = 0o1000

/** What the rule needs to know of one directory on the path. */
export interface DirFacts {
  path: string
  uid: number
  mode: number
  isDirectory: boolean
}

export type DirVerdict = { kind: 'safe' } | { kind: 'unsafe'; path: string; reason: string }

/**
 * Judges a chain of directories, `/` first and the socket's own directory last, for a
 * process running as `uid`. Pure: the caller collects the facts.
 */
export function judgeSocketDirChain(chain: readonly DirFacts[], uid: number, endsAtSocketDir = true): DirVerdict {
  for (let i = 0; i < chain.length; i++) {
    const d = chain[i]!
    const parent = i > 0 ? chain[i - 1] : undefined
    const isSocketDir = endsAtSocketDir && i === chain.length - 1
    if (!d.isDirectory) return { kind: 'unsafe', path: d.path, reason: 'is not a directory' }
    const rootPlaced = isSocketDir && parent !== undefined && parent.uid === 0 && (parent.mode & WRITE_GROUP_OTHER) === 0
    if (d.uid !== uid && d.uid !== 0 && !rootPlaced) {
      return { kind: 'unsafe', path: d.path, reason: `is owned by uid ${d.uid}, not by us (uid ${uid}) or root` }
    }
    const writable = d.mode & WRITE_GROUP_OTHER
    if (writable && (isSocketDir || !(d.mode & STICKY))) {
      const perm = (d.mode & 0o7777).toString(8).padStart(4, '0')
      return { kind: 'unsafe', path: d.path, reason: `is writable by ${writable & 0o002 ? 'others' : 'its group'} (mode ${perm})` }
    }
  }
  return { kind: 'safe' }
}

/** The facts of every directory from `/` down to `dir` (which must exist), symlinks resolved. */
export function collectDirChain(dir: string): DirFacts[] {
  const real = fs.realpathSync(dir)
  const chain: DirFacts[] = []
  let p = real
  for (;;) {
    const st = fs.statSync(p)
    chain.unshift({ path: p, uid: st.uid, mode: st.mode, isDirectory: st.isDirectory() })
    const up = path.dirname(p)
    if (up === p) break
    p = up
  }
  return chain
}

/**
 * Throws NatdError('UNSAFE_SOCKET') when the directory holding `socketPath` is not ours
 * to trust. Returns false (and checks nothing) when that directory does not exist.
 */
export function checkSocketDir(socketPath: string, uid = process.getuid?.() ?? 0): boolean {
  const dir = path.dirname(path.resolve(socketPath))
  let verdict: DirVerdict
  try {
    verdict = judgeSocketDirChain(collectDirChain(dir), uid)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ENOENT') return false
    if (code !== 'EACCES') throw err
    // A directory on the way we may not search (/run/natd is 0750 group natd): judge the
    // part we can see. If that is sound, connect() fails with PERMISSION_DENIED, which is
    // the useful answer; an unsearchable directory another user planted is still refused.
    try {
      verdict = judgeSocketDirChain(collectDirChain(path.dirname(dir)), uid, false)
    } catch {
      return true
    }
  }
  if (verdict.kind === 'unsafe') {
    throw new NatdError(
      'UNSAFE_SOCKET',
      `refusing the API socket ${socketPath}: ${verdict.path} ${verdict.reason}; someone else could plant a socket there. ` +
        'Remove that directory or fix its owner and mode (chmod go-w), set XDG_RUNTIME_DIR, or choose another --socket'
    )
  }
  return true
}
