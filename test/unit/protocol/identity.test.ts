// Identities (src/protocol/identity.ts): peer IDs as people read them (and parsed back,
// as a pinned server key is), names, and the signature / MAC primitives the rendezvous
// protocol relies on; the datagram seal (src/protocol/seal.ts).
import { describe, expect, it } from 'vitest'
import {
  base32Bytes,
  generateKeyPair,
  isValidName,
  mac,
  networkSecretKey,
  parsePeerId,
  peerId,
  randomBytes,
  secretProof,
  shortId,
  sign,
  timingSafeEqual,
  verify
} from '../../../src/protocol/identity.js'
import { tag } from '../../../src/protocol/seal.js'
import { seq } from '../helpers.js'

describe('identity', () => {
  it('peerId is RFC 4648 base32, lower case, unpadded', () => {
    // RFC 4648 §10 test vectors, lower-cased and without padding.
    expect(peerId(Buffer.from('f'))).toBe('my')
    expect(peerId(Buffer.from('fo'))).toBe('mzxq')
    expect(peerId(Buffer.from('foo'))).toBe('mzxw6')
    expect(peerId(Buffer.from('foob'))).toBe('mzxw6yq')
    expect(peerId(Buffer.from('fooba'))).toBe('mzxw6ytb')
    expect(peerId(Buffer.from('foobar'))).toBe('mzxw6ytboi')
  })

  it('a 32-byte key gives 52 lower-case base32 characters; the short ID is its first 8', () => {
    expect(peerId(Buffer.alloc(32))).toBe('a'.repeat(52))
    expect(peerId(Buffer.alloc(32, 0xff))).toBe('7'.repeat(51) + 'q')
    for (let i = 0; i < 20; i++) {
      const { publicKey } = generateKeyPair()
      const id = peerId(publicKey)
      expect(id).toMatch(/^[a-z2-7]{52}$/)
      expect(shortId(publicKey)).toBe(id.slice(0, 8))
    }
    expect(peerId(seq(0, 32))).not.toBe(peerId(seq(1, 32)))
  })

  it('isValidName: 1-32 of [a-z0-9_-], starting with a letter or digit', () => {
    for (const ok of ['a', '0', 'a'.repeat(32), 'my-host_1', '9lives', 'a-', 'a_']) expect(isValidName(ok), ok).toBe(true)
    for (const bad of ['', 'a'.repeat(33), 'Alice', '-lead', '_lead', 'has space', 'dot.name', 'ü', 'a\n', '\na', 'a/b', 'a:b']) {
      expect(isValidName(bad), JSON.stringify(bad)).toBe(false)
    }
  })

  it('sign/verify: the right key verifies, another key, message or signature does not', () => {
    const kp = generateKeyPair()
    const msg = Buffer.from('register me')
    const sig = sign(msg, kp.secretKey)
    expect(sig).toHaveLength(64)
    expect(verify(msg, sig, kp.publicKey)).toBe(true)
    expect(verify(Buffer.from('register mE'), sig, kp.publicKey)).toBe(false)
    expect(verify(msg, sig, generateKeyPair().publicKey)).toBe(false)
    const badSig = Buffer.from(sig)
    badSig[0]! ^= 1
    expect(verify(msg, badSig, kp.publicKey)).toBe(false)
    // Wrong lengths are a plain "no", not a throw.
    expect(verify(msg, sig.subarray(0, 63), kp.publicKey)).toBe(false)
    expect(verify(msg, sig, kp.publicKey.subarray(0, 31))).toBe(false)
  })

  it('mac is keyed and deterministic; the secret proof binds nonce and key', () => {
    expect(mac(seq(0, 32), Buffer.from('a'))).toEqual(mac(seq(0, 32), Buffer.from('a')))
    expect(mac(seq(0, 32), Buffer.from('a'))).not.toEqual(mac(seq(1, 32), Buffer.from('a')))
    const key = networkSecretKey(Buffer.from('s3cret'))
    expect(key).toHaveLength(32)
    expect(networkSecretKey(Buffer.from('s3cret'))).toEqual(key)
    expect(networkSecretKey(Buffer.from('other'))).not.toEqual(key)
    const proof = secretProof(key, seq(0, 32), seq(0x40, 32))
    expect(secretProof(key, seq(0, 32), seq(0x40, 32))).toEqual(proof)
    expect(secretProof(key, seq(1, 32), seq(0x40, 32))).not.toEqual(proof)
    expect(secretProof(key, seq(0, 32), seq(0x41, 32))).not.toEqual(proof)
  })

  it('randomBytes and timingSafeEqual', () => {
    expect(randomBytes(16)).toHaveLength(16)
    expect(randomBytes(16)).not.toEqual(randomBytes(16))
    expect(timingSafeEqual(seq(0, 8), seq(0, 8))).toBe(true)
    expect(timingSafeEqual(seq(0, 8), seq(1, 8))).toBe(false)
    expect(timingSafeEqual(seq(0, 8), seq(0, 7))).toBe(false)
  })

  it('parsePeerId reads back the key a peer ID spells', () => {
    expect(parsePeerId('a'.repeat(52))).toEqual(Buffer.alloc(32))
    expect(parsePeerId('7'.repeat(51) + 'q')).toEqual(Buffer.alloc(32, 0xff))
    expect(parsePeerId(peerId(seq(0, 32)))).toEqual(seq(0, 32))
    for (let i = 0; i < 50; i++) {
      const { publicKey } = generateKeyPair()
      expect(parsePeerId(peerId(publicKey))).toEqual(publicKey)
    }
  })

  it('base32Bytes reads the whole bytes of an ID prefix (the registry finds peers by them); null outside a-z2-7', () => {
    const key = seq(0, 32)
    const id = peerId(key)
    expect(base32Bytes(id.slice(0, 8))).toEqual(key.subarray(0, 5))
    expect(base32Bytes(id.slice(0, 13))).toEqual(key.subarray(0, 8)) // 65 bits: the spare bit is dropped
    expect(base32Bytes(id)).toEqual(key)
    expect(base32Bytes('abcdefg1')).toBeNull()
    expect(base32Bytes('ABCDEFGH')).toBeNull()
  })

  it('parsePeerId refuses a wrong length, a character outside a-z2-7, and non-zero spare bits', () => {
    const id = peerId(generateKeyPair().publicKey)
    expect(parsePeerId(id)).not.toBeNull()
    for (const bad of [
      '',
      id.slice(0, 8), // a short ID names a peer, it does not pin a key
      id.slice(0, 51),
      id + 'a',
      id.toUpperCase(),
      id.slice(0, 10) + '1' + id.slice(11), // 0, 1, 8, 9 are not base32 digits
      id.slice(0, 10) + '8' + id.slice(11),
      id.slice(0, 10) + '=' + id.slice(11),
      id.slice(0, 51) + ' ',
      ' ' + id.slice(1),
      // 52 characters carry 260 bits for 256: the last one's low 4 bits must be zero.
      '7'.repeat(51) + 'r',
      'a'.repeat(51) + 'b',
      'a'.repeat(51) + 'p'
    ]) {
      expect(parsePeerId(bad), JSON.stringify(bad)).toBeNull()
    }
  })
})

