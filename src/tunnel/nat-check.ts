/**
 * How our NAT maps (RFC 4787 §4.1, tested RFC 5780 style): STUN Binding requests from
 * the tunnel socket to the rendezvous server's two UDP ports. The same mapped endpoint
 * for both means endpoint-independent mapping ("easy": peers can punch to the endpoint
 * the server saw); different ports mean the NAT maps per destination ("hard": punching
 * needs the birthday method); a mapped address equal to our own means no NAT.
 *
 * The verdict is pure (classifyMapping); the probe runner gets its socket injected.
 */
import { sameEndpoint, type Endpoint } from '../protocol/endpoint.js'
import { randomBytes } from '../protocol/identity.js'
import type { NatVerdict } from '../protocol/rendezvous.js'
import { decodeStun, encodeBindingRequest } from '../protocol/stun.js'

/** One STUN round trip may take this long; two tries per port. */
export const NAT_CHECK_TIMEOUT_MS = 700
export const NAT_CHECK_TRIES = 2

export interface MappingSamples {
  local: Endpoint[]
  /** Mapped endpoint seen by the server's main port, then by its alternate port (null: no answer). */
  primary: Endpoint | null
  alternate: Endpoint | null
}

export function classifyMapping(s: MappingSamples): NatVerdict {
  if (!s.primary) return 'unknown'
  if (s.local.some((l) => l.host === s.primary!.host)) return 'none'
  if (!s.alternate) return 'unknown'
  return sameEndpoint(s.primary, s.alternate) ? 'easy' : 'hard'
}

export class NatCheck {
  private readonly waiting = new Map<string, (mapped: Endpoint | null) => void>()

  constructor(private readonly send: (buf: Uint8Array, to: Endpoint) => void) {}

  /** A STUN message arrived on the tunnel socket. */
  onStun(buf: Uint8Array): void {
    try {
      const msg = decodeStun(buf)
      if (msg.method !== 'binding-success') return
      const key = Buffer.from(msg.transactionId).toString('hex')
      this.waiting.get(key)?.(msg.mapped)
    } catch {
      // not ours or malformed: ignore
    }
  }

  /** Asks `to` which endpoint it sees us at; null when it does not answer. */
  async mapped(to: Endpoint): Promise<Endpoint | null> {
    for (let i = 0; i < NAT_CHECK_TRIES; i++) {
      const txid = randomBytes(12)
      const key = txid.toString('hex')
      const answer = new Promise<Endpoint | null>((resolve) => {
        const timer = setTimeout(() => resolve(null), NAT_CHECK_TIMEOUT_MS)
        this.waiting.set(key, (m) => {
          clearTimeout(timer)
          resolve(m)
        })
      })
      this.send(encodeBindingRequest(txid), to)
      const m = await answer
      this.waiting.delete(key)
      if (m) return m
    }
    return null
  }

  async verdict(server: Endpoint, altPort: number, local: Endpoint[]): Promise<{ verdict: NatVerdict; samples: MappingSamples }> {
    const [primary, alternate] = await Promise.all([this.mapped(server), altPort ? this.mapped({ host: server.host, port: altPort }) : Promise.resolve(null)])
    const samples = { local, primary, alternate }
    return { verdict: classifyMapping(samples), samples }
  }
}
