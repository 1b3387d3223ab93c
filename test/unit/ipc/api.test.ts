// The local API (src/ipc/server.ts, src/ipc/client.ts) over a real Unix socket in a temp
// directory, with stub handlers: what natctl and scripts see.
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { execFile } from 'node:child_process'
import { ApiClient } from '../../../src/ipc/client.js'
import { PACKAGE_ROOT } from '../../../src/daemon/service.js'
import type { EventName, MethodName, PeerInfo, StatusResult } from '../../../src/ipc/schema.js'
import { ApiServer, type Handlers } from '../../../src/ipc/server.js'
import { fakeStatus } from '../helpers.js'
import { NatdError } from '../../../src/protocol/errors.js'
import { silentLogger } from '../../../src/protocol/log.js'

const STATUS: StatusResult = fakeStatus()

/** A pinned peer the server did not list. */
const DAVE: PeerInfo = { name: 'dave', id: 'd'.repeat(51) + 'q', online: false, lastSeenAgoMs: null, endpoint: null, tcpEndpoint: null, lan: [], nat: 'unknown', pinned: true, tunnel: null, downReason: 'unknown' }
const BOB: PeerInfo = { name: 'bob', id: 'b'.repeat(52), online: true, lastSeenAgoMs: 0, endpoint: '203.0.113.2:1', tcpEndpoint: null, lan: [], nat: 'easy', pinned: true, tunnel: null, downReason: null }

function stubHandlers(calls: { method: string; params: unknown }[]): Handlers {
  const record = (method: string, params: unknown): void => void calls.push({ method, params })
  return {
    status: () => STATUS,
    peers: () => [BOB, DAVE],
    'peer.trust': (p) => {
      record('peer.trust', p)
      if (p.name === 'bob' && !p.replace) throw new NatdError('KEY_MISMATCH', 'bob is pinned to bbbbbbbb…; add --replace to pin the new ID')
      return { name: p.name, id: p.id, replaced: p.name === 'bob' ? BOB.id : null }
    },
    'peer.untrust': (p) => ({ name: p.name, id: BOB.id }),
    subscribe: (p) => ({ subscribed: p.events }),
    open: (p) => {
      record('open', p)
      throw new NatdError('PEER_UNKNOWN', `no peer named ${p.peer}`)
    },
    close: () => ({ closed: false }),
    tunnels: () => [],
    ping: () => {
      throw new Error('boom: a bug in a handler')
    },
    netcheck: () => {
      throw new NatdError('NOT_REGISTERED', 'not started')
    },
    'forward.add': (p) => {
      record('forward.add', p)
      return { ...p, connections: 0, listening: true, error: null }
    },
    'forward.ls': () => [],
    'forward.rm': () => {
      throw new NatdError('INVALID_ARGUMENT', 'no such forward')
    },
    'expose.add': async (p) => {
      record('expose.add', p)
      await sleep(5)
      return { port: p.port, host: p.host, allow: p.allow.map((name) => ({ name, id: 'b'.repeat(51) + 'q' })) }
    },
    'expose.ls': () => [],
    'expose.rm': () => {
      throw new NatdError('NOT_EXPOSED', 'x')
    },
    'message.send': (p) => {
      record('message.send', p)
      throw new NatdError('PEER_OFFLINE', 'x')
    },
    messages: () => [],
    'file.send': () => {
      throw new NatdError('FILE_UNREADABLE', 'x')
    },
    files: () => [],
    'files.partials': () => [],
    'messages.clear': () => ({ removed: 0 }),
    'files.policy': (p) => (record('files.policy', p), { allow: [], maxSizeBytes: 0, inbox: '/x', filesPerPeer: 1, fileBytesPerPeer: 1, messagesPerPeer: 1, messageBytesPerPeer: 1, stallTimeoutMs: 1000 })
  }
}

function errCode(err: unknown): string | undefined {
  return err instanceof NatdError ? err.code : `not a NatdError: ${String(err)}`
}

/** Rejects if `p` has not settled within `ms`: a hung call is a failure, not a 30 s timeout. */
function within<T>(p: Promise<T>, ms = 2_000): Promise<T> {
  return Promise.race([p, sleep(ms).then(() => Promise.reject(new Error(`no answer within ${ms} ms`)))])
}

