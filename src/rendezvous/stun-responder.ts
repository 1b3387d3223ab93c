/**
 * The server's STUN Binding answers (RFC 8489), with RFC 5780's NAT behaviour discovery
 * when it has a second address (natd-rendezvous --alt-host):
 *
 *                  port            altPort
 *   host        ┌ main ────────┐  ┌ alt-port ─────┐
 *   altHost     └ alt-ip ──────┘  └ alt-both ─────┘
 *
 * Every socket answers a Binding request with XOR-MAPPED-ADDRESS. With --alt-host (and an
 * alt port) the answer also carries RESPONSE-ORIGIN (the socket that answers) and
 * OTHER-ADDRESS (the socket differing in both address and port from the one asked), and a
 * CHANGE-REQUEST is answered from the socket it names. When that socket does not exist
 * (no --alt-host: change-ip; --alt-port 0: change-port) the change is ignored and the
 * answer comes from the socket asked, without OTHER-ADDRESS — the RFC 5780 §6 signal that
 * the server cannot do behaviour discovery. No 420 error: a stock client then simply
 * sees its change test unanswered from the other address.
 *
 * Amplification (answers go to unverified sources): a Binding request is at least 20
 * bytes. The plain answer is 32 bytes (1.6×); with --alt-host it is 56 bytes (20 header +
 * 3 × 12 for XOR-MAPPED-ADDRESS, RESPONSE-ORIGIN, OTHER-ADDRESS over IPv4): at most 2.8×
 * and 36 bytes more than the request, one answer per request, never MAPPED-ADDRESS or
 * SOFTWARE. Answers with CHANGE-REQUEST leave from another socket but are no larger.
 */
import type { Endpoint } from '../protocol/endpoint.js'
import { NatdError } from '../protocol/errors.js'
import { decodeStun, encodeBindingSuccess } from '../protocol/stun.js'

export type StunSlot = 'main' | 'alt-port' | 'alt-ip' | 'alt-both'

export interface StunAddresses {
  host: string
  port: number
  /** 0 = no second port. */
  altPort: number
  /** null = no second address (no RFC 5780 behaviour discovery). */
  altHost: string | null
}

export interface StunAnswer {
  /** The socket that must send the answer. */
  via: StunSlot
  bytes: Buffer
}

const flip = (slot: StunSlot, ip: boolean, port: boolean): StunSlot => {
  const onAltIp = (slot === 'alt-ip' || slot === 'alt-both') !== ip
  const onAltPort = (slot === 'alt-port' || slot === 'alt-both') !== port
  return onAltIp ? (onAltPort ? 'alt-both' : 'alt-ip') : onAltPort ? 'alt-port' : 'main'
}

export class StunResponder {
  constructor(private readonly a: StunAddresses) {
    if (a.altHost && (a.host === '0.0.0.0' || a.host === '::')) {
      throw new NatdError('INVALID_ARGUMENT', 'an alternate host needs a specific main host (not a wildcard address) for RESPONSE-ORIGIN')
    }
  }

  /** True when RFC 5780 behaviour discovery is on (four sockets). */
  get rfc5780(): boolean {
    return !!this.a.altHost && !!this.a.altPort
  }

  /** The sockets the server must bind. */
  slots(): StunSlot[] {
    const out: StunSlot[] = ['main']
    if (this.a.altPort) out.push('alt-port')
    if (this.a.altHost) out.push('alt-ip')
    if (this.a.altHost && this.a.altPort) out.push('alt-both')
    return out
  }

  address(slot: StunSlot): Endpoint {
    const alt = slot === 'alt-ip' || slot === 'alt-both'
    const altPort = slot === 'alt-port' || slot === 'alt-both'
    return { host: alt ? this.a.altHost! : this.a.host, port: altPort ? this.a.altPort : this.a.port }
  }

  private has(slot: StunSlot): boolean {
    return this.slots().includes(slot)
  }

  /**
   * The answer to `buf`, received on socket `at` from `from`; null when it is not a
   * Binding request. Throws ProtocolError on a malformed STUN message (never answered).
   */
  respond(buf: Uint8Array, at: StunSlot, from: Endpoint): StunAnswer | null {
    const req = decodeStun(buf)
    if (req.method !== 'binding-request') return null
    let via = flip(at, req.changeIp, req.changePort)
    if (!this.has(via)) via = at // the other socket does not exist: ignore the change
    if (!this.rfc5780) return { via, bytes: encodeBindingSuccess(req.transactionId, from) }
    return {
      via,
      bytes: encodeBindingSuccess(req.transactionId, from, { responseOrigin: this.address(via), otherAddress: this.address(flip(at, true, true)) })
    }
  }
}
