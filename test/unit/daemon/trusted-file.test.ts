// Files natd takes its trust from (src/daemon/trusted-file.ts): the state directory and
// its config.json (StateStore), and the --config file (readConfigFile). A local user who
// may write one of them could add an expose for their key or pin their key for a peer's
// name: natd refuses to start with UNSAFE_STATE, naming the file, why and the fix.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { CONFIG_JSON_FILE, CONFIG_JSON_MAX_BYTES, readConfigFile, StateStore } from '../../../src/daemon/config.js'
import { untrustedBecause } from '../../../src/daemon/trusted-file.js'
import { NatdError } from '../../../src/protocol/errors.js'

const BOB_ID = 'b'.repeat(51) + 'q'
const EVE_ID = 'e'.repeat(51) + 'q'

function unsafeError(fn: () => unknown): string {
  try {
    fn()
  } catch (err) {
    expect(err).toBeInstanceOf(NatdError)
    expect((err as NatdError).code).toBe('UNSAFE_STATE')
    return (err as Error).message
  }
  throw new Error('did not throw')
}

/** Stats as lstat gives them, for the ownership rule (a test cannot chown without root). */
function stats(o: { uid: number; mode: number; size?: number; kind?: 'file' | 'dir' | 'link' }): fs.Stats {
  const kind = o.kind ?? 'file'
  return { uid: o.uid, mode: o.mode, size: o.size ?? 10, isFile: () => kind === 'file', isDirectory: () => kind === 'dir' } as fs.Stats
}

describe('untrustedBecause', () => {
  const NATD = 990
  it('natd\'s own file or directory, group and others unable to write: trusted', () => {
    expect(untrustedBecause(stats({ uid: NATD, mode: 0o600 }), { rootMayOwn: false }, NATD)).toBeNull()
    expect(untrustedBecause(stats({ uid: NATD, mode: 0o644 }), { rootMayOwn: false }, NATD)).toBeNull()
    expect(untrustedBecause(stats({ uid: NATD, mode: 0o700, kind: 'dir' }), { rootMayOwn: true, directory: true }, NATD)).toBeNull()
  })

  it('root\'s only where the rule lets root own it (the --config file, config.json, the state directory; never learnt.json)', () => {
    expect(untrustedBecause(stats({ uid: 0, mode: 0o640 }), { rootMayOwn: true }, NATD)).toBeNull()
    expect(untrustedBecause(stats({ uid: 0, mode: 0o640 }), { rootMayOwn: false }, NATD)).toMatch(/owned by uid 0, not by natd \(uid 990\)$/)
  })

  it('another user\'s, writable by group or others, a symlink, a file for a directory, too large: each says why', () => {
    expect(untrustedBecause(stats({ uid: 1000, mode: 0o600 }), { rootMayOwn: true }, NATD)).toBe('owned by uid 1000, not by natd (uid 990) or root')
    expect(untrustedBecause(stats({ uid: NATD, mode: 0o620 }), { rootMayOwn: true }, NATD)).toBe('group or others may write it (mode 0620)')
    expect(untrustedBecause(stats({ uid: 0, mode: 0o1777, kind: 'dir' }), { rootMayOwn: true, directory: true }, NATD)).toBe('group or others may write it (mode 1777)') // sticky /tmp is no state directory
    expect(untrustedBecause(stats({ uid: NATD, mode: 0o777, kind: 'link' }), { rootMayOwn: true }, NATD)).toBe('not a regular file')
    expect(untrustedBecause(stats({ uid: NATD, mode: 0o600 }), { rootMayOwn: true, directory: true }, NATD)).toBe('not a directory')
    expect(untrustedBecause(stats({ uid: NATD, mode: 0o600, size: 101 }), { rootMayOwn: true, maxBytes: 100 }, NATD)).toBe('larger than 100 bytes')
  })
})

