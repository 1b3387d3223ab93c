/**
 * Who hears of whom on a big server (src/rendezvous/contacts.ts), alone: bounded per
 * agent with the oldest forgotten first, no duplicates, remote agents by key, and the
 * sweep's prune of agents the registry forgot.
 */
import { describe, expect, it } from 'vitest'
import { Contacts, MAX_CONTACTS } from '../../../src/rendezvous/contacts.js'

const key = (n: number): Buffer => Buffer.alloc(32, n)

describe('Contacts', () => {
  it('remembers each contact once, in the order of the introductions', () => {
    const c = new Contacts()
    c.add(1, 2)
    c.add(1, 3)
    c.add(1, 2)
    expect(c.of(1)).toEqual([2, 3])
    expect(c.of(2)).toEqual([]) // one direction per call: the server adds both
  })

  it(`keeps at most MAX_CONTACTS (${MAX_CONTACTS}) per agent, forgetting the oldest first, locally and for remote keys`, () => {
    const c = new Contacts()
    for (let b = 100; b < 100 + MAX_CONTACTS + 3; b++) {
      c.add(1, b)
      c.addRemote(b, key(9))
    }
    const kept = Array.from({ length: MAX_CONTACTS }, (_, i) => 103 + i)
    expect(c.of(1)).toEqual(kept)
    expect(c.ofRemote(key(9))).toEqual(kept)
  })

  it('tells remote agents apart by their whole key', () => {
    const c = new Contacts()
    c.addRemote(1, key(7))
    c.addRemote(2, key(8))
    c.addRemote(1, key(7))
    expect(c.ofRemote(key(7))).toEqual([1])
    expect(c.ofRemote(Buffer.from(key(8)))).toEqual([2])
    expect(c.ofRemote(key(6))).toEqual([])
  })

  it('prune() forgets the contacts of agents the registry no longer has, and drops them from remote lists', () => {
    const c = new Contacts()
    c.add(1, 2)
    c.add(3, 1)
    c.addRemote(1, key(7))
    c.addRemote(3, key(7))
    c.addRemote(1, key(8))
    const known = new Set([3])
    c.prune({ has: (ref) => known.has(ref) })
    expect(c.of(1)).toEqual([])
    expect(c.of(3)).toEqual([1]) // a forgotten agent in a kept list costs nothing: it has no connection to write to
    expect(c.ofRemote(key(7))).toEqual([3])
    expect(c.ofRemote(key(8))).toEqual([])
  })
})
