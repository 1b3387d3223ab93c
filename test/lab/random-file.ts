/**
 * Files for the lab's transfer tests: random content with its sha256, and how many bytes
 * a receiving agent holds in its inbox's partial files (a transfer under way).
 */
import { createHash, randomBytes } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'

const MiB = 1024 * 1024

/** Writes `bytes` random bytes to `file`; returns their sha256 (hex). */
export function writeRandomFile(file: string, bytes: number): string {
  const h = createHash('sha256')
  const fd = fs.openSync(file, 'w')
  for (let left = bytes; left > 0; ) {
    const chunk = randomBytes(Math.min(left, 8 * MiB))
    h.update(chunk)
    fs.writeSync(fd, chunk)
    left -= chunk.length
  }
  fs.closeSync(fd)
  return h.digest('hex')
}

export function sha256File(file: string): string {
  return createHash('sha256').update(fs.readFileSync(file)).digest('hex')
}

/** Bytes in the inbox's partial files (what a transfer under way has delivered). */
export function partialBytes(inbox: string): number {
  const dir = path.join(inbox, '.partial')
  if (!fs.existsSync(dir)) return 0
  return fs.readdirSync(dir).reduce((sum, f) => sum + fs.statSync(path.join(dir, f)).size, 0)
}