/** Raw client: writes `text`, collects `\f`-delimited frames until the server closes or `ms` passes. */
async function rawExchange(socketPath: string, text: string, ms = 2_000): Promise<{ frames: unknown[]; closed: boolean }> {
  const sock = net.connect(socketPath)
  let buf = ''
  const closed = new Promise<boolean>((resolve) => sock.once('close', () => resolve(true)))
  sock.on('error', () => undefined)
  sock.setEncoding('utf8').on('data', (chunk: string) => (buf += chunk))
  await new Promise<void>((resolve) => sock.once('connect', () => resolve()))
  sock.write(text)
  const wasClosed = await Promise.race([closed, sleep(ms).then(() => false)])
  sock.destroy()
  return { frames: buf.split('\f').filter(Boolean).map((f) => JSON.parse(f) as unknown), closed: wasClosed }
}

describe('local API over a Unix socket', () => {
  let dir: string
  let socketPath: string
  let calls: { method: string; params: unknown }[]
  const servers: ApiServer[] = []
  const clients: ApiClient[] = []

  async function startServer(): Promise<ApiServer> {
    const server = new ApiServer(socketPath, stubHandlers(calls), silentLogger)
    await server.start()
    servers.push(server)
    return server
  }

  async function connect(): Promise<ApiClient> {
    const client = new ApiClient(socketPath)
    await within(client.connect())
    clients.push(client)
    return client
  }

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-api-'))
    socketPath = path.join(dir, 'run', 'natd.sock')
    calls = []
  })

  afterEach(() => {
    for (const c of clients.splice(0)) c.close()
    for (const s of servers.splice(0)) s.stop()
    fs.rmSync(dir, { recursive: true, force: true })
  })

  it('status returns what the handler returned', async () => {
    await startServer()
    const client = await connect()
    expect(await within(client.call('status', {}))).toEqual(STATUS)
    expect(await within(client.call('peers', {}))).toEqual([BOB, DAVE])
  })

  it('fills documented defaults before the handler sees the params', async () => {
    await startServer()
    const client = await connect()
    await within(client.call('forward.add', { localPort: 8080, peer: 'bob', remotePort: 80 } as never))
    await within(client.call('expose.add', { port: 22 } as never))
    expect(calls).toEqual([
      { method: 'forward.add', params: { localPort: 8080, peer: 'bob', remotePort: 80, bind: '127.0.0.1' } },
      { method: 'expose.add', params: { port: 22, host: '127.0.0.1', allow: [] } }
    ])
  })

  it('bad params get BAD_REQUEST and never reach the handler', async () => {
    await startServer()
    const client = await connect()
    const bad: [MethodName, unknown][] = [
      ['open', { peer: 'bob', timeoutMs: '5000' }],
      ['open', { peer: 'bob', via: 'carrier-pigeon' }],
      ['open', {}],
      ['open', { peer: 'bob', extra: 1 }],
      ['forward.add', { localPort: '8080', peer: 'bob', remotePort: 80 }],
      ['forward.add', { localPort: 70_000, peer: 'bob', remotePort: 80 }],
      ['expose.add', { port: 0 }],
      ['status', { verbose: true }]
    ]
    for (const [method, params] of bad) {
      const err = await within(client.call(method, params as never)).catch((e: unknown) => e)
      expect(errCode(err), `${method} ${JSON.stringify(params)}`).toBe('BAD_REQUEST')
    }
    expect(calls).toEqual([])
  })

  // parseRequest throws before ApiServer.onRequest has read the request id, so the error
  // response carries id null and ApiClient cannot match it: the call never settles.
  it('an unknown method gets BAD_REQUEST (src/ipc/server.ts onRequest: id read after validation)', async () => {
    await startServer()
    const client = await connect()
    const err = await within(client.call('no.such.method' as MethodName, {} as never)).catch((e: unknown) => e)
    expect(errCode(err)).toBe('BAD_REQUEST')
  })

  it('an unknown method gets a BAD_REQUEST response frame on the wire', async () => {
    await startServer()
    const { frames } = await rawExchange(socketPath, JSON.stringify({ type: 'request', data: { id: 7, method: 'no.such.method', params: {} } }) + '\f', 500)
    expect(frames).toContainEqual({ type: 'response', data: expect.objectContaining({ error: expect.objectContaining({ code: 'BAD_REQUEST' }) }) as unknown })
  })

  it('a frame that is not JSON gets a BAD_REQUEST response before the connection closes', async () => {
    await startServer()
    const { frames, closed } = await rawExchange(socketPath, 'not json\f')
    expect(closed).toBe(true)
    expect(frames).toContainEqual({ type: 'response', data: { id: null, error: { code: 'BAD_REQUEST', message: expect.any(String) as unknown } } })
    // The daemon keeps serving others.
    const client = await connect()
    expect((await within(client.call('status', {}))).name).toBe('alice')
  })

  it("a handler's NatdError reaches the client with its code and message", async () => {
    await startServer()
    const client = await connect()
    const err = await within(client.call('open', { peer: 'carol', via: 'auto', timeoutMs: 1_000 })).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(NatdError)
    expect(err).toMatchObject({ code: 'PEER_UNKNOWN', message: 'no peer named carol' })
    expect(errCode(await within(client.call('expose.rm', { port: 1 })).catch((e: unknown) => e))).toBe('NOT_EXPOSED')
  })

  it('a handler crashing with a plain Error is INTERNAL, and the connection stays usable', async () => {
    await startServer()
    const client = await connect()
    const err = await within(client.call('ping', { peer: 'bob', timeoutMs: 100 })).catch((e: unknown) => e)
    expect(errCode(err)).toBe('INTERNAL')
    expect((await within(client.call('status', {}))).registered).toBe(true)
  })

  it('concurrent calls on one connection are matched to their own responses', async () => {
    await startServer()
    const client = await connect()
    const [a, b, c] = await within(
      Promise.all([
        client.call('expose.add', { port: 1, host: 'h1', allow: [] }),
        client.call('status', {}),
        client.call('expose.add', { port: 2, host: 'h2', allow: ['bob'] })
      ])
    )
    expect(a).toEqual({ port: 1, host: 'h1', allow: [] })
    expect(b.name).toBe('alice')
    expect(c).toEqual({ port: 2, host: 'h2', allow: [{ name: 'bob', id: 'b'.repeat(51) + 'q' }] })
  })

  it('a client that goes away mid-call aborts the handler\'s signal; one that stays is answered with its signal never aborted', async () => {
    const seen: Array<{ peer: string; aborted: boolean }> = []
    let started!: () => void
    const inOpen = new Promise<void>((resolve) => (started = resolve))
    const handlers = stubHandlers(calls)
    handlers.open = ({ peer }, { signal }) =>
      new Promise((resolve, reject) => {
        const done = (): void => void seen.push({ peer, aborted: signal.aborted })
        if (peer === 'carol') {
          done()
          resolve({ peer, id: 'c'.repeat(52), path: 'direct-udp', remote: '203.0.113.3:1', rttMs: null, bytesIn: 0, bytesOut: 0, since: new Date(0).toISOString(), streams: 0, transport: 'udp', state: 'up', tookMs: 1, reused: false })
          return
        }
        signal.addEventListener('abort', () => {
          done()
          reject(new NatdError('ABORTED', 'gone'))
        })
        started()
      })
    const server = new ApiServer(socketPath, handlers, silentLogger)
    await server.start()
    servers.push(server)
    const leaving = await connect()
    void leaving.call('open', { peer: 'bob', via: 'auto', timeoutMs: 10_000 }).catch(() => undefined)
    await within(inOpen)
    expect(seen).toEqual([]) // positive control: the open is pending, nothing aborted yet
    leaving.close()
    const stays = await connect()
    await within(stays.call('open', { peer: 'carol', via: 'auto', timeoutMs: 10_000 }))
    await within((async () => {
      while (seen.length < 2) await sleep(10)
    })())
    expect(seen).toHaveLength(2)
    expect(seen).toContainEqual({ peer: 'carol', aborted: false })
    expect(seen).toContainEqual({ peer: 'bob', aborted: true })
  })

  it('a subscriber receives the events it asked for, and only those', async () => {
    const server = await startServer()
    const client = await connect()
    const seen: [EventName, unknown][] = []
    await within(client.subscribe(['peer.up'], (event, data) => void seen.push([event, data])))
    server.emit('peer.down', { ...BOB, online: false })
    server.emit('peer.up', BOB)
    const deadline = Date.now() + 2_000
    while (seen.length === 0 && Date.now() < deadline) await sleep(10)
    await sleep(50)
    expect(seen).toEqual([['peer.up', BOB]])
  })

  it('subscribing to no events in particular means all of them', async () => {
    const server = await startServer()
    const client = await connect()
    const seen: EventName[] = []
    await within(client.subscribe([], (event) => void seen.push(event)))
    server.emit('server.state', { state: 'backoff', error: { code: 'SERVER_UNREACHABLE', message: 'x' } })
    server.emit('peer.down', BOB)
    const deadline = Date.now() + 2_000
    while (seen.length < 2 && Date.now() < deadline) await sleep(10)
    expect(seen).toEqual(['server.state', 'peer.down'])
  })

  it('the socket file has mode 0660', async () => {
    await startServer()
    const st = fs.statSync(socketPath)
    expect(st.isSocket()).toBe(true)
    expect(st.mode & 0o777).toBe(0o660)
  })

  it('a second daemon on the same socket is refused ALREADY_RUNNING, and the first still answers', async () => {
    await startServer()
    const second = new ApiServer(socketPath, stubHandlers(calls), silentLogger)
    const err = await within(second.start()).catch((e: unknown) => e)
    expect(errCode(err)).toBe('ALREADY_RUNNING')
    expect(fs.statSync(socketPath).isSocket()).toBe(true)
    const client = await connect()
    expect((await within(client.call('status', {}))).name).toBe('alice')
  })

  it('a stale socket left by a killed daemon is replaced', async () => {
    fs.mkdirSync(path.dirname(socketPath), { recursive: true })
    // A process that binds the socket and is then SIGKILLed leaves the file behind.
    const child = spawn(process.execPath, ['-e', "require('net').createServer().listen(process.argv[1], () => console.log('ready'))", socketPath], {
      stdio: ['ignore', 'pipe', 'inherit']
    })
    await new Promise<void>((resolve, reject) => {
      child.once('exit', (code) => reject(new Error(`child exited early (${code})`)))
      child.stdout.on('data', (d: Buffer) => d.toString().includes('ready') && resolve())
    })
    child.removeAllListeners('exit')
    const exited = new Promise((resolve) => child.once('exit', resolve))
    child.kill('SIGKILL')
    await exited
    expect(fs.lstatSync(socketPath).isSocket()).toBe(true) // left behind
    await startServer()
    const client = await connect()
    expect((await within(client.call('status', {}))).name).toBe('alice')
  })

  it('a regular file at the socket path is refused and left alone', async () => {
    fs.mkdirSync(path.dirname(socketPath), { recursive: true })
    fs.writeFileSync(socketPath, 'not a socket: keep me')
    const server = new ApiServer(socketPath, stubHandlers(calls), silentLogger)
    const err = await within(server.start()).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(NatdError)
    expect(fs.readFileSync(socketPath, 'utf8')).toBe('not a socket: keep me')
  })

  it('stop() removes the socket; a client then gets NOT_RUNNING', async () => {
    const server = await startServer()
    server.stop()
    servers.splice(servers.indexOf(server), 1)
    expect(fs.existsSync(socketPath)).toBe(false)
    const err = await within(new ApiClient(socketPath).connect()).catch((e: unknown) => e)
    expect(errCode(err)).toBe('NOT_RUNNING')
  })

  it('connecting where no daemon runs rejects NOT_RUNNING', async () => {
    const err = await within(new ApiClient(path.join(dir, 'missing.sock')).connect()).catch((e: unknown) => e)
    expect(errCode(err)).toBe('NOT_RUNNING')
  })
})

