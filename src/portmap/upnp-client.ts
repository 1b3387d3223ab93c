/**
 * Asks the default gateway for a port mapping by UPnP IGD (the codecs are upnp.ts): the
 * third protocol, for routers that speak neither PCP nor NAT-PMP (Tailscale's order).
 *
 *   discover()  SSDP search to the gateway and to SSDP's multicast group → its
 *               description → a WAN*Connection service
 *               → GetExternalIPAddress; remembers the service
 *   map()       AddAnyPortMapping (IGD:2: the router picks another port when ours is
 *               taken) or AddPortMapping (IGD:1: one more try on a random port after a
 *               conflict; a lease of 0 when the router only knows permanent ones)
 *   isMapped()  GetSpecificPortMappingEntry: is our mapping still there (a restarted
 *               router forgets it, and UPnP has no epoch to tell)
 *   unmap()     DeletePortMapping
 *
 * Sockets are injected: `sendSsdp` sends to UDP port 1900 of the gateway or of the group
 * (TTL 2, out of the interface that reaches the gateway), the caller feeds every datagram
 * it receives to onSsdpMessage(); `http` talks to the gateway's address
 * only (it takes a port and a path, never a host), within the size and time bounds passed.
 *
 * Trust: anyone on the LAN can send us datagrams, and can forge the gateway's source
 * address; the multicast search also invites every UPnP device on the link (printers,
 * TVs) to answer, at most once per search each. Only answers from the gateway's address
 * are read (the rest are dropped before parsing), and only the first that
 * names a gateway device per search; its LOCATION, and the control URL in the description,
 * must point at the gateway's own address by plain HTTP (upnp.ts gatewayUrl), so a LAN
 * host can at most make us fetch one bounded page from another port of the gateway. What
 * comes over TCP from the gateway's address is believed as much as PCP's answers are: a
 * wrong external address or port costs peers a few probes, and the tunnel still
 * authenticates the peer's key.
 *
 * Errors: TIMEOUT when the gateway does not answer (SSDP, or HTTP within its bound),
 * UNSUPPORTED_PATH when it answers but cannot map (no WAN service, a refusal: the UPnP
 * error code is in the message).
 */
import { NatdError } from '../protocol/errors.js'
import type { Endpoint } from '../protocol/endpoint.js'
import type { MapProtocol } from './natpmp.js'
import type { PortMapping } from './port-mapper.js'
import {
  encodeSoapRequest,
  encodeSsdpSearch,
  findWanService,
  gatewayUrl,
  parseSoapResponse,
  parseSsdpAnswer,
  UPNP_ERRORS,
  type SoapAction,
  type SoapResult,
  type WanService
} from './upnp.js'
import { retransmit } from './retransmit.js'

/**
 * SSDP searches sent (each to the gateway and to the group), waiting 250 then 500 ms: a
 * gateway answers a unicast search in milliseconds (~60 ms from miniupnpd), and so does
 * Debian's miniupnpd a multicast one (built without MX delays). A device that waits at
 * random up to MX (1 s) before answering the group is heard within these 0.75 s 7 times in
 * 8 (both searches' answers count); else at the keeper's next check (daemon/port-mapping.ts:
 * without a mapping it probes again). A longer window would cost every agent behind a
 * gateway that answers nothing that much more at its first start.
 */
export const UPNP_SSDP_TRIES = 2
export const UPNP_SSDP_FIRST_WAIT_MS = 250
/** Larger datagrams are not SSDP answers we read (miniupnpd's is ~450 bytes). */
export const UPNP_SSDP_MAX_BYTES = 2048
/** A device description larger than this is refused (miniupnpd's: 3 KB; big consumer routers' ~20 KB). */
export const UPNP_DESCRIPTION_MAX_BYTES = 64 * 1024
/** A SOAP answer larger than this is refused (they are a few hundred bytes). */
export const UPNP_SOAP_MAX_BYTES = 16 * 1024
/** Each HTTP exchange with the gateway (connect, request, whole answer): a LAN router answers in milliseconds. */
export const UPNP_HTTP_TIMEOUT_MS = 2_000
/** The delete at stop, shorter: natd's 3 s shutdown also waits up to 1 s for a renewal in flight (daemon/port-mapping.ts). */
export const UPNP_UNMAP_TIMEOUT_MS = 1_500

export interface HttpRequest {
  /** The gateway's TCP port; the host is always the gateway. */
  port: number
  path: string
  method: 'GET' | 'POST'
  headers?: Record<string, string>
  body?: string
  /** The transport fails the request when the answer's body passes this. */
  maxBytes: number
  timeoutMs: number
  signal?: AbortSignal
}

export interface HttpAnswer {
  status: number
  body: string
}

export interface UpnpInit {
  gateway: string
  /** Our address on the gateway's link: the mapping's internal client. */
  localIp: string
}

