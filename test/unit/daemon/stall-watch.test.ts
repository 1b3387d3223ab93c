// StallWatch (src/daemon/file-transfer.ts) on a FakeClock: a transfer phase with no
// progress for `ms` expires; progress, and time while the tunnel migrates, do not.
import { describe, expect, it } from 'vitest'
import { StallWatch } from '../../../src/daemon/file-transfer.js'
import { FakeClock } from '../helpers.js'

describe('StallWatch', () => {
  it('expires `ms` after the last touch, not after the first', () => {
    const clock = new FakeClock()
    let expired = 0
    new StallWatch(clock, 1_000, () => expired++)
    clock.advance(600)
    expect(expired).toBe(0)
    clock.advance(400)
    expect(expired).toBe(1)

    const touched = new StallWatch(clock, 1_000, () => expired++)
    clock.advance(900)
    touched.touch()
    clock.advance(900)
    expect(expired).toBe(1)
    clock.advance(99)
    expect(expired).toBe(1)
    clock.advance(1)
    expect(expired).toBe(2)
    clock.advance(10_000)
    expect(expired).toBe(2) // once
  })

  it('time while waiting() holds is no stall: the watch starts over when it ends', () => {
    const clock = new FakeClock()
    let waiting = true
    let expired = 0
    new StallWatch(clock, 1_000, () => expired++, () => waiting)
    clock.advance(5_000)
    expect(expired).toBe(0)
    waiting = false
    clock.advance(1_000)
    expect(expired).toBe(1)
  })

  it('stop() ends it: no expiry, no timer left', () => {
    const clock = new FakeClock()
    let expired = 0
    const w = new StallWatch(clock, 1_000, () => expired++)
    clock.advance(500)
    w.touch()
    w.stop()
    clock.advance(5_000)
    expect(expired).toBe(0)
    expect(clock.pending).toBe(0)
  })
})
