/**
 * Datagram seals: a 16-byte keyed BLAKE2b tag over a frame's bytes. UDP frames that
 * must be trusted but cannot travel inside a Noise session (heartbeats and their acks,
 * which carry the endpoint the server saw; punching probes) are sealed with a key that
 * did travel inside one (REGISTER_ACK's udpKey, the introduction's punchKey), so an
 * off-path sender who guesses sequence numbers still cannot forge them.
 * Pure: libsodium calls only.
 */
import sodium from 'sodium-native'

export const SEAL_TAG_BYTES = 16

/** BLAKE2b-128 of `data` keyed with `key` (16 to 64 bytes). */
export function tag(key: Uint8Array, data: Uint8Array): Buffer {
  const out = Buffer.alloc(SEAL_TAG_BYTES)
  sodium.crypto_generichash(out, data as Buffer, key as Buffer)
  return out
}

export function timingSafeEqual(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && sodium.sodium_memcmp(a as Buffer, b as Buffer)
}
