/**
 * Asks the default gateway for a port mapping, by PCP (RFC 6887) or NAT-PMP (RFC 6886),
 * both on UDP 5351 (Tailscale's net/portmapper is the model: short probes, PCP preferred
 * when the gateway speaks it). UPnP IGD is upnp-client.ts.
 *
 *   probe()  PCP ANNOUNCE + NAT-PMP external-address request, at once → which answered
 *            (probePcp() and probeNatPmp() alone: gateway-probe.ts races them with UPnP)
 *   map()    PCP MAP when PCP answered, else NAT-PMP MAP (+ the external address)
 *   unmap()  the same with lifetime 0 (RFC 6886 §3.4, RFC 6887 §15)
 *
 * Each request is sent up to PORTMAP_TRIES times, waiting PORTMAP_FIRST_WAIT_MS then
 * twice as long each time (RFC 6886 §3.1's doubling, cut short: a gateway that speaks
 * these protocols answers within milliseconds; one that does not must not hold up a
 * netcheck). Sockets are injected: the caller sends from an ephemeral UDP socket of its
 * own and feeds every datagram it receives to onMessage().
 *
 * Trust: anyone on the LAN can send us datagrams. Only those from the gateway's address
 * and port 5351 are read; a PCP response must carry our request's nonce. A forged
 * NAT-PMP answer (no nonce) from a LAN host that spoofs the gateway can give us a wrong
 * external endpoint: peers then probe it within the usual punch budgets, and the tunnel
 * still authenticates the peer's key.
 *
 * Errors: TIMEOUT when the gateway answers neither of these protocols, UNSUPPORTED_PATH when it
 * refuses the mapping (the result code is in the message).
 */
import { NatdError } from '../protocol/errors.js'
import type { Endpoint } from '../protocol/endpoint.js'
import {
  decodeNatPmpResponse,
  encodeNatPmpAddressRequest,
  encodeNatPmpMapRequest,
  NATPMP_RESULTS,
  PORT_MAPPING_PORT,
  type MapProtocol,
  type NatPmpResponse
} from './natpmp.js'
import { decodePcpResponse, encodePcpAnnounceRequest, encodePcpMapRequest, PCP_NONCE_BYTES, PCP_RESULTS, type PcpResponse } from './pcp.js'
import { retransmit } from './retransmit.js'

/** The first wait for an answer; each retry waits twice as long (250 + 500 + 1000 ms in all). */
export const PORTMAP_FIRST_WAIT_MS = 250
export const PORTMAP_TRIES = 3
/**
 * probe() gives up sooner (250 + 500 ms): the agent probes before its start-up NAT check
 * (see daemon/port-mapping.ts), and many gateways answer neither protocol.
 */
export const PORTMAP_PROBE_TRIES = 2
/** About 2 h, as Tailscale asks; the holder renews at half-life. */
export const PORTMAP_LIFETIME_S = 7200

/** How a mapping was made: PCP and NAT-PMP here, UPnP IGD in upnp-client.ts. */
export type PortMapVia = 'pcp' | 'nat-pmp' | 'upnp'

/** What a probe of PCP and NAT-PMP found. */
export interface PcpNatPmpOffer {
  pcp: boolean
  natPmp: boolean
  /** From NAT-PMP's external-address answer (PCP tells it only with a mapping). */
  externalIp: string | null
  /** The gateway's epoch (seconds since its mappings were last lost), PCP's when it speaks PCP; null: no answer. */
  epoch: number | null
}

/** What the gateway offers, all three protocols (gateway-probe.ts). */
export interface GatewayOffer extends PcpNatPmpOffer {
  upnp: boolean
}

export interface PortMapping {
  via: PortMapVia
  protocol: MapProtocol
  internalPort: number
  /** What peers can reach: the gateway's external address and the assigned port. */
  external: Endpoint
  /** Granted lifetime: renew before it ends (at half), or the mapping goes. */
  lifetimeS: number
  /** PCP: the nonce that owns the mapping (renewals and the delete must repeat it). */
  nonce: Uint8Array | null
  /** The gateway's epoch in its answer (gatewayLostState() compares two). */
  epoch: number
}

