// The registry's hash indexes (src/rendezvous/slot-index.ts) and endpoint columns
// (src/rendezvous/endpoint-column.ts) against plain Maps, with hashes squeezed into a few
// values so that probe runs, wrap-around and backward-shift deletion are all exercised.
import { describe, expect, it } from 'vitest'
import { EndpointColumn } from '../../../src/rendezvous/endpoint-column.js'
import { SlotIndex } from '../../../src/rendezvous/slot-index.js'
import { prng, randInt } from '../helpers.js'

describe('SlotIndex', () => {
  it('finds what a Map finds through random adds and deletes, with colliding hashes', () => {
    const seed = 0x51075
    const rand = prng(seed)
    const value = new Map<number, number>() // slot -> the value it holds
    // Few distinct hashes, some near the top of the table so runs wrap around.
    const hashOf = (slot: number): number => (value.get(slot)! % 7) * 146 + 1000
    const index = new SlotIndex(hashOf)
    const bySlotValue = (v: number): number => index.find((v % 7) * 146 + 1000, (s) => value.get(s) === v)
    let next = 0
    const live = new Set<number>()
    for (let step = 0; step < 20_000; step++) {
      if (live.size === 0 || rand() < 0.55) {
        const slot = next++
        value.set(slot, randInt(rand, 0, 1e9))
        index.add(slot)
        live.add(slot)
      } else {
        const slot = [...live][randInt(rand, 0, live.size - 1)]!
        index.delete(slot)
        live.delete(slot)
        expect(bySlotValue(value.get(slot)!), `seed ${seed} step ${step}`).toBe(-1)
      }
      if (step % 500 === 0) for (const s of live) expect(bySlotValue(value.get(s)!), `seed ${seed} step ${step}`).toBe(s)
    }
    expect(index.size).toBe(live.size)
    for (const s of live) expect(bySlotValue(value.get(s)!)).toBe(s)
  })

  it('deleting a slot it does not hold changes nothing', () => {
    const index = new SlotIndex(() => 3)
    index.add(1)
    index.delete(2)
    expect(index.size).toBe(1)
    expect(index.find(3, (s) => s === 1)).toBe(1)
  })
})

describe('EndpointColumn', () => {
  it('gives back what was set: IPv4 packed, IPv6 and non-canonical text aside, none as null', () => {
    const col = new EndpointColumn()
    col.grow(4)
    const eps = [{ host: '203.0.113.7', port: 65535 }, { host: '2001:db8::1', port: 443 }, { host: '010.0.0.1', port: 1 }]
    eps.forEach((ep, slot) => col.set(slot, ep))
    eps.forEach((ep, slot) => {
      expect(col.get(slot)).toEqual(ep)
      expect(col.is(slot, ep)).toBe(true)
      expect(col.is(slot, { ...ep, port: ep.port - 1 })).toBe(false)
    })
    expect(col.get(3)).toBeNull()
    expect(col.is(0, { host: '203.0.113.8', port: 65535 })).toBe(false)
    col.set(1, null)
    expect(col.get(1)).toBeNull()
    col.grow(8)
    expect(col.get(0)).toEqual(eps[0])
    expect(col.get(2)).toEqual(eps[2])
  })
})