describe('seal', () => {
  // Expected tags computed apart: Python's hashlib.blake2b(data, key=key, digest_size=16).
  it('tag is keyed BLAKE2b-128 (golden values)', () => {
    expect(tag(seq(0, 32), Buffer.from('abc')).toString('hex')).toBe('1a64be47e4729d951c302ee543f97cf3')
    expect(tag(seq(0, 32), Buffer.alloc(0)).toString('hex')).toBe('3daf97bce7888fd59773c66bf647459c')
    expect(tag(seq(0, 16), Buffer.from('abc')).toString('hex')).toBe('cc611a2673ca66e9f7fc64b995c5467c')
    expect(tag(seq(0, 64), Buffer.from('abc')).toString('hex')).toBe('a9f9ff5c38d7eda4899ab27d41b93372')
  })

  it('tag depends on every bit of the key and of the data', () => {
    const key = seq(0x60, 32)
    const data = seq(0x10, 24)
    const t = tag(key, data)
    for (let bit = 0; bit < 32 * 8; bit++) {
      const k = Buffer.from(key)
      k[bit >> 3]! ^= 1 << (bit & 7)
      expect(tag(k, data).equals(t), `key bit ${bit}`).toBe(false)
    }
    for (let bit = 0; bit < 24 * 8; bit++) {
      const d = Buffer.from(data)
      d[bit >> 3]! ^= 1 << (bit & 7)
      expect(tag(key, d).equals(t), `data bit ${bit}`).toBe(false)
    }
    expect(tag(key, Buffer.concat([data, Buffer.alloc(1)])).equals(t)).toBe(false)
  })

  it('tag refuses keys shorter than 16 or longer than 64 bytes', () => {
    expect(() => tag(seq(0, 15), Buffer.from('abc'))).toThrow()
    expect(() => tag(seq(0, 65), Buffer.from('abc'))).toThrow()
  })
})
