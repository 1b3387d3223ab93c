// LIST's read of the other instances' agents, shared (redis-list.ts ListCache; review 9
// #2): however many LISTs come, from however many connections, Redis sees one read per
// LIST_CACHE_MS. The read is a stub the test settles; time is a FakeClock.
import { describe, expect, it } from 'vitest'
import { generateKeyPair } from '../../../src/protocol/identity.js'
import type { PeerRecord } from '../../../src/protocol/rendezvous.js'
import { LIST_CACHE_MS, ListCache } from '../../../src/rendezvous/redis-list.js'
import { FakeClock } from '../helpers.js'

function recordOf(name: string): PeerRecord {
  return { name, publicKey: generateKeyPair().publicKey, online: true } as unknown as PeerRecord
}

/** A read the test settles: each call waits until answer() or fail(). */
function heldRead(): { read: (max: number) => Promise<PeerRecord[]>; calls: number[]; answer: (r: PeerRecord[]) => void; fail: () => void } {
  const waiting: { resolve: (r: PeerRecord[]) => void; reject: (e: Error) => void }[] = []
  const calls: number[] = []
  return {
    calls,
    read: (max) => {
      calls.push(max)
      return new Promise((resolve, reject) => waiting.push({ resolve, reject }))
    },
    answer: (r) => waiting.shift()!.resolve(r),
    fail: () => waiting.shift()!.reject(new Error('TIMEOUT'))
  }
}

describe('ListCache', () => {
  it(`LISTs during a read join it, LISTs within ${LIST_CACHE_MS} ms after it get its records, a later LIST reads again`, async () => {
    const clock = new FakeClock()
    const r = heldRead()
    const cache = new ListCache(r.read, clock)
    const during = Array.from({ length: 1_000 }, () => cache.get(2_048))
    expect(r.calls).toEqual([2_048])
    const records = [recordOf('bob'), recordOf('carol')]
    r.answer(records)
    for (const got of await Promise.all(during)) expect(got.map((p) => p.name)).toEqual(['bob', 'carol'])

    clock.advance(LIST_CACHE_MS - 1)
    expect((await cache.get(2_048)).map((p) => p.name)).toEqual(['bob', 'carol'])
    expect((await cache.get(1)).map((p) => p.name)).toEqual(['bob']) // a smaller max from the same read
    expect(r.calls).toHaveLength(1)

    clock.advance(1)
    const later = cache.get(2_048)
    expect(r.calls).toHaveLength(2)
    r.answer([recordOf('dave')])
    expect((await later).map((p) => p.name)).toEqual(['dave'])
  })

  it('a failed read is not kept: its waiters get the error, the next LIST reads again', async () => {
    const clock = new FakeClock()
    const r = heldRead()
    const cache = new ListCache(r.read, clock)
    const waiting = [cache.get(10), cache.get(10)]
    r.fail()
    for (const w of waiting) await expect(w).rejects.toThrow('TIMEOUT')
    const next = cache.get(10)
    expect(r.calls).toHaveLength(2)
    r.answer([recordOf('bob')])
    expect((await next).map((p) => p.name)).toEqual(['bob'])
  })
})
