// The replay buffer (src/tunnel/replay-buffer.ts): frames kept exactly as sent while
// slabs are used again, counts checked against what was sent, memory given back.
import { describe, expect, it } from 'vitest'
import { ReplayBuffer, SLAB_BYTES } from '../../../src/tunnel/replay-buffer.js'

/** A frame of `len` bytes whose every byte says which frame it is. */
const frame = (n: number, len = 64 * 1024 + 5): Buffer => Buffer.alloc(len, n % 251)

describe('ReplayBuffer', () => {
  it('keeps every unacknowledged frame byte-exact while acknowledged slabs are used again', () => {
    const r = new ReplayBuffer()
    let sent = 0
    for (let round = 0; round < 6; round++) {
      for (let i = 0; i < 40; i++) r.push(frame(sent++))
      // The peer acknowledges all but the last 12 frames (they straddle a slab boundary:
      // 15 frames a slab): the slabs before go back to the spares and the next frames are
      // copied into them; the 12 must not change.
      expect(r.ack(sent - 12)).toBe(true)
      for (let i = 0; i < 20; i++) r.push(frame(sent + i))
      const held = [...r.pending()]
      expect(held).toHaveLength(32)
      held.forEach((f, i) => expect(f.equals(frame(sent - 12 + i)), `frame ${sent - 12 + i}`).toBe(true))
      sent += 20
    }
    expect(r.sent).toBe(sent)
    expect(r.bytes).toBe(32 * (64 * 1024 + 5))
  })

  it('the sender may be told only counts between what was acknowledged and what was sent (mod 2^32)', () => {
    const r = new ReplayBuffer()
    for (let i = 0; i < 3; i++) r.push(frame(i, 10))
    expect(r.ack(4)).toBe(false) // more than sent
    expect(r.ack(2)).toBe(true)
    expect(r.ack(1)).toBe(false) // fewer than acknowledged before
    expect(r.ack(2 + 2 ** 32)).toBe(true) // the same count, as the u32 on the wire carries it
    expect(r.length).toBe(1)
  })

  it('trim() gives back an empty buffer\'s slabs and keeps a non-empty one intact', () => {
    const r = new ReplayBuffer()
    for (let i = 0; i < 3 * (SLAB_BYTES / 1024); i++) r.push(frame(i, 1024))
    r.trim()
    expect(r.length).toBe(3 * (SLAB_BYTES / 1024))
    expect([...r.pending()][5]!.equals(frame(5, 1024))).toBe(true)
    expect(r.ack(r.sent)).toBe(true)
    r.trim()
    expect(r.bytes).toBe(0)
    r.push(frame(9, 1024))
    expect([...r.pending()][0]!.equals(frame(9, 1024))).toBe(true)
  })
})

describe('ReplayBuffer: frames built in place (reserve, then push)', () => {
  /** Builds frame `n` of `len` bytes where reserve() says, and pushes that very buffer. */
  const build = (r: ReplayBuffer, n: number, len: number): Buffer => {
    const b = r.reserve(len)
    b.fill(n % 251)
    r.push(b)
    return b
  }

  it('keeps a reserved frame without copying it, across slab boundaries and slab reuse', () => {
    const r = new ReplayBuffer()
    const len = 64 * 1024 + 5 // 15 a slab, 1 MiB - 15 frames left over: every 16th wraps to the next slab
    let sent = 0
    for (let round = 0; round < 5; round++) {
      const built: Buffer[] = []
      for (let i = 0; i < 40; i++) built.push(build(r, sent + i, len))
      const all = [...r.pending()]
      // The 7 kept from the round before came through this round's frames (built in the
      // slabs that round's acknowledgement freed) byte-exact.
      expect(all).toHaveLength(round === 0 ? 40 : 47)
      all.slice(0, all.length - 40).forEach((f, i) => expect(f.equals(frame(sent - 7 + i, len)), `frame ${sent - 7 + i}`).toBe(true))
      const held = all.slice(-40)
      // The very memory the frame was built in (no copy), and no frame spans two slabs.
      held.forEach((f, i) => {
        expect(f.buffer).toBe(built[i]!.buffer)
        expect(f.byteOffset).toBe(built[i]!.byteOffset)
        expect(f.byteOffset + f.length).toBeLessThanOrEqual(SLAB_BYTES)
      })
      sent += 40
      // All but the last 7 acknowledged: their slabs are used again by the next round.
      expect(r.ack(sent - 7)).toBe(true)
      expect(r.length).toBe(7)
    }
  })

  it('a frame bigger than a slab gets a slab of its own; a reserve never pushed leaves no trace', () => {
    const r = new ReplayBuffer()
    build(r, 1, 100)
    r.reserve(SLAB_BYTES - 50) // not pushed: the next frame still goes where it would have
    const big = build(r, 2, SLAB_BYTES + 10)
    expect(big.length).toBe(SLAB_BYTES + 10)
    const small = frame(3, 10)
    r.push(small) // not from reserve(): copied
    const held = [...r.pending()]
    expect(held.map((f) => f.length)).toEqual([100, SLAB_BYTES + 10, 10])
    expect(held[1]!.equals(frame(2, SLAB_BYTES + 10))).toBe(true)
    expect(held[2]!.equals(small)).toBe(true)
    expect(held[2]!.buffer).not.toBe(small.buffer)
    expect(r.bytes).toBe(100 + SLAB_BYTES + 10 + 10)
    expect(r.ack(r.sent)).toBe(true)
    expect(r.bytes).toBe(0)
  })

  it('after a resume, every frame the peer lacks is sent again byte-exact, built in place or copied', () => {
    const r = new ReplayBuffer()
    const sizes = [5, 64 * 1024 + 5, 13, 9000, 64 * 1024 + 5, 1]
    for (let n = 0; n < 300; n++) {
      const len = sizes[n % sizes.length]!
      if (n % 3 === 0) r.push(frame(n, len))
      else build(r, n, len)
      if (n % 50 === 49) expect(r.ack(n - 20)).toBe(true) // the peer lags ~20 frames
    }
    // The peer says (in its RESUME) it received 287 frames in all: 13 are sent again.
    expect(r.ack(287)).toBe(true)
    const again = [...r.pending()]
    expect(again).toHaveLength(13)
    again.forEach((f, i) => expect(f.equals(frame(287 + i, sizes[(287 + i) % sizes.length]!)), `frame ${287 + i}`).toBe(true))
  })
})
