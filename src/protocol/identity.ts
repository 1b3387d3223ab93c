/**
 * Ed25519 identities. A peer ID is the public key; people see it short, as base32.
 * Pure: no files (the daemon stores the key pair), only libsodium calls.
 */
import sodium from 'sodium-native'
import { KEY_BYTES, SIGNATURE_BYTES } from './rendezvous.js'

export interface KeyPair {
  publicKey: Buffer
  secretKey: Buffer
}

export const NAME_PATTERN = /^[a-z0-9][a-z0-9_-]{0,31}$/
export const NAME_RULE = '1-32 characters: lower-case letters, digits, - and _, starting with a letter or digit'

export function isValidName(name: string): boolean {
  return NAME_PATTERN.test(name)
}

export function generateKeyPair(): KeyPair {
  const publicKey = Buffer.alloc(sodium.crypto_sign_PUBLICKEYBYTES)
  const secretKey = sodium.sodium_malloc(sodium.crypto_sign_SECRETKEYBYTES) as Buffer
  sodium.crypto_sign_keypair(publicKey, secretKey)
  return { publicKey, secretKey }
}

export function sign(message: Uint8Array, secretKey: Uint8Array): Buffer {
  const sig = Buffer.alloc(SIGNATURE_BYTES)
  sodium.crypto_sign_detached(sig, message as Buffer, secretKey as Buffer)
  return sig
}

export function verify(message: Uint8Array, signature: Uint8Array, publicKey: Uint8Array): boolean {
  if (signature.length !== SIGNATURE_BYTES || publicKey.length !== KEY_BYTES) return false
  return sodium.crypto_sign_verify_detached(signature as Buffer, message as Buffer, publicKey as Buffer)
}

/** Keyed MAC (BLAKE2b-256), for cookies and the network-secret proof. */
export function mac(key: Uint8Array, ...parts: Uint8Array[]): Buffer {
  const out = Buffer.alloc(32)
  sodium.crypto_generichash_batch(out, parts as Buffer[], key as Buffer)
  return out
}

export function randomBytes(n: number): Buffer {
  const b = Buffer.alloc(n)
  sodium.randombytes_buf(b)
  return b
}

export { timingSafeEqual } from './seal.js'

const BASE32 = 'abcdefghijklmnopqrstuvwxyz234567'

/** RFC 4648 base32, lower case, no padding: the peer ID as people read and type it. */
export function peerId(publicKey: Uint8Array): string {
  let bits = 0
  let value = 0
  let out = ''
  for (const byte of publicKey) {
    value = (value << 8) | byte
    bits += 8
    while (bits >= 5) {
      out += BASE32[(value >>> (bits - 5)) & 31]
      bits -= 5
    }
  }
  if (bits > 0) out += BASE32[(value << (5 - bits)) & 31]
  return out
}

/** The whole bytes base32 `text` spells (a peer ID, or a prefix of one: spare bits dropped); null when it is not base32. */
export function base32Bytes(text: string): Buffer | null {
  const out = Buffer.alloc(Math.floor((text.length * 5) / 8))
  let value = 0
  let bits = 0
  let n = 0
  for (const ch of text) {
    const digit = BASE32.indexOf(ch)
    if (digit < 0) return null
    value = ((value << 5) | digit) & 0xfff
    bits += 5
    if (bits >= 8) {
      bits -= 8
      if (n < out.length) out[n++] = (value >>> bits) & 0xff
    }
  }
  return out
}

/** The public key a full peer ID spells, or null when `text` is not one (52 base32 characters). */
export function parsePeerId(text: string): Buffer | null {
  if (text.length !== 52) return null
  const out = base32Bytes(text)
  return out && peerId(out) === text ? out : null // the last character's spare bits must be zero
}

export function shortId(publicKey: Uint8Array): string {
  return peerId(publicKey).slice(0, 8)
}

/** The key agents and the server derive from the network secret file's bytes. */
export function networkSecretKey(secret: Uint8Array): Buffer {
  return mac(Buffer.from('natd network secret v1'), secret)
}

/** What an agent sends to prove it holds the network secret, bound to this nonce and key. */
export function secretProof(secretKey: Uint8Array, nonce: Uint8Array, publicKey: Uint8Array): Buffer {
  return mac(secretKey, nonce, publicKey)
}