describe('natd refuses state and config files others may write (UNSAFE_STATE)', () => {
  let tmp: string
  let dir: string

  beforeEach(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-trusted-'))
    dir = path.join(tmp, 'state')
  })
  afterEach(() => {
    fs.rmSync(tmp, { recursive: true, force: true })
  })

  /** A state directory as an earlier start left it, bob pinned. */
  function earlierStart(): string {
    const store = new StateStore(dir)
    store.setConfig({ name: 'alice', server: 'rv.example.net:3478', heartbeatMs: 20_000, port: 0, logLevel: 'info', secretFile: null, inbox: null, portMapping: true })
    return path.join(dir, CONFIG_JSON_FILE)
  }

  it('a state directory group or others may write: refused, where it was a warning before', () => {
    fs.mkdirSync(dir, { mode: 0o700 })
    fs.chmodSync(dir, 0o770)
    expect(unsafeError(() => new StateStore(dir))).toMatch(new RegExp(`^refusing the state directory ${dir}: group or others may write it \\(mode 0770\\).*chmod 700`))
    fs.chmodSync(dir, 0o700)
    expect(new StateStore(dir).stateWarnings).toEqual([])
  })

  it('a parent of the state directory others may write (not sticky): refused, naming the parent, also through a symlink; a sticky parent (/tmp, /dev/shm) with our directory in it passes', () => {
    const open = path.join(tmp, 'open')
    fs.mkdirSync(open)
    fs.chmodSync(open, 0o777)
    const inOpen = path.join(open, 'state')
    expect(unsafeError(() => new StateStore(inOpen))).toMatch(new RegExp(`^refusing the state directory ${inOpen}: its parent ${open} is writable by others \\(mode 0777\\), so it could be swapped`))
    const link = path.join(tmp, 'linked-state')
    fs.symlinkSync(inOpen, link)
    expect(unsafeError(() => new StateStore(link))).toMatch(new RegExp(`its parent ${open} is writable by others`))
    fs.chmodSync(open, 0o1777)
    expect(new StateStore(inOpen).stateWarnings).toEqual([])
    expect(new StateStore(link).stateWarnings).toEqual([])
    fs.chmodSync(open, 0o775)
    expect(unsafeError(() => new StateStore(inOpen))).toMatch(/is writable by its group \(mode 0775\)/)
  })

  it.skipIf(process.getuid?.() !== 0)('a parent of the state directory another user owns: refused (they could rename it); root\'s or ours passes', () => {
    const theirs = path.join(tmp, 'theirs')
    fs.mkdirSync(theirs, { mode: 0o755 })
    const state = path.join(theirs, 'state')
    fs.mkdirSync(state, { mode: 0o700 })
    fs.chownSync(theirs, 1234, 1234)
    expect(unsafeError(() => new StateStore(state))).toMatch(new RegExp(`its parent ${theirs} is owned by uid 1234, not by natd \\(uid 0\\) or root`))
    fs.chownSync(theirs, 0, 0)
    expect(new StateStore(state).stateWarnings).toEqual([])
  })

  it('config.json that others may write, with an expose for eve\'s key and eve pinned as bob: refused, not read', () => {
    const file = earlierStart()
    const planted = { ...JSON.parse(fs.readFileSync(file, 'utf8')), exposes: [{ port: 22, host: '127.0.0.1', allow: [{ name: 'bob', id: EVE_ID }] }], knownPeers: { bob: EVE_ID } }
    fs.writeFileSync(file, JSON.stringify(planted))
    fs.chmodSync(file, 0o666)
    expect(unsafeError(() => new StateStore(dir))).toMatch(/^refusing the state file .*config\.json: group or others may write it \(mode 0666\)/)
    fs.chmodSync(file, 0o600) // the owner looked and keeps it
    expect(new StateStore(dir).knownPeer('bob')).toBe(EVE_ID)
  })

  it('config.json that is a symlink (to a file of natd\'s user elsewhere): refused, its target never read', () => {
    const file = earlierStart()
    const elsewhere = path.join(tmp, 'elsewhere.json')
    fs.writeFileSync(elsewhere, JSON.stringify({ knownPeers: { bob: BOB_ID } }), { mode: 0o600 })
    fs.rmSync(file)
    fs.symlinkSync(elsewhere, file)
    expect(unsafeError(() => new StateStore(dir))).toMatch(/config\.json: not a regular file/)
  })

  it('config.json larger than CONFIG_JSON_MAX_BYTES: refused before it is parsed', () => {
    const file = earlierStart()
    fs.truncateSync(file, CONFIG_JSON_MAX_BYTES + 1)
    expect(unsafeError(() => new StateStore(dir))).toMatch(new RegExp(`config\\.json: larger than ${CONFIG_JSON_MAX_BYTES} bytes`))
  })

  it('the --config file others may write: refused; 0640 and a symlink to a safe file are read', () => {
    const file = path.join(tmp, 'natd.json')
    fs.writeFileSync(file, JSON.stringify({ name: 'alice', exposes: [{ port: 22, allow: [EVE_ID] }] }))
    fs.chmodSync(file, 0o664)
    expect(unsafeError(() => readConfigFile(file))).toMatch(new RegExp(`^refusing the config file ${file}: group or others may write it \\(mode 0664\\)`))
    fs.chmodSync(file, 0o640)
    expect(readConfigFile(file).name).toBe('alice')
    const link = path.join(tmp, 'linked.json')
    fs.symlinkSync(file, link)
    expect(readConfigFile(link).name).toBe('alice') // the file it leads to is judged
    fs.chmodSync(file, 0o666)
    expect(unsafeError(() => readConfigFile(link))).toMatch(/group or others may write it \(mode 0666\)/)
  })
})
