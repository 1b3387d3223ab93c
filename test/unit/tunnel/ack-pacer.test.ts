// When the mux acknowledges (src/tunnel/ack-pacer.ts), on a fake clock: every 64 KiB
// while frames of more than one channel arrive (a small request may wait behind a bulk
// transfer at the peer's in-flight limit), every 256 KiB while one channel alone sends.
import { describe, expect, it } from 'vitest'
import { MAX_DATA_BYTES } from '../../../src/protocol/mux.js'
import { ACK_DELAY_MS, ACK_EVERY_BYTES, ACK_EVERY_BYTES_ALONE, ACK_EVERY_FRAMES, AckPacer, MIXED_HOLD_MS } from '../../../src/tunnel/ack-pacer.js'
import { FakeClock } from '../helpers.js'

/** A full DATA frame as received (payload + the 5-byte header). */
const FULL = MAX_DATA_BYTES + 5
const BULK = 1
const SMALL = 3

function pacer(): { clock: FakeClock; p: AckPacer; acks: number[]; hold: { on: boolean } } {
  const clock = new FakeClock()
  const acks: number[] = []
  const hold = { on: false }
  const p = new AckPacer(clock, () => hold.on, (received) => acks.push(received))
  return { clock, p, acks, hold }
}

/** `n` full frames of the bulk channel, 0.6 ms apart (100 MB/s). */
function bulk(clock: FakeClock, p: AckPacer, n: number): void {
  for (let i = 0; i < n; i++) {
    clock.advance(0.6)
    p.onSequenced(FULL, BULK)
  }
}

describe('AckPacer', () => {
  it('one channel alone: one ACK per ACK_EVERY_BYTES_ALONE (256 KiB), not per full frame', () => {
    const { clock, p, acks } = pacer()
    bulk(clock, p, 64) // 4 MiB
    expect(ACK_EVERY_BYTES_ALONE).toBe(4 * ACK_EVERY_BYTES)
    expect(acks).toEqual([4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60, 64])
  })

  it('frames of a second channel in between: one ACK per full frame (ACK_EVERY_BYTES, 64 KiB) from then on', () => {
    const { clock, p, acks } = pacer()
    bulk(clock, p, 8)
    expect(acks).toEqual([4, 8])
    p.onSequenced(6, SMALL) // a 1-byte request's DATA on another channel
    bulk(clock, p, 8)
    // The small frame and the bulk's next full frame: 64 KiB + 6, due at once; then each full frame.
    expect(acks).toEqual([4, 8, 10, 11, 12, 13, 14, 15, 16, 17])
  })

  it('a channel\'s OPEN counts as another channel (its data follows it)', () => {
    const { clock, p, acks } = pacer()
    bulk(clock, p, 4)
    p.onSequenced(16, SMALL) // OPEN
    bulk(clock, p, 2)
    expect(acks).toEqual([4, 6, 7])
  })

  it('MIXED_HOLD_MS after the last frame of another channel, back to one ACK per 256 KiB', () => {
    const { clock, p, acks } = pacer()
    bulk(clock, p, 4)
    p.onSequenced(6, SMALL)
    bulk(clock, p, 1) // the bulk again: that is a change of channel too
    expect(acks).toEqual([4, 6])
    clock.advance(MIXED_HOLD_MS - 10)
    bulk(clock, p, 1)
    expect(acks).toEqual([4, 6, 7]) // still within the hold
    clock.advance(20)
    acks.length = 0
    bulk(clock, p, 8)
    expect(acks).toEqual([11, 15])
  })

  it('a first frame is no change of channel: a single bulk channel never gets the finer ACKs', () => {
    const { clock, p, acks } = pacer()
    bulk(clock, p, 1)
    clock.advance(1)
    bulk(clock, p, 3)
    expect(acks).toEqual([4])
  })

  it('small frames: one ACK per ACK_EVERY_FRAMES, or ACK_DELAY_MS after the first one unacknowledged', () => {
    const { clock, p, acks } = pacer()
    for (let i = 0; i < ACK_EVERY_FRAMES; i++) p.onSequenced(10, BULK)
    expect(acks).toEqual([ACK_EVERY_FRAMES])
    p.onSequenced(10, BULK)
    clock.advance(ACK_DELAY_MS - 1)
    expect(acks).toEqual([ACK_EVERY_FRAMES])
    clock.advance(1)
    expect(acks).toEqual([ACK_EVERY_FRAMES, ACK_EVERY_FRAMES + 1])
    expect(clock.pending).toBe(0)
  })

  it('an ACK due while the session waits for a drain goes out once it drains, with the count then', () => {
    const { clock, p, acks, hold } = pacer()
    hold.on = true
    bulk(clock, p, 5)
    expect(acks).toEqual([])
    hold.on = false
    p.sendOwed()
    expect(acks).toEqual([5])
    p.sendOwed()
    expect(acks).toEqual([5])
  })
})
