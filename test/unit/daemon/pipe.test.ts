// join() (src/daemon/pipe.ts) between a real loopback TCP connection and a stand-in
// channel (a PassThrough): what the application at the other end of the TCP connection
// sees when the channel ends well (EOF) and when it dies (RST, ECONNRESET); and
// SocketGather, which writes the peer's data to the socket, on a stand-in socket that
// takes writes only when the test says so.
//
//   client ──TCP──▶ server socket ══ join ══ channel (PassThrough)
import net from 'node:net'
import { randomBytes } from 'node:crypto'
import { PassThrough, Writable } from 'node:stream'
import { afterEach, describe, expect, it } from 'vitest'
import { join, SocketGather } from '../../../src/daemon/pipe.js'
import { SMALL_CHUNK_BYTES, STAGE_BYTES } from '../../../src/daemon/chunk-stage.js'
import { deliverBatch } from '../../../src/tunnel/delivery-lease.js'

const open: Array<net.Server | net.Socket> = []
afterEach(() => {
  for (const x of open.splice(0)) {
    if (x instanceof net.Socket) x.destroy()
    else x.close()
  }
})

/** A client connected to a server socket that is joined to a fresh channel. */
async function joined(): Promise<{ client: net.Socket; ch: PassThrough }> {
  const ch = new PassThrough()
  const server = net.createServer({ allowHalfOpen: true }, (sock) => join(sock, ch))
  open.push(server)
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const client = net.connect({ port: (server.address() as net.AddressInfo).port, host: '127.0.0.1', allowHalfOpen: true })
  open.push(client)
  await new Promise((resolve) => client.once('connect', resolve))
  await new Promise((resolve) => setTimeout(resolve, 20)) // the server side has joined
  return { client, ch }
}

/** How the client's connection ends: 'eof' (FIN) or the error code (a RST is ECONNRESET). */
function outcome(client: net.Socket): Promise<{ how: string; data: string }> {
  let data = ''
  client.on('data', (d: Buffer) => (data += d.toString()))
  return new Promise((resolve) => {
    client.once('end', () => resolve({ how: 'eof', data }))
    client.once('error', (err: NodeJS.ErrnoException) => resolve({ how: err.code ?? err.message, data }))
  })
}

describe('join', () => {
  it('a channel that ends normally ends the TCP connection with a FIN, after its data', async () => {
    const { client, ch } = await joined()
    const how = outcome(client)
    ch.end('last words')
    expect(await how).toEqual({ how: 'eof', data: 'last words' })
  })

  it('a channel that dies with an error (tunnel closed, refused, timed out) resets the TCP connection', async () => {
    const { client, ch } = await joined()
    const how = outcome(client)
    ch.write('partial')
    await new Promise((resolve) => setTimeout(resolve, 20))
    ch.destroy(new Error('tunnel closed'))
    expect((await how).how).toBe('ECONNRESET')
  })

  it('a TCP connection reset by the application destroys the channel', async () => {
    const { client, ch } = await joined()
    const closed = new Promise((resolve) => ch.once('close', resolve))
    client.resetAndDestroy()
    await closed
    expect(ch.destroyed).toBe(true)
  })
})

/** A socket stand-in whose writes complete only when release() is called; what it took, in order. */
function stalledSocket(): { sock: Writable & { destroyed: boolean }; writes: () => number; got: Buffer[]; release: () => void } {
  const got: Buffer[] = []
  const waiting: Array<() => void> = []
  let writes = 0
  const sock = new Writable({
    write(chunk: Buffer, _enc, cb) {
      got.push(chunk)
      waiting.push(cb)
    }
  })
  const realWrite = sock.write.bind(sock) as (buf: Buffer, cb?: () => void) => boolean
  sock.write = ((buf: Buffer, cb?: () => void) => {
    writes++
    return realWrite(buf, cb)
  }) as typeof sock.write
  return { sock, writes: () => writes, got, release: () => waiting.splice(0).forEach((cb) => cb()) }
}

