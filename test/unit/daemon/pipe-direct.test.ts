// join() (src/daemon/pipe.ts) between real loopback TCP connections and real mux channels
// over a secret-stream session on loopback TCP: the direct path of issue 18 (the local
// socket read into a shared buffer and copied into DATA frames at once; the peer's data
// written to the socket without the channel's Readable side), as a forward runs it:
//
//   client ──TCP──▶ entry ══ join ══ channel ─ Mux A ═ secret-stream/TCP ═ Mux B ─ channel ══ join ══ conn ──TCP──▶ target
//
// Bytes exact both ways with reads split against the channel's credit, half-close, the
// window as the bound when the target stops reading, a reset, and bytes read on either
// side before the join.
import { createHash, randomBytes } from 'node:crypto'
import net from 'node:net'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { join, LOCAL_QUEUE_BYTES } from '../../../src/daemon/pipe.js'
import { silentLogger } from '../../../src/protocol/log.js'
import { Mux } from '../../../src/tunnel/mux.js'
import { CHANNEL_WINDOW_BYTES, MuxChannel } from '../../../src/tunnel/mux-channel.js'
import { tcpSessions, type TcpSessions } from '../tunnel/secret-stream-pair.js'
import { until } from '../tunnel/pipe.js'

interface Rig {
  client: net.Socket
  /** The entry's channel (at A) and the target side's (at B), once joined. */
  chA: () => MuxChannel
  chB: () => MuxChannel
  muxA: Mux
  /** Joins that took the direct path (deliverTo() accepted the socket), of all joins so far. */
  direct: () => { direct: number; joins: number }
}

const cleanups: Array<() => void> = []
afterEach(() => {
  vi.restoreAllMocks()
  for (const c of cleanups.splice(0).reverse()) c()
})

async function listen(handler: (sock: net.Socket) => void): Promise<number> {
  const srv = net.createServer({ allowHalfOpen: true }, handler)
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve))
  cleanups.push(() => srv.close())
  return (srv.address() as net.AddressInfo).port
}

/**
 * A forward from a client to `onTarget`'s connections. `joinDelayMs`: the entry joins its
 * socket that long after the channel opened (bytes wait on both sides meanwhile).
 */
async function rig(onTarget: (sock: net.Socket) => void, joinDelayMs = 0): Promise<Rig> {
  const deliverTo = vi.spyOn(MuxChannel.prototype, 'deliverTo')
  const sessions: TcpSessions = await tcpSessions()
  cleanups.push(() => sessions.close())
  const muxA = new Mux(sessions.a as never, true, silentLogger)
  const muxB = new Mux(sessions.b as never, false, silentLogger)
  cleanups.push(() => {
    muxA.close('test over')
    muxB.close('test over')
  })
  const targetPort = await listen((sock) => {
    cleanups.push(() => sock.destroy())
    sock.on('error', () => undefined) // reset by a test
    onTarget(sock)
  })
  let chB: MuxChannel | null = null
  muxB.on('open', (req) => {
    const conn = net.connect({ port: targetPort, host: '127.0.0.1', allowHalfOpen: true })
    cleanups.push(() => conn.destroy())
    conn.once('connect', () => {
      req.accept()
      chB = req.channel
      join(conn, req.channel)
    })
  })
  let chA: MuxChannel | null = null
  const entryPort = await listen((sock) => {
    cleanups.push(() => sock.destroy())
    const ch = muxA.openChannel(targetPort)
    chA = ch
    void ch.opened.then(() => setTimeout(() => join(sock, ch), joinDelayMs))
  })
  const client = net.connect({ port: entryPort, host: '127.0.0.1', allowHalfOpen: true })
  cleanups.push(() => client.destroy())
  await new Promise((resolve) => client.once('connect', resolve))
  const direct = (): { direct: number; joins: number } => ({ direct: deliverTo.mock.results.filter((x) => x.value === true).length, joins: deliverTo.mock.calls.length })
  return { client, chA: () => chA!, chB: () => chB!, muxA, direct }
}

/** Everything `sock` reads until its end: byte count and sha256. */
function drain(sock: net.Socket): Promise<{ bytes: number; sha256: string; how: string }> {
  const h = createHash('sha256')
  let bytes = 0
  sock.on('data', (d: Buffer) => {
    bytes += d.length
    h.update(d)
  })
  return new Promise((resolve) => {
    sock.once('end', () => resolve({ bytes, sha256: h.digest('hex'), how: 'eof' }))
    sock.once('error', (err: NodeJS.ErrnoException) => resolve({ bytes, sha256: h.digest('hex'), how: err.code ?? err.message }))
  })
}

