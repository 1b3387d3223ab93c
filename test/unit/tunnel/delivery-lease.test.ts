// The delivery lease (src/tunnel/delivery-lease.ts): a consumer says during a delivery
// that it keeps no reference to the message's memory; anything else, a throw included,
// counts as kept (the session reader then never reads into that slab again).
import { describe, expect, it } from 'vitest'
import { deferToBatchEnd, deliverBatch, deliverLeased, deliverOrKeep, keptInBatch, released } from '../../../src/tunnel/delivery-lease.js'

describe('delivery lease', () => {
  it('kept unless the consumer released during the delivery', () => {
    expect(deliverLeased(() => released())).toBe(true)
    expect(deliverLeased(() => undefined)).toBe(false)
    released() // outside a delivery: no effect on the next
    expect(deliverLeased(() => undefined)).toBe(false)
  })

  it('deliverOrKeep: kept() after a delivery not released, never after a released one', () => {
    let kept = 0
    deliverOrKeep(() => released(), () => kept++)
    expect(kept).toBe(0)
    deliverOrKeep(() => undefined, () => kept++)
    expect(kept).toBe(1)
  })

  it('deliverOrKeep: a consumer that throws (holding a view by then) counts as kept, and the error goes on', () => {
    let kept = 0
    let view: Buffer | null = null
    const slab = Buffer.alloc(16)
    expect(() =>
      deliverOrKeep(() => {
        view = slab.subarray(0, 8)
        throw new Error('consumer failed')
      }, () => kept++)
    ).toThrow('consumer failed')
    expect(view).not.toBeNull()
    expect(kept).toBe(1)
    // One that released and then threw counts as kept too: what it did after released() is not known.
    expect(() => deliverOrKeep(() => {
      released()
      throw new Error('late')
    }, () => kept++)).toThrow('late')
    expect(kept).toBe(2)
  })

  it('a batch: writes put off to its end run after every delivery of it, in the order asked; outside a batch nothing is put off', () => {
    const order: string[] = []
    expect(deferToBatchEnd(() => true)).toBe(false) // no batch: write now
    const free = deliverBatch(() => {
      order.push('deliver 1')
      expect(deferToBatchEnd(() => (order.push('flush a'), true))).toBe(true)
      order.push('deliver 2')
      expect(deferToBatchEnd(() => (order.push('flush b'), true))).toBe(true)
    })
    expect(free).toBe(true)
    expect(order).toEqual(['deliver 1', 'deliver 2', 'flush a', 'flush b'])
    expect(deferToBatchEnd(() => true)).toBe(false) // the batch is over
  })

  it('a batch whose put-off write left memory referenced counts as kept; a throwing delivery still gets its writes', () => {
    expect(deliverBatch(() => void deferToBatchEnd(() => false))).toBe(false)
    let flushed = 0
    expect(() =>
      deliverBatch(() => {
        deferToBatchEnd(() => (flushed++, true))
        throw new Error('consumer failed')
      })
    ).toThrow('consumer failed')
    expect(flushed).toBe(1) // what was accepted before the throw is written
    expect(deferToBatchEnd(() => true)).toBe(false)
  })

  it('keptInBatch(): a consumer that wrote a batch\'s messages before its end and still refers to them makes the batch count as kept', () => {
    expect(deliverBatch(() => keptInBatch())).toBe(false)
    expect(deliverBatch(() => void deferToBatchEnd(() => true))).toBe(true) // the next batch starts afresh
    keptInBatch() // outside a batch: no effect on the next one
    expect(deliverBatch(() => undefined)).toBe(true)
  })
})
