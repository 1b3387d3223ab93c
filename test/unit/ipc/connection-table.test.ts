// Who gets an API slot (src/ipc/connection-table.ts), on a made-up clock.
import { describe, expect, it } from 'vitest'
import { ConnectionTable } from '../../../src/ipc/connection-table.js'

const table = (maxConnections = 3, maxSubscribers = 1): ConnectionTable<string> => new ConnectionTable<string>({ maxConnections, maxSubscribers })

describe('ConnectionTable', () => {
  it('admits up to the limit, then evicts the connection idle the longest', () => {
    const t = table()
    expect(t.admit('a', 0)).toEqual({ kind: 'admitted' })
    t.admit('b', 10)
    t.admit('c', 20)
    t.requestStarted('a', 30)
    t.requestFinished('a', 31) // a was active last, so b is now the oldest idle
    expect(t.admit('d', 40)).toEqual({ kind: 'admitted-evicting', evicted: 'b', idleMs: 30 })
    expect(t.has('b')).toBe(false)
    expect(t.size).toBe(3)
  })

  it('never evicts a subscriber or a connection with a request in flight', () => {
    const t = table()
    t.admit('sub', 0)
    expect(t.subscribe('sub')).toBe(true)
    t.admit('busy', 1)
    t.requestStarted('busy', 2)
    t.admit('idle', 3)
    expect(t.admit('new', 4)).toMatchObject({ kind: 'admitted-evicting', evicted: 'idle' })
    t.requestStarted('new', 5)
    expect(t.admit('late', 6)).toEqual({ kind: 'refused' })
    expect(t.has('late')).toBe(false)
    t.requestFinished('busy', 7)
    expect(t.admit('late', 8)).toMatchObject({ kind: 'admitted-evicting', evicted: 'busy' })
  })

  it('caps subscribers; a refused subscriber stays a plain, evictable connection', () => {
    const t = table(3, 1)
    t.admit('a', 0)
    t.admit('b', 0)
    expect(t.subscribe('a')).toBe(true)
    expect(t.subscribe('a')).toBe(true) // again: still one
    expect(t.subscribe('b')).toBe(false)
    expect(t.subscriberCount).toBe(1)
    expect(t.isIdle('b')).toBe(true)
    t.remove('a')
    expect(t.subscriberCount).toBe(0)
    expect(t.subscribe('b')).toBe(true)
  })

  it('idle means: admitted, not subscribed, nothing in flight', () => {
    const t = table()
    expect(t.isIdle('x')).toBe(false)
    t.admit('x', 0)
    expect(t.isIdle('x')).toBe(true)
    t.requestStarted('x', 1)
    t.requestStarted('x', 1)
    t.requestFinished('x', 2)
    expect(t.isIdle('x')).toBe(false)
    t.requestFinished('x', 3)
    expect(t.isIdle('x')).toBe(true)
  })
})
