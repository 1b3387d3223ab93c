/**
 * Proof of a local client's uid (issue "Abuse resistance": a limit per user). node cannot
 * read a Unix socket peer's credentials (SO_PEERCRED) and natd takes no native addon, so
 * the client proves its uid with a file only that uid can create, as D-Bus's
 * DBUS_COOKIE_SHA1 proves identity with a file:
 *
 *   1. natd gives the connection a fresh random nonce (`auth.challenge`);
 *   2. the client creates an empty file named `natd-proof-<nonce>` (O_EXCL, mode 0600)
 *      in a directory natd can search (the `proof` directory natd keeps next to its
 *      socket, else /tmp) and sends its path and uid (`auth.prove`); then it removes it;
 *   3. natd lstat()s that path: a regular file (not a link: lstat does not follow the
 *      last component), one link (not a hard link to someone else's file), owned by the
 *      claimed uid, mode 0600, empty, named with this connection's nonce, and made before
 *      the deadline.
 *
 * Only uid U (or root) can create a file owned by U, and only this connection knows its
 * nonce, so the file shows that someone running as U made it for this connection. The
 * nonce is in the name rather than the content so natd needs no read permission on the
 * file: a system natd (user natd) proves users whose files it may not read. natd never
 * opens, reads or follows the file: one lstat per connection, bounded below.
 *
 * What it does not prove: root can claim any uid (it can create files for anyone); a
 * program of U's that creates files with names an attacker chooses, mode 0600 and empty,
 * in a place natd can see, would let the attacker claim U (we know of none). A false claim
 * only moves the claimer into U's share of the API slots (connection-table.ts).
 */
import { timingSafeEqual, randomBytes } from 'node:crypto'
import fsSync from 'node:fs'
import fs from 'node:fs/promises'
import path from 'node:path'
import { NatdError } from '../protocol/errors.js'

/** Random bytes of a nonce: 128 bits cannot be guessed in a proof's lifetime. */
const NONCE_BYTES = 16
/** A proof file's name is this and the nonce in hex. */
export const PROOF_PREFIX = 'natd-proof-'
/**
 * Longest proof path natd looks at. A client's temp directory is short (/tmp,
 * /run/user/1000); 512 leaves room for a TMPDIR deep in a home while bounding what a
 * client may make natd's lstat walk.
 */
export const MAX_PROOF_PATH = 512
/**
 * A nonce is good for this long after natd sent it. natctl creates the file and answers
 * in a few ms; 5 s is generous on a loaded machine and bounds how long a connection may
 * sit half-proven.
 */
export const PROOF_DEADLINE_MS = 5_000

/**
 * The directory next to the API socket where clients create their proof files: mode
 * 1733 (anyone who can reach the socket's directory may create a file; sticky, so no one
 * removes or replaces another's; not listable, so no one sees another's names). natd's
 * /tmp may not be the clients' (systemd's PrivateTmp=yes in natd.service), so /tmp is
 * only the fallback. Only those who may reach the socket reach it (/run/natd is 0750,
 * group natd).
 */
export const PROOF_DIR_NAME = 'proof'
export const PROOF_DIR_MODE = 0o1733

export function proofDirFor(socketPath: string): string {
  return path.join(path.dirname(socketPath), PROOF_DIR_NAME)
}

/**
 * Makes the proof directory next to the socket (natd, at start). Returns false, and
 * clients fall back to /tmp, when something that is not our own directory is there.
 */
export function ensureProofDir(socketPath: string): boolean {
  const dir = proofDirFor(socketPath)
  try {
    fsSync.mkdirSync(dir, { mode: 0o700 })
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') return false
  }
  try {
    const st = fsSync.lstatSync(dir)
    if (!st.isDirectory() || st.uid !== (process.getuid?.() ?? st.uid)) return false
    fsSync.chmodSync(dir, PROOF_DIR_MODE) // after mkdir: the umask would take the bits off
    return true
  } catch {
    return false
  }
}

export function newNonce(): string {
  return randomBytes(NONCE_BYTES).toString('hex')
}

export interface ProofClaim {
  /** The path the client names (absolute). */
  path: string
  /** The uid the client claims. */
  uid: number
}

/**
 * Checks a proof; resolves when `claim.path` shows uid `claim.uid` made it for `nonce`,
 * rejects with NatdError('UNAUTHORIZED') saying why otherwise. `issuedMs`/`nowMs` are on
 * the caller's clock; `deadlineMs` bounds the lstat too (a hung file system).
 */
export async function checkProof(claim: ProofClaim, nonce: string, issuedMs: number, now: () => number, deadlineMs = PROOF_DEADLINE_MS): Promise<void> {
  const p = claim.path
  if (now() - issuedMs > deadlineMs) throw fail('too late: the nonce has expired')
  if (p.length > MAX_PROOF_PATH) throw fail(`path longer than ${MAX_PROOF_PATH} characters`)
  if (p.includes('\0') || !path.isAbsolute(p)) throw fail('path must be absolute')
  const base = path.basename(p)
  const want = Buffer.from(PROOF_PREFIX + nonce)
  const got = Buffer.from(base)
  if (got.length !== want.length || !timingSafeEqual(got, want)) throw fail(`the file must be named ${PROOF_PREFIX}<this connection's nonce>`)
  // A direct timer: it bounds a real file-system call (lstat); whether the proof came too
  // late is decided on the caller's clock (`now`).
  let timer: NodeJS.Timeout | undefined
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(fail('too late: the file could not be checked in time')), Math.max(0, deadlineMs - (now() - issuedMs)))
    timer.unref()
  })
  let st: import('node:fs').Stats
  try {
    st = await Promise.race([fs.lstat(p), expired])
  } catch (err) {
    if (err instanceof NatdError) throw err
    throw fail(`cannot see the file (${(err as NodeJS.ErrnoException).code ?? 'error'})`)
  } finally {
    clearTimeout(timer)
  }
  if (st.isSymbolicLink()) throw fail('the file is a symbolic link')
  if (!st.isFile()) throw fail('not a regular file')
  if (st.nlink !== 1) throw fail('the file has more than one link')
  if (st.uid !== claim.uid) throw fail(`the file belongs to uid ${st.uid}, not ${claim.uid}`)
  if ((st.mode & 0o7777) !== 0o600) throw fail('the file mode must be 0600')
  if (st.size !== 0) throw fail('the file must be empty')
  if (now() - issuedMs > deadlineMs) throw fail('too late: the nonce has expired')
}

function fail(why: string): NatdError {
  return new NatdError('UNAUTHORIZED', `uid proof refused: ${why}`)
}
