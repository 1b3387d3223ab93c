// The uid proof (src/ipc/uid-proof.ts) against real files in a temp dir: what it accepts
// and every way it refuses.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { checkProof, MAX_PROOF_PATH, newNonce, PROOF_DEADLINE_MS, PROOF_PREFIX } from '../../../src/ipc/uid-proof.js'
import { NatdError } from '../../../src/protocol/errors.js'

const me = process.getuid!()
let dir: string
let nonce: string
const T0 = 1_000_000
const clock = (ms = T0 + 10) => () => ms

/** A proof file as natctl makes it: empty, 0600, named with the nonce. */
function makeProof(name = PROOF_PREFIX + nonce, mode = 0o600): string {
  const file = path.join(dir, name)
  const fd = fs.openSync(file, 'wx', mode)
  fs.fchmodSync(fd, mode)
  fs.closeSync(fd)
  return file
}

async function refusal(p: Promise<void>): Promise<string> {
  const err = await p.then(
    () => null,
    (e: unknown) => e
  )
  expect(err).toBeInstanceOf(NatdError)
  expect((err as NatdError).code).toBe('UNAUTHORIZED')
  return (err as Error).message
}

describe('uid proof', () => {
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-proof-test-'))
    nonce = newNonce()
  })
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }))

  it('accepts an empty 0600 file of the claimed uid named with the nonce', async () => {
    await expect(checkProof({ path: makeProof(), uid: me }, nonce, T0, clock())).resolves.toBeUndefined()
  })

  it('nonces are fresh and 128 bits', () => {
    expect(newNonce()).toMatch(/^[0-9a-f]{32}$/)
    expect(newNonce()).not.toBe(newNonce())
  })

  it('refuses a file named with another nonce (wrong content)', async () => {
    const file = makeProof(PROOF_PREFIX + newNonce())
    expect(await refusal(checkProof({ path: file, uid: me }, nonce, T0, clock()))).toMatch(/named/)
  })

  it('refuses a symbolic link to a good file', async () => {
    const target = makeProof(PROOF_PREFIX + nonce)
    const sub = fs.mkdtempSync(path.join(dir, 'l-'))
    const link = path.join(sub, PROOF_PREFIX + nonce)
    fs.symlinkSync(target, link)
    expect(await refusal(checkProof({ path: link, uid: me }, nonce, T0, clock()))).toMatch(/symbolic link/)
  })

  it('refuses a hard link (nlink > 1): someone else’s file linked under the nonce’s name', async () => {
    const other = makeProof('someone-elses-file')
    const link = path.join(dir, PROOF_PREFIX + nonce)
    fs.linkSync(other, link)
    expect(await refusal(checkProof({ path: link, uid: me }, nonce, T0, clock()))).toMatch(/more than one link/)
  })

  it('refuses a claim of another uid than the file’s owner', async () => {
    const file = makeProof()
    expect(await refusal(checkProof({ path: file, uid: me + 1 }, nonce, T0, clock()))).toMatch(`belongs to uid ${me}, not ${me + 1}`)
  })

  it('refuses a directory', async () => {
    const d = path.join(dir, PROOF_PREFIX + nonce)
    fs.mkdirSync(d, { mode: 0o700 })
    expect(await refusal(checkProof({ path: d, uid: me }, nonce, T0, clock()))).toMatch(/not a regular file/)
  })

  it('refuses a file that is not empty (too large)', async () => {
    const file = makeProof()
    fs.writeFileSync(file, nonce)
    expect(await refusal(checkProof({ path: file, uid: me }, nonce, T0, clock()))).toMatch(/empty/)
  })

  it('refuses a mode other than 0600 (made by something other than a proving client)', async () => {
    const file = makeProof(PROOF_PREFIX + nonce, 0o644)
    expect(await refusal(checkProof({ path: file, uid: me }, nonce, T0, clock()))).toMatch(/0600/)
  })

  it('refuses a proof after the deadline', async () => {
    const file = makeProof()
    expect(await refusal(checkProof({ path: file, uid: me }, nonce, T0, clock(T0 + PROOF_DEADLINE_MS + 1)))).toMatch(/too late/)
  })

  it('refuses a relative path, a path with NUL and an over-long path, without looking', async () => {
    makeProof()
    const rel = path.relative(process.cwd(), path.join(dir, PROOF_PREFIX + nonce))
    expect(await refusal(checkProof({ path: rel, uid: me }, nonce, T0, clock()))).toMatch(/absolute/)
    expect(await refusal(checkProof({ path: `${dir}/\0/${PROOF_PREFIX}${nonce}`, uid: me }, nonce, T0, clock()))).toMatch(/absolute/)
    const long = '/' + 'a/'.repeat(MAX_PROOF_PATH / 2) + PROOF_PREFIX + nonce
    expect(await refusal(checkProof({ path: long, uid: me }, nonce, T0, clock()))).toMatch(/longer/)
  })

  it('refuses a missing file', async () => {
    expect(await refusal(checkProof({ path: path.join(dir, PROOF_PREFIX + nonce), uid: me }, nonce, T0, clock()))).toMatch(/ENOENT/)
  })
})
