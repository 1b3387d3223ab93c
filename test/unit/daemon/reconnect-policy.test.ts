/**
 * The rendezvous client's wait before it connects again (src/daemon/reconnect-policy.ts):
 * backoff, the urgent cap while a tunnel migrates, and no wait after an attempt that ran
 * out its connect deadline while a tunnel waits.
 */
import { describe, expect, it } from 'vitest'
import { BACKOFF_CAP_MS, BACKOFF_FIRST_MS, MOVED_RECONNECT_MS, reconnectDelay, URGENT_ATTEMPT_SPACING_MS, URGENT_BACKOFF_CAP_MS } from '../../../src/daemon/reconnect-policy.js'
import { URGENT_CONNECT_TIMEOUT_MS } from '../../../src/daemon/control-connection.js'

const base = { attempt: 1, reconnectNow: false, sinceMovedMs: Infinity, urgent: false, tookMs: 0 }

describe('reconnectDelay', () => {
  it('doubles from BACKOFF_FIRST_MS up to BACKOFF_CAP_MS, however long the attempt took', () => {
    expect([1, 2, 3, 6, 20].map((attempt) => reconnectDelay({ ...base, attempt, tookMs: 5_000 }))).toEqual([BACKOFF_FIRST_MS, 1_000, 2_000, BACKOFF_CAP_MS, BACKOFF_CAP_MS])
  })

  it('goes at once after a path check found the session dead, or on the first try after our mapping moved', () => {
    expect(reconnectDelay({ ...base, attempt: 4, reconnectNow: true })).toBe(0)
    expect(reconnectDelay({ ...base, sinceMovedMs: MOVED_RECONNECT_MS - 1 })).toBe(0)
    expect(reconnectDelay({ ...base, attempt: 2, sinceMovedMs: 0 })).toBe(1_000)
  })

  it('while a tunnel migrates: capped at URGENT_BACKOFF_CAP_MS, and at once after a connect that ran out its deadline', () => {
    expect(reconnectDelay({ ...base, attempt: 8, urgent: true })).toBe(URGENT_BACKOFF_CAP_MS)
    // The connect began while the link was dark and timed out: no further second of backoff.
    expect(reconnectDelay({ ...base, attempt: 3, urgent: true, tookMs: URGENT_CONNECT_TIMEOUT_MS })).toBe(0)
    // A server that refuses fast still sees attempts a second apart (after the first retry).
    expect(reconnectDelay({ ...base, attempt: 3, urgent: true, tookMs: 30 })).toBe(URGENT_ATTEMPT_SPACING_MS - 30)
    expect(reconnectDelay({ ...base, attempt: 1, urgent: true, tookMs: 30 })).toBe(BACKOFF_FIRST_MS)
    // Not urgent: the backoff as before.
    expect(reconnectDelay({ ...base, attempt: 3, tookMs: URGENT_CONNECT_TIMEOUT_MS })).toBe(2_000)
  })
})
