/**
 * The rendezvous server's state directory and its Ed25519 key pair, which agents pin
 * (`--server host:port#KEY`). The key file is JSON, mode 0600:
 *
 *   {"publicKey": "<64 hex>", "secretKey": "<128 hex>"}
 *
 * created on first start, written atomically, and refused when group or others may read
 * it (as ssh refuses a private key with loose permissions) or when it does not parse.
 * Several instances of one deployment share one key by pointing --key-file at one file.
 */
import fs from 'node:fs'
import path from 'node:path'
import { NatdError } from '../protocol/errors.js'
import { generateKeyPair, type KeyPair } from '../protocol/identity.js'
import { defaultStateDirFor, writeFileAtomic } from '../common/state-files.js'
import { hexBytes, isJsonObject } from '../common/untrusted-json.js'

export const KEY_FILE = 'server-key.json'
const PUBLIC_KEY_BYTES = 32
const SECRET_KEY_BYTES = 64
/** Permission bits group and others must not have on the key file. */
const LOOSE_MODE_BITS = 0o077

/** $STATE_DIRECTORY (systemd's StateDirectory=), /var/lib/natd-rendezvous as root, else $XDG_STATE_HOME/natd-rendezvous. */
export function defaultServerStateDir(env: NodeJS.ProcessEnv = process.env, uid = process.getuid?.() ?? 0): string {
  return defaultStateDirFor('natd-rendezvous', env, uid)
}

/** Creates the state directory (mode 0700) if missing; INVALID_ARGUMENT when it cannot be. */
export function ensureStateDir(dir: string): void {
  try {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
  } catch (err) {
    throw new NatdError('INVALID_ARGUMENT', `cannot create the state directory ${dir}: ${(err as Error).message}`, { cause: err })
  }
}

/** Loads the key pair from `file`, creating it (mode 0600) when missing. Throws INVALID_ARGUMENT for a loose or corrupt file. */
export function loadServerKey(file: string): { keyPair: KeyPair; created: boolean } {
  let text: string
  try {
    const fd = fs.openSync(file, 'r')
    try {
      const mode = fs.fstatSync(fd).mode
      if (mode & LOOSE_MODE_BITS) {
        throw new NatdError(
          'INVALID_ARGUMENT',
          `the key file ${file} may be read by others (mode ${(mode & 0o777).toString(8).padStart(4, '0')}): ` + `make it private with chmod 600 ${file}`
        )
      }
      text = fs.readFileSync(fd, 'utf8')
    } finally {
      fs.closeSync(fd)
    }
  } catch (err) {
    if (err instanceof NatdError) throw err
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new NatdError('INVALID_ARGUMENT', `cannot read the key file ${file}: ${(err as Error).message}`, { cause: err })
    }
    const keyPair = generateKeyPair()
    ensureStateDir(path.dirname(file))
    writeFileAtomic(file, JSON.stringify({ publicKey: keyPair.publicKey.toString('hex'), secretKey: Buffer.from(keyPair.secretKey).toString('hex') }) + '\n')
    return { keyPair, created: true }
  }
  return { keyPair: parseKeyFile(text, file), created: false }
}

function parseKeyFile(text: string, file: string): KeyPair {
  const corrupt = (why: string): NatdError =>
    new NatdError('INVALID_ARGUMENT', `the key file ${file} is corrupt (${why}); restore it from a backup, or move it away to make a new key (agents that pinned the old one will refuse the new one)`)
  let raw: unknown
  try {
    raw = JSON.parse(text)
  } catch {
    throw corrupt('not JSON')
  }
  const r = isJsonObject(raw) ? raw : {}
  const publicKey = hexBytes(r.publicKey, PUBLIC_KEY_BYTES, true) // an operator may have retyped it
  const secretKey = hexBytes(r.secretKey, SECRET_KEY_BYTES, true)
  if (!publicKey || !secretKey) throw corrupt(`expected {"publicKey": ${PUBLIC_KEY_BYTES * 2} hex digits, "secretKey": ${SECRET_KEY_BYTES * 2} hex digits}`)
  // libsodium's Ed25519 secret key ends with the public key: a mismatch means a damaged file.
  if (!secretKey.subarray(32).equals(publicKey)) throw corrupt('the public key does not match the secret key')
  return { publicKey, secretKey }
}
