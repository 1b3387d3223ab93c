// Abuse suite, local API (issue "Abuse resistance"): a real ApiServer with the default
// limits on a Unix socket in a temp dir, a real natctl (dist/cli/main.js) and, for the
// planted directory, a real natd — each attack bounded in count and time.
//
//   attacker ──200 idle conns──▶ ┌──────────┐ ◀── honest natctl status
//   subscriber that never reads ◀│ ApiServer│ ── 1,000 × 16 KB message events
//                                └──────────┘
//   /tmp/natd-$UID planted by another user ◀── natd / natctl without XDG_RUNTIME_DIR
import { execFile, spawn } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { ApiClient } from '../../src/ipc/client.js'
import type { MessageInfo, StatusResult } from '../../src/ipc/schema.js'
import { ApiServer, MAX_API_CONNECTIONS, MAX_QUEUED_BYTES, UNPROVEN_API_SHARE, type Handlers } from '../../src/ipc/server.js'
import { fakeStatus } from '../unit/helpers.js'
import { NatdError } from '../../src/protocol/errors.js'
import { silentLogger, type Logger } from '../../src/protocol/log.js'
import { recordAbuse } from './record.js'

const ROOT = fileURLToPath(new URL('../../', import.meta.url))
const NATCTL = path.join(ROOT, 'dist/cli/main.js')
const NATD = path.join(ROOT, 'dist/daemon/main.js')
const API_HOLDER = path.join(ROOT, 'test/abuse/fixtures/api-holder.ts')
/** The per-uid row's attacker runs as this user (nobody/nogroup). */
const NOBODY = 65534

/** Idle connections the attacker holds (the issue measured 64; we go well past the cap). */
const IDLE_ATTACK_CONNECTIONS = 200
/** Honest calls measured while the attack holds its connections. */
const HONEST_CALLS = 20
/** An honest call must be answered within this, attack or not (natctl's own start-up is not in it). */
const HONEST_CALL_BOUND_MS = 500
/**
 * Against a reconnecting attacker an honest call must be answered, within this: it
 * contends for the event loop with 200 churning clients, and its latency follows the
 * machine's load (25 ms on an idle machine, 278 and 683 ms on a loaded one). The figure
 * is recorded; the assertion is that every call gets in.
 */
const HONEST_CALL_DEADLINE_MS = 5_000
const EVENTS = 1_000
const EVENT_TEXT_BYTES = 16 * 1024
/** The whole process may not grow more than this while 1,000 × 16 KB go to a non-reader. */
const RSS_BOUND_BYTES = 8 * 1024 * 1024

const STATUS: StatusResult = fakeStatus({ version: '0.0.0-abuse', serverKey: null, lan: [] })

/** status answers; peers never does (what an attacker holds in flight); the rest are not needed. */
const handlers = new Proxy({} as Handlers, {
  get: (_, method) =>
    method === 'status' ? () => STATUS : method === 'peers' ? () => new Promise(() => undefined) : () => Promise.reject(new NatdError('INTERNAL', `${String(method)} not stubbed`))
})

function run(file: string, args: string[], opts: { uid?: number; gid?: number; env?: NodeJS.ProcessEnv } = {}): Promise<{ code: number; stdout: string; stderr: string; ms: number }> {
  const t0 = performance.now()
  return new Promise((resolve) => {
    execFile(process.execPath, [file, ...args], { timeout: 15_000, ...opts }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0
      resolve({ code, stdout, stderr, ms: Math.round(performance.now() - t0) })
    })
  })
}

async function rawConnect(socketPath: string): Promise<net.Socket> {
  const sock = net.connect(socketPath)
  sock.on('error', () => undefined)
  await new Promise<void>((resolve, reject) => {
    sock.once('connect', () => resolve())
    sock.once('error', reject)
  })
  return sock
}