/**
 * Whether the gateway lost its mappings between two answers (RFC 6886 §3.6, RFC 6887
 * §8.5): its epoch counts seconds since it last lost them, so it must have advanced by
 * about the time that passed on our clock. Allowed: 1/8 slower and 2 s of rounding
 * (RFC 6886), and 1 s backwards for reordering (RFC 6887).
 */
export function gatewayLostState(prev: { epoch: number; atMs: number }, next: { epoch: number; atMs: number }): boolean {
  if (next.epoch + 1 < prev.epoch) return true
  const elapsedS = Math.max(0, next.atMs - prev.atMs) / 1000
  return next.epoch < prev.epoch + (elapsedS * 7) / 8 - 2
}

export interface PortMapperInit {
  /** The default gateway's IPv4 address. */
  gateway: string
  /** Our address on the gateway's link: PCP's client IP must be the source the gateway sees. */
  localIp: string
}

export interface PortMapperComponents {
  send: (buf: Uint8Array, to: Endpoint) => void
  randomBytes: (n: number) => Uint8Array
}

type Answer = { pcp: PcpResponse } | { natPmp: NatPmpResponse }

interface Waiter {
  match: (a: Answer) => boolean
  resolve: (a: Answer) => void
}

export class PortMapper {
  private readonly waiters = new Set<Waiter>()
  private readonly to: Endpoint

  constructor(
    private readonly init: PortMapperInit,
    private readonly c: PortMapperComponents
  ) {
    this.to = { host: init.gateway, port: PORT_MAPPING_PORT }
  }

  /** A datagram arrived on the socket we send from. Anything but the gateway's answers is ignored. */
  onMessage(buf: Uint8Array, from: Endpoint): void {
    if (from.host !== this.init.gateway || from.port !== PORT_MAPPING_PORT || buf.length < 2) return
    let answer: Answer
    try {
      answer = buf[0] === 0 ? { natPmp: decodeNatPmpResponse(buf) } : { pcp: decodePcpResponse(buf) }
    } catch {
      return // malformed: not an answer
    }
    for (const w of this.waiters) if (w.match(answer)) w.resolve(answer)
  }

  /** Which of PCP and NAT-PMP the gateway answers, both asked at once and waited for. Never rejects. */
  async probe(signal?: AbortSignal): Promise<PcpNatPmpOffer> {
    const [pcp, natPmp] = await Promise.all([this.probePcp(signal), this.probeNatPmp(signal)])
    return offerOf(pcp, natPmp)
  }

  /**
   * PCP ANNOUNCE: the gateway's epoch when it speaks PCP; false when it said it does not
   * (a NAT-PMP-only gateway answers a PCP request with a version-0 "unsupported version",
   * RFC 6887 §9); null: no answer. Never rejects.
   */
  async probePcp(signal?: AbortSignal): Promise<{ epoch: number } | false | null> {
    const a = await this.ask(
      encodePcpAnnounceRequest(this.init.localIp),
      (x) => ('pcp' in x && x.pcp.kind === 'announce') || ('natPmp' in x && x.natPmp.kind === 'external-address' && x.natPmp.result === 1),
      signal,
      PORTMAP_PROBE_TRIES
    )
    if (!a) return null
    return 'pcp' in a && a.pcp.result === 0 ? { epoch: a.pcp.epoch } : false
  }

  /** NAT-PMP's external address and epoch; null: no (successful) answer. Never rejects. */
  async probeNatPmp(signal?: AbortSignal): Promise<{ externalIp: string | null; epoch: number } | null> {
    // Only a success counts: a NAT-PMP-only gateway's "unsupported version" answer to the
    // PCP request looks like an external-address answer (op 128) with result 1.
    const a = await this.ask(encodeNatPmpAddressRequest(), (x) => 'natPmp' in x && x.natPmp.kind === 'external-address' && x.natPmp.result === 0, signal, PORTMAP_PROBE_TRIES)
    return a && 'natPmp' in a && a.natPmp.kind === 'external-address' ? { externalIp: a.natPmp.address, epoch: a.natPmp.epoch } : null
  }

