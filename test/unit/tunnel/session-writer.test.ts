// Sealing the mux's frames straight into a secret-stream's raw stream
// (src/tunnel/session-writer.ts), over real secret-streams on a loopback TCP pair:
//
//   writer ── SecretStream a ══ TCP 127.0.0.1 ══ SecretStream b ── messages, in order
//
// What must hold: the peer's secret-stream reads exactly the messages written, in order
// with messages queued through write() before; the frame given is never changed; a wire
// buffer used again (when the kernel took the last one whole) never corrupts a message
// still queued in the socket (checked while the reader is paused, so writes queue).
import { createHash, randomBytes } from 'node:crypto'
import type net from 'node:net'
import SecretStream from '@hyperswarm/secret-stream'
import { afterEach, describe, expect, it } from 'vitest'
import { BATCH_BYTES, sealedWriter } from '../../../src/tunnel/session-writer.js'
import { tcpSessions, type TcpSessions } from './secret-stream-pair.js'

const cleanups: Array<() => void> = []
afterEach(() => {
  for (const c of cleanups.splice(0)) c()
})

async function sessions(): Promise<TcpSessions> {
  const pair = await tcpSessions()
  cleanups.push(pair.close)
  return pair
}

/** Collects `n` messages from `s`. */
function collect(s: SecretStream, n: number): Promise<Buffer[]> {
  const got: Buffer[] = []
  return new Promise((resolve) => {
    s.on('data', (m: Buffer) => {
      got.push(Buffer.from(m))
      if (got.length === n) resolve(got)
    })
  })
}

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex')

/** Calls `seen` with every buffer written to `sock` from now on (then writes it). */
function onWrites(sock: net.Socket, seen: (buf: Buffer) => void): void {
  const realWrite = sock.write.bind(sock) as (buf: Buffer) => boolean
  sock.write = ((buf: Buffer) => (seen(buf), realWrite(buf))) as typeof sock.write
}