/** Writes `data` in `piece`-byte writes, honouring backpressure, then ends. */
async function send(sock: net.Socket, data: Buffer, piece: number): Promise<void> {
  for (let at = 0; at < data.length; at += piece) {
    if (!sock.write(data.subarray(at, at + piece))) await new Promise((resolve) => sock.once('drain', resolve))
  }
  sock.end()
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex')

describe('join over a mux channel: the direct path', () => {
  it('carries 12 MiB each way byte-exact, past the channels\u2019 stream layers, in reads split against the credit', async () => {
    const write = vi.spyOn(MuxChannel.prototype, 'write')
    const push = vi.spyOn(MuxChannel.prototype, 'push')
    const sendSome = vi.spyOn(MuxChannel.prototype, 'sendSome')
    const up = randomBytes(12 * 1024 * 1024)
    const down = randomBytes(12 * 1024 * 1024)
    let atTarget: Promise<{ bytes: number; sha256: string; how: string }> | null = null
    const r = await rig((sock) => {
      atTarget = drain(sock)
      // Answers once the request flows: by then both ends have joined (bytes that come
      // before a join go through the Readable side: the last test).
      sock.once('data', () => void send(sock, down, 100_000))
    })
    const atClient = drain(r.client)
    await send(r.client, up, 77_777) // odd sizes: reads and frames do not line up
    const [c, t] = await Promise.all([atClient, until(() => atTarget !== null, 'the target connection').then(() => atTarget!)])
    expect(t).toEqual({ bytes: up.length, sha256: sha(up), how: 'eof' })
    expect(c).toEqual({ bytes: down.length, sha256: sha(down), how: 'eof' })
    // Both ends sent through sendSome(), none through the Writable side; the peer's data
    // reached the sockets without the Readable side (push(null) for the FIN only).
    expect(sendSome).toHaveBeenCalled()
    expect(write).not.toHaveBeenCalled()
    expect(push.mock.calls.every(([chunk]) => chunk === null)).toBe(true)
    // 12 MiB against a 4 MiB window: the sender waited for credit, so reads were split.
    expect(r.muxA.bytesOut).toBe(up.length)
    expect(r.direct()).toEqual({ direct: 2, joins: 2 })
  }, 30_000)

  it('half-close: the client\u2019s FIN reaches the target after its data, and the reply still comes back whole', async () => {
    const reply = randomBytes(3 * 1024 * 1024)
    const r = await rig((sock) => {
      const got: Buffer[] = []
      sock.on('data', (d: Buffer) => got.push(d))
      sock.once('end', () => {
        // The request is complete only at the FIN: answer with its hash, then the bulk.
        sock.write(sha(Buffer.concat(got)))
        sock.end(reply)
      })
    })
    const request = randomBytes(1_000_003)
    const atClient = drain(r.client)
    r.client.end(request)
    const c = await atClient
    expect(c.how).toBe('eof')
    expect(c.bytes).toBe(64 + reply.length)
    expect(r.direct()).toEqual({ direct: 2, joins: 2 })
  }, 30_000)

  it('a target that stops reading stops the client\u2019s data at the channel\u2019s window (plus socket buffers), and nothing is lost when it reads again', async () => {
    let target: net.Socket | null = null
    const r = await rig((sock) => {
      target = sock
      sock.pause()
    })
    const up = randomBytes(32 * 1024 * 1024)
    void send(r.client, up, 64 * 1024)
    await until(() => target !== null && r.chA() !== undefined, 'the target connection')
    // Wait until the flow has stopped: the bytes sent over the tunnel stop growing.
    let last = -1
    for (let i = 0; i < 50 && r.muxA.bytesOut !== last; i++) {
      last = r.muxA.bytesOut
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
    // What left A is bounded by the window B granted: 4 MiB plus what B granted as the
    // target's socket took bytes (its queue up to LOCAL_QUEUE_BYTES and the kernel's buffers).
    expect(r.muxA.bytesOut).toBeGreaterThan(0)
    expect(r.muxA.bytesOut).toBeLessThan(up.length / 2)
    expect(r.chB().writableLength).toBe(0)
    const queuedAtB = r.muxA.bytesOut - r.chB().bytesIn
    expect(queuedAtB).toBeLessThanOrEqual(CHANNEL_WINDOW_BYTES + LOCAL_QUEUE_BYTES)
    const atTarget = drain(target!)
    target!.resume()
    expect(await atTarget).toEqual({ bytes: up.length, sha256: sha(up), how: 'eof' })
    expect(r.direct()).toEqual({ direct: 2, joins: 2 })
  }, 60_000)

  it('a channel reset by the peer resets the client\u2019s connection (ECONNRESET, not an EOF)', async () => {
    let target: net.Socket | null = null
    const r = await rig((sock) => {
      target = sock
      sock.write('hello')
    })
    const atClient = drain(r.client)
    await until(() => target !== null, 'the target connection')
    await new Promise((resolve) => setTimeout(resolve, 50))
    r.chB().destroy(new Error('going away'))
    const c = await atClient
    expect(c.how).toBe('ECONNRESET')
    expect(r.direct()).toEqual({ direct: 2, joins: 2 })
  }, 30_000)

  it('bytes read on either side before the join (a client that speaks first, a server banner) go first, in order', async () => {
    const banner = randomBytes(200_000)
    const first = randomBytes(300_000)
    let atTarget: Promise<{ bytes: number; sha256: string; how: string }> | null = null
    const r = await rig((sock) => {
      atTarget = drain(sock)
      sock.end(banner) // arrives at A's channel before A joins: held in its Readable side
    }, 200)
    const atClient = drain(r.client)
    r.client.end(first) // read by the entry's socket before A joins
    const [c, t] = await Promise.all([atClient, until(() => atTarget !== null, 'the target connection').then(() => atTarget!)])
    expect(c).toEqual({ bytes: banner.length, sha256: sha(banner), how: 'eof' })
    expect(t).toEqual({ bytes: first.length, sha256: sha(first), how: 'eof' })
    expect(r.direct()).toEqual({ direct: 2, joins: 2 })
  }, 30_000)
})
