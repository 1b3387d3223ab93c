/**
 * What one core can encrypt and decrypt with the session's cipher: sodium-native's
 * crypto_secretstream_xchacha20poly1305 push / pull (what @hyperswarm/secret-stream calls
 * per message, through sodium-secretstream), for several message sizes. Every encrypted
 * path (UDX, TCP, relay) is bounded by this: a forward pays push once on one agent and
 * pull once on the other, so each agent spends at least bytes / rate of a core.
 *
 *   node bench/crypto-micro.ts [--json FILE] [--mib N]
 *
 * Prints {"push":{"16KiB":MB/s,…},"pull":{…},"push_copy":{…}}. push_copy adds the
 * allocation and copy secret-stream's _write makes when the caller did not use alloc().
 */
import fs from 'node:fs'
import sodiumAll from 'sodium-native'

/** The secretstream calls used here (types/sodium-native.d.ts declares only what natd uses). */
interface Secretstream {
  crypto_secretstream_xchacha20poly1305_ABYTES: number
  crypto_secretstream_xchacha20poly1305_TAG_MESSAGE: number
  crypto_secretstream_xchacha20poly1305_KEYBYTES: number
  crypto_secretstream_xchacha20poly1305_HEADERBYTES: number
  crypto_secretstream_xchacha20poly1305_STATEBYTES: number
  crypto_secretstream_xchacha20poly1305_keygen(key: Buffer): void
  crypto_secretstream_xchacha20poly1305_init_push(state: Buffer, header: Buffer, key: Buffer): void
  crypto_secretstream_xchacha20poly1305_init_pull(state: Buffer, header: Buffer, key: Buffer): void
  crypto_secretstream_xchacha20poly1305_push(state: Buffer, c: Buffer, m: Buffer, ad: null, tag: number): number
  crypto_secretstream_xchacha20poly1305_pull(state: Buffer, m: Buffer, tag: Buffer, c: Buffer, ad: null): number
}
const sodium = sodiumAll as unknown as Secretstream

const argv = process.argv.slice(2)
const MIB = Number(argv[argv.indexOf('--mib') + 1]) || 256
const BYTES = MIB * 1024 * 1024
const SIZES_KIB = [16, 64, 256]
const ABYTES = sodium.crypto_secretstream_xchacha20poly1305_ABYTES
const TAG = sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE

function states(): { push: Buffer; pull: Buffer } {
  const key = Buffer.alloc(sodium.crypto_secretstream_xchacha20poly1305_KEYBYTES)
  sodium.crypto_secretstream_xchacha20poly1305_keygen(key)
  const header = Buffer.alloc(sodium.crypto_secretstream_xchacha20poly1305_HEADERBYTES)
  const push = Buffer.alloc(sodium.crypto_secretstream_xchacha20poly1305_STATEBYTES)
  const pull = Buffer.alloc(sodium.crypto_secretstream_xchacha20poly1305_STATEBYTES)
  sodium.crypto_secretstream_xchacha20poly1305_init_push(push, header, key)
  sodium.crypto_secretstream_xchacha20poly1305_init_pull(pull, header, key)
  return { push, pull }
}

const mbps = (bytes: number, ms: number): number => Math.round((bytes / 1e6 / (ms / 1000)) * 10) / 10

function measure(size: number): { push: number; pull: number; pushCopy: number } {
  const n = Math.max(16, Math.floor(BYTES / size))
  const plain = Buffer.alloc(size, 7)
  const { push, pull } = states()
  // Ciphertexts kept so pull decrypts the real sequence (pull state must advance in order).
  const ciphers = Array.from({ length: 32 }, () => Buffer.allocUnsafe(size + ABYTES))
  const out = Buffer.allocUnsafe(size)
  const tag = Buffer.alloc(1)

  // push: encrypt in place into a preallocated buffer (the alloc() path).
  let t0 = performance.now()
  for (let i = 0; i < n; i++) sodium.crypto_secretstream_xchacha20poly1305_push(push, ciphers[i % 32]!, plain, null, TAG)
  const pushMs = performance.now() - t0

  // pull: encrypt batches of 32, time only the decryption.
  const p2 = states()
  let pullMs = 0
  for (let done = 0; done < n; done += 32) {
    const k = Math.min(32, n - done)
    for (let i = 0; i < k; i++) sodium.crypto_secretstream_xchacha20poly1305_push(p2.push, ciphers[i]!, plain, null, TAG)
    t0 = performance.now()
    for (let i = 0; i < k; i++) sodium.crypto_secretstream_xchacha20poly1305_pull(p2.pull, out, tag, ciphers[i]!, null)
    pullMs += performance.now() - t0
  }
  void pull

  // push with secret-stream's fallback: allocate the wrapped buffer, copy the plaintext in.
  const p3 = states()
  t0 = performance.now()
  for (let i = 0; i < n; i++) {
    const wrapped = Buffer.allocUnsafe(size + 3 + ABYTES)
    wrapped.set(plain, 4)
    sodium.crypto_secretstream_xchacha20poly1305_push(p3.push, wrapped.subarray(3), wrapped.subarray(4, 4 + size), null, TAG)
  }
  const copyMs = performance.now() - t0
  return { push: mbps(n * size, pushMs), pull: mbps(n * size, pullMs), pushCopy: mbps(n * size, copyMs) }
}

measure(64 * 1024) // warm up
const result: Record<string, Record<string, number>> = { push: {}, pull: {}, push_copy: {} }
for (const kib of SIZES_KIB) {
  const r = measure(kib * 1024)
  result.push![`${kib}KiB`] = r.push
  result.pull![`${kib}KiB`] = r.pull
  result.push_copy![`${kib}KiB`] = r.pushCopy
}
const json = argv.indexOf('--json')
if (json >= 0) fs.writeFileSync(argv[json + 1]!, JSON.stringify(result))
console.log(JSON.stringify(result))
