// Minimal declarations for the parts of sodium-native natd uses.
declare module 'sodium-native' {
  const sodium: {
    crypto_sign_PUBLICKEYBYTES: number
    crypto_sign_SECRETKEYBYTES: number
    crypto_sign_keypair(pk: Buffer, sk: Buffer): void
    crypto_sign_seed_keypair(pk: Buffer, sk: Buffer, seed: Buffer): void
    crypto_sign_detached(sig: Buffer, m: Buffer, sk: Buffer): void
    crypto_sign_verify_detached(sig: Buffer, m: Buffer, pk: Buffer): boolean
    crypto_generichash(out: Buffer, data: Buffer, key?: Buffer): void
    crypto_generichash_batch(out: Buffer, parts: Buffer[], key?: Buffer): void
    randombytes_buf(b: Buffer): void
    sodium_memcmp(a: Buffer, b: Buffer): boolean
    sodium_malloc(n: number): Buffer
  }
  export default sodium
}