describe('sealedWriter over a secret-stream', () => {
  it('is null for anything that is not a secret-stream it knows', () => {
    expect(sealedWriter({ write: () => true })).toBeNull()
    expect(sealedWriter(null)).toBeNull()
  })

  it('the peer reads every frame, in order behind messages queued through write(), and the frames are not changed', async () => {
    const { a, b } = await sessions()
    const w = sealedWriter(a)!
    expect(w).not.toBeNull()
    const queued = [randomBytes(100_000), randomBytes(10), randomBytes(70_000)] // over streamx's 16 KiB: they wait in its queue
    const frames = [randomBytes(5), randomBytes(64 * 1024 + 5), randomBytes(1), randomBytes(4096), randomBytes(64 * 1024 + 5), Buffer.alloc(0)]
    const before = frames.map(sha)
    const got = collect(b, queued.length + frames.length + 200)
    for (const q of queued) a.write(q)
    for (const f of frames) w.write(f)
    // Then many full frames through the same writer (the wire buffer is used again).
    const more = Array.from({ length: 200 }, (_, i) => Buffer.alloc(64 * 1024 + 5, i))
    for (const f of more) w.write(f)
    const all = await got
    expect(all.map(sha)).toEqual([...queued, ...frames, ...more].map(sha))
    expect(frames.map(sha)).toEqual(before)
  })

  it('messages stay intact while the reader is paused and the writes queue in the socket (wire buffers used again only when free)', async () => {
    const { a, b, server } = await sessions()
    const w = sealedWriter(a)!
    const n = 400 // 26 MiB: far more than the socket buffers hold
    const frames = Array.from({ length: n }, () => randomBytes(64 * 1024 + 5))
    const got = collect(b, n)
    server.pause()
    let refused = 0
    for (const f of frames) if (!w.write(f)) refused++
    expect(refused).toBeGreaterThan(0) // the writes did queue
    await new Promise((resolve) => setTimeout(resolve, 50))
    server.resume()
    const all = await got
    expect(all.map(sha)).toEqual(frames.map(sha))
  })

  it('onceDrain() fires once the stream the last write went to drains', async () => {
    const { a, b, server } = await sessions()
    const w = sealedWriter(a)!
    b.on('data', () => undefined)
    server.pause()
    let full = false
    for (let i = 0; i < 1000 && !full; i++) full = !w.write(randomBytes(64 * 1024 + 5))
    expect(full).toBe(true)
    const drained = new Promise<void>((resolve) => w.onceDrain(resolve))
    server.resume()
    await expect(drained).resolves.toBeUndefined()
  })

  it('frames written in one callback go to the socket together (writes of at most BATCH_BYTES), in order, each a message of its own', async () => {
    const { a, b, client } = await sessions()
    const w = sealedWriter(a)!
    const writes: number[] = []
    onWrites(client, (buf) => writes.push(buf.length))
    const frames = [randomBytes(64 * 1024 + 5), randomBytes(9), ...Array.from({ length: 7 }, () => randomBytes(64 * 1024 + 5)), randomBytes(1)]
    const got = collect(b, frames.length)
    for (const f of frames) w.write(f)
    expect(writes.length).toBeLessThan(frames.length) // the first batches filled at once…
    await Promise.resolve() // … the rest went at the end of the callback
    const wire = frames.reduce((n, f) => n + 3 + f.length + 17, 0)
    expect(writes.reduce((n, x) => n + x, 0)).toBe(wire)
    for (const n of writes) expect(n).toBeLessThanOrEqual(BATCH_BYTES)
    expect((await got).map(sha)).toEqual(frames.map(sha))
  })

  it('small frames of one callback (an ACK and a WINDOW) go in one write, and a DATA frame after them joins them', async () => {
    const { a, b, client } = await sessions()
    const w = sealedWriter(a)!
    const writes: number[] = []
    onWrites(client, (buf) => writes.push(buf.length))
    const control = [randomBytes(9), randomBytes(13), randomBytes(5)]
    const withData = [randomBytes(5), randomBytes(64 * 1024 + 5), randomBytes(9)]
    const got = collect(b, control.length + withData.length)
    for (const f of control) w.write(f)
    await Promise.resolve()
    expect(writes).toEqual([control.reduce((n, f) => n + 3 + f.length + 17, 0)])
    for (const f of withData) w.write(f)
    await Promise.resolve()
    expect(writes.slice(1)).toEqual([withData.reduce((n, f) => n + 3 + f.length + 17, 0)])
    expect((await got).map(sha)).toEqual([...control, ...withData].map(sha))
  })

  it('a small frame alone (a PONG to a socket that queues) does not take a batch buffer', async () => {
    const { a, b, client, server } = await sessions()
    const w = sealedWriter(a)!
    b.on('data', () => undefined)
    server.pause()
    for (let i = 0; i < 1000 && client.writableLength === 0; i++) w.write(randomBytes(64 * 1024 + 5))
    await Promise.resolve()
    expect(client.writableLength).toBeGreaterThan(0) // the socket queues
    const sizes: number[] = []
    onWrites(client, (buf) => sizes.push(buf.buffer.byteLength))
    for (let i = 0; i < 3; i++) {
      w.write(randomBytes(20))
      await Promise.resolve()
    }
    expect(sizes.length).toBe(3)
    for (const n of sizes) expect(n).toBeLessThan(BATCH_BYTES)
  })

  it('to a socket that queues, a few frames per callback hold about their size, not a batch buffer each', async () => {
    const { a, b, client, server } = await sessions()
    const w = sealedWriter(a)!
    b.on('data', () => undefined)
    server.pause()
    for (let i = 0; i < 100_000 && client.writableLength === 0; i++) {
      w.write(randomBytes(4096))
      await Promise.resolve()
    }
    await new Promise((resolve) => setTimeout(resolve, 50)) // the kernel takes what it can
    expect(client.writableLength).toBeGreaterThan(0) // the socket queues
    const held = new Set<ArrayBufferLike>() // the memory the queued writes keep alive
    const wire: number[] = []
    onWrites(client, (buf) => {
      held.add(buf.buffer)
      wire.push(buf.length)
    })
    // 4 KiB frames, one per callback (an interactive connection), until the mux must stop.
    let ok = true
    for (let i = 0; i < 1000 && ok; i++) {
      ok = w.write(randomBytes(4096))
      await Promise.resolve()
    }
    expect(ok).toBe(false)
    expect(wire.length).toBeGreaterThan(1)
    const bytes = wire.reduce((n, x) => n + x, 0)
    expect([...held].reduce((n, x) => n + x.byteLength, 0)).toBeLessThanOrEqual(2 * bytes) // a batch buffer each: ~64× the bytes
  })
})
