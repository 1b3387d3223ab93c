// The local API's abuse limits (src/ipc/server.ts, connection-table.ts) over a real Unix
// socket in a temp dir, with small limits so each test takes well under a second.
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { ApiClient } from '../../../src/ipc/client.js'
import type { MessageInfo, StatusResult } from '../../../src/ipc/schema.js'
import { ApiServer, type ApiLimits, type Handlers } from '../../../src/ipc/server.js'
import { NatdError } from '../../../src/protocol/errors.js'
import { silentLogger, type Logger } from '../../../src/protocol/log.js'

const STATUS = { version: '0.0.0-test', name: 'alice' } as StatusResult

/** status answers; peers never does (a request that stays in flight); every other method is not needed here. */
const handlers = new Proxy({} as Handlers, {
  get: (_, method) =>
    method === 'status' ? () => STATUS : method === 'peers' ? () => new Promise(() => undefined) : () => Promise.reject(new NatdError('INTERNAL', `${String(method)} not stubbed`))
})

function recordingLogger(lines: { level: string; message: string; fields?: Record<string, unknown> }[]): Logger {
  const at =
    (level: string) =>
    (message: string, fields?: Record<string, unknown>): void =>
      void lines.push({ level, message, fields })
  const log: Logger = { error: at('error'), warn: at('warn'), info: at('info'), debug: at('debug'), child: () => log }
  return log
}

function message(i: number, bytes: number): MessageInfo {
  return { id: String(i), from: 'bob', fromId: 'b'.repeat(52), text: 'x'.repeat(bytes), sentAt: '', receivedAt: '' }
}

const codeOf = (err: unknown): string => (err instanceof NatdError ? err.code : `not a NatdError: ${String(err)}`)

async function rawConnect(socketPath: string): Promise<net.Socket> {
  const sock = net.connect(socketPath)
  sock.on('error', () => undefined)
  await new Promise<void>((resolve) => sock.once('connect', () => resolve()))
  return sock
}

const closed = (sock: net.Socket): Promise<void> => (sock.destroyed ? Promise.resolve() : new Promise((resolve) => sock.once('close', () => resolve())))

