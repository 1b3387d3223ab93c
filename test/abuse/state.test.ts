// Abuse rows for the agent's state directory (learnt.json: the server keys pinned on first
// use, written in the background by common/state-files.ts): a local user who can write
// the directory (a group-writable or shared state directory), symlinks in place of the
// file or of its temp file, a huge or malformed file. Real files in a temp directory.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { CONFIG_JSON_FILE, LEARNT_FILE, LEARNT_MAX_BYTES, StateStore } from '../../src/daemon/config.js'
import type { NatdError } from '../../src/protocol/errors.js'
import { writeFileAtomic } from '../../src/common/state-files.js'
import { recordAbuse } from './record.js'

const KEY = 'a'.repeat(52)
const SERVER = 'rv.example.org:3478'

const dirs: string[] = []
afterEach(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true })
})

function stateDir(): { dir: string; victim: string; secret: string } {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-abuse-state-'))
  dirs.push(root)
  const dir = path.join(root, 'state')
  const victim = path.join(root, 'victim.json') // a file natd's user owns, outside the state directory
  const secret = `{"secretKey":"${'5'.repeat(128)}"}\n`
  fs.writeFileSync(victim, secret, { mode: 0o600 })
  return { dir, victim, secret }
}

describe('abuse: the state directory', () => {
  it('1. a symlink planted at learnt.json\'s temp file (or the sync writer\'s): its target is never opened, the pin lands', async () => {
    const { dir, victim, secret } = stateDir()
    const store = new StateStore(dir)
    fs.symlinkSync(victim, path.join(dir, `${LEARNT_FILE}.${process.pid}.bg.tmp`))
    store.pinServerKey(SERVER, KEY)
    await store.flushed()
    const other = path.join(dir, 'other.json')
    fs.symlinkSync(victim, `${other}.${process.pid}.tmp`)
    writeFileAtomic(other, '{"x":1}\n')
    expect(fs.readFileSync(victim, 'utf8')).toBe(secret)
    expect(new StateStore(dir).serverKey(SERVER)).toBe(KEY)
    expect(fs.lstatSync(path.join(dir, LEARNT_FILE)).isFile()).toBe(true)
    recordAbuse({ row: 'a symlink at learnt.json.<pid>.bg.tmp (and <file>.<pid>.tmp) pointing at a file of natd\'s user', metric: 'bytes of the target written over', before: 'all of it: the temp file was opened with O_TRUNC through the link', now: 0, unit: 'bytes', bound: 'temp files are removed and created O_EXCL (never through a link); the pin is written' })
  })

  it('2. a symlink in place of learnt.json: the write replaces the link, never its target', async () => {
    const { dir, victim, secret } = stateDir()
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
    fs.symlinkSync(victim, path.join(dir, LEARNT_FILE))
    const store = new StateStore(dir)
    expect(store.stateWarnings.join('\n')).toMatch(/not a regular file/) // set aside, not read through
    store.pinServerKey(SERVER, KEY)
    await store.flushed()
    expect(fs.readFileSync(victim, 'utf8')).toBe(secret)
    expect(fs.lstatSync(path.join(dir, LEARNT_FILE)).isSymbolicLink()).toBe(false)
    recordAbuse({ row: 'a symlink in place of learnt.json', metric: 'bytes of the target written over', before: '(new row)', now: 0, unit: 'bytes', bound: 'a learnt.json that is no regular file is set aside unread (renamed: the link itself); writes rename over the name, never open it' })
  })

  it('3. a learnt.json that group or others may write: its pins do not count, and the start says why', async () => {
    const { dir } = stateDir()
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
    const file = path.join(dir, LEARNT_FILE)
    fs.writeFileSync(file, JSON.stringify({ serverKeys: { [SERVER]: KEY } }))
    fs.chmodSync(file, 0o666) // anyone who reached it may have put a server key of theirs there
    const store = new StateStore(dir)
    expect(store.serverKey(SERVER)).toBeUndefined()
    expect(store.stateWarnings.join('\n')).toMatch(/others may write/)
    // A fresh state directory and its learnt.json are natd's alone.
    const fresh = stateDir()
    const s2 = new StateStore(fresh.dir)
    s2.pinServerKey(SERVER, KEY)
    await s2.flushed()
    expect(fs.statSync(fresh.dir).mode & 0o777).toBe(0o700)
    expect(fs.statSync(path.join(fresh.dir, LEARNT_FILE)).mode & 0o777).toBe(0o600)
    expect(s2.stateWarnings).toEqual([])
    recordAbuse({ row: 'a learnt.json (0666) holding a server key', metric: 'pins trusted from it', before: 'all of them, silently: a local user could pin their own server\'s key', now: store.serverKey(SERVER) === undefined ? 0 : 1, unit: 'pins', bound: 'none: the file is set aside, the warning (natctl status) names it' })
  })

  it('3b. a state directory others may write, or a config.json others may write (an expose and a pin for the attacker\'s key): natd does not start on it', () => {
    const { dir } = stateDir()
    const store = new StateStore(dir)
    store.pinPeer('bob', KEY)
    fs.mkdirSync(dir, { recursive: true })
    fs.chmodSync(dir, 0o777)
    const refused = (): string => {
      try {
        new StateStore(dir)
      } catch (err) {
        return (err as NatdError).code
      }
      return 'started'
    }
    const dirVerdict = refused()
    expect(dirVerdict).toBe('UNSAFE_STATE')
    fs.chmodSync(dir, 0o700)
    const file = path.join(dir, CONFIG_JSON_FILE)
    fs.writeFileSync(file, JSON.stringify({ exposes: [{ port: 22, host: '127.0.0.1', allow: [{ name: 'bob', id: KEY }] }], knownPeers: { bob: KEY } }))
    fs.chmodSync(file, 0o666)
    const fileVerdict = refused()
    expect(fileVerdict).toBe('UNSAFE_STATE')
    recordAbuse({ row: 'a state directory (0777), then a config.json (0666) with an expose and a pin for the attacker\'s key', metric: 'starts on it', before: 'the directory: a warning, natd started; config.json: read and trusted silently', now: [dirVerdict, fileVerdict].filter((v) => v === 'started').length, unit: 'starts', bound: 'natd refuses to start (UNSAFE_STATE) and says which file and how to fix it' })
  })

  it('4. a huge learnt.json (64 MiB of valid JSON): set aside without reading it, the start is not held up', async () => {
    const { dir } = stateDir()
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
    const file = path.join(dir, LEARNT_FILE)
    const fd = fs.openSync(file, 'w', 0o600)
    fs.writeSync(fd, `{"serverKeys":{"${SERVER}":"${KEY}"},"pad":"`)
    const pad = Buffer.alloc(1024 * 1024, 'x')
    for (let i = 0; i < 64; i++) fs.writeSync(fd, pad)
    fs.writeSync(fd, '"}')
    fs.closeSync(fd)
    const heap = process.memoryUsage().heapUsed
    const t0 = Date.now()
    const store = new StateStore(dir)
    const ms = Date.now() - t0
    expect(store.serverKey(SERVER)).toBeUndefined()
    expect(store.stateWarnings.join('\n')).toMatch(/larger than/)
    expect(fs.readdirSync(dir).some((n) => n.startsWith(`${LEARNT_FILE}.bad-`))).toBe(true)
    expect(process.memoryUsage().heapUsed - heap).toBeLessThan(32 * 1024 * 1024)
    recordAbuse({ row: 'a 64 MiB learnt.json', metric: 'time to open the state', before: 'read and parsed whole at every start', now: ms, unit: 'ms', bound: `more than LEARNT_MAX_BYTES (${LEARNT_MAX_BYTES}) is set aside unread` })
  })
})
