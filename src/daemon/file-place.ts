/**
 * Where a received file goes: the first free name among `name`, `name-1` … `name-9`
 * (MAX_NAME_SUFFIX), then a few random ones, each taken with link() (which never replaces
 * a file, and of two at once only one wins). At most MAX_NAME_SUFFIX + 1 +
 * RANDOM_NAME_TRIES link() calls per file, and a file always gets a name: a random
 * 64-bit suffix is not one strangers can take ahead.
 */
import { randomBytes } from 'node:crypto'
import fsp from 'node:fs/promises'
import path from 'node:path'
import { NatdError } from '../protocol/errors.js'
import { fsyncDirAsync } from '../common/state-files.js'
import { MAX_NAME_SUFFIX, RANDOM_NAME_TRIES, suffixedName } from './file-names.js'

/** Random suffix length: 8 bytes, 16 hex digits. */
const RANDOM_SUFFIX_BYTES = 8

/** The names tried for `name`, in order. */
export function candidateNames(name: string, random: (bytes: number) => Buffer = randomBytes): string[] {
  const out: string[] = []
  for (let i = 0; i <= MAX_NAME_SUFFIX; i++) out.push(suffixedName(name, i))
  for (let i = 0; i < RANDOM_NAME_TRIES; i++) out.push(suffixedName(name, random(RANDOM_SUFFIX_BYTES).toString('hex')))
  return out
}

/** Links the verified partial to the first free name (never overwriting anything), then drops the partial; the directory's fsync off the event loop. */
export async function placeFile(partial: string, inbox: string, name: string): Promise<string> {
  for (const free of candidateNames(name)) {
    const candidate = path.join(inbox, free)
    try {
      await fsp.link(partial, candidate) // fails with EEXIST instead of replacing (and two at once cannot both win)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') continue
      throw err
    }
    await fsp.rm(partial, { force: true })
    await fsyncDirAsync(inbox)
    return candidate
  }
  throw new NatdError('INVALID_ARGUMENT', `no free name for ${name} in ${inbox}`)
}