/** One honest call on a fresh connection, as natctl makes it; its latency, or its error code. */
async function honestCall(socketPath: string): Promise<{ ok: boolean; ms: number; code?: string }> {
  const t0 = performance.now()
  const c = new ApiClient(socketPath)
  try {
    await c.connect()
    await Promise.race([c.call('status', {}), sleep(HONEST_CALL_DEADLINE_MS).then(() => Promise.reject(new NatdError('TIMEOUT', `no answer in ${HONEST_CALL_DEADLINE_MS} ms`)))])
    return { ok: true, ms: performance.now() - t0 }
  } catch (err) {
    return { ok: false, ms: performance.now() - t0, code: err instanceof NatdError ? err.code : String(err) }
  } finally {
    c.close()
  }
}

describe('abuse: local API', () => {
  let dir: string
  let socketPath: string
  let server: ApiServer | null = null
  const held: net.Socket[] = []

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-abuse-api-'))
    socketPath = path.join(dir, 'run', 'natd.sock')
  })

  afterEach(() => {
    for (const s of held.splice(0)) s.destroy()
    server?.stop()
    server = null
    fs.rmSync(dir, { recursive: true, force: true })
  })

  async function startServer(log: Logger = silentLogger): Promise<ApiServer> {
    server = new ApiServer(socketPath, handlers, log)
    await server.start()
    return server
  }

  it(`${IDLE_ATTACK_CONNECTIONS} idle connections: an honest status call is still answered`, async () => {
    const s = await startServer()
    for (let i = 0; i < IDLE_ATTACK_CONNECTIONS; i++) held.push(await rawConnect(socketPath))
    await sleep(50)
    // connections that never prove a uid fill only the unproven pool, not the table
    expect(s.connectionCount).toBe(UNPROVEN_API_SHARE.connections)

    const results = []
    for (let i = 0; i < HONEST_CALLS; i++) results.push(await honestCall(socketPath))
    const ok = results.filter((r) => r.ok)
    const worst = Math.max(...results.map((r) => r.ms))
    // natctl itself, as a user runs it (its node start-up included)
    const natctl = await run(NATCTL, ['--socket', socketPath, 'status'])

    recordAbuse({ row: `${IDLE_ATTACK_CONNECTIONS} idle API connections`, metric: 'honest status calls answered', before: '0 (natctl exit 3 "not running")', now: `${ok.length}/${HONEST_CALLS}`, unit: 'calls', bound: `all, each < ${HONEST_CALL_BOUND_MS} ms` })
    recordAbuse({ row: `${IDLE_ATTACK_CONNECTIONS} idle API connections`, metric: 'worst honest call latency (connect + status)', before: 'refused', now: Math.round(worst * 10) / 10, unit: 'ms', bound: `< ${HONEST_CALL_BOUND_MS}` })
    recordAbuse({ row: `${IDLE_ATTACK_CONNECTIONS} idle API connections`, metric: 'natctl status exit code (wall time incl. node start-up)', before: '3', now: `${natctl.code} (${natctl.ms} ms)`, unit: 'exit', bound: '0' })

    expect(results.filter((r) => !r.ok)).toEqual([])
    expect(worst).toBeLessThan(HONEST_CALL_BOUND_MS)
    expect(natctl).toMatchObject({ code: 0 })
    expect(natctl.stdout).toContain('alice')
  })

  it('an attacker that reconnects every evicted connection at once: honest calls still get in', async () => {
    const s = await startServer()
    let stop = false
    let stopped!: () => void
    const stopping = new Promise<void>((resolve) => (stopped = resolve))
    let reconnects = 0
    const churn = async (): Promise<void> => {
      while (!stop) {
        const sock = await rawConnect(socketPath).catch(() => null)
        if (!sock) continue
        await Promise.race([new Promise<void>((resolve) => sock.once('close', () => resolve())), stopping])
        sock.destroy()
        reconnects++
      }
    }
    const attackers = Array.from({ length: IDLE_ATTACK_CONNECTIONS }, () => churn())
    await sleep(100)
    const results = []
    for (let i = 0; i < HONEST_CALLS; i++) results.push(await honestCall(socketPath))
    stop = true
    stopped()
    await Promise.all(attackers)
    const ok = results.filter((r) => r.ok)
    const worst = Math.max(...results.map((r) => r.ms))

    recordAbuse({ row: `${IDLE_ATTACK_CONNECTIONS} idle API connections, reconnecting`, metric: 'honest status calls answered', before: '0 (natctl exit 3)', now: `${ok.length}/${HONEST_CALLS} (${reconnects} attacker reconnects)`, unit: 'calls', bound: 'all' })
    recordAbuse({ row: `${IDLE_ATTACK_CONNECTIONS} idle API connections, reconnecting`, metric: 'worst honest call latency (depends on the machine\'s load)', before: 'refused', now: Math.round(worst * 10) / 10, unit: 'ms', bound: `< ${HONEST_CALL_DEADLINE_MS} (every call answered)` })
    expect(results.filter((r) => !r.ok)).toEqual([])
    expect(worst).toBeLessThan(HONEST_CALL_DEADLINE_MS) // connect included
    expect(s.connectionCount).toBeLessThanOrEqual(MAX_API_CONNECTIONS)
  })

  it(`another user (nobody) holds ${MAX_API_CONNECTIONS} subscribed + in-flight connections, proven and not: an honest status from root is still answered`, { skip: process.getuid?.() !== 0 }, async () => {
    // The attacker must be able to reach the socket: the API's group is nobody's group here.
    fs.chmodSync(dir, 0o711)
    const s = await startServer()
    fs.chownSync(path.dirname(socketPath), 0, NOBODY)
    fs.chownSync(socketPath, 0, NOBODY)
    const env = { PATH: process.env.PATH ?? '/usr/bin:/bin' } // its proof files go to natd's proof directory beside the socket
    const attacker = spawn(process.execPath, [API_HOLDER, socketPath, String(MAX_API_CONNECTIONS)], { uid: NOBODY, gid: NOBODY, env, stdio: ['ignore', 'pipe', 'pipe'] })
    const exited = new Promise<void>((resolve) => attacker.once('exit', () => resolve()))
    try {
      let out = ''
      let err = ''
      attacker.stdout.on('data', (d: Buffer) => (out += d.toString()))
      attacker.stderr.on('data', (d: Buffer) => (err += d.toString()))
      for (let i = 0; i < 600 && !out.includes('\n') && attacker.exitCode === null; i++) await sleep(50)
      expect(out, `attacker said nothing: ${err}`).toContain('\n')
      const granted = JSON.parse(out) as { proven: number; subscribed: number; inFlight: number; refused: number; raw: number }
      const nobody = s.heldBy(NOBODY)
      const unproven = s.heldBy('unproven')
      // It proved as nobody and holds its share busy, and the pool's busy share: no more.
      expect(nobody).toEqual({ connections: 16, subscribers: 8, inFlight: 8 })
      expect(unproven.subscribers).toBeLessThanOrEqual(4)
      expect(unproven.inFlight).toBeLessThanOrEqual(4)

      const results = []
      for (let i = 0; i < HONEST_CALLS; i++) results.push(await honestCall(socketPath))
      const ok = results.filter((r) => r.ok)
      const worst = Math.max(...results.map((r) => r.ms))
      const natctl = await run(NATCTL, ['--socket', socketPath, 'status'])
      const row = `another uid holds ${MAX_API_CONNECTIONS} subscribed + in-flight API connections`
      const holds = `attacker holds ${nobody.subscribers} subscribed + ${nobody.inFlight} in flight as uid ${NOBODY}, ${unproven.subscribers} + ${unproven.inFlight} unproven`
      recordAbuse({ row, metric: 'honest status calls answered (root)', before: '0 (BUSY: 32 subscribed + 32 in flight held every slot)', now: `${ok.length}/${HONEST_CALLS} (${holds})`, unit: 'calls', bound: `all, each < ${HONEST_CALL_BOUND_MS} ms` })
      recordAbuse({ row, metric: 'worst honest call latency (connect + proof + status)', before: 'refused', now: Math.round(worst * 10) / 10, unit: 'ms', bound: `< ${HONEST_CALL_BOUND_MS}` })
      recordAbuse({ row, metric: 'natctl status exit code (wall time incl. node start-up)', before: '5 (natd is busy)', now: `${natctl.code} (${natctl.ms} ms)`, unit: 'exit', bound: '0' })
      expect(granted.proven).toBeGreaterThan(0)
      expect(results.filter((r) => !r.ok)).toEqual([])
      expect(worst).toBeLessThan(HONEST_CALL_BOUND_MS)
      expect(natctl).toMatchObject({ code: 0 })
      expect(natctl.stdout).toContain('alice')
    } finally {
      attacker.kill('SIGKILL')
      await exited
    }
  })

  it(`a subscriber that never reads while ${EVENTS} × 16 KB message events go out: dropped, bytes queued bounded`, async () => {
    const warnings: string[] = []
    const log: Logger = { ...silentLogger, warn: (m: string, f?: { what?: string }) => void warnings.push(f?.what ?? m), child: () => log }
    const s = await startServer(log)
    const sub = await rawConnect(socketPath)
    held.push(sub)
    sub.write(JSON.stringify({ type: 'request', data: { id: 1, method: 'subscribe', params: { events: ['message'] } } }) + '\f')
    await new Promise((resolve) => sub.once('data', resolve))
    sub.pause() // and never reads again

    const text = 'x'.repeat(EVENT_TEXT_BYTES)
    const rss0 = process.memoryUsage().rss
    let delivered = 0
    for (let i = 0; i < EVENTS; i++) {
      const msg: MessageInfo = { id: String(i), from: 'bob', fromId: 'b'.repeat(52), text, sentAt: '', receivedAt: '' }
      if (s.connectionCount > 0) delivered++
      s.emit('message', msg)
      if (i % 50 === 0) await sleep(1) // let the kernel buffer fill as it would between real events
    }
    await sleep(50)
    const rssDelta = process.memoryUsage().rss - rss0
    const afterAttack = s.connectionCount
    const honest = await honestCall(socketPath)

    recordAbuse({ row: `subscriber never reads, ${EVENTS} × 16 KB events`, metric: 'bytes queued in natd for it (peak)', before: 'unbounded', now: s.peakQueuedBytes, unit: 'B', bound: `<= ${MAX_QUEUED_BYTES}` })
    recordAbuse({ row: `subscriber never reads, ${EVENTS} × 16 KB events`, metric: 'process RSS growth', before: '+33 MB', now: Math.round((rssDelta / 1024 / 1024) * 10) / 10, unit: 'MB', bound: `< ${RSS_BOUND_BYTES / 1024 / 1024}` })
    recordAbuse({ row: `subscriber never reads, ${EVENTS} × 16 KB events`, metric: 'events sent before it was dropped', before: `${EVENTS} (kept)`, now: delivered, unit: 'events', bound: 'dropped, logged' })

    expect(afterAttack).toBe(0) // the subscriber was dropped
    expect(s.peakQueuedBytes).toBeLessThanOrEqual(MAX_QUEUED_BYTES)
    expect(delivered).toBeLessThan(EVENTS)
    expect(warnings).toContain('api subscriber not reading, dropped')
    expect(rssDelta).toBeLessThan(RSS_BOUND_BYTES)
    expect(honest.ok).toBe(true)
  })
})

