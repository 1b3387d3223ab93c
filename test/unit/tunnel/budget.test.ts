// The punching budget (src/tunnel/budget.ts) on a fake clock: buckets refill at their
// rate up to their burst, a refused take spends nothing, slots are counted per peer and
// in total, and a flood of refusals is one log line plus one count per window.
import { afterEach, describe, expect, it, vi } from 'vitest'
import type { Logger } from '../../../src/protocol/log.js'
import { PunchBudget, PunchRefusals, REFUSAL_LOG_MS } from '../../../src/tunnel/budget.js'
import { TokenBucket } from '../../../src/tunnel/token-bucket.js'
import { FakeClock } from '../helpers.js'

describe('TokenBucket', () => {
  it('gives the burst at once, then refills at the rate, never above the burst', () => {
    const clock = new FakeClock()
    const b = new TokenBucket(10, 5, clock)
    let n = 0
    while (b.take()) n++
    expect(n).toBe(5)
    expect(b.waitMs()).toBe(100)
    clock.advance(100)
    expect(b.take()).toBe(true)
    expect(b.take()).toBe(false)
    clock.advance(60_000)
    expect(b.available()).toBe(5)
  })
})

describe('PunchBudget', () => {
  it('introductions: a peer asking 50 times in a second gets the burst plus the refill; another peer is not affected', () => {
    const clock = new FakeClock()
    const budget = new PunchBudget(clock)
    let acted = 0
    for (let i = 0; i < 50; i++) {
      if (budget.introduction('mallory')) acted++
      clock.advance(20)
    }
    expect(acted).toBe(budget.init.peerIntroBurst + Math.floor(budget.init.peerIntrosPerS * 0.98))
    expect(budget.introduction('bob')).toBe(true)
  })

  it('SYNs: per punch, per peer and in total; says how long to wait; a refused SYN spends no token anywhere', () => {
    const clock = new FakeClock()
    const budget = new PunchBudget(clock, { punchSynBurst: 2, punchSynsPerS: 5, peerSynBurst: 3, peerSynsPerS: 10, synBurst: 4, synsPerS: 100 })
    const first = budget.synGate('a')
    expect([0, 1, 2].map(() => first())).toEqual([0, 0, 200]) // the punch's own burst
    const second = budget.synGate('a')
    expect([second(), second()]).toEqual([0, 100]) // the peer's burst (3) is spent
    const other = budget.synGate('b')
    expect([other(), other()]).toEqual([0, 10]) // the global one (4) is spent
    clock.advance(1_000)
    expect(first()).toBe(0)
  })

  it('probes: over budget means false, per peer and in total', () => {
    const clock = new FakeClock()
    const budget = new PunchBudget(clock, { peerProbeBurst: 2, peerProbesPerS: 1, probeBurst: 3, probesPerS: 1 })
    expect([1, 2, 3].map(() => budget.probe('a'))).toEqual([true, true, false])
    expect([1, 2].map(() => budget.probe('b'))).toEqual([true, false])
  })

  it('punch and birthday slots: per peer and in total, given back once by release()', () => {
    const budget = new PunchBudget(new FakeClock(), { peerPunches: 2, punches: 3, peerBirthdayPunches: 1, birthdayPunches: 2 })
    const a1 = budget.punch('a')!
    budget.punch('a')
    expect(budget.punch('a')).toBeNull()
    budget.punch('b')
    expect(budget.punch('c')).toBeNull()
    a1.release()
    a1.release()
    expect(budget.inUse.punches).toBe(2)
    expect(budget.punch('c')).not.toBeNull()
    const b1 = budget.birthday('a')!
    expect(budget.birthday('a')).toBeNull()
    expect(budget.birthday('b')).not.toBeNull()
    expect(budget.birthday('c')).toBeNull()
    b1.release()
    expect(budget.birthday('c')).not.toBeNull()
  })
})

describe('PunchRefusals', () => {
  afterEach(() => vi.useRealTimers())

  it('a flood of refusals, from one peer or a hundred, is one warning at once and one count per 10 s window', () => {
    vi.useFakeTimers()
    const warn = vi.fn()
    const log = { warn, debug: vi.fn(), info: vi.fn(), error: vi.fn(), child: () => log } as unknown as Logger
    const r = new PunchRefusals(log)
    for (let i = 0; i < 10_000; i++) r.note('RATE_LIMITED', 'punch probes', `mallory${i % 100}`)
    expect(warn).toHaveBeenCalledTimes(1)
    expect(warn).toHaveBeenLastCalledWith('refused', { what: 'punch probes', code: 'RATE_LIMITED', from: 'mallory0' })
    vi.advanceTimersByTime(REFUSAL_LOG_MS - 1)
    expect(warn).toHaveBeenCalledTimes(1)
    vi.advanceTimersByTime(1)
    expect(warn).toHaveBeenCalledTimes(2)
    expect(warn).toHaveBeenLastCalledWith('refused again', { what: 'punch probes', code: 'RATE_LIMITED', count: 9_999, sources: 100, names: ['mallory1', 'mallory2', 'mallory3', 'mallory4', 'mallory5'], last: { from: 'mallory99', reason: undefined }, windowMs: REFUSAL_LOG_MS })
    vi.advanceTimersByTime(REFUSAL_LOG_MS * 3)
    expect(warn).toHaveBeenCalledTimes(2)
  })
})