  /**
   * Maps `internalPort` (ours, on localIp) for `lifetimeS`, by `via` (from probe()),
   * asking for the same external port. Renew by calling it again with the mapping's nonce.
   */
  async map(
    via: Exclude<PortMapVia, 'upnp'>,
    protocol: MapProtocol,
    internalPort: number,
    o: { lifetimeS?: number; nonce?: Uint8Array | null; signal?: AbortSignal } = {}
  ): Promise<PortMapping> {
    const lifetimeS = o.lifetimeS ?? PORTMAP_LIFETIME_S
    if (via === 'pcp') {
      const nonce = o.nonce ?? this.c.randomBytes(PCP_NONCE_BYTES)
      const req = encodePcpMapRequest({ clientIp: this.init.localIp, nonce, protocol, internalPort, suggestedExternalPort: internalPort, lifetimeS })
      const a = await this.ask(req, (x) => 'pcp' in x && x.pcp.kind === 'map' && Buffer.from(x.pcp.nonce).equals(nonce) && x.pcp.internalPort === internalPort, o.signal)
      if (!a || !('pcp' in a) || a.pcp.kind !== 'map') throw this.noAnswer('PCP')
      const r = a.pcp
      if (r.result !== 0) throw refused('PCP', r.result, PCP_RESULTS)
      return { via, protocol, internalPort, external: { host: r.externalIp, port: r.externalPort }, lifetimeS: r.lifetimeS, nonce, epoch: r.epoch }
    }
    const addr = await this.ask(encodeNatPmpAddressRequest(), (x) => 'natPmp' in x && x.natPmp.kind === 'external-address', o.signal)
    if (!addr || !('natPmp' in addr) || addr.natPmp.kind !== 'external-address') throw this.noAnswer('NAT-PMP')
    if (addr.natPmp.result !== 0 || !addr.natPmp.address) throw refused('NAT-PMP', addr.natPmp.result, NATPMP_RESULTS)
    const externalIp = addr.natPmp.address
    const a = await this.ask(
      encodeNatPmpMapRequest(protocol, internalPort, internalPort, lifetimeS),
      (x) => 'natPmp' in x && x.natPmp.kind === 'map' && x.natPmp.protocol === protocol && (x.natPmp.internalPort === internalPort || x.natPmp.result !== 0),
      o.signal
    )
    if (!a || !('natPmp' in a) || a.natPmp.kind !== 'map') throw this.noAnswer('NAT-PMP')
    const r = a.natPmp
    if (r.result !== 0) throw refused('NAT-PMP', r.result, NATPMP_RESULTS)
    return { via, protocol, internalPort, external: { host: externalIp, port: r.externalPort }, lifetimeS: r.lifetimeS, nonce: null, epoch: r.epoch }
  }

  /** Removes a mapping (lifetime 0). Throws like map(). */
  async unmap(m: PortMapping, signal?: AbortSignal): Promise<void> {
    if (m.via === 'upnp') throw new RangeError('a UPnP mapping: UpnpClient.unmap() removes it')
    await this.map(m.via, m.protocol, m.internalPort, { lifetimeS: 0, nonce: m.nonce, signal })
  }

  private noAnswer(what: string): NatdError {
    return new NatdError('TIMEOUT', `the gateway ${this.init.gateway} did not answer ${what}`)
  }

  /** Sends `req` until an answer matches (or the tries run out: null). Never rejects. */
  private async ask(req: Uint8Array, match: (a: Answer) => boolean, signal?: AbortSignal, tries = PORTMAP_TRIES): Promise<Answer | null> {
    return retransmit<Answer>({
      tries,
      firstWaitMs: PORTMAP_FIRST_WAIT_MS,
      signal,
      send: () => this.c.send(req, this.to),
      listen: (resolve) => {
        const waiter = { match, resolve }
        this.waiters.add(waiter)
        return () => this.waiters.delete(waiter)
      }
    })
  }
}

/** A probe's answers as an offer: PCP's epoch when it speaks PCP, else NAT-PMP's. */
export function offerOf(pcp: { epoch: number } | false | null, natPmp: { externalIp: string | null; epoch: number } | null): PcpNatPmpOffer {
  return {
    pcp: !!pcp,
    natPmp: natPmp !== null,
    externalIp: natPmp?.externalIp ?? null,
    epoch: pcp ? pcp.epoch : (natPmp?.epoch ?? null)
  }
}

function refused(what: string, result: number, names: Record<number, string>): NatdError {
  return new NatdError('UNSUPPORTED_PATH', `the gateway refused the ${what} mapping: ${names[result] ?? 'unknown result'} (${result})`)
}