/** A uid and gid no account uses, so /tmp/natd-$UID is free; the suite runs as root. */
const VICTIM = 40_000 + (process.pid % 10_000)
const ATTACKER = 65_534 // nobody

describe.skipIf(process.getuid?.() !== 0 || !fs.existsSync(NATCTL))('abuse: planted socket directory (no XDG_RUNTIME_DIR)', () => {
  const planted = `/tmp/natd-${VICTIM}`
  let base: string
  let attacker: net.Server | null = null

  beforeEach(() => {
    fs.rmSync(planted, { recursive: true, force: true })
    base = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-abuse-victim-'))
    fs.chmodSync(base, 0o755)
  })

  afterEach(async () => {
    await new Promise<void>((resolve) => (attacker ? attacker.close(() => resolve()) : resolve()))
    attacker = null
    fs.rmSync(planted, { recursive: true, force: true })
    fs.rmSync(base, { recursive: true, force: true })
  })

  it('natctl send and natd both refuse the attacker’s directory, and the attacker receives nothing', async () => {
    // The attacker (nobody) creates the victim's fallback directory first, 0777, with a
    // socket of its own where natd's would be.
    fs.mkdirSync(path.join(planted, 'natd'), { recursive: true })
    fs.chmodSync(planted, 0o777)
    fs.chmodSync(path.join(planted, 'natd'), 0o777)
    fs.chownSync(planted, ATTACKER, ATTACKER)
    fs.chownSync(path.join(planted, 'natd'), ATTACKER, ATTACKER)
    const plantedSocket = path.join(planted, 'natd', 'natd.sock')
    let attackerConnections = 0
    let attackerBytes = 0
    attacker = net.createServer((c) => {
      attackerConnections++
      c.on('data', (d) => (attackerBytes += d.length))
    })
    await new Promise<void>((resolve) => attacker!.listen(plantedSocket, resolve))
    fs.chmodSync(plantedSocket, 0o777)

    const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: base, LANG: 'C.UTF-8' } // no XDG_RUNTIME_DIR
    const victim = { uid: VICTIM, gid: VICTIM, env }
    const natctl = await run(NATCTL, ['send', 'bob', 'the secret'], victim)

    const stateDir = path.join(base, 'state')
    fs.mkdirSync(stateDir, { mode: 0o700 })
    fs.chownSync(stateDir, VICTIM, VICTIM)
    const natd = await run(NATD, ['--name', 'victim', '--server', '127.0.0.1:1', '--state-dir', stateDir, '--port', '0'], victim)
    await sleep(50)

    recordAbuse({ row: 'planted /tmp/natd-$UID (0777, owner nobody), no XDG_RUNTIME_DIR', metric: 'bytes natctl send wrote to the attacker socket', before: 'the whole request (natctl talked to it)', now: attackerBytes, unit: 'B', bound: '0' })
    recordAbuse({ row: 'planted /tmp/natd-$UID (0777, owner nobody), no XDG_RUNTIME_DIR', metric: 'natctl exit code / natd exit code', before: 'natctl 0, having talked to it / natd not measured', now: `${natctl.code} / ${natd.code}`, unit: 'exit', bound: 'natctl 6 (UNSAFE_SOCKET), natd refuses' })

    expect(natctl.code).toBe(6)
    expect(natctl.stderr).toContain(`natctl: refusing the API socket ${plantedSocket}: ${planted} is owned by uid ${ATTACKER}, not by us (uid ${VICTIM}) or root`)
    expect(natctl.stderr).toContain('[UNSAFE_SOCKET]')
    expect(natd.code).not.toBe(0)
    expect(natd.stdout + natd.stderr).toContain(`refusing the API socket ${plantedSocket}`)
    expect(attackerConnections).toBe(0)
    expect(attackerBytes).toBe(0)
    expect(fs.lstatSync(plantedSocket).isSocket()).toBe(true) // natd did not remove or replace it either
    // Positive control: the planted socket does accept a connection, and the counters see it.
    await new Promise<void>((resolve, reject) => {
      const c = net.connect(plantedSocket, () => c.end('x', resolve))
      c.once('error', reject)
    })
    for (let i = 0; i < 50 && attackerBytes === 0; i++) await sleep(20)
    expect([attackerConnections, attackerBytes]).toEqual([1, 1])
  })

  it('a 0777 directory the victim owns is refused too (anyone could have planted inside it)', async () => {
    fs.mkdirSync(path.join(planted, 'natd'), { recursive: true })
    fs.chmodSync(planted, 0o777)
    fs.chownSync(planted, VICTIM, VICTIM)
    fs.chownSync(path.join(planted, 'natd'), VICTIM, VICTIM)
    const natctl = await run(NATCTL, ['status'], { uid: VICTIM, gid: VICTIM, env: { PATH: process.env.PATH, HOME: base } })
    expect(natctl.code).toBe(6)
    expect(natctl.stderr).toContain(`${planted} is writable by others (mode 0777)`)
  })
})
