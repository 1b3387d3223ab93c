// Stateless registration nonces (src/rendezvous/cookies.ts): bound to the source
// address and valid for 30-60 s of (fake) time.
import { describe, expect, it } from 'vitest'
import { CookieJar } from '../../../src/rendezvous/cookies.js'
import { FakeClock } from '../helpers.js'

const FROM = { host: '203.0.113.7', port: 41641 }

describe('CookieJar', () => {
  it('a cookie validates from the endpoint it was issued to', () => {
    const jar = new CookieJar(new FakeClock())
    const nonce = jar.issue(FROM)
    expect(nonce).toHaveLength(32)
    expect(jar.valid(nonce, { ...FROM })).toBe(true)
  })

  it('not from another port, another host, or another address family spelling', () => {
    const jar = new CookieJar(new FakeClock())
    const nonce = jar.issue(FROM)
    expect(jar.valid(nonce, { ...FROM, port: FROM.port + 1 })).toBe(false)
    expect(jar.valid(nonce, { ...FROM, host: '203.0.113.8' })).toBe(false)
    expect(jar.valid(nonce, { host: '::ffff:203.0.113.7', port: FROM.port })).toBe(false)
  })

  it('stays valid for at least 30 s, and not after 61 s', () => {
    const clock = new FakeClock(1_000_000_000_000)
    const jar = new CookieJar(clock)
    const nonce = jar.issue(FROM)
    clock.advance(30_000)
    expect(jar.valid(nonce, FROM)).toBe(true)
    clock.advance(31_000)
    expect(jar.valid(nonce, FROM)).toBe(false)
  })

  it('is never valid after 61 s, whatever the phase of the 30 s bucket', () => {
    for (const start of [0, 1, 14_999, 29_999, 30_000, 1_700_000_012_345]) {
      const clock = new FakeClock(start)
      const jar = new CookieJar(clock)
      const nonce = jar.issue(FROM)
      clock.advance(61_000)
      expect(jar.valid(nonce, FROM), `issued at ${start}`).toBe(false)
    }
  })

  it('refuses a tampered cookie, a cookie from another server, and wrong lengths', () => {
    const clock = new FakeClock()
    const jar = new CookieJar(clock)
    const nonce = jar.issue(FROM)
    for (const i of [0, 5, 15, 16, 31]) {
      const t = Buffer.from(nonce)
      t[i]! ^= 0x01
      expect(jar.valid(t, FROM), `byte ${i}`).toBe(false)
    }
    expect(new CookieJar(clock).valid(nonce, FROM)).toBe(false)
    expect(jar.valid(nonce.subarray(0, 31), FROM)).toBe(false)
    expect(jar.valid(Buffer.alloc(32), FROM)).toBe(false)
  })

  it('issues a different cookie each time', () => {
    const jar = new CookieJar(new FakeClock())
    expect(jar.issue(FROM)).not.toEqual(jar.issue(FROM))
  })
})