describe('local API limits', () => {
  let dir: string
  let socketPath: string
  let server: ApiServer | null
  const clients: ApiClient[] = []
  const sockets: net.Socket[] = []

  async function start(limits: Partial<ApiLimits>, log: Logger = silentLogger): Promise<ApiServer> {
    server = new ApiServer(socketPath, handlers, log, limits)
    await server.start()
    return server
  }

  async function client(): Promise<ApiClient> {
    const c = new ApiClient(socketPath)
    clients.push(c)
    await c.connect()
    return c
  }

  async function raw(): Promise<net.Socket> {
    const s = await rawConnect(socketPath)
    sockets.push(s)
    return s
  }

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-limits-'))
    socketPath = path.join(dir, 'run', 'natd.sock')
    server = null
  })

  afterEach(() => {
    for (const c of clients.splice(0)) c.close()
    for (const s of sockets.splice(0)) s.destroy()
    server?.stop()
    fs.rmSync(dir, { recursive: true, force: true })
  })

  it('closes an idle connection that is not subscribed after the idle timeout; a subscriber stays', async () => {
    // 400 ms: the watcher's own connect (uid proof: a file made and removed between its
    // requests) must fit in it on a loaded machine.
    await start({ idleTimeoutMs: 400 })
    const idle = await raw()
    const watcher = await client()
    await watcher.subscribe([], () => undefined)
    await closed(idle)
    await sleep(500)
    await expect(watcher.call('status', {})).resolves.toMatchObject({ name: 'alice' })
  })

  it('a connection that keeps making requests is not idle', async () => {
    await start({ idleTimeoutMs: 150 })
    const c = await client()
    for (let i = 0; i < 5; i++) {
      await c.call('status', {})
      await sleep(100)
    }
    await expect(c.call('status', {})).resolves.toMatchObject({ name: 'alice' })
  })

  it('when every slot is held by idle connections, a newcomer evicts the oldest and is answered', async () => {
    await start({ maxConnections: 4 })
    const idle = []
    for (let i = 0; i < 10; i++) idle.push(await raw())
    await sleep(20)
    const honest = await client()
    await expect(honest.call('status', {})).resolves.toMatchObject({ name: 'alice' })
    expect(server!.connectionCount).toBe(4)
    await closed(idle[0]!) // the oldest went first
    expect(idle.at(-1)!.destroyed).toBe(false)
  })

  it('when every slot is a subscriber or busy, a newcomer is told BUSY (natctl exit 5), not NOT_RUNNING', async () => {
    const lines: { level: string; message: string; fields?: Record<string, unknown> }[] = []
    await start({ maxConnections: 2, maxSubscribers: 2 }, recordingLogger(lines))
    for (let i = 0; i < 2; i++) await (await client()).subscribe([], () => undefined)
    const late = await client()
    const err = await late.call('status', {}).catch((e: unknown) => e)
    expect(codeOf(err)).toBe('BUSY')
    expect((err as Error).message).toMatch(/^natd is busy: all 2 API connections are in use/)
    expect(lines.filter((l) => l.level === 'warn').map((l) => [l.message, l.fields?.what, l.fields?.code])).toEqual([['refused', 'api busy, connection refused', 'BUSY']])
  })

  it('caps subscribers: one more subscribe is BUSY and the connection still answers calls', async () => {
    await start({ maxConnections: 8, maxSubscribers: 1 })
    await (await client()).subscribe([], () => undefined)
    const second = await client()
    const err = await second.subscribe(['peer.up'], () => undefined).catch((e: unknown) => e)
    expect(codeOf(err)).toBe('BUSY')
    await expect(second.call('status', {})).resolves.toMatchObject({ name: 'alice' })
  })

  it('drops a subscriber that does not read once maxQueuedBytes would be passed, and logs it', async () => {
    const lines: { level: string; message: string; fields?: Record<string, unknown> }[] = []
    const limit = 64 * 1024
    const s = await start({ maxQueuedBytes: limit }, recordingLogger(lines))
    const sub = await raw()
    sub.write(JSON.stringify({ type: 'request', data: { id: 1, method: 'subscribe', params: { events: ['message'] } } }) + '\f')
    await new Promise((resolve) => sub.once('data', resolve))
    sub.pause() // never reads again
    for (let i = 0; i < 200 && s.connectionCount > 0; i++) {
      s.emit('message', message(i, 16 * 1024))
      await sleep(1)
    }
    expect(s.connectionCount).toBe(0)
    expect(s.peakQueuedBytes).toBeLessThanOrEqual(limit)
    const warn = lines.find((l) => l.level === 'warn')
    expect(warn).toMatchObject({ message: 'refused', fields: { what: 'api subscriber not reading, dropped', code: 'BUSY', reason: expect.stringMatching(new RegExp(`bytes queued, limit ${limit}, at event message$`)) } })
    // the others are unaffected
    await expect((await client()).call('status', {})).resolves.toMatchObject({ name: 'alice' })
  })

  it('refuses to listen in a directory others may write (UNSAFE_SOCKET), before creating the socket', async () => {
    fs.mkdirSync(path.dirname(socketPath))
    fs.chmodSync(path.dirname(socketPath), 0o777)
    const err = await start({}).catch((e: unknown) => e)
    server = null
    expect(codeOf(err)).toBe('UNSAFE_SOCKET')
    expect(fs.existsSync(socketPath)).toBe(false)
  })

  it('natctl refuses to connect to a socket in a directory others may write (UNSAFE_SOCKET)', async () => {
    await start({})
    fs.chmodSync(path.dirname(socketPath), 0o777)
    const err = await client().catch((e: unknown) => e)
    expect(codeOf(err)).toBe('UNSAFE_SOCKET')
  })

  it('natctl’s client proves its uid on connect: it counts in its uid’s share, not the unproven pool', async () => {
    const s = await start({})
    const c = await client()
    expect(s.heldBy(process.getuid!())).toMatchObject({ connections: 1 })
    expect(s.heldBy('unproven')).toMatchObject({ connections: 0 })
    await expect(c.call('status', {})).resolves.toMatchObject({ name: 'alice' })
    // natd keeps the proof directory next to its socket (its /tmp may be private): sticky, anyone may create, no one may list
    const proofDir = path.join(path.dirname(socketPath), 'proof')
    expect(fs.statSync(proofDir).mode & 0o7777).toBe(0o1733)
    expect(fs.readdirSync(proofDir)).toEqual([]) // natctl removed its file
  })

  it('a connection that does not prove shares the unproven pool’s 4 requests in flight: the 5th is BUSY, the connection stays', async () => {
    const s = await start({})
    const anon = await raw()
    const frames: string[] = []
    anon.on('data', (d: Buffer) => frames.push(...d.toString().split('\f').filter(Boolean)))
    anon.write([1, 2, 3, 4, 5].map((id) => JSON.stringify({ type: 'request', data: { id, method: 'peers', params: {} } }) + '\f').join(''))
    for (let i = 0; i < 200 && frames.length === 0; i++) await sleep(10)
    expect(frames.map((f) => JSON.parse(f) as { data: { id: number; error?: { code: string } } }).map((f) => [f.data.id, f.data.error?.code])).toEqual([[5, 'BUSY']])
    expect(s.heldBy('unproven')).toMatchObject({ connections: 1, inFlight: 4 })
    // a client that proves is not held back by them
    await expect((await client()).call('status', {})).resolves.toMatchObject({ name: 'alice' })
  })

  it('a wrong proof is UNAUTHORIZED and the connection stays usable, unproven; one proof per connection', async () => {
    const s = await start({})
    const anon = await raw()
    const answers: { id: number; result?: { nonce?: string }; error?: { code: string; message: string } }[] = []
    anon.on('data', (d: Buffer) => answers.push(...d.toString().split('\f').filter(Boolean).map((f) => (JSON.parse(f) as { data: (typeof answers)[number] }).data)))
    const ask = async (id: number, method: string, params: object): Promise<(typeof answers)[number]> => {
      anon.write(JSON.stringify({ type: 'request', data: { id, method, params } }) + '\f')
      for (let i = 0; i < 300 && !answers.some((a) => a.id === id); i++) await sleep(10)
      return answers.find((a) => a.id === id)!
    }
    const { result } = await ask(1, 'auth.challenge', {})
    expect(result?.nonce).toMatch(/^[0-9a-f]{32}$/)
    const file = path.join(dir, 'natd-proof-' + result!.nonce)
    fs.writeFileSync(file, '', { mode: 0o600 })
    expect((await ask(2, 'auth.prove', { uid: process.getuid!() + 1, path: file })).error?.code).toBe('UNAUTHORIZED')
    expect((await ask(3, 'auth.prove', { uid: process.getuid!(), path: file })).error?.message).toMatch(/one proof per connection/)
    expect(s.heldBy('unproven')).toMatchObject({ connections: 1 })
    expect((await ask(4, 'status', {})).result).toMatchObject({ name: 'alice' })
  })
})
