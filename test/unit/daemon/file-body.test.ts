// FileBody (src/daemon/file-body.ts), the receiver's sink for a file's bytes, on a real
// file with the disk call injected: every byte on disk in order through short writes,
// one write at a time, credit withheld while WRITE_QUEUE_BYTES wait for the disk, the
// END frame split anywhere, errors (ENOSPC, bytes that are no END, a FIN before the end),
// a resume that carries the hash of what the partial held, and frames that are free
// when data() returns (copied, so the session reader reuses its slab).
import { createHash, randomBytes } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { FileBody, SYNC_EVERY_BYTES, WRITE_QUEUE_BYTES, type SyncFn, type WritevFn } from '../../../src/daemon/file-body.js'
import { WRITE_BUFFER_BYTES } from '../../../src/daemon/copy-queue.js'
import { deliverLeased } from '../../../src/tunnel/delivery-lease.js'
import { encodeTransfer } from '../../../src/protocol/transfer.js'

const KiB = 1024
const MiB = 1024 * KiB

const cleanups: Array<() => void> = []
afterEach(() => {
  for (const c of cleanups.splice(0)) c()
})

function partial(initial = Buffer.alloc(0)): { file: string; fd: number } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-body-'))
  const file = path.join(dir, 'partial')
  fs.writeFileSync(file, initial)
  const fd = fs.openSync(file, 'a', 0o600)
  cleanups.push(() => {
    fs.closeSync(fd)
    fs.rmSync(dir, { recursive: true, force: true })
  })
  return { file, fd }
}

const sha = (b: Buffer): Buffer => createHash('sha256').update(b).digest()
const endFrame = (digest: Buffer): Buffer => encodeTransfer({ type: 'end', sha256: digest })

/** Cuts `b` at random points into pieces of 1 byte to 100 KiB. */
function pieces(b: Buffer): Buffer[] {
  const out: Buffer[] = []
  for (let at = 0; at < b.length; ) {
    const n = Math.min(b.length - at, 1 + Math.floor(Math.random() * 100 * KiB))
    out.push(b.subarray(at, at + n))
    at += n
  }
  return out
}

/** The real writev, at most `max` bytes per call (what a disk near full or a signal gives). */
function shortWrites(max: number, calls: { n: number; inFlight: number; maxInFlight: number }): WritevFn {
  return (fd, bufs, cb) => {
    calls.n++
    calls.maxInFlight = Math.max(calls.maxInFlight, ++calls.inFlight)
    const all = Buffer.concat(bufs)
    const take = all.subarray(0, Math.min(all.length, 1 + Math.floor(Math.random() * max)))
    fs.write(fd, take, 0, take.length, null, (err, written) => {
      calls.inFlight--
      cb(err, written)
    })
  }
}