const NATCTL = path.join(PACKAGE_ROOT, 'dist/cli/main.js')

/** natctl (as built) against the stub API: what a user sees, and the exit status. */
describe.skipIf(!fs.existsSync(NATCTL))('natctl over the API', () => {
  let dir: string
  let socketPath: string
  let server: ApiServer
  let calls: { method: string; params: unknown }[]

  beforeEach(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-cli-'))
    socketPath = path.join(dir, 'natd.sock')
    calls = []
    server = new ApiServer(socketPath, stubHandlers(calls), silentLogger)
    await server.start()
  })

  afterEach(() => {
    server.stop()
    fs.rmSync(dir, { recursive: true, force: true })
  })

  function natctl(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    return new Promise((resolve) => {
      execFile(process.execPath, [NATCTL, '--socket', socketPath, ...args], (err, stdout, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }))
    })
  }

  it('peers shows which peers are pinned, and pinned peers the server did not list', async () => {
    const r = await natctl(['peers'])
    const [header, bob, dave] = r.stdout.trim().split('\n')
    expect(header).toMatch(/^NAME\s+ID\s+PINNED\s+ONLINE\s+LAST SEEN/)
    expect(bob).toMatch(/^bob\s+bbbbbbbb\s+yes\s+yes\s+now/)
    expect(dave).toMatch(/^dave\s+dddddddd\s+yes\s+no\s+not listed/)
    const json = JSON.parse((await natctl(['peers', '--json'])).stdout) as PeerInfo[]
    expect(json.map((p) => [p.name, p.pinned])).toEqual([['bob', true], ['dave', true]])
  })

  it('trust pins a full ID; a pinned name needs --replace (KEY_MISMATCH, exit 4); untrust forgets', async () => {
    const id = 'c'.repeat(51) + 'q'
    expect(await natctl(['trust', 'carol', id])).toMatchObject({ code: 0, stdout: `carol pinned to ${id}\n` })
    const refused = await natctl(['trust', 'bob', id])
    expect(refused).toMatchObject({ code: 4, stderr: expect.stringMatching(/add --replace to pin the new ID \[KEY_MISMATCH\]/) })
    expect(await natctl(['trust', 'bob', id, '--replace'])).toMatchObject({ code: 0, stdout: `bob pinned to ${id} (was bbbbbbbb…)\n` })
    expect(calls.filter((c) => c.method === 'peer.trust').map((c) => c.params)).toEqual([
      { name: 'carol', id, replace: false },
      { name: 'bob', id, replace: false },
      { name: 'bob', id, replace: true }
    ])
    expect(await natctl(['untrust', 'bob'])).toMatchObject({ code: 0, stdout: 'bob no longer pinned (was bbbbbbbb…)\n' })
  })

  it('every duration flag takes the units natd takes (ms, s, m, h): --timeout of open and send, files policy --stall-timeout', async () => {
    await natctl(['open', 'bob', '--timeout', '0.1h'])
    await natctl(['send', 'bob', 'hi', '--timeout', '2m'])
    await natctl(['files', 'policy', '--stall-timeout', '1500ms'])
    await natctl(['open', 'bob', '--timeout', '45'])
    expect(calls.map((c) => [c.method, (c.params as { timeoutMs?: number; stallTimeoutMs?: number }).timeoutMs ?? (c.params as { stallTimeoutMs?: number }).stallTimeoutMs])).toEqual([
      ['open', 360_000],
      ['message.send', 120_000],
      ['files.policy', 1_500],
      ['open', 45_000]
    ])
  })

  it('--timeout 1h is read as an hour, and natd refuses it (timeouts stop at 10 minutes): exit 1, not a usage error', async () => {
    for (const args of [['open', 'bob', '--timeout', '1h'], ['ping', 'bob', '--timeout', '1h'], ['files', 'policy', '--stall-timeout', '1h']]) {
      const r = await natctl(args)
      expect(r, args.join(' ')).toMatchObject({ code: 1, stderr: expect.stringMatching(/must be an integer (1|100)-600000 \[BAD_REQUEST\]/) })
    }
    expect(calls).toEqual([])
  })

  it('files policy reads sizes as natd-rendezvous does; a size it cannot read is a usage error (exit 2)', async () => {
    expect(await natctl(['files', 'policy', '--max-size', '2GiB', '--peer-bytes', '500MB'])).toMatchObject({ code: 0 })
    expect(calls).toEqual([{ method: 'files.policy', params: expect.objectContaining({ maxSizeBytes: 2 * 1024 ** 3, fileBytesPerPeer: 500e6, messageBytesPerPeer: null }) }])
    expect(await natctl(['files', 'policy', '--max-size', 'lots'])).toMatchObject({ code: 2, stderr: expect.stringContaining('--max-size must be a size like 500MB or 2GiB, not "lots"') })
    expect(await natctl(['files', 'policy', '--peer-bytes', '99999999tib'])).toMatchObject({ code: 2, stderr: expect.stringContaining('--peer-bytes must be a size') })
    expect(calls).toHaveLength(1)
  })

  it('a duration natctl cannot read is a usage error naming the flag (exit 2)', async () => {
    expect(await natctl(['open', 'bob', '--timeout', 'soon'])).toMatchObject({ code: 2, stderr: expect.stringContaining('--timeout must be a duration like 500ms, 10s, 5m or 1h, not "soon"') })
    expect(await natctl(['files', 'policy', '--stall-timeout', '1x'])).toMatchObject({ code: 2, stderr: expect.stringContaining('--stall-timeout must be a duration like 500ms, 10s, 5m or 1h, not "1x"') })
    expect(calls).toEqual([])
  })

  it('expose add shows the allowed peers as name (id8…)', async () => {
    expect(await natctl(['expose', 'add', '22', '--allow', 'bob'])).toMatchObject({ code: 0, stdout: 'exposed 127.0.0.1:22 to bob (bbbbbbbb…)\n' })
  })
})
