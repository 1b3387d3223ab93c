/**
 * The server's limits apart from its sockets, under a fake clock: token buckets
 * (limits.ts), sources (an IPv6 /64 is one) and the Noise message meter
 * (noise-meter.ts). The refusal log is common/refusal-log.ts, tested there.
 */
import { describe, expect, it } from 'vitest'
import { Counter, RateLimiter, sourceOf } from '../../../src/rendezvous/limits.js'
import { NoiseMeter } from '../../../src/rendezvous/noise-meter.js'

const fakeClock = (): { t: number; now(): number } => {
  const c = { t: 1_000_000, now: () => c.t }
  return c
}

describe('RateLimiter', () => {
  it('gives a minute\'s worth at once, then one token per 60/perMinute seconds; keys apart; full buckets forgotten', () => {
    const clock = fakeClock()
    const r = new RateLimiter(60, clock)
    for (let i = 0; i < 60; i++) expect(r.take('a')).toBe(true)
    expect(r.take('a')).toBe(false)
    expect(r.take('b')).toBe(true)
    clock.t += 999
    expect(r.take('a')).toBe(false)
    clock.t += 1
    expect(r.take('a')).toBe(true)
    expect(r.take('a')).toBe(false)
    clock.t += 60_000
    r.sweep()
    expect(r.size).toBe(0)
  })
})

describe('sourceOf', () => {
  it('counts an IPv4 address as itself and an IPv6 address by its /64', () => {
    expect(sourceOf('192.0.2.7')).toBe('192.0.2.7')
    expect(sourceOf('2001:db8:1:2::5')).toBe(sourceOf('2001:db8:1:2:ffff:1:2:3'))
    expect(sourceOf('2001:db8:1:2::5')).not.toBe(sourceOf('2001:db8:1:3::5'))
  })
})

describe('Counter', () => {
  it('counts per key and in total, forgetting keys at 0', () => {
    const c = new Counter()
    c.add('x')
    c.add('x')
    c.add('y')
    c.remove('x')
    expect([c.get('x'), c.get('y'), c.total]).toEqual([1, 1, 2])
    c.remove('x')
    expect(c.get('x')).toBe(0)
  })
})

describe('NoiseMeter', () => {
  const msg = (n: number): Buffer => Buffer.concat([Buffer.from([n & 0xff, (n >> 8) & 0xff, n >> 16]), Buffer.alloc(n)])

  it('follows secret-stream\'s u24 LE framing across chunks and says since when a message is incomplete', () => {
    const m = new NoiseMeter(1000)
    const two = Buffer.concat([msg(10), msg(500)])
    m.feed(two.subarray(0, 2), 1)
    expect(m.startedAt).toBe(1)
    m.feed(two.subarray(2, 13), 2)
    expect(m.partial).toBe(false)
    m.feed(two.subarray(13, 100), 3)
    expect(m.startedAt).toBe(3)
    expect(m.heldBytes).toBe(500)
    m.feed(two.subarray(100), 4)
    expect(m.partial).toBe(false)
  })

  it('throws ProtocolError on a length over the limit, at its prefix (before the session allocates it)', () => {
    const m = new NoiseMeter(1000)
    expect(() => m.feed(Buffer.from([0xff, 0xff, 0xff]), 0)).toThrow(expect.objectContaining({ code: 'BAD_REQUEST' }))
  })
})
