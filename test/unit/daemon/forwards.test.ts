// daemon/forwards.ts: its decisions through ForwardsComponents, with a real state store in
// a temp dir, real listeners on loopback and a fake tunnel manager: what is stored and
// listened on, what is refused before anything is stored, a port taken by someone else
// (listed as not listening, with its error, and retried on reload), and what a local
// application sees when its forwarded connection cannot reach the peer (a reset, soon).
import { EventEmitter } from 'node:events'
import net from 'node:net'
import { Duplex } from 'node:stream'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { StateStore, type ForwardSpec } from '../../../src/daemon/config.js'
import { FORWARD_OPEN_TIMEOUT_MS, Forwards } from '../../../src/daemon/forwards.js'
import { NatdError } from '../../../src/protocol/errors.js'
import { silentLogger, type Logger } from '../../../src/protocol/log.js'
import type { TunnelManager } from '../../../src/tunnel/manager.js'
import { MIGRATION_PAUSE_MAX_MS } from '../../../src/tunnel/migration-deadline.js'
import { FakeClock, freePort, tempDirs } from '../helpers.js'
import { until } from '../tunnel/pipe.js'

const SELF = { name: 'alice', id: 'a'.repeat(52) }

/** A channel as mux.openChannel returns it: a duplex that echoes, opened when the test says. */
class FakeChannel extends Duplex {
  readonly opened: Promise<void>
  accept!: () => void
  refuse!: (err: Error) => void
  constructor(readonly port: number) {
    super()
    this.opened = new Promise((resolve, reject) => {
      this.accept = resolve
      this.refuse = reject
    })
    this.opened.catch(() => undefined)
  }
  override _read(): void {}
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: () => void): void {
    this.push(chunk)
    cb()
  }
  override _final(cb: () => void): void {
    this.push(null)
    cb()
  }
  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.refuse(err ?? new NatdError('TUNNEL_CLOSED', 'channel destroyed'))
    cb(err)
  }
}

/** What a local application sees on `port`: the error code it gets, or 'end' for a clean close. */
function connectOutcome(port: number, send?: string): Promise<{ outcome: string; data: string; ms: number }> {
  return new Promise((resolve) => {
    const t0 = Date.now()
    let data = ''
    const s = net.connect(port, '127.0.0.1', () => {
      if (send !== undefined) s.end(send)
    })
    s.on('data', (d: Buffer) => (data += d.toString()))
    s.on('error', (err: NodeJS.ErrnoException) => resolve({ outcome: err.code ?? err.message, data, ms: Date.now() - t0 }))
    s.on('end', () => {
      s.destroy()
      resolve({ outcome: 'end', data, ms: Date.now() - t0 })
    })
  })
}

function isListening(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, host, () => {
      s.destroy()
      resolve(true)
    })
    s.on('error', () => resolve(false))
  })
}

function listenOn(port: number): Promise<net.Server> {
  return new Promise((resolve, reject) => {
    const s = net.createServer((c) => c.destroy())
    s.once('error', reject)
    s.listen(port, '127.0.0.1', () => resolve(s))
  })
}

