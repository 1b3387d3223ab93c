// natd's process life (src/daemon/main.ts) without the NAT lab: the built natd with a
// config file, driven by signals, watched through natctl and its log. The server address
// is a closed port, so the agent runs unregistered; forwards still listen.
// (Tunnels across SIGTERM/SIGHUP are in test/lab/service.test.ts.)
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { PACKAGE_ROOT } from '../../../src/daemon/service.js'
import { freePort } from '../helpers.js'

const NATD = path.join(PACKAGE_ROOT, 'dist/daemon/main.js')
const NATCTL = path.join(PACKAGE_ROOT, 'dist/cli/main.js')

/**
 * Whether natd listens on `port`. The agent here is unregistered, so it resets each
 * forwarded connection at once (NOT_REGISTERED): on a loaded machine that reset can land
 * before this process sees the connect, and the connect then fails with ECONNRESET. Only
 * ECONNREFUSED means nothing listens.
 */
function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(port, '127.0.0.1')
    c.once('connect', () => {
      c.destroy()
      resolve(true)
    })
    c.once('error', (err: NodeJS.ErrnoException) => resolve(err.code !== 'ECONNREFUSED'))
  })
}

async function until(check: () => boolean | Promise<boolean>, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms
  while (Date.now() < end) {
    if (await check()) return
    await new Promise((r) => setTimeout(r, 50))
  }
  throw new Error(`timed out waiting for ${what}`)
}