/** Where an SSDP search goes: the gateway's own address, or SSDP's multicast group (upnp.ts SSDP_MULTICAST). */
export type SsdpDestination = 'gateway' | 'multicast'

export interface UpnpComponents {
  /** Sends one search to UDP port 1900 of `to`; never throws (a send error is a lost datagram). */
  sendSsdp: (buf: Uint8Array, to: SsdpDestination) => void
  /** One HTTP exchange with the gateway; rejects on a network error, a timeout or an over-long answer. */
  http: (req: HttpRequest) => Promise<HttpAnswer>
  /** [0, 1): a port to try after an IGD:1 conflict. */
  random: () => number
}

/** The gateway's port-mapping service, as discover() found it. */
export interface UpnpService {
  serviceType: WanService
  control: { port: number; path: string }
  externalIp: string
}

const IPV4 = /^(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)$/

export class UpnpClient {
  private service: UpnpService | null = null
  private readonly waiters = new Set<(location: string) => void>()

  constructor(
    private readonly init: UpnpInit,
    private readonly c: UpnpComponents
  ) {}

  /** The service discover() found, if any. */
  get found(): UpnpService | null {
    return this.service
  }

  /** A datagram arrived on the SSDP socket. Anything but a gateway device's answer from the gateway is ignored. */
  onSsdpMessage(buf: Uint8Array, from: Endpoint): void {
    if (from.host !== this.init.gateway || buf.length > UPNP_SSDP_MAX_BYTES || this.waiters.size === 0) return
    const answer = parseSsdpAnswer(Buffer.from(buf).toString('latin1'))
    if (!answer) return
    for (const w of this.waiters) w(answer.location)
  }

  /**
   * Finds the gateway's port-mapping service and its external address, or null when it
   * does not answer SSDP, has no usable service or no external address (its WAN link is
   * down). Never rejects.
   */
  async discover(signal?: AbortSignal): Promise<UpnpService | null> {
    try {
      const location = await this.search(signal)
      if (!location || signal?.aborted) return null
      const desc = await this.c.http({ ...location, method: 'GET', maxBytes: UPNP_DESCRIPTION_MAX_BYTES, timeoutMs: UPNP_HTTP_TIMEOUT_MS, ...(signal ? { signal } : {}) })
      if (desc.status !== 200) return null
      const ref = findWanService(desc.body)
      if (!ref) return null
      // Relative to <URLBase> when there is one, else to the description's own URL; either
      // way the result must be at the gateway.
      const control = gatewayUrl(ref.controlUrl, this.init.gateway, ref.urlBase ?? `http://${this.init.gateway}:${location.port}${location.path}`)
      if (!control) return null
      const externalIp = await this.externalIp({ serviceType: ref.serviceType, control }, signal)
      this.service = { serviceType: ref.serviceType, control, externalIp }
      return this.service
    } catch {
      return null
    }
  }

  /**
   * Maps `internalPort` (ours, on localIp), asking for `externalPort` (default: the same),
   * for `lifetimeS`. Renew by calling it again with the mapping's external port.
   */
  async map(protocol: MapProtocol, internalPort: number, o: { lifetimeS: number; externalPort?: number; signal?: AbortSignal }): Promise<PortMapping> {
    const service = this.service ?? (await this.discover(o.signal))
    if (!service) throw new NatdError('TIMEOUT', `the gateway ${this.init.gateway} has no UPnP port-mapping service`)
    const externalIp = await this.externalIp(service, o.signal)
    if (externalIp !== service.externalIp) this.service = { ...service, externalIp }
    const args = { protocol, internalPort, internalClient: this.init.localIp }
    const v2 = service.serviceType.endsWith(':2')
    let externalPort = o.externalPort ?? internalPort
    let leaseS = o.lifetimeS
    // At most three asks: a conflict (IGD:1) and a "permanent leases only" (IGD:1) once each.
    for (let tries = 0; ; tries++) {
      const action = v2 ? 'AddAnyPortMapping' : 'AddPortMapping'
      const r = await this.soap(service, { action, ...args, externalPort, leaseS }, v2 ? ['NewReservedPort'] : [], o.signal)
      if (r.ok) {
        const port = v2 ? Number(r.values.NewReservedPort) : externalPort
        if (!Number.isInteger(port) || port < 1 || port > 65535) throw new NatdError('UNSUPPORTED_PATH', `the gateway reserved no usable port (${r.values.NewReservedPort})`)
        // A permanent lease is renewed like a timed one (a restarted router forgets it all the same).
        return { via: 'upnp', protocol, internalPort, external: { host: externalIp, port }, lifetimeS: o.lifetimeS, nonce: null, epoch: 0 }
      }
      if (tries < 2 && r.errorCode === UPNP_ERRORS.ONLY_PERMANENT_LEASES && leaseS !== 0) leaseS = 0
      else if (tries < 2 && r.errorCode === UPNP_ERRORS.CONFLICT && !v2) externalPort = 1024 + Math.floor(this.c.random() * (65536 - 1024))
      else throw refused(action, r)
    }
  }

