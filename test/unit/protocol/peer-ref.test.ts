// protocol/peer-ref.ts: what a user typed → { name, id }, and matching by whole IDs.
import { describe, expect, it } from 'vitest'
import { generateKeyPair, isValidName, peerId } from '../../../src/protocol/identity.js'
import { describePeer, isPeerId, isTarget, resolvePeer, sameId } from '../../../src/protocol/peer-ref.js'
import { errorCode } from '../helpers.js'

const BOB = peerId(generateKeyPair().publicKey)
/** Shares bob's first 10 characters: an attacker's key that costs ~2^50 tries, here just written down. */
// Shares exactly BOB's first 10 characters (the 11th differs, whatever key BOB got).
const LOOKALIKE = BOB.slice(0, 10) + (BOB[10] === 'b' ? 'c' : 'b') + 'a'.repeat(40) + 'q'
const CAROL = peerId(generateKeyPair().publicKey)

describe('peer IDs', () => {
  it('a full ID is 52 base32 characters of a 32-byte key; a prefix or a name is not', () => {
    expect(BOB).toHaveLength(52)
    expect(isPeerId(BOB)).toBe(true)
    expect(isPeerId(BOB.slice(0, 51))).toBe(false)
    expect(isPeerId(BOB.slice(0, 51) + 'b')).toBe(false) // the last character holds one bit
    expect(isPeerId('bob')).toBe(false)
  })

  it('sameId compares whole IDs only', () => {
    expect(sameId(BOB, BOB)).toBe(true)
    expect(sameId(BOB, LOOKALIKE)).toBe(false)
    expect(sameId('bob', 'bob')).toBe(false)
    expect(sameId(BOB.slice(0, 8), BOB.slice(0, 8))).toBe(false)
    expect(sameId(null, null)).toBe(false)
  })

  it('describes a peer as name (id8…)', () => {
    expect(describePeer({ name: 'bob', id: BOB })).toBe(`bob (${BOB.slice(0, 8)}…)`)
    expect(describePeer({ name: '', id: BOB })).toBe(`${BOB.slice(0, 8)}…`)
    expect(describePeer({ name: 'bob', id: null })).toBe('bob (unresolved)')
  })
})

describe('resolvePeer', () => {
  const known = [
    { name: 'bob', id: BOB },
    { name: 'carol', id: CAROL }
  ]

  it('a name resolves to its known key, or to the name alone when none is known', () => {
    expect(resolvePeer('bob', known)).toEqual({ name: 'bob', id: BOB })
    expect(resolvePeer('dave', known)).toEqual({ name: 'dave', id: null })
  })

  it('a full ID resolves to itself, known or not', () => {
    expect(resolvePeer(BOB, known)).toEqual({ name: null, id: BOB })
    expect(resolvePeer(LOOKALIKE, known)).toEqual({ name: null, id: LOOKALIKE })
  })

  it('an abbreviated ID of 8+ characters resolves when it is unique among known peers', () => {
    expect(resolvePeer(BOB.slice(0, 8), known)).toEqual({ name: null, id: BOB })
    expect(resolvePeer(BOB.slice(0, 7), known)).toEqual({ name: BOB.slice(0, 7), id: null }) // too short: taken as a name
  })

  it('an ambiguous abbreviation is INVALID_ARGUMENT listing the candidates', () => {
    const both = [...known, { name: 'mallory', id: LOOKALIKE }]
    expect(errorCode(() => resolvePeer(BOB.slice(0, 8), both))).toBe('INVALID_ARGUMENT')
    expect(() => resolvePeer(BOB.slice(0, 8), both)).toThrow(/matches 2 peers: bob \(.{8}…\), mallory \(.{8}…\)/)
    expect(resolvePeer(BOB.slice(0, 11), both)).toEqual({ name: null, id: BOB })
  })

  // Review 9: a stranger registers the name of bob's first 8 characters (any free name is
  // theirs to take). What a user copies from `bob (xxxxxxxx…)` must never reach it.
  describe('a name that is also the start of another peer\'s ID', () => {
    const BOB8 = BOB.slice(0, 8)
    const STRANGER = { name: BOB8, id: CAROL }

    it('is INVALID_ARGUMENT naming both peers, whichever comes first (pinned or listed)', () => {
      for (const both of [[{ name: 'bob', id: BOB }, STRANGER], [STRANGER, { name: 'bob', id: BOB }]]) {
        expect(errorCode(() => resolvePeer(BOB8, both))).toBe('INVALID_ARGUMENT')
        expect(() => resolvePeer(BOB8, both)).toThrow(`${BOB8} matches 2 peers: the name of ${BOB8} (${CAROL.slice(0, 8)}…), and the start of the ID of bob (${BOB8}…); type more of the ID of the one you mean, or its full ID`)
      }
      // Bob with no name known (an ID typed earlier): still named in the refusal.
      expect(() => resolvePeer(BOB8, [STRANGER, { name: '', id: BOB }])).toThrow(`the start of the ID of ${BOB8}…`)
    })

    it('the full ID (or 33+ characters: longer than any name) settles it, for either peer', () => {
      const both = [{ name: 'bob', id: BOB }, STRANGER]
      expect(isValidName(BOB)).toBe(false)
      expect(isValidName(BOB.slice(0, 33))).toBe(false)
      expect(resolvePeer(BOB, both)).toEqual({ name: null, id: BOB })
      expect(resolvePeer(BOB.slice(0, 33), both)).toEqual({ name: null, id: BOB })
      expect(resolvePeer(CAROL, both)).toEqual({ name: null, id: CAROL })
    })

    it('an ID-shaped name is a name when no other known ID starts with it (honest names like "database" keep working)', () => {
      expect(resolvePeer('database', [...known, { name: 'database', id: LOOKALIKE }])).toEqual({ name: 'database', id: LOOKALIKE })
      expect(resolvePeer(BOB8, [STRANGER, { name: 'carol', id: CAROL }])).toEqual({ name: BOB8, id: CAROL }) // bob unknown: a name
      expect(resolvePeer(BOB8, [{ name: BOB8, id: BOB }, { name: 'bob2', id: BOB }])).toEqual({ name: BOB8, id: BOB }) // named after its own ID
    })
  })

  it('an abbreviation nobody has is null (unknown) when it cannot be a name', () => {
    expect(resolvePeer('b'.repeat(40), known)).toBeNull()
  })

  it('text that is no name or ID is INVALID_ARGUMENT', () => {
    expect(errorCode(() => resolvePeer('Bob!', known))).toBe('INVALID_ARGUMENT')
  })
})

describe('isTarget', () => {
  it('needs the whole name that was given and the whole key that is expected', () => {
    expect(isTarget({ name: 'bob', id: BOB }, { name: 'bob', id: BOB })).toBe(true)
    expect(isTarget({ name: 'bob', id: BOB }, { name: 'bob', id: null })).toBe(true)
    expect(isTarget({ name: 'bob_', id: BOB }, { name: 'bob', id: BOB })).toBe(false)
    expect(isTarget({ name: 'bob_', id: LOOKALIKE }, { name: 'bob', id: null })).toBe(false)
    expect(isTarget({ name: 'bob', id: LOOKALIKE }, { name: null, id: BOB })).toBe(false)
    expect(isTarget({ name: 'anything', id: BOB }, { name: null, id: BOB })).toBe(true)
  })
})