describe.skipIf(!fs.existsSync(NATD))('natd with a config file, under signals', () => {
  let dir: string
  let configFile: string
  let socket: string
  let proc: ChildProcess | null = null
  let log = ''

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-main-'))
    configFile = path.join(dir, 'natd.json')
    socket = path.join(dir, 'natd.sock')
    log = ''
  })

  afterEach(() => {
    if (proc && proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL')
    fs.rmSync(dir, { recursive: true, force: true })
  })

  const writeConfig = (c: Record<string, unknown>): void => fs.writeFileSync(configFile, JSON.stringify({ name: 'alice', server: '127.0.0.1:1', ...c }))

  async function start(extra: string[] = []): Promise<ChildProcess> {
    const p = spawn(process.execPath, [NATD, '--config', configFile, '--state-dir', path.join(dir, 'state'), '--socket', socket, '--port', '0', '--no-port-mapping', ...extra], { stdio: ['ignore', 'pipe', 'pipe'] })
    p.stdout!.on('data', (d: Buffer) => (log += d.toString()))
    p.stderr!.on('data', (d: Buffer) => (log += d.toString()))
    proc = p
    await until(() => fs.existsSync(socket) || p.exitCode !== null, 10_000, 'natd socket')
    if (p.exitCode !== null) throw new Error(`natd exited ${p.exitCode}: ${log}`)
    return p
  }

  function natctl(args: string[]): Promise<unknown> {
    return new Promise((resolve, reject) => {
      execFile(process.execPath, [NATCTL, '--socket', socket, '--json', ...args], (err, stdout, stderr) => (err ? reject(new Error(stderr)) : resolve(JSON.parse(stdout))))
    })
  }

  const lines = (message: string): Array<Record<string, unknown>> =>
    log
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((l) => l.message === message)

  async function hup(p: ChildProcess, message = 'config reloaded'): Promise<void> {
    const before = lines(message).length
    p.kill('SIGHUP')
    await until(() => lines(message).length > before, 5_000, message)
  }

  it('SIGHUP applies added, removed and retargeted forwards from the file and keeps natctl\'s; a bad file changes nothing', async () => {
    const [a, b, c] = [await freePort(), await freePort(), await freePort()]
    writeConfig({ forwards: [{ localPort: a, peer: 'bob', remotePort: 22 }] })
    const p = await start()
    expect(await natctl(['forward', 'ls'])).toEqual([expect.objectContaining({ localPort: a, peer: 'bob', remotePort: 22, bind: '127.0.0.1', listening: true, error: null })])
    expect(await accepts(a), log).toBe(true)
    // natctl's own forward, persisted in the state dir as before.
    await natctl(['forward', 'add', String(c), 'carol:80'])

    writeConfig({ forwards: [{ localPort: a, peer: 'bob', remotePort: 22 }, { localPort: b, peer: 'bob', remotePort: 80 }] })
    await hup(p)
    expect(await accepts(b), log).toBe(true)
    expect(((await natctl(['forward', 'ls'])) as Array<{ localPort: number }>).map((f) => f.localPort).sort()).toEqual([a, b, c].sort())

    writeConfig({ forwards: [{ localPort: b, peer: 'dave', remotePort: 8080 }] }) // a removed, b retargeted
    await hup(p)
    expect(await accepts(a)).toBe(false)
    expect(await natctl(['forward', 'ls'])).toEqual([expect.objectContaining({ localPort: c, peer: 'carol' }), expect.objectContaining({ localPort: b, peer: 'dave', remotePort: 8080 })])

    fs.writeFileSync(configFile, '{"name": "alice", "forwards": [{"localPort": 0}]}')
    await hup(p, 'config not reloaded, the running config stays')
    expect(lines('config not reloaded, the running config stays')[0]!.err).toMatch(/"forwards\[0\]\.localPort" must be a port number 1-65535, not 0/)
    expect(((await natctl(['forward', 'ls'])) as unknown[]).length).toBe(2)
    expect(p.exitCode).toBeNull()
  }, 30_000)

  it('a forward whose port is taken at start is listed as not listening, with why; SIGHUP tries it again once the port is free', async () => {
    const a = await freePort()
    const squatter = net.createServer()
    await new Promise<void>((resolve) => squatter.listen(a, '127.0.0.1', resolve))
    writeConfig({ forwards: [{ localPort: a, peer: 'bob', remotePort: 22 }] })
    const p = await start()
    expect(await natctl(['forward', 'ls'])).toEqual([expect.objectContaining({ localPort: a, listening: false, error: `port ${a} on 127.0.0.1 is in use` })])
    await new Promise((resolve) => squatter.close(resolve))
    await hup(p)
    expect(await natctl(['forward', 'ls'])).toEqual([expect.objectContaining({ localPort: a, listening: true, error: null })])
    expect(await accepts(a), log).toBe(true)
  }, 30_000)

  it('SIGHUP applies the log level, says which changes need a restart, and updates exposes', async () => {
    writeConfig({ logLevel: 'info' })
    const p = await start()
    writeConfig({ name: 'alice2', logLevel: 'debug', exposes: [{ port: 22, allow: ['bob'] }] })
    await hup(p)
    expect(lines('config changes that need a restart were not applied')[0]).toMatchObject({ keys: ['name'], hint: 'systemctl restart natd' })
    // bob is pinned nowhere here: the entry is kept unresolved and admits nobody (allow-list.ts).
    expect(await natctl(['expose', 'ls'])).toEqual([{ port: 22, host: '127.0.0.1', allow: [{ name: 'bob', id: null }] }])
    expect(lines('an expose allows a peer by name with no pinned key: it admits nobody until re-added')).toEqual([expect.objectContaining({ level: 'warn', port: 22, peer: 'bob' })])
    expect(((await natctl(['status'])) as { name: string }).name).toBe('alice')
    expect(lines('config file applied')).toEqual([expect.objectContaining({ level: 'debug', exposes: [22] })])
  }, 30_000)

  it('a flag given twice: the last one wins', async () => {
    writeConfig({})
    const p = await start(['--log-level', 'info', '--log-level', 'debug'])
    await until(() => log.includes('"level":"debug"'), 5_000, 'a debug line')
    expect(p.exitCode).toBeNull()
  }, 30_000)

  it('SIGTERM exits 0 at once and removes the socket; a second start reuses the state', async () => {
    writeConfig({})
    const p = await start()
    const id = ((await natctl(['status'])) as { id: string }).id
    const t0 = Date.now()
    const code = await new Promise<number | null>((resolve) => {
      p.once('exit', (c) => resolve(c))
      p.kill('SIGTERM')
    })
    expect(code).toBe(0)
    expect(Date.now() - t0).toBeLessThan(3_000)
    expect(fs.existsSync(socket)).toBe(false)
    expect(lines('shutting down')[0]).toMatchObject({ signal: 'SIGTERM' })
    await start()
    expect(((await natctl(['status'])) as { id: string }).id).toBe(id)
  }, 30_000)

  it('signals that arrive while natd is still starting wait for the start instead of killing it', async () => {
    writeConfig({})
    const p = await start() // returns once the API socket exists, which is before start() has finished
    p.kill('SIGHUP')
    await until(() => lines('config reloaded').length === 1, 10_000, 'the reload, after the start')
    expect(lines('natd started')).toHaveLength(1)
    expect(log.indexOf('"message":"natd started"')).toBeLessThan(log.indexOf('"message":"config reloaded"'))
    const code = await new Promise<number | null>((resolve) => {
      p.once('exit', (c) => resolve(c))
      p.kill('SIGTERM')
    })
    expect(code).toBe(0)
  }, 30_000)

  it('a config file without a name stops natd with exit 2 and says what to set', async () => {
    fs.writeFileSync(configFile, '{"name": "", "server": ""}')
    const r = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
      execFile(process.execPath, [NATD, '--config', configFile, '--state-dir', path.join(dir, 'state'), '--socket', socket], (err, _out, stderr) => resolve({ code: err ? (err.code as number) : 0, stderr }))
    })
    expect(r).toEqual({ code: 2, stderr: `natd: no name: set "name" in ${configFile} (or pass --name NAME)\nTry natd --help\n` })
  })

  it('the lab tests\' dead-peer time (NATD_TEST_TUNNEL_DEAD_MS) is refused when it is not a number of ms', async () => {
    writeConfig({})
    const r = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
      execFile(process.execPath, [NATD, '--config', configFile, '--state-dir', path.join(dir, 'state'), '--socket', socket], { env: { ...process.env, NATD_TEST_TUNNEL_DEAD_MS: '3s' } }, (err, _out, stderr) => resolve({ code: err ? (err.code as number) : 0, stderr }))
    })
    expect(r).toEqual({ code: 2, stderr: 'natd: NATD_TEST_TUNNEL_DEAD_MS must be a whole number of ms, at least 100\nTry natd --help\n' })
  })
})