describe('FileBody', () => {
  it('puts every byte on disk in order through short writes, one write at a time, and hands over the END digest', async () => {
    const { file, fd } = partial()
    const data = randomBytes(3 * MiB + 123)
    const calls = { n: 0, inFlight: 0, maxInFlight: 0 }
    const hash = createHash('sha256')
    let seen = 0
    const body = new FileBody({ fd, bytes: data.length, hash, onDrain: () => undefined, onBytes: (n) => (seen += n), writev: shortWrites(50 * KiB, calls) })
    // The END frame comes glued to the last body bytes, split across two reads.
    const wire = pieces(Buffer.concat([data, endFrame(sha(data))]))
    for (const p of wire) body.data(p)
    await expect(body.result).resolves.toEqual(sha(data))
    expect(fs.readFileSync(file).equals(data)).toBe(true)
    expect(hash.digest().equals(sha(data))).toBe(true)
    expect(seen).toBe(data.length)
    expect(calls.n).toBeGreaterThan(3 * MiB / (50 * KiB)) // the short writes were taken up again
    expect(calls.maxInFlight).toBe(1)
  })

  it('withholds credit while WRITE_QUEUE_BYTES wait for the disk, and grants it once a write brings the queue below', async () => {
    const { file, fd } = partial()
    const pending: Array<() => void> = []
    // A disk that takes each writev only when the test says so.
    const writev: WritevFn = (fd_, bufs, cb) => pending.push(() => fs.writev(fd_, bufs, (err, n) => cb(err, n)))
    let drains = 0
    const data = randomBytes(4 * MiB)
    const body = new FileBody({ fd, bytes: data.length, hash: createHash('sha256'), onDrain: () => drains++, onBytes: () => undefined, writev })
    const chunk = 64 * KiB
    let at = 0
    let accepted = true
    while (accepted && at < data.length) {
      accepted = body.data(data.subarray(at, at + chunk))
      at += chunk
    }
    // It said "full" once the bytes waiting for the disk (the write in flight included) reached the bound.
    expect(accepted).toBe(false)
    expect(at).toBe(WRITE_QUEUE_BYTES)
    expect(pending).toHaveLength(1) // one write at a time: the first frame; the rest queued
    await new Promise((r) => setTimeout(r, 20))
    expect(drains).toBe(0) // nothing written: no credit
    pending.shift()!()
    await until(() => drains === 1) // below the bound: the credit is granted
    expect(pending).toHaveLength(1) // the whole queue in one writev
    // The peer sends on (what its window allowed), then END.
    for (; at < data.length; at += chunk) body.data(data.subarray(at, at + chunk))
    body.data(endFrame(sha(data)))
    while (!(await settledOrWrite(body, pending)));
    await expect(body.result).resolves.toEqual(sha(data))
    expect(fs.readFileSync(file).equals(data)).toBe(true)
  })

  it('1-byte DATA frames against a stalled disk are copied into a few large buffers, not queued one Buffer per byte', async () => {
    const { file, fd } = partial()
    const pending: Array<() => void> = []
    const batches: number[] = [] // Buffers per writev
    const writev: WritevFn = (fd_, bufs, cb) => {
      batches.push(bufs.length)
      pending.push(() => fs.writev(fd_, bufs, (err, n) => cb(err, n)))
    }
    const data = randomBytes(600_000)
    const body = new FileBody({ fd, bytes: data.length, hash: createHash('sha256'), onDrain: () => undefined, onBytes: () => undefined, writev })
    // The disk stalls on the first byte; the peer sends the rest a byte per frame.
    for (let at = 0; at < data.length; at++) body.data(data.subarray(at, at + 1))
    body.data(endFrame(sha(data)))
    expect(batches).toEqual([1])
    pending.shift()!()
    await until(() => batches.length === 2)
    // 599,999 bytes waited: in WRITE_BUFFER_BYTES buffers (3), not 599,999 Buffers (1,024 per writev).
    expect(batches[1]).toBeLessThanOrEqual(Math.ceil(data.length / WRITE_BUFFER_BYTES))
    while (!(await settledOrWrite(body, pending)));
    await expect(body.result).resolves.toEqual(sha(data))
    expect(fs.readFileSync(file).equals(data)).toBe(true)
  })

  it('keeps no reference to a frame: each delivery counts as released, and the bytes on disk are the ones delivered even if the frame is overwritten after', async () => {
    const { file, fd } = partial()
    const data = randomBytes(MiB + 5)
    const body = new FileBody({ fd, bytes: data.length, hash: createHash('sha256'), onDrain: () => undefined, onBytes: () => undefined })
    // One slab, read into again after every delivery, as the session reader does when its frames were released.
    const slab = Buffer.alloc(64 * KiB)
    const wire = Buffer.concat([data, endFrame(sha(data))])
    for (let at = 0; at < wire.length; at += slab.length) {
      const n = wire.copy(slab, 0, at)
      expect(deliverLeased(() => body.data(slab.subarray(0, n)))).toBe(true)
      slab.fill(0xee)
    }
    await expect(body.result).resolves.toEqual(sha(data))
    expect(fs.readFileSync(file).equals(data)).toBe(true)
  })

  it('flushes early every SYNC_EVERY_BYTES, beside the writes; the result waits for a flush in flight', async () => {
    const { file, fd } = partial()
    const data = Buffer.alloc(SYNC_EVERY_BYTES + 3 * MiB + 5)
    for (let i = 0; i < data.length; i += 4096) data.writeUInt32BE(i, i)
    const syncs: Array<{ at: number; done: () => void }> = []
    let body: FileBody | null = null
    // A flush that ends when the test says so; it records how much was written when it started.
    const fdatasync: SyncFn = (fd_, cb) => syncs.push({ at: body!.written, done: () => fs.fdatasync(fd_, cb) })
    body = new FileBody({ fd, bytes: data.length, hash: createHash('sha256'), onDrain: () => undefined, onBytes: () => undefined, fdatasync })
    const frame = 64 * KiB
    let at = 0
    const sendSome = async (upTo: number): Promise<void> => {
      for (; at < upTo; at += frame) {
        if (!body!.data(data.subarray(at, Math.min(upTo, at + frame)))) await until(() => body!.written >= at - WRITE_QUEUE_BYTES / 2)
      }
    }
    await sendSome(SYNC_EVERY_BYTES + MiB)
    await until(() => syncs.length === 1)
    expect(syncs[0]!.at).toBeGreaterThanOrEqual(SYNC_EVERY_BYTES)
    // Writes go on while the flush runs.
    await sendSome(data.length)
    body.data(endFrame(sha(data)))
    await until(() => body!.written === data.length)
    expect(syncs).toHaveLength(1) // one at a time: the second waits for the first
    let resolved = false
    void body.result.then(() => (resolved = true))
    await new Promise((r) => setTimeout(r, 20))
    expect(resolved).toBe(false) // the fd is still in use: the receiver must not fsync and close it yet
    syncs.shift()!.done()
    await expect(body.result).resolves.toEqual(sha(data))
    expect(syncs).toHaveLength(0) // less than SYNC_EVERY_BYTES came after the flush began: the fsync before DONE has the rest
    expect(fs.readFileSync(file).equals(data)).toBe(true)
  })

  it('a failed early flush fails the body (its error would not be reported to the fsync before DONE)', async () => {
    const { fd } = partial()
    const fdatasync: SyncFn = (_fd, cb) => setImmediate(() => cb(Object.assign(new Error('i/o error'), { code: 'EIO' })))
    const body = new FileBody({ fd, bytes: SYNC_EVERY_BYTES + MiB, hash: createHash('sha256'), onDrain: () => undefined, onBytes: () => undefined, fdatasync })
    const chunk = Buffer.alloc(MiB)
    for (let i = 0; i <= SYNC_EVERY_BYTES / MiB; i++) {
      body.data(chunk)
      await body.settled()
    }
    await expect(body.result).rejects.toMatchObject({ code: 'EIO' })
    await body.settled()
  })

  it('a write or early flush that fails after the body failed another way is handed to onLateError; result keeps the first error', async () => {
    const { fd } = partial()
    const eio = (): NodeJS.ErrnoException => Object.assign(new Error('i/o error'), { code: 'EIO' })
    // The disk calls end when the test says so.
    const writes: Array<(err: NodeJS.ErrnoException | null) => void> = []
    const syncs: Array<(err: NodeJS.ErrnoException | null) => void> = []
    const writev: WritevFn = (fd_, bufs, cb) => writes.push((err) => (err ? cb(err, 0) : fs.writev(fd_, bufs, cb)))
    const fdatasync: SyncFn = (_fd, cb) => syncs.push(cb)
    const late: Array<{ code: string | undefined; during: string }> = []
    const body = new FileBody({ fd, bytes: SYNC_EVERY_BYTES + MiB, hash: createHash('sha256'), onDrain: () => undefined, onBytes: () => undefined, writev, fdatasync, onLateError: (err, during) => late.push({ code: err.code, during }) })
    // Write SYNC_EVERY_BYTES, so that an early flush starts, then one more write to hold in flight.
    const chunk = Buffer.alloc(MiB)
    for (let i = 0; i < SYNC_EVERY_BYTES / MiB; i++) {
      body.data(chunk)
      writes.shift()!(null)
      await until(() => !writes.length && body.written === (i + 1) * MiB)
    }
    expect(syncs).toHaveLength(1)
    body.data(chunk)
    expect(writes).toHaveLength(1)
    body.fail(Object.assign(new Error('the file channel closed'), { code: 'TUNNEL_CLOSED' }))
    writes.shift()!(eio())
    syncs.shift()!(eio())
    await body.settled()
    await expect(body.result).rejects.toMatchObject({ code: 'TUNNEL_CLOSED' })
    expect(late).toEqual([{ code: 'EIO', during: 'write' }, { code: 'EIO', during: 'flush' }])
  })

  it('small and large chunks mixed, through short writes, land on disk in order', async () => {
    const { file, fd } = partial()
    const data = randomBytes(2 * MiB)
    const calls = { n: 0, inFlight: 0, maxInFlight: 0 }
    const body = new FileBody({ fd, bytes: data.length, hash: createHash('sha256'), onDrain: () => undefined, onBytes: () => undefined, writev: shortWrites(30 * KiB, calls) })
    const sizes = [1, 3, 20 * KiB, 500, 16 * KiB - 1, 16 * KiB, 7, 64 * KiB, 2, WRITE_BUFFER_BYTES - 1, WRITE_BUFFER_BYTES + 3]
    for (let at = 0, i = 0; at < data.length; i++) {
      const n = Math.min(data.length - at, sizes[i % sizes.length]!)
      body.data(data.subarray(at, at + n))
      at += n
    }
    body.data(endFrame(sha(data)))
    await expect(body.result).resolves.toEqual(sha(data))
    expect(fs.readFileSync(file).equals(data)).toBe(true)
  })

  it('a resume carries the hash of what the partial held; only the rest is written', async () => {
    const data = randomBytes(2 * MiB)
    const have = 700 * KiB + 5
    const { file, fd } = partial(data.subarray(0, have))
    const hash = createHash('sha256').update(data.subarray(0, have))
    const body = new FileBody({ fd, bytes: data.length - have, hash, onDrain: () => undefined, onBytes: () => undefined })
    for (const p of pieces(Buffer.concat([data.subarray(have), endFrame(sha(data))]))) body.data(p)
    await expect(body.result).resolves.toEqual(sha(data))
    expect(hash.digest().equals(sha(data))).toBe(true)
    expect(fs.readFileSync(file).equals(data)).toBe(true)
    expect(body.written).toBe(data.length - have)
  })

  it('an empty body waits for END alone', async () => {
    const { fd } = partial()
    const body = new FileBody({ fd, bytes: 0, hash: createHash('sha256'), onDrain: () => undefined, onBytes: () => undefined })
    const frame = endFrame(sha(Buffer.alloc(0)))
    body.data(frame.subarray(0, 3))
    body.data(frame.subarray(3))
    await expect(body.result).resolves.toEqual(sha(Buffer.alloc(0)))
  })

  it('a full disk fails the body with ENOSPC, and no write runs after', async () => {
    const { fd } = partial()
    let calls = 0
    const writev: WritevFn = (_fd, _bufs, cb) => {
      calls++
      setImmediate(() => cb(Object.assign(new Error('no space left on device'), { code: 'ENOSPC' }), 0))
    }
    const body = new FileBody({ fd, bytes: MiB, hash: createHash('sha256'), onDrain: () => undefined, onBytes: () => undefined, writev })
    body.data(Buffer.alloc(64 * KiB))
    await expect(body.result).rejects.toMatchObject({ code: 'ENOSPC' })
    body.data(Buffer.alloc(64 * KiB))
    await body.settled()
    expect(calls).toBe(1)
  })

  it('bytes after the body that are no END frame, or more than END, fail with BAD_REQUEST', async () => {
    const { fd } = partial()
    const mk = (): FileBody => new FileBody({ fd, bytes: 10, hash: createHash('sha256'), onDrain: () => undefined, onBytes: () => undefined })
    const offer = encodeTransfer({ type: 'accept', offset: 0 })
    const a = mk()
    a.data(Buffer.concat([Buffer.alloc(10), offer]))
    await expect(a.result).rejects.toMatchObject({ code: 'BAD_REQUEST', message: expect.stringMatching(/got accept/) })
    const b = mk()
    b.data(Buffer.concat([Buffer.alloc(10), endFrame(sha(Buffer.alloc(10))), Buffer.from('x')]))
    await expect(b.result).rejects.toMatchObject({ code: 'BAD_REQUEST' })
    const c = mk()
    c.data(Buffer.alloc(10))
    c.data(Buffer.from([0x4e, 0x58, 2, 7, 0xff, 0xff])) // an END header announcing 64 KiB
    c.data(Buffer.alloc(2 * KiB))
    await expect(c.result).rejects.toMatchObject({ code: 'BAD_REQUEST' })
    await Promise.all([a.settled(), b.settled(), c.settled()])
  })

  it('the peer\'s FIN before END cuts the transfer off (TUNNEL_CLOSED); what came is on disk for a resume', async () => {
    const { file, fd } = partial()
    const body = new FileBody({ fd, bytes: MiB, hash: createHash('sha256'), onDrain: () => undefined, onBytes: () => undefined })
    const part = randomBytes(300 * KiB)
    body.data(part)
    await until(() => body.written === part.length)
    body.end()
    await expect(body.result).rejects.toMatchObject({ code: 'TUNNEL_CLOSED', message: expect.stringMatching(/bytes missing/) })
    await body.settled()
    expect(fs.readFileSync(file).equals(part)).toBe(true)
  })
})

async function until(cond: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('timed out')
    await new Promise<void>((resolve) => setImmediate(resolve))
  }
}

/** Runs the next pending write if any; true once the body's result settled. */
async function settledOrWrite(body: FileBody, pending: Array<() => void>): Promise<boolean> {
  const done = await Promise.race([body.result.then(() => true, () => true), new Promise<boolean>((resolve) => setImmediate(() => resolve(false)))])
  if (done) return true
  pending.shift()?.()
  return false
}
