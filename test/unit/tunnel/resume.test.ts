// tunnel/resume.ts, the pure parts: the memory of tunnels the relay ended (RELAY_LIMIT),
// which refuses their resume, with its bounds (entries and age), and the GOODBYE answer.
import { describe, expect, it } from 'vitest'
import { encodeMux } from '../../../src/protocol/mux.js'
import { asGoodbye, asResume, RELAY_ENDED_KEEP_MS, RELAY_ENDED_MAX, RelayEnded } from '../../../src/tunnel/resume.js'
import { FakeClock } from '../helpers.js'

const id = (n: number): Uint8Array => Buffer.alloc(16, 0).fill(n >> 8, 0, 1).fill(n & 0xff, 1, 2)

describe('RelayEnded: the tunnels whose resume is refused', () => {
  it('remembers an ended tunnel for RELAY_ENDED_KEEP_MS, by its id only', () => {
    const clock = new FakeClock()
    const ended = new RelayEnded(clock)
    ended.add(id(1))
    expect(ended.has(id(1))).toBe(true)
    expect(ended.has(id(2))).toBe(false)
    clock.advance(RELAY_ENDED_KEEP_MS - 1)
    expect(ended.has(id(1))).toBe(true)
    clock.advance(1)
    expect(ended.has(id(1))).toBe(false)
    expect(ended.size).toBe(0)
  })

  it('holds at most RELAY_ENDED_MAX ids, forgetting the oldest first', () => {
    const clock = new FakeClock()
    const ended = new RelayEnded(clock)
    for (let i = 0; i < RELAY_ENDED_MAX + 10; i++) ended.add(id(i))
    expect(ended.size).toBe(RELAY_ENDED_MAX)
    expect(ended.has(id(9))).toBe(false)
    expect(ended.has(id(10))).toBe(true)
    expect(ended.has(id(RELAY_ENDED_MAX + 9))).toBe(true)
  })
})

describe('asGoodbye: the peer refuses a RESUME', () => {
  it('reads the reason of a GOODBYE on channel 0; a RESUME, anything else or garbage is null', () => {
    expect(asGoodbye(encodeMux({ type: 'goodbye', channel: 0, reason: 'RELAY_LIMIT: over' }))).toBe('RELAY_LIMIT: over')
    const resume = encodeMux({ type: 'resume', channel: 0, tunnelId: id(1), received: 3 })
    expect(asGoodbye(resume)).toBeNull()
    expect(asResume(resume)).not.toBeNull()
    expect(asGoodbye(Buffer.from('garbage'))).toBeNull()
    expect(asGoodbye(undefined)).toBeNull()
  })
})
