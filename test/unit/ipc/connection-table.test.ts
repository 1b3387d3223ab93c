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

  describe('shares per uid', () => {
    const A = 1000
    const B = 1001
    /** The defaults' proportions (server.ts): 64 in all, 16 per uid (8 subscribed, 8 in flight), unproven 16 (4, 4). */
    const shared = (): ConnectionTable<string> =>
      new ConnectionTable<string>({ maxConnections: 64, maxSubscribers: 32, perUid: { connections: 16, subscribers: 8, inFlight: 8 }, unproven: { connections: 16, subscribers: 4, inFlight: 4 } })

    /** What an attacker running as `uid` holds at best: every slot it may take subscribed or busy. */
    function flood(t: ConnectionTable<string>, uid: number, tries: number): { subscribed: number; inFlight: number } {
      let subscribed = 0
      let inFlight = 0
      for (let i = 0; i < tries; i++) {
        const c = `${uid}-${i}`
        if (t.admit(c, i).kind === 'refused') continue
        if (t.prove(c, uid, i).kind === 'refused') continue
        if (t.subscribe(c)) subscribed++
        else if (t.requestStarted(c, i)) inFlight++
      }
      return { subscribed, inFlight }
    }

    it('a flood of uid A at full subscribe + in flight leaves uid B able to connect and call', () => {
      const t = shared()
      expect(flood(t, A, 200)).toEqual({ subscribed: 8, inFlight: 8 })
      expect(t.heldBy(A)).toEqual({ connections: 16, subscribers: 8, inFlight: 8 })
      // the same flood without proving: the unproven pool's busy share, and no more
      for (let i = 0; i < 200; i++) {
        const c = `anon-${i}`
        if (t.admit(c, 1000 + i).kind === 'refused') continue
        if (!t.subscribe(c)) t.requestStarted(c, 1000 + i)
      }
      expect(t.heldBy('unproven')).toMatchObject({ subscribers: 4, inFlight: 4 })
      expect(t.heldBy(A).connections).toBe(16) // the unproven flood took none of A's
      // B: admitted, proves, subscribes, calls
      expect(t.admit('b', 5000).kind).not.toBe('refused')
      expect(t.prove('b', B, 5001).kind).toBe('admitted')
      expect(t.ownerOf('b')).toBe(B)
      expect(t.requestStarted('b', 5002)).toBe(true)
      expect(t.subscribe('b')).toBe(true)
      // A still cannot take more
      expect(t.admit('a-more', 5003).kind).not.toBe('refused')
      expect(t.prove('a-more', A, 5004)).toEqual({ kind: 'refused' })
      expect(t.ownerOf('a-more')).toBe('unproven')
    })

    it('a uid whose share is full evicts its own longest-idle connection, never another uid’s', () => {
      const t = shared()
      t.admit('b-idle', 0)
      t.prove('b-idle', B, 0)
      for (let i = 0; i < 16; i++) {
        t.admit(`a${i}`, 10 + i)
        expect(t.prove(`a${i}`, A, 10 + i).kind).toBe('admitted')
      }
      t.admit('a-new', 100)
      expect(t.prove('a-new', A, 100)).toEqual({ kind: 'admitted-evicting', evicted: 'a0', idleMs: 90 })
      expect(t.has('b-idle')).toBe(true)
      expect(t.heldBy(A).connections).toBe(16)
    })

    it('requests in flight are capped per owner; a finished request frees its place', () => {
      const t = shared()
      t.admit('a', 0)
      t.prove('a', A, 0)
      for (let i = 0; i < 8; i++) expect(t.requestStarted('a', 1)).toBe(true)
      expect(t.requestStarted('a', 2)).toBe(false)
      t.admit('b', 3)
      t.prove('b', B, 3)
      expect(t.requestStarted('b', 3)).toBe(true)
      t.requestFinished('a', 4)
      expect(t.requestStarted('a', 5)).toBe(true)
      t.remove('a')
      expect(t.heldBy(A)).toEqual({ connections: 0, subscribers: 0, inFlight: 0 })
    })

    it('a full unproven pool evicts within the pool, never a proven connection', () => {
      const t = shared()
      t.admit('b', 0)
      t.prove('b', B, 0)
      for (let i = 0; i < 16; i++) t.admit(`u${i}`, 10 + i)
      expect(t.admit('u-new', 100)).toMatchObject({ kind: 'admitted-evicting', evicted: 'u0' })
      expect(t.has('b')).toBe(true)
    })

    it('a connection proving its uid is evicted only after every other idle one, and only until its deadline', () => {
      const t = shared()
      t.admit('honest', 0)
      t.proving('honest', 5_000)
      for (let i = 1; i < 16; i++) t.admit(`idle${i}`, i)
      // a churn of idle newcomers cycles through the idle ones, never the one proving
      for (let i = 0; i < 100; i++) expect(t.admit(`churn${i}`, 100 + i)).not.toMatchObject({ evicted: 'honest' })
      expect(t.has('honest')).toBe(true)
      // past its deadline it is an idle connection like any other (the oldest here)
      expect(t.admit('late', 6_000)).toMatchObject({ kind: 'admitted-evicting', evicted: 'honest' })
    })
  })
})
