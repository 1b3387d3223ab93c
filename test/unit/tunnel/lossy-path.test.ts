// When `auto` moves a lossy direct-tcp tunnel to UDP (src/tunnel/lossy-path.ts): after
// LOSSY_SILENCES lossy silences within LOSSY_WINDOW_MS, at most once per LOSSY_RETRY_MS.
import { describe, expect, it } from 'vitest'
import { LOSSY_RETRY_MS, LOSSY_SILENCES, LOSSY_WINDOW_MS, LossyWatch } from '../../../src/tunnel/lossy-path.js'
import { FakeClock } from '../helpers.js'

describe('LossyWatch', () => {
  it(`${LOSSY_SILENCES} lossy silences within ${LOSSY_WINDOW_MS} ms: try UDP; fewer, or spread wider, do not`, async () => {
    const clock = new FakeClock()
    const w = new LossyWatch(clock)
    const answers: boolean[] = []
    for (let i = 0; i < LOSSY_SILENCES - 1; i++) {
      answers.push(w.onLossy())
      await clock.pass(LOSSY_WINDOW_MS / 2 + 1) // each older one falls out of the window
    }
    answers.push(w.onLossy())
    expect(answers.every((a) => !a)).toBe(true)
    const quick: boolean[] = []
    for (let i = 0; i < LOSSY_SILENCES; i++) quick.push(w.onLossy())
    expect(quick.filter(Boolean)).toHaveLength(1)
  })

  it(`after a try, the next waits ${LOSSY_RETRY_MS} ms however lossy the path`, async () => {
    const clock = new FakeClock()
    const w = new LossyWatch(clock)
    for (let i = 0; i < LOSSY_SILENCES - 1; i++) w.onLossy()
    expect(w.onLossy()).toBe(true)
    for (let i = 0; i < 10; i++) {
      await clock.pass(1_000)
      expect(w.onLossy()).toBe(false)
    }
    await clock.pass(LOSSY_RETRY_MS)
    for (let i = 0; i < LOSSY_SILENCES - 1; i++) w.onLossy()
    expect(w.onLossy()).toBe(true)
  })
})
