// HeldSends (src/tunnel/held-sends.ts): the rest of a read a channel could not take is
// kept as a copy (the caller reads into the same memory next) and sent first, byte-exact;
// rests of a bulk transfer reuse spill buffers instead of a new one each (issue 18).
import { randomBytes } from 'node:crypto'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { freeSpillCount, HeldSends, SPILL_BYTES, SPILL_MIN_BYTES } from '../../../src/tunnel/held-sends.js'
import type { MuxChannel } from '../../../src/tunnel/mux-channel.js'

/** A channel that takes `room` bytes per send() call at most and records what it took. */
function fakeChannel(room: number): { ch: MuxChannel; sent: Buffer[]; memory: ArrayBufferLike[]; setRoom: (n: number) => void } {
  const sent: Buffer[] = []
  const memory: ArrayBufferLike[] = []
  const ch = {
    sendSome: (buf: Buffer): number => {
      const n = Math.min(buf.length, room)
      sent.push(Buffer.from(buf.subarray(0, n)))
      memory.push(buf.buffer)
      return n
    }
  } as unknown as MuxChannel
  return { ch, sent, memory, setRoom: (n) => (room = n) }
}

afterEach(() => vi.restoreAllMocks())

describe('HeldSends.pushCopy', () => {
  it('keeps a copy of a large rest: the caller overwrites its read buffer, the channel still gets the bytes read', () => {
    const { ch, sent, setRoom } = fakeChannel(0)
    const held = new HeldSends(ch)
    const read = randomBytes(SPILL_BYTES)
    const rest = read.subarray(SPILL_BYTES - 200_000)
    const expected = Buffer.from(rest)
    held.pushCopy(rest)
    read.fill(0) // the next read lands in the same memory
    expect(held.flush()).toBe(false)
    setRoom(70_000)
    expect(held.flush()).toBe(false) // 70,000 of 200,000
    setRoom(Infinity)
    expect(held.flush()).toBe(true)
    expect(Buffer.concat(sent).equals(expected)).toBe(true)
    expect(held.empty).toBe(true)
  })

  it('rests of successive reads reuse one spill buffer once it was sent, not a new buffer each', () => {
    const { ch, sent, memory } = fakeChannel(Infinity)
    const held = new HeldSends(ch)
    const rests = [randomBytes(SPILL_MIN_BYTES), randomBytes(SPILL_BYTES), randomBytes(150_000)]
    for (const r of rests) {
      held.pushCopy(r)
      expect(held.flush()).toBe(true)
    }
    expect(Buffer.concat(sent).equals(Buffer.concat(rests))).toBe(true)
    // Each rest was sent from the same memory, free again after each flush.
    expect(memory[1]).toBe(memory[0])
    expect(memory[2]).toBe(memory[0])
    expect(freeSpillCount()).toBeGreaterThanOrEqual(1)
  })

  it('two rests held at once are in two spill buffers (a rest is never overwritten by a later one)', () => {
    const { ch, sent, memory, setRoom } = fakeChannel(0)
    const a = new HeldSends(ch)
    const b = new HeldSends(ch)
    const ra = randomBytes(100_000)
    const rb = randomBytes(120_000)
    a.pushCopy(ra)
    b.pushCopy(rb)
    setRoom(Infinity)
    expect(b.flush()).toBe(true)
    expect(a.flush()).toBe(true)
    expect(sent[0]!.equals(rb)).toBe(true)
    expect(sent[1]!.equals(ra)).toBe(true)
    expect(memory[0]).not.toBe(memory[1])
  })

  it('a small rest is copied as it is (no spill buffer held for a few bytes)', () => {
    const { ch, sent } = fakeChannel(Infinity)
    const held = new HeldSends(ch)
    const alloc = vi.spyOn(Buffer, 'allocUnsafeSlow')
    const read = Buffer.from('hello, world')
    held.pushCopy(read.subarray(7))
    read.fill(0)
    expect(held.flush()).toBe(true)
    expect(Buffer.concat(sent).toString()).toBe('world')
    expect(alloc).not.toHaveBeenCalled()
  })
})
