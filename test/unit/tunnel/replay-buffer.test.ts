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