describe('Forwards', () => {
  const tempDir = tempDirs('natd-forwards-')
  let store: StateStore
  let forwards: Forwards | null
  let clock: FakeClock
  let warnings: Array<{ message: string; fields: Record<string, unknown> }>
  let channels: FakeChannel[]
  /** What tunnels.open does for each forwarded connection; default: a tunnel whose channels the test controls. */
  let open: (peer: string) => Promise<unknown>
  let opens: string[]
  let checked: string[]
  let checkPeer: (peer: string) => Promise<void>
  /** The tunnel the default `open` hands out: up, or migrating when the test says (it emits the tunnel's moves). */
  let tunnel: EventEmitter & { isMigrating: boolean; mux: { openChannel(port: number): FakeChannel } }
  const servers: net.Server[] = []
  const log: Logger = { ...silentLogger, warn: (message: string, fields?: Record<string, unknown>) => void warnings.push({ message, fields: fields ?? {} }), child: () => log }

  const tunnels = {
    open: (peer: string) => {
      opens.push(peer)
      return open(peer)
    }
  } as unknown as TunnelManager

  function make(): Forwards {
    forwards = new Forwards({ store, tunnels, log, selfName: SELF.name, selfId: SELF.id, checkPeer: (p) => (checked.push(p), checkPeer(p)), clock })
    return forwards
  }

  async function spec(over: Partial<ForwardSpec> = {}): Promise<ForwardSpec> {
    return { localPort: await freePort(), bind: '127.0.0.1', peer: 'bob', remotePort: 8080, ...over }
  }

  beforeEach(() => {
    store = new StateStore(tempDir())
    forwards = null
    clock = new FakeClock()
    warnings = []
    channels = []
    opens = []
    checked = []
    checkPeer = async () => undefined
    tunnel = Object.assign(new EventEmitter(), {
      isMigrating: false,
      mux: {
        openChannel: (port: number) => {
          const ch = new FakeChannel(port)
          channels.push(ch)
          return ch
        }
      }
    })
    open = async () => ({ tunnel })
  })

  afterEach(async () => {
    forwards?.stop()
    await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))))
  })

  it('add listens and stores; list shows it; remove stops listening and forgets it', async () => {
    const f = make()
    const s = await spec()
    expect(await f.add(s)).toEqual({ ...s, connections: 0, listening: true, error: null })
    expect(checked).toEqual(['bob'])
    expect(store.forwards).toEqual([s])
    expect(f.list()).toEqual([{ ...s, connections: 0, listening: true, error: null }])
    expect(await isListening(s.localPort)).toBe(true)

    expect(f.remove(s.localPort)).toEqual({ ...s, connections: 0, listening: false, error: null })
    expect(store.forwards).toEqual([])
    expect(f.list()).toEqual([])
    expect(await isListening(s.localPort)).toBe(false)
    expect(() => f.remove(s.localPort)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }))
  })

  it('a forward the state file would refuse (config.json schema) is not stored, and its port is let go', async () => {
    const f = make()
    const s = await spec({ peer: 'not a peer name!' }) // the API checks this first; the store is the last guard
    await expect(f.add(s)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(/forwards\[0\]\.peer/) })
    expect(store.forwards).toEqual([])
    expect(await isListening(s.localPort)).toBe(false)
  })

  it('stored forwards come back on start (a new agent on the same store)', async () => {
    const s = await spec()
    await make().add(s)
    forwards!.stop()
    expect(await isListening(s.localPort)).toBe(false)
    const again = make()
    await again.start()
    expect(again.list()).toEqual([{ ...s, connections: 0, listening: true, error: null }])
    expect(await isListening(s.localPort)).toBe(true)
  })

  it('refuses, storing nothing: a forward to yourself, a bind that is not an IP, a port already forwarded, a peer the server does not know', async () => {
    const f = make()
    const s = await spec()
    await expect(f.add({ ...s, peer: SELF.name })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(/yourself/) })
    await expect(f.add({ ...s, peer: SELF.id })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' })
    await expect(f.add({ ...s, bind: 'localhost' })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(/--bind must be an IP address/) })
    checkPeer = async (p) => {
      throw new NatdError('PEER_UNKNOWN', `no peer ${p}`)
    }
    await expect(f.add({ ...s, peer: 'zed' })).rejects.toMatchObject({ code: 'PEER_UNKNOWN' })
    expect(store.forwards).toEqual([])
    expect(await isListening(s.localPort)).toBe(false)

    checkPeer = async () => undefined
    await f.add(s)
    await expect(f.add({ ...s, peer: 'carol', remotePort: 1 })).rejects.toMatchObject({ code: 'PORT_IN_USE', message: expect.stringMatching(/already forwarded/) })
    expect(store.forwards).toEqual([s])
  })

  it('a bind address that is not this machine\'s is INVALID_ARGUMENT; another loopback address is fine', async () => {
    const f = make()
    // 192.0.2.1 is TEST-NET-1 (RFC 5737): never an address of this host.
    await expect(f.add(await spec({ bind: '192.0.2.1' }))).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(/not an address of this machine/) })
    expect(store.forwards).toEqual([])
    const s = await spec({ bind: '127.0.0.2' })
    await f.add(s)
    expect(await isListening(s.localPort, '127.0.0.2')).toBe(true)
    expect(await isListening(s.localPort, '127.0.0.1')).toBe(false) // bound where asked, not everywhere
  })

  it('a port someone else holds: add is PORT_IN_USE and stores nothing', async () => {
    const s = await spec()
    servers.push(await listenOn(s.localPort))
    await expect(make().add(s)).rejects.toMatchObject({ code: 'PORT_IN_USE', message: expect.stringMatching(/is in use/) })
    expect(store.forwards).toEqual([])
  })

  it('a stored forward whose port is taken is listed as not listening with its error, and listens after reload once the port is free', async () => {
    const s = await spec()
    store.setForwards([s])
    const holder = await listenOn(s.localPort)
    const f = make()
    await f.start()
    expect(f.list()).toEqual([{ ...s, connections: 0, listening: false, error: expect.stringMatching(/in use/) }])

    await f.reload() // still taken: still failed, still listed
    expect(f.list()[0]).toMatchObject({ listening: false, error: expect.stringMatching(/in use/) })

    await new Promise((r) => holder.close(r))
    await f.reload()
    expect(f.list()).toEqual([{ ...s, connections: 0, listening: true, error: null }])
    expect(await isListening(s.localPort)).toBe(true)

    // reload also stops what the store no longer holds
    store.setForwards([])
    await f.reload()
    expect(await isListening(s.localPort)).toBe(false)
  })

  it('a connection forwarded to a peer that cannot be reached is reset at once, with the code logged', async () => {
    const f = make()
    const s = await spec({ peer: 'ghost' })
    await f.add(s)
    open = async (peer) => {
      throw new NatdError('PEER_OFFLINE', `${peer} is not registered`)
    }
    const r = await connectOutcome(s.localPort)
    expect(r.outcome).toBe('ECONNRESET') // not an EOF the application would take for an empty answer
    expect(r.ms).toBeLessThan(FORWARD_OPEN_TIMEOUT_MS) // reset on the error, not after the deadline (the fake clock never moved)
    expect(opens).toEqual(['ghost'])
    expect(warnings).toEqual([{ message: 'refused', fields: { what: 'forwarded connection', code: 'PEER_OFFLINE', from: 'ghost', reason: `local port ${s.localPort} to ghost:8080: ghost is not registered` } }])
  })

  it('connections that fail in a row write one line at once and one count per window, not a line each (review 9 #3)', async () => {
    const f = make()
    const s = await spec({ peer: 'ghost' })
    await f.add(s)
    open = async (peer) => {
      throw new NatdError('PEER_OFFLINE', `${peer} is not registered`)
    }
    // Any local user may connect to a forward's port, as fast as it likes.
    for (let i = 0; i < 50; i++) expect((await connectOutcome(s.localPort)).outcome).toBe('ECONNRESET')
    expect(warnings.map((w) => w.message)).toEqual(['refused'])
    clock.advance(10_000)
    expect(warnings.map((w) => w.message)).toEqual(['refused', 'refused again'])
    expect(warnings[1]!.fields).toMatchObject({ what: 'forwarded connection', code: 'PEER_OFFLINE', count: 49 })
  })

  it('a channel the peer refuses (NOT_EXPOSED) resets the local connection and says so', async () => {
    const f = make()
    const s = await spec()
    await f.add(s)
    const pending = connectOutcome(s.localPort)
    await until(() => channels.length === 1, 'the channel to the peer')
    expect(channels[0]!.port).toBe(8080)
    channels[0]!.refuse(new NatdError('NOT_EXPOSED', 'port 8080 is not exposed'))
    expect((await pending).outcome).toBe('ECONNRESET')
    expect(warnings[0]).toMatchObject({ message: 'refused', fields: { what: 'forwarded connection', code: 'NOT_EXPOSED', from: s.peer } })
  })

  it('a channel the peer never answers is reset after FORWARD_OPEN_TIMEOUT_MS with TIMEOUT', async () => {
    const f = make()
    const s = await spec()
    await f.add(s)
    const pending = connectOutcome(s.localPort)
    await until(() => channels.length === 1, 'the channel to the peer')
    clock.advance(FORWARD_OPEN_TIMEOUT_MS - 1)
    expect(channels[0]!.destroyed).toBe(false)
    clock.advance(1)
    expect((await pending).outcome).toBe('ECONNRESET')
    expect(warnings[0]).toMatchObject({ fields: { code: 'TIMEOUT', from: 'bob' } })
  })

  it('a connection made while the tunnel migrates waits for the resume (the deadline does not run meanwhile), then opens; it is reset only FORWARD_OPEN_TIMEOUT_MS of running time later', async () => {
    const f = make()
    const s = await spec()
    await f.add(s)
    tunnel.isMigrating = true
    tunnel.emit('migrating', 'path silent')
    const sock = net.connect(s.localPort, '127.0.0.1')
    const ended: string[] = []
    sock.on('error', (err: NodeJS.ErrnoException) => ended.push(err.code ?? err.message))
    await until(() => channels.length === 1, 'the channel to the peer')
    clock.advance(FORWARD_OPEN_TIMEOUT_MS + 30_000) // a long migration: no deadline runs
    expect(channels[0]!.destroyed).toBe(false)
    tunnel.isMigrating = false
    tunnel.emit('resumed', 45_000)
    clock.advance(FORWARD_OPEN_TIMEOUT_MS - 1) // the OPEN went out on the resumed session; its answer is late
    expect(channels[0]!.destroyed).toBe(false)
    channels[0]!.accept()
    let got = ''
    sock.on('data', (d: Buffer) => (got += d.toString()))
    sock.write('after the resume')
    await until(() => got === 'after the resume', 'the echo')
    expect(ended).toEqual([])
    sock.destroy()
  })

  it('a connection made while the tunnel migrates is reset once the migration outlasts MIGRATION_PAUSE_MAX_MS, and at once when the tunnel gives up (its channel destroyed)', async () => {
    const f = make()
    const s = await spec()
    await f.add(s)
    tunnel.isMigrating = true
    const pending = connectOutcome(s.localPort)
    await until(() => channels.length === 1, 'the channel to the peer')
    clock.advance(MIGRATION_PAUSE_MAX_MS - 1)
    expect(channels[0]!.destroyed).toBe(false)
    clock.advance(1)
    expect((await pending).outcome).toBe('ECONNRESET')
    expect(warnings[0]).toMatchObject({ fields: { code: 'TIMEOUT', from: 'bob' } })

    // The tunnel gives up (it closes; its mux destroys every channel): reset with that code, no deadline needed.
    const again = connectOutcome(s.localPort)
    await until(() => channels.length === 2, 'the second channel')
    channels[1]!.destroy(new NatdError('TUNNEL_CLOSED', 'no path for 1m 30s'))
    expect((await again).outcome).toBe('ECONNRESET')
    expect(warnings[1]).toMatchObject({ fields: { code: 'TUNNEL_CLOSED' } })
  })

  it('an accepted channel carries the bytes both ways and counts as a connection until it ends', async () => {
    const f = make()
    const s = await spec()
    await f.add(s)
    const sock = net.connect(s.localPort, '127.0.0.1')
    let got = ''
    sock.on('data', (d: Buffer) => (got += d.toString()))
    await until(() => channels.length === 1, 'the channel to the peer')
    expect(f.list()[0]!.connections).toBe(1)
    channels[0]!.accept()
    sock.write('ping')
    await until(() => got === 'ping', 'the echo')
    expect(clock.pending).toBe(0) // the open deadline was cleared
    f.remove(s.localPort) // removing the forward drops its connections
    await until(() => sock.destroyed, 'the local connection closed')
    expect(warnings).toEqual([])
  })
})
