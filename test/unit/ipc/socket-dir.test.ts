// The socket directory rule (src/ipc/socket-dir.ts): the decision on made-up facts, then
// real directories in a temp dir (the suite runs as root, so it can chown to nobody).
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { checkSocketDir, judgeSocketDirChain, type DirFacts } from '../../../src/ipc/socket-dir.js'
import { NatdError } from '../../../src/protocol/errors.js'

const ME = 1000
const NOBODY = 65534
const dir = (p: string, uid: number, mode: number): DirFacts => ({ path: p, uid, mode: 0o040000 | mode, isDirectory: true })
const ROOT = dir('/', 0, 0o755)
const TMP = dir('/tmp', 0, 0o1777)

describe('judgeSocketDirChain', () => {
  it('accepts $XDG_RUNTIME_DIR/natd: /run/user/UID is ours, 0700', () => {
    const chain = [ROOT, dir('/run', 0, 0o755), dir('/run/user', 0, 0o755), dir('/run/user/1000', ME, 0o700), dir('/run/user/1000/natd', ME, 0o750)]
    expect(judgeSocketDirChain(chain, ME)).toEqual({ kind: 'safe' })
  })

  it('accepts our own /tmp/natd-UID/natd under the sticky /tmp', () => {
    expect(judgeSocketDirChain([ROOT, TMP, dir('/tmp/natd-1000', ME, 0o750), dir('/tmp/natd-1000/natd', ME, 0o750)], ME)).toEqual({ kind: 'safe' })
  })

  it('refuses /tmp/natd-UID made by another user, whatever its mode', () => {
    const v = judgeSocketDirChain([ROOT, TMP, dir('/tmp/natd-1000', NOBODY, 0o755), dir('/tmp/natd-1000/natd', ME, 0o750)], ME)
    expect(v).toEqual({ kind: 'unsafe', path: '/tmp/natd-1000', reason: 'is owned by uid 65534, not by us (uid 1000) or root' })
  })

  it('refuses a world-writable directory on the way even when it is ours', () => {
    const v = judgeSocketDirChain([ROOT, TMP, dir('/tmp/natd-1000', ME, 0o777), dir('/tmp/natd-1000/natd', ME, 0o750)], ME)
    expect(v).toMatchObject({ kind: 'unsafe', path: '/tmp/natd-1000', reason: 'is writable by others (mode 0777)' })
  })

  it('refuses a group-writable socket directory', () => {
    expect(judgeSocketDirChain([ROOT, dir('/srv', ME, 0o770)], ME)).toMatchObject({ kind: 'unsafe', reason: 'is writable by its group (mode 0770)' })
  })

  it('refuses a sticky world-writable socket directory (--socket /tmp/x.sock): the name can be taken first', () => {
    expect(judgeSocketDirChain([ROOT, TMP], ME)).toMatchObject({ kind: 'unsafe', path: '/tmp' })
  })

  it('accepts /run/natd as systemd makes it (natd:natd or root:natd, 0750) for a natctl run by a group member', () => {
    const run = dir('/run', 0, 0o755)
    expect(judgeSocketDirChain([ROOT, run, dir('/run/natd', 991, 0o750)], ME)).toEqual({ kind: 'safe' })
    expect(judgeSocketDirChain([ROOT, run, dir('/run/natd', 0, 0o750)], ME)).toEqual({ kind: 'safe' })
    expect(judgeSocketDirChain([ROOT, run, dir('/run/natd', 991, 0o750)], 991)).toEqual({ kind: 'safe' })
  })

  it("refuses an ancestor owned by another user even inside a root-only directory: they could swap what is below", () => {
    const v = judgeSocketDirChain([ROOT, dir('/home', 0, 0o755), dir('/home/eve', NOBODY, 0o755), dir('/home/eve/natd', ME, 0o700)], ME)
    expect(v).toMatchObject({ kind: 'unsafe', path: '/home/eve' })
  })

  it("refuses a directory of another user inside another user's directory", () => {
    const v = judgeSocketDirChain([ROOT, dir('/home', 0, 0o755), dir('/home/eve', NOBODY, 0o755), dir('/home/eve/natd', NOBODY, 0o755)], ME)
    expect(v).toMatchObject({ kind: 'unsafe', path: '/home/eve' })
  })

  it('refuses a file where a directory should be', () => {
    expect(judgeSocketDirChain([ROOT, { path: '/x', uid: ME, mode: 0o100644, isDirectory: false }], ME)).toMatchObject({ kind: 'unsafe', reason: 'is not a directory' })
  })
})

describe('checkSocketDir on real directories', () => {
  let tmp: string
  beforeEach(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-sockdir-'))
  })
  afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }))

  const code = (fn: () => unknown): string | undefined => {
    try {
      fn()
      return undefined
    } catch (err) {
      return err instanceof NatdError ? err.code : String(err)
    }
  }

  it('accepts a fresh private directory, and reports a missing one as absent', () => {
    fs.mkdirSync(path.join(tmp, 'run'), { mode: 0o750 })
    expect(checkSocketDir(path.join(tmp, 'run', 'natd.sock'))).toBe(true)
    expect(checkSocketDir(path.join(tmp, 'nothing', 'natd.sock'))).toBe(false)
  })

  it('refuses a 0777 directory with UNSAFE_SOCKET and a message that says which and why', () => {
    const planted = path.join(tmp, 'natd-1000')
    fs.mkdirSync(planted)
    fs.chmodSync(planted, 0o777)
    fs.mkdirSync(path.join(planted, 'natd'), { mode: 0o750 })
    expect(() => checkSocketDir(path.join(planted, 'natd', 'natd.sock'))).toThrow(`${planted} is writable by others (mode 0777)`)
    expect(code(() => checkSocketDir(path.join(planted, 'natd', 'natd.sock')))).toBe('UNSAFE_SOCKET')
  })

  it.skipIf(process.getuid?.() !== 0)('refuses a directory owned by another user (chown nobody), also through a symlink', () => {
    fs.chmodSync(tmp, 0o1777) // like /tmp: anyone may create the name first
    const planted = path.join(tmp, 'natd-1000')
    fs.mkdirSync(planted, { mode: 0o755 })
    fs.chownSync(planted, NOBODY, NOBODY)
    expect(code(() => checkSocketDir(path.join(planted, 'natd.sock')))).toBe('UNSAFE_SOCKET')
    fs.symlinkSync(planted, path.join(tmp, 'link'))
    expect(() => checkSocketDir(path.join(tmp, 'link', 'natd.sock'))).toThrow('is owned by uid 65534')
  })

  it.skipIf(process.getuid?.() !== 0)('accepts a directory of another user that only root could have made (/run/natd as natd:natd)', () => {
    fs.chmodSync(tmp, 0o755)
    const runNatd = path.join(tmp, 'natd')
    fs.mkdirSync(runNatd, { mode: 0o750 })
    fs.chownSync(runNatd, NOBODY, NOBODY)
    expect(checkSocketDir(path.join(runNatd, 'natd.sock'), 1000)).toBe(true)
  })
})