describe('SocketGather', () => {
  it('1-byte payloads to a socket that stopped taking writes are gathered: about one queued write per STAGE_BYTES, not one per byte', async () => {
    const s = stalledSocket()
    const out = new SocketGather(s.sock)
    const data = randomBytes(200_000)
    for (let at = 0; at < data.length; at++) out.write(data.subarray(at, at + 1))
    // The first byte went at once (nothing was queued); the rest waited in 64 KiB buffers.
    expect(s.writes()).toBeLessThanOrEqual(1 + Math.ceil(data.length / STAGE_BYTES))
    expect(s.sock.writableLength).toBeLessThan(data.length + 1)
    for (let i = 0; i < 20 && Buffer.concat(s.got).length < data.length; i++) {
      s.release()
      await new Promise((resolve) => setImmediate(resolve))
    }
    expect(Buffer.concat(s.got).equals(data)).toBe(true) // all of it, in order: the last part when the queue drained
  })

  it('keeps order across small and large payloads and flush(); a socket that keeps up gets each payload at once', async () => {
    const s = stalledSocket()
    const out = new SocketGather(s.sock)
    const sizes = [1, 5, SMALL_CHUNK_BYTES, 3, SMALL_CHUNK_BYTES - 1, STAGE_BYTES, 2, STAGE_BYTES - 1, 7]
    const parts = sizes.map((n) => randomBytes(n))
    for (const p of parts) out.write(p)
    out.flush()
    for (let i = 0; i < 20; i++) {
      s.release()
      await new Promise((resolve) => setImmediate(resolve))
    }
    expect(Buffer.concat(s.got).equals(Buffer.concat(parts))).toBe(true)
    const before = s.writes()
    out.write(Buffer.from('x'))
    expect(s.writes()).toBe(before + 1) // nothing queued: not held back
  })

  it('says when nothing refers to a payload any more (the session reader may then read into its memory again)', () => {
    const s = stalledSocket()
    const out = new SocketGather(s.sock)
    expect(out.write(randomBytes(STAGE_BYTES))).toBe(false) // written, still queued in the socket
    expect(out.write(randomBytes(10))).toBe(true) // copied into the stage
    expect(out.write(randomBytes(SMALL_CHUNK_BYTES))).toBe(false) // queued as it is
    // A socket that takes every write whole at once.
    const fast = new Writable({ write: (_c, _e, cb) => cb() })
    const quick = new SocketGather(fast as Writable & { destroyed: boolean })
    expect(quick.write(randomBytes(STAGE_BYTES))).toBe(true)
  })

  it('payloads given during a reader\'s batch go out together at its end, in one corked write (writev), in order', () => {
    const chunks: Buffer[][] = []
    const sock = new Writable({
      write: (c: Buffer, _e, cb) => (chunks.push([c]), cb()),
      writev: (cs: Array<{ chunk: Buffer }>, cb) => (chunks.push(cs.map((x) => x.chunk)), cb())
    })
    const out = new SocketGather(sock as Writable & { destroyed: boolean })
    const parts = [randomBytes(STAGE_BYTES), randomBytes(3), randomBytes(STAGE_BYTES), randomBytes(SMALL_CHUNK_BYTES)]
    const free = deliverBatch(() => {
      for (const p of parts) expect(out.write(p)).toBe(true)
      expect(chunks).toEqual([]) // nothing written during the deliveries
    })
    expect(free).toBe(true) // the socket took them whole: the read's memory may be used again
    expect(chunks.length).toBe(1) // one writev
    expect(Buffer.concat(chunks[0]!).equals(Buffer.concat(parts))).toBe(true)
    out.write(Buffer.from('after')) // no batch: at once
    expect(chunks.length).toBe(2)
  })

  it('a batch\'s payloads to a socket that queues them count as kept; flush() (the peer\'s FIN) writes them before the end', async () => {
    const s = stalledSocket()
    const out = new SocketGather(s.sock)
    const a = randomBytes(STAGE_BYTES)
    expect(deliverBatch(() => void out.write(a))).toBe(false) // written at the batch's end, still queued
    const b = randomBytes(100)
    // The socket queues now: a payload in the next batch is not put off but staged as before.
    expect(deliverBatch(() => expect(out.write(b)).toBe(true))).toBe(true)
    // A FIN in the same batch as data: flush() writes the data first, and the batch says
    // the socket still refers to the read's memory (it queued them).
    const c = randomBytes(STAGE_BYTES)
    const fresh = stalledSocket()
    const out2 = new SocketGather(fresh.sock)
    const free = deliverBatch(() => {
      expect(out2.write(c)).toBe(true) // put off to the batch's end
      out2.flush()
      fresh.sock.end()
    })
    expect(fresh.sock.writableLength).toBe(c.length)
    expect(free).toBe(false)
    for (let i = 0; i < 20; i++) {
      s.release()
      fresh.release()
      await new Promise((resolve) => setImmediate(resolve))
    }
    expect(Buffer.concat(s.got).equals(Buffer.concat([a, b]))).toBe(true)
    expect(Buffer.concat(fresh.got).equals(c)).toBe(true)
  })

  it('the peer\'s FIN in the same read as data: the read\'s memory is free only if the socket took the data whole, and the application gets the bytes sent', async () => {
    // The session reader reads the next read into a slab the batch called free: model
    // that by overwriting the read's memory once the batch is over, if it said free.
    const deliver = (sock: Writable & { destroyed: boolean }): { free: boolean; sent: Buffer } => {
      const read = randomBytes(STAGE_BYTES) // a DATA frame, a view into the read's memory
      const sent = Buffer.from(read)
      const out = new SocketGather(sock)
      const free = deliverBatch(() => {
        expect(out.write(read)).toBe(true) // put off to the batch's end
        out.flush() // the FIN: MuxChannel.onFin() → endSocket()
        sock.end()
      })
      if (free) read.fill(0)
      return { free, sent }
    }
    const s = stalledSocket()
    const queued = deliver(s.sock)
    expect(queued.free).toBe(false) // the socket still refers to the read's memory
    for (let i = 0; i < 20 && s.sock.writableLength > 0; i++) {
      s.release()
      await new Promise((resolve) => setImmediate(resolve))
    }
    expect(Buffer.concat(s.got).equals(queued.sent)).toBe(true)
    // A socket that takes the writev whole at once: free, and what it got was copied by then.
    const took: Buffer[] = []
    const fast = new Writable({
      write: (c: Buffer, _e, cb) => (took.push(Buffer.from(c)), cb()),
      writev: (cs: Array<{ chunk: Buffer }>, cb) => (cs.forEach((x) => took.push(Buffer.from(x.chunk))), cb())
    })
    const whole = deliver(fast as Writable & { destroyed: boolean })
    expect(whole.free).toBe(true)
    expect(Buffer.concat(took).equals(whole.sent)).toBe(true)
  })
})