  /**
   * Whether the gateway still holds mapping `m` for us (GetSpecificPortMappingEntry);
   * null: it did not say (no answer, another error). Never rejects.
   */
  async isMapped(m: PortMapping, signal?: AbortSignal): Promise<boolean | null> {
    const service = this.service
    if (!service) return null
    try {
      const r = await this.soap(service, { action: 'GetSpecificPortMappingEntry', externalPort: m.external.port, protocol: m.protocol }, ['NewInternalPort', 'NewInternalClient'], signal)
      if (r.ok) return r.values.NewInternalClient === this.init.localIp && Number(r.values.NewInternalPort) === m.internalPort
      return r.errorCode === UPNP_ERRORS.NO_SUCH_ENTRY ? false : null
    } catch {
      return null
    }
  }

  /** The gateway's external address now (GetExternalIPAddress); null: no answer. Never rejects. */
  async currentExternalIp(signal?: AbortSignal): Promise<string | null> {
    if (!this.service) return null
    return this.externalIp(this.service, signal).catch(() => null)
  }

  /** Removes mapping `m`. Throws like map(). */
  async unmap(m: PortMapping, signal?: AbortSignal): Promise<void> {
    const service = this.service
    if (!service) throw new NatdError('TIMEOUT', `the gateway ${this.init.gateway} has no UPnP port-mapping service`)
    const r = await this.soap(service, { action: 'DeletePortMapping', externalPort: m.external.port, protocol: m.protocol }, [], signal, UPNP_UNMAP_TIMEOUT_MS)
    if (!r.ok && r.errorCode !== UPNP_ERRORS.NO_SUCH_ENTRY) throw refused('DeletePortMapping', r)
  }

  /** The first LOCATION at the gateway a search answer gives, or null after the tries. */
  private async search(signal?: AbortSignal): Promise<{ port: number; path: string } | null> {
    const req = encodeSsdpSearch()
    return retransmit<{ port: number; path: string }>({
      tries: UPNP_SSDP_TRIES,
      firstWaitMs: UPNP_SSDP_FIRST_WAIT_MS,
      signal,
      send: () => {
        // Unicast first: a gateway that answers it needs nothing else, and multicast-only ones exist.
        this.c.sendSsdp(req, 'gateway')
        this.c.sendSsdp(req, 'multicast')
      },
      listen: (resolve) => {
        const waiter = (location: string): void => {
          const at = gatewayUrl(location, this.init.gateway)
          if (at) resolve(at)
        }
        this.waiters.add(waiter)
        return () => this.waiters.delete(waiter)
      }
    })
  }

  private async externalIp(service: Pick<UpnpService, 'serviceType' | 'control'>, signal?: AbortSignal): Promise<string> {
    const r = await this.soap(service, { action: 'GetExternalIPAddress' }, ['NewExternalIPAddress'], signal)
    if (!r.ok) throw refused('GetExternalIPAddress', r)
    const ip = r.values.NewExternalIPAddress!
    // Empty or 0.0.0.0 while the router's WAN link is down: nothing to offer peers.
    if (!IPV4.test(ip) || ip === '0.0.0.0') throw new NatdError('UNSUPPORTED_PATH', `the gateway has no external IPv4 address (${JSON.stringify(ip.slice(0, 40))})`)
    return ip
  }

  /** One SOAP action; rejects TIMEOUT when the gateway does not answer. */
  private async soap(
    service: Pick<UpnpService, 'serviceType' | 'control'>,
    a: SoapAction,
    wanted: readonly string[],
    signal?: AbortSignal,
    timeoutMs = UPNP_HTTP_TIMEOUT_MS
  ): Promise<SoapResult> {
    const { headers, body } = encodeSoapRequest(service.serviceType, a)
    let answer: HttpAnswer
    try {
      answer = await this.c.http({ ...service.control, method: 'POST', headers, body, maxBytes: UPNP_SOAP_MAX_BYTES, timeoutMs, ...(signal ? { signal } : {}) })
    } catch (err) {
      throw new NatdError('TIMEOUT', `the gateway ${this.init.gateway} did not answer UPnP ${a.action}: ${(err as Error).message}`, { cause: err })
    }
    return parseSoapResponse(answer.status, answer.body, a.action, wanted)
  }
}

function refused(action: string, r: Extract<SoapResult, { ok: false }>): NatdError {
  return new NatdError('UNSUPPORTED_PATH', `the gateway refused UPnP ${action}: ${r.description}${r.errorCode ? ` (${r.errorCode})` : ''}`)
}
