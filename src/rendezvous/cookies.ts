/**
 * Stateless registration nonces. The server keeps nothing per HELLO: a nonce is
 * `bucket u32 | random[12] | mac[16]` where the MAC binds it to the source address and
 * a 30 s time bucket, so a nonce is valid for 30-60 s and only from the address it was
 * sent to (a captured REGISTER cannot be replayed from elsewhere).
 */
import { mac, randomBytes, timingSafeEqual } from '../protocol/identity.js'
import type { Clock } from '../protocol/log.js'
import { NONCE_BYTES } from '../protocol/rendezvous.js'
import { formatEndpoint, type Endpoint } from '../protocol/endpoint.js'

const COOKIE_BUCKET_MS = 30_000

export class CookieJar {
  private readonly key = randomBytes(32)
  constructor(private readonly clock: Clock) {}

  issue(from: Endpoint): Buffer {
    const nonce = Buffer.alloc(NONCE_BYTES)
    nonce.writeUInt32BE(Math.floor(this.clock.now() / COOKIE_BUCKET_MS) >>> 0, 0)
    randomBytes(12).copy(nonce, 4)
    this.tag(nonce, from).copy(nonce, 16)
    return nonce
  }

  valid(nonce: Uint8Array, from: Endpoint): boolean {
    if (nonce.length !== NONCE_BYTES) return false
    const bucket = Buffer.from(nonce).readUInt32BE(0)
    const now = Math.floor(this.clock.now() / COOKIE_BUCKET_MS) >>> 0
    if (bucket !== now && bucket !== ((now - 1) >>> 0)) return false
    return timingSafeEqual(this.tag(nonce, from), nonce.subarray(16))
  }

  private tag(nonce: Uint8Array, from: Endpoint): Buffer {
    return mac(this.key, nonce.subarray(0, 16), Buffer.from(formatEndpoint(from))).subarray(0, 16)
  }
}
