// natd-rendezvous as an operator runs it (dist/rendezvous/main.js, after `npm run build`):
// the server's key file (--print-key, --key-file, refused when loose or corrupt), the
// start-up line naming the key, and `names ls|rm` on a state directory.
import { spawn, spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { peerId } from '../../../src/protocol/identity.js'
import { freePort } from '../helpers.js'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..')
const MAIN = path.join(ROOT, 'dist/rendezvous/main.js')
const built = fs.existsSync(MAIN)
const A = Buffer.alloc(32, 1)
const B = Buffer.alloc(32, 2)

function run(args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [MAIN, ...args], { encoding: 'utf8', timeout: 10_000 })
  return { code: r.status, stdout: r.stdout, stderr: r.stderr }
}

describe.skipIf(!built)('natd-rendezvous command line', () => {
  let dir: string
  let state: string

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-rdv-cli-'))
    state = path.join(dir, 'state')
  })
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }))

  it('--print-key creates the key (0600, in a 0700 directory) and prints the same peer ID every time', () => {
    const first = run(['--print-key', '--state-dir', state])
    expect(first).toMatchObject({ code: 0, stderr: '' })
    expect(first.stdout).toMatch(/^[a-z2-7]{52}\n$/)
    expect(run(['--print-key', '--state-dir', state]).stdout).toBe(first.stdout)
    const keyFile = path.join(state, 'server-key.json')
    expect(fs.statSync(keyFile).mode & 0o777).toBe(0o600)
    expect(fs.statSync(state).mode & 0o777).toBe(0o700)
    const raw = JSON.parse(fs.readFileSync(keyFile, 'utf8')) as { publicKey: string }
    expect(peerId(Buffer.from(raw.publicKey, 'hex'))).toBe(first.stdout.trim())
  })

  it('--key-file puts the key elsewhere (instances of one deployment share it)', () => {
    const shared = path.join(dir, 'shared', 'key.json')
    const one = run(['--print-key', '--state-dir', state, '--key-file', shared])
    expect(one.code).toBe(0)
    expect(fs.existsSync(path.join(state, 'server-key.json'))).toBe(false)
    expect(run(['--print-key', '--state-dir', path.join(dir, 'other'), '--key-file', shared]).stdout).toBe(one.stdout)
  })

  it('refuses a key file others may read, and a corrupt one, with exit 2 and what to do', () => {
    const keyFile = path.join(state, 'server-key.json')
    expect(run(['--print-key', '--state-dir', state]).code).toBe(0)
    fs.chmodSync(keyFile, 0o644)
    const loose = run(['--print-key', '--state-dir', state])
    expect(loose.code).toBe(2)
    expect(loose.stderr).toContain(`chmod 600 ${keyFile}`)
    fs.chmodSync(keyFile, 0o600)
    fs.writeFileSync(keyFile, '{"publicKey": "00"}')
    const corrupt = run(['--print-key', '--state-dir', state])
    expect(corrupt.code).toBe(2)
    expect(corrupt.stderr).toContain('is corrupt')
    expect(fs.readFileSync(keyFile, 'utf8')).toBe('{"publicKey": "00"}') // never overwritten
  })

  it('names rm appends a release, names ls --json lists what is left; an unknown name exits 1', () => {
    fs.mkdirSync(state, { mode: 0o700 })
    const file = path.join(state, 'names.jsonl')
    const t = Date.UTC(2026, 0, 2, 3, 4)
    fs.writeFileSync(file, [{ op: 'bind', name: 'alice', key: A.toString('hex'), t }, { op: 'bind', name: 'bob', key: B.toString('hex'), t }].map((l) => JSON.stringify(l) + '\n').join(''))
    const rm = run(['names', 'rm', 'alice', '--state-dir', state])
    expect(rm.code).toBe(0)
    expect(rm.stdout).toContain(`released alice (was bound to ${peerId(A)})`)
    expect(fs.readFileSync(file, 'utf8').trim().split('\n').pop()).toMatch(/^\{"op":"release","name":"alice","t":\d+\}$/)
    const ls = run(['names', 'ls', '--json', '--state-dir', state])
    expect(ls.code).toBe(0)
    expect(JSON.parse(ls.stdout)).toEqual([{ name: 'bob', id: peerId(B), boundAt: new Date(t).toISOString(), lastSeenAt: new Date(t).toISOString() }])
    expect(run(['names', 'ls', '--state-dir', state]).stdout).toMatch(/^NAME +PEER ID +BOUND +LAST SEEN\nbob +[a-z2-7]{52} +2026-01-02 03:04 +2026-01-02 03:04\n$/)
    const unknown = run(['names', 'rm', 'alice', '--state-dir', state])
    expect(unknown.code).toBe(1)
    expect(unknown.stderr).toContain('the name alice is not bound')
  })

  it('keeps the default command strict: an unknown flag or word is a usage error', () => {
    expect(run(['--bogus', '--state-dir', state]).code).toBe(2)
    expect(run(['bogus', '--state-dir', state]).code).toBe(2)
    expect(run(['names', '--state-dir', state]).code).toBe(2)
  })

  it('refuses a limit that is not a positive integer', () => {
    for (const bad of [['--max-unauth-per-ip', '0'], ['--introductions-per-minute', '1.5'], ['--auth-timeout', '0s']]) {
      const r = run([...bad, '--state-dir', state])
      expect(r.code, bad.join(' ')).toBe(2)
      expect(r.stderr).toContain(bad[0])
    }
  })

  it('logs its key and its limits in the start-up line (a flag given twice: the last wins)', async () => {
    const id = run(['--print-key', '--state-dir', state]).stdout.trim()
    const port = await freePort()
    const limits = ['--max-unauth-per-ip', '5', '--max-unauth-per-ip', '7', '--introductions-per-minute', '30']
    const proc = spawn(process.execPath, [MAIN, '--host', '127.0.0.1', '--port', String(port), '--alt-port', '0', '--state-dir', state, ...limits], { stdio: ['ignore', 'pipe', 'pipe'] })
    try {
      let out = ''
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no start-up line: ${out}`)), 10_000)
        proc.stdout.on('data', (d: Buffer) => {
          out += d.toString()
          if (out.includes('rendezvous listening')) {
            clearTimeout(timer)
            resolve()
          }
        })
        proc.once('exit', (code) => reject(new Error(`exited ${code}: ${out}`)))
      })
      const line = out.split('\n').find((l) => l.includes('rendezvous listening'))!
      expect(line).toContain(id)
      expect(line).toContain('"maxUnauthPerSource":7')
      expect(line).toContain('"introductionsPerMinute":30')
      expect(fs.existsSync(path.join(state, 'names.jsonl'))).toBe(true)
    } finally {
      proc.kill('SIGTERM')
      await new Promise((resolve) => proc.once('exit', resolve))
    }
  })
})
