// SeenIntroductions (src/tunnel/seen-introductions.ts): an introduction id counts once,
// among the newest SEEN_INTRODUCTIONS_MAX.
import { describe, expect, it } from 'vitest'
import { SEEN_INTRODUCTIONS_MAX, SeenIntroductions } from '../../../src/tunnel/seen-introductions.js'

const id = (n: number): Uint8Array => Buffer.from(n.toString(16).padStart(32, '0'), 'hex')

describe('SeenIntroductions', () => {
  it('says false for an id seen already, and forgets the oldest beyond SEEN_INTRODUCTIONS_MAX', () => {
    const seen = new SeenIntroductions()
    expect(seen.add(id(0))).toBe(true)
    expect(seen.add(id(0))).toBe(false)
    for (let i = 1; i <= SEEN_INTRODUCTIONS_MAX; i++) expect(seen.add(id(i))).toBe(true)
    expect(seen.add(id(SEEN_INTRODUCTIONS_MAX))).toBe(false)
    expect(seen.add(id(0))).toBe(true) // forgotten
  })
})
