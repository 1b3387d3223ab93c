// CopyQueue (src/daemon/copy-queue.ts): a file's bytes copied out of the peer's frames,
// handed to the disk as views, in order through short writes, with written buffers reused.
import { randomBytes } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { CopyQueue, WRITE_BUFFER_BYTES } from '../../../src/daemon/copy-queue.js'

describe('CopyQueue', () => {
  it('hands the bytes over in order through short writes, also when more is pushed while a write is in flight', () => {
    const q = new CopyQueue()
    const data = randomBytes(3 * WRITE_BUFFER_BYTES + 777)
    const out: Buffer[] = []
    let at = 0
    const pushSome = (): void => {
      const n = Math.min(data.length - at, 1 + Math.floor(Math.random() * 100_000))
      const frame = Buffer.from(data.subarray(at, at + n))
      q.push(frame)
      frame.fill(0) // the caller's buffer is its own again
      at += n
    }
    while (at < data.length || q.queued > 0) {
      pushSome()
      // A write takes these views; more bytes come while it runs; they must not change its bytes.
      const inFlight = q.pending(1024)
      const before = Buffer.concat(inFlight)
      if (at < data.length) pushSome()
      expect(Buffer.concat(inFlight).equals(before)).toBe(true)
      const took = before.subarray(0, Math.min(before.length, 1 + Math.floor(Math.random() * 200_000)))
      q.written(took.length)
      out.push(Buffer.from(took))
    }
    expect(Buffer.concat(out).equals(data)).toBe(true)
    expect(q.queued).toBe(0)
  })

  it('counts what waits for the disk until it is written', () => {
    const q = new CopyQueue()
    q.push(Buffer.alloc(1000, 1))
    q.push(Buffer.alloc(WRITE_BUFFER_BYTES, 2))
    expect(q.queued).toBe(WRITE_BUFFER_BYTES + 1000)
    expect(q.pending(1024).map((b) => b.length)).toEqual([WRITE_BUFFER_BYTES, 1000])
    q.written(WRITE_BUFFER_BYTES - 1)
    expect(q.queued).toBe(1001)
    expect(q.pending(1024).map((b) => b.length)).toEqual([1, 1000])
    expect(q.pending(1)).toHaveLength(1)
  })

  it('fills a buffer written to its end again instead of allocating one', () => {
    const q = new CopyQueue()
    q.push(Buffer.alloc(WRITE_BUFFER_BYTES, 1))
    const first = q.pending(1024)[0]!.buffer
    q.written(WRITE_BUFFER_BYTES)
    q.push(Buffer.alloc(10, 2))
    const next = q.pending(1024)
    expect(next[0]!.buffer).toBe(first)
    expect([...next[0]!]).toEqual(new Array(10).fill(2))
  })

  it('clear() forgets the bytes and reuses no buffer a write in flight may still read', () => {
    const q = new CopyQueue()
    q.push(Buffer.alloc(WRITE_BUFFER_BYTES, 1))
    const inFlight = q.pending(1024)[0]!
    q.clear()
    expect(q.queued).toBe(0)
    q.push(Buffer.alloc(5, 9))
    expect(q.pending(1024)[0]!.buffer).not.toBe(inFlight.buffer)
    expect(inFlight.every((b) => b === 1)).toBe(true)
  })
})
