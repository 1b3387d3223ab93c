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
 * RFC 3489 requests (no magic cookie) get the old attributes, RESPONSE-PORT moves the
 * answer to another port, PADDING, FINGERPRINT and unknown attributes are handled as
 * protocol/stun-request.ts says.
 *
 * Amplification (answers go to unverified sources):
 * - One answer per request, to the source's IP address only: RESPONSE-PORT and
 *   CHANGE-REQUEST change the port it goes to and the socket it leaves from, never the
 *   address (RFC 3489's RESPONSE-ADDRESS is refused with a 420).
 * - An answer is at most the request's message length + 36 bytes over IPv4 (+ 72 over
 *   IPv6): the 56-byte RFC 5780 answer (20 header + 3 × 12: XOR-MAPPED-ADDRESS,
 *   RESPONSE-ORIGIN, OTHER-ADDRESS) to a bare 20-byte request; 2.8× at most. FINGERPRINT
 *   and PADDING come back only when the request carried them (and paid for them), an
 *   error with UNKNOWN-ATTRIBUTES lists at most what the request held, and never
 *   MAPPED-ADDRESS beside XOR-MAPPED-ADDRESS, nor SOFTWARE. respond() checks the bound
 *   (maxStunAnswerBytes) and drops an answer past it.
 */
import type { Endpoint } from '../protocol/endpoint.js'
import { NatdError } from '../protocol/errors.js'
import { decodeStunRequest, encodeBindingAnswer, encodeBindingError, maxStunAnswerBytes, type StunRequest } from '../protocol/stun-request.js'

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
  /** Where it goes: the request's source, or its IP at RESPONSE-PORT. */
  to: Endpoint
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
   * The answer to `buf`, received on socket `at` from `from`; null when it gets none (not
   * a Binding request, or an answer past the size bound). Throws ProtocolError on a
   * malformed STUN message or a bad FINGERPRINT (never answered).
   */
  respond(buf: Uint8Array, at: StunSlot, from: Endpoint): StunAnswer | null {
    const req = decodeStunRequest(buf)
    if (req.kind === 'ignore') return null
    const answer = this.answer(req, at, from)
    return answer.bytes.length <= maxStunAnswerBytes(req.bytes, from) ? answer : null
  }

  private answer(req: Exclude<StunRequest, { kind: 'ignore' }>, at: StunSlot, from: Endpoint): StunAnswer {
    if (req.kind === 'error') return { via: at, to: from, bytes: encodeBindingError(req) }
    let via = flip(at, req.changeIp, req.changePort)
    if (!this.has(via)) via = at // the other socket does not exist: ignore the change
    const to = { host: from.host, port: req.responsePort ?? from.port }
    if (!this.rfc5780) return { via, to, bytes: encodeBindingAnswer(req, { mapped: from }) }
    return {
      via,
      to,
      bytes: encodeBindingAnswer(req, { mapped: from, responseOrigin: this.address(via), otherAddress: this.address(flip(at, true, true)) })
    }
  }
}
