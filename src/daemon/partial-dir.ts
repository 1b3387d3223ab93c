/**
 * The inbox's `.partial` directory, where files being received are written
 * (file-receiver.ts), and the checks that keep natd from writing anywhere else with its
 * rights: the inbox must not let others rename entries, `.partial` must be natd's alone,
 * and a partial is opened without following a symlink, on the directory that was checked.
 */
import fs from 'node:fs'
import fsp from 'node:fs/promises'
import path from 'node:path'
import { NatdError } from '../protocol/errors.js'
import type { Logger } from '../protocol/log.js'
import { untrustedChain, untrustedParents } from './trusted-file.js'

export const PARTIAL_DIR = '.partial'

/** S_ISVTX (not in Node's fs.constants): in a sticky directory only an entry's owner renames it. */
const STICKY = 0o1000

/** What the peer is told when a check fails (no path or mode: the log has them). */
const NOT_SAFE_MESSAGE = 'the receiver\'s inbox is not safe to write; its operator must check it (its log says why)'

export class PartialDir {
  private constructor(
    /** The directory's path (`<inbox>/.partial`). */
    readonly path: string,
    /** Its device and inode when checked: a partial is opened only while it is still this one. */
    private readonly checked: fs.Stats,
    private readonly log: Logger
  ) {}

  /**
   * Makes the inbox (0700, for the first file) off the event loop and checks it and its
   * parents, then makes its partials' directory (0700) and checks that. PARTIAL_UNREADABLE when either is unsafe.
   */
  static async open(inbox: string, log: Logger): Promise<PartialDir> {
    const dir = path.join(inbox, PARTIAL_DIR)
    await fsp.mkdir(inbox, { recursive: true, mode: 0o700 })
    checkInbox(inbox, log) // before `.partial` is made: nothing is made in an inbox someone could have swapped
    await fsp.mkdir(dir, { mode: 0o700 }).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'EEXIST') throw err
    })
    return new PartialDir(dir, checkPartialDir(dir, log), log)
  }

  /**
   * Opens (or creates) the partial `partial` (a path in this directory) for reading and
   * appending, never through a symlink, and checks that the directory is still the one
   * checked (same device and inode), so the descriptor cannot be one a swapped directory led to.
   */
  openPartial(partial: string): number {
    const fd = fs.openSync(partial, fs.constants.O_RDWR | fs.constants.O_APPEND | fs.constants.O_CREAT | fs.constants.O_NOFOLLOW, 0o600)
    try {
      this.checkStillOurs(partial, fd)
    } catch (err) {
      fs.closeSync(fd)
      throw err
    }
    return fd
  }

  /** PARTIAL_UNREADABLE unless this directory is the one checked and `partial` in it is the file open at `fd`. */
  checkStillOurs(partial: string, fd: number): void {
    const same = (a: fs.Stats | undefined, b: fs.Stats): boolean => a !== undefined && a.dev === b.dev && a.ino === b.ino
    const now = fs.lstatSync(this.path, { throwIfNoEntry: false })
    const open = fs.fstatSync(fd)
    if (now?.isDirectory() && same(now, this.checked) && open.isFile() && same(fs.lstatSync(partial, { throwIfNoEntry: false }), open)) return
    this.log.error('the inbox\'s partial-file directory changed under a transfer: no file is received until its operator checks the inbox', { dir: this.path })
    throw new NatdError('PARTIAL_UNREADABLE', NOT_SAFE_MESSAGE)
  }
}

/**
 * The inbox itself must not let others rename entries: whoever may write it could move
 * natd's `.partial` away and put a symlink to any directory in its place between our
 * check and our open (O_NOFOLLOW guards only the last component), and natd would create,
 * truncate and append `<dir>/<key>` with its rights. So group and others may not write
 * it, unless it is natd's own and sticky (then only natd renames natd's entries).
 *
 * Nor its parents (review 9): whoever may rename an entry of a parent could swap the
 * whole inbox for a symlink to natd's state directory, and peers' files would be linked
 * in there (a `learnt.json` pins keys). They are judged as the state directory's are
 * (trusted-file.ts untrustedParents: owned by root or natd, not writable by group or
 * others unless sticky), those of the directory the inbox resolves to, and, when the
 * inbox is a symlink, those of the symlink's own directory as well.
 */
function checkInbox(inbox: string, log: Logger): void {
  const uid = process.getuid?.()
  if (uid === undefined) return
  const st = fs.statSync(inbox) // the operator's choice (natd --inbox): a symlink to it is theirs
  if ((st.mode & 0o022) !== 0 && ((st.mode & STICKY) === 0 || st.uid !== uid)) {
    log.error('the inbox is writable by others, who could swap its partial-file directory: no file is received until its operator removes group and other write access (or makes it natd\'s own sticky directory)', { inbox, uid: st.uid, mode: (st.mode & 0o7777).toString(8) })
    throw new NatdError('PARTIAL_UNREADABLE', NOT_SAFE_MESSAGE)
  }
  const why = untrustedParents(inbox, uid) ?? (fs.lstatSync(inbox).isSymbolicLink() ? untrustedChain(path.dirname(inbox), uid) : null)
  if (why === null) return
  log.error('a parent of the inbox lets others swap it: no file is received until its operator makes every parent root\'s or natd\'s, not writable by group or others (or sticky)', { inbox, why })
  throw new NatdError('PARTIAL_UNREADABLE', NOT_SAFE_MESSAGE)
}

/**
 * The partials' directory must be natd's alone: a directory (not a symlink) of natd's
 * uid that group and others cannot write. The inbox may be a directory the operator
 * shares (natd --inbox); a local user who made `.partial` there first could plant a
 * symlink at a partial's name (the sender's ID and transfer ID: predictable), and natd
 * would hash, truncate or append to the file it points at with natd's rights.
 */
function checkPartialDir(dir: string, log: Logger): fs.Stats {
  const st = fs.lstatSync(dir)
  const uid = process.getuid?.()
  if (st.isDirectory() && (uid === undefined || st.uid === uid) && (st.mode & 0o022) === 0) return st
  log.error('the inbox\'s partial-file directory is not natd\'s own: no file is received until its operator removes it', { dir, uid: st.uid, mode: (st.mode & 0o7777).toString(8), symlink: st.isSymbolicLink() })
  throw new NatdError('PARTIAL_UNREADABLE', NOT_SAFE_MESSAGE)
}
