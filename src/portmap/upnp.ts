/**
 * UPnP IGD (Internet Gateway Device, UPnP Forum): the texts a control point exchanges
 * with a home router to map a port. Pure: the client is upnp-client.ts. Three steps:
 *
 *   1. SSDP search (UDP port 1900, unicast to the gateway and multicast to
 *      239.255.255.250; UDA 1.1 §1.3.2-1.3.3; the answer comes back unicast):
 *        M-SEARCH * HTTP/1.1            →   HTTP/1.1 200 OK
 *        HOST: 239.255.255.250:1900          ST: urn:…:device:InternetGatewayDevice:1
 *        ST: urn:…:InternetGatewayDevice:1   LOCATION: http://10.1.0.1:36623/rootDesc.xml
 *        MAN: "ssdp:discover"                …
 *        MX: 1
 *   2. The device description (HTTP GET of LOCATION): XML whose nested <device>s list
 *      <service>s; the one we want is WANIPConnection:2, :1 or WANPPPConnection:1, and
 *      its <controlURL>.
 *   3. SOAP actions (HTTP POST to the control URL): GetExternalIPAddress,
 *      AddAnyPortMapping (v2) / AddPortMapping, GetSpecificPortMappingEntry,
 *      DeletePortMapping. A refusal is HTTP 500 with a <UPnPError><errorCode>.
 *
 * XML is read by a small tag scanner, not a parser: it needs a handful of elements whose
 * text holds no markup, tolerates namespace prefixes, attributes and any nesting, and runs
 * in one linear pass. Callers bound the input (UPNP_DESCRIPTION_MAX_BYTES and friends in
 * upnp-client.ts) before it gets here.
 */
import type { MapProtocol } from './natpmp.js'

export const SSDP_PORT = 1900
/**
 * SSDP's IPv4 group (UDA 1.1 §1.1.2). Some routers answer a search only when it comes
 * to the group, not to their own address, so the search goes to both.
 */
export const SSDP_MULTICAST = '239.255.255.250'
/**
 * The multicast search's TTL: UDA 1.1 §1.1.2 asks for 2 (it defaulted to 4 in 1.0); the
 * gateway is one hop away, and nothing forwards it past the next router.
 */
export const SSDP_MULTICAST_TTL = 2
/** The search target: IGD:2 devices answer it too (UDA: a device answers lower versions). */
export const IGD_SEARCH_TARGET = 'urn:schemas-upnp-org:device:InternetGatewayDevice:1'
/** What natd names its mappings on the router's page. */
export const UPNP_DESCRIPTION = 'natd'

/**
 * The services that map ports, best first: WANIPConnection:2 has AddAnyPortMapping (the
 * router picks a free port instead of refusing); WANPPPConnection is the same service on
 * a PPPoE link.
 */
export const WAN_SERVICES = [
  'urn:schemas-upnp-org:service:WANIPConnection:2',
  'urn:schemas-upnp-org:service:WANIPConnection:1',
  'urn:schemas-upnp-org:service:WANPPPConnection:1'
] as const
export type WanService = (typeof WAN_SERVICES)[number]

/**
 * The M-SEARCH we send, the same bytes to the gateway and to the group. MX (seconds a
 * device may wait, at random, before answering) is for multicast searches; a unicast one
 * is answered at once. MX: 1 is the least UDA 1.1 allows (0 is invalid, and divides by
 * zero in some devices' delay code), so a device that applies it answers within 1 s.
 */
export function encodeSsdpSearch(): Buffer {
  return Buffer.from(
    ['M-SEARCH * HTTP/1.1', `HOST: ${SSDP_MULTICAST}:${SSDP_PORT}`, `ST: ${IGD_SEARCH_TARGET}`, 'MAN: "ssdp:discover"', 'MX: 1', '', ''].join('\r\n'),
    'latin1'
  )
}

export interface SsdpAnswer {
  /** The device description's URL, as sent (not yet checked: see gatewayUrl()). */
  location: string
  st: string
}

const SSDP_ST = /^urn:schemas-upnp-org:(?:device:(?:InternetGatewayDevice|WANDevice|WANConnectionDevice)|service:(?:WANIPConnection|WANPPPConnection)):\d+$/

/**
 * An SSDP search answer naming a gateway device, or null (another kind of device, a
 * NOTIFY, junk). Headers are case-insensitive (UDA 1.1 §1.1.2).
 */
export function parseSsdpAnswer(text: string): SsdpAnswer | null {
  const lines = text.split(/\r?\n/)
  if (!/^HTTP\/1\.[01] 200\b/.test(lines[0] ?? '')) return null
  const headers = new Map<string, string>()
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':')
    if (colon > 0) headers.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim())
  }
  const location = headers.get('location')
  const st = headers.get('st') ?? ''
  if (!location || !SSDP_ST.test(st)) return null
  return { location, st }
}

/**
 * `url` (relative to `base`) when it points at `gateway` by plain HTTP, as {port, path};
 * null otherwise. Everything a LAN host could tell us (an SSDP answer is one spoofed
 * datagram away) may only send us back to the gateway: no other host, no name to resolve,
 * no credentials, no HTTPS detour.
 */
export function gatewayUrl(url: string, gateway: string, base?: string): { port: number; path: string } | null {
  let u: URL
  try {
    u = base === undefined ? new URL(url) : new URL(url, base)
  } catch {
    return null
  }
  if (u.protocol !== 'http:' || u.hostname !== gateway || u.username || u.password) return null
  const port = u.port === '' ? 80 : Number(u.port)
  return { port, path: `${u.pathname}${u.search}` }
}

export interface WanServiceRef {
  serviceType: WanService
  /** As written in the description (relative or absolute). */
  controlUrl: string
  /** The description's <URLBase> (UDA 1.0; 1.1 drops it), that relative URLs resolve against. */
  urlBase: string | null
}

/** XML's five named entities and numeric references; anything else is left as is. */
export function xmlUnescape(s: string): string {
  return s.replace(/&(lt|gt|amp|quot|apos|#\d{1,7}|#x[0-9a-fA-F]{1,6});/g, (all, e: string) => {
    switch (e) {
      case 'lt':
        return '<'
      case 'gt':
        return '>'
      case 'amp':
        return '&'
      case 'quot':
        return '"'
      case 'apos':
        return "'"
    }
    const code = e[1] === 'x' ? parseInt(e.slice(2), 16) : parseInt(e.slice(1), 10)
    return code > 0 && code <= 0x10ffff ? String.fromCodePoint(code) : all
  })
}

export function xmlEscape(s: string): string {
  return s.replace(/[<>&"']/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&apos;' })[c]!)
}

/** Every open or close tag whose local name is in `names` (any prefix), in order; one pass. */
function* tags(xml: string, names: readonly string[]): Generator<{ close: boolean; name: string; end: number }> {
  const wanted = new Set(names.map((n) => n.toLowerCase()))
  const re = /<(\/?)(?:[A-Za-z_][\w.-]*:)?([A-Za-z_][\w.-]*)(?:\s[^<>]*)?>/g
  for (let m = re.exec(xml); m; m = re.exec(xml)) {
    const name = m[2]!.toLowerCase()
    if (wanted.has(name)) yield { close: m[1] === '/', name, end: re.lastIndex }
  }
}

/** The text of an element up to the next tag, unescaped and trimmed. */
function textAt(xml: string, from: number): string {
  const lt = xml.indexOf('<', from)
  return xmlUnescape(xml.slice(from, lt < 0 ? xml.length : lt)).trim()
}

/**
 * The best port-mapping service a device description offers (WAN_SERVICES order), or
 * null. Services may sit in any nested device; only their type and control URL are read.
 */
export function findWanService(xml: string): WanServiceRef | null {
  let urlBase: string | null = null
  let current: { type?: string; control?: string } | null = null
  let best: WanServiceRef | null = null
  for (const t of tags(xml, ['URLBase', 'service', 'serviceType', 'controlURL'])) {
    if (t.close) {
      if (t.name !== 'service' || !current) continue
      const rank = WAN_SERVICES.indexOf(current.type as WanService)
      if (rank >= 0 && current.control && (!best || rank < WAN_SERVICES.indexOf(best.serviceType))) {
        best = { serviceType: WAN_SERVICES[rank]!, controlUrl: current.control, urlBase: null }
      }
      current = null
    } else if (t.name === 'service') current = {}
    else if (t.name === 'urlbase') urlBase = textAt(xml, t.end) || null
    else if (current && t.name === 'servicetype') current.type = textAt(xml, t.end)
    else if (current && t.name === 'controlurl') current.control = textAt(xml, t.end)
  }
  return best && { ...best, urlBase }
}

/** Mapping arguments for AddPortMapping and AddAnyPortMapping (the same list, in the spec's order). */
export interface UpnpMapArgs {
  externalPort: number
  protocol: MapProtocol
  internalPort: number
  internalClient: string
  /** Seconds; 0: until removed (IGD:1 routers that only know permanent leases). */
  leaseS: number
}

export type SoapAction =
  | { action: 'GetExternalIPAddress' }
  | ({ action: 'AddPortMapping' | 'AddAnyPortMapping' } & UpnpMapArgs)
  | { action: 'GetSpecificPortMappingEntry' | 'DeletePortMapping'; externalPort: number; protocol: MapProtocol }

/** The arguments of `a`, in the order the service description lists them (some routers check). */
function soapArgs(a: SoapAction): Array<[string, string | number]> {
  if (a.action === 'GetExternalIPAddress') return []
  const key: Array<[string, string | number]> = [
    ['NewRemoteHost', ''], // any remote host
    ['NewExternalPort', a.externalPort],
    ['NewProtocol', a.protocol.toUpperCase()]
  ]
  if (a.action !== 'AddPortMapping' && a.action !== 'AddAnyPortMapping') return key
  return [
    ...key,
    ['NewInternalPort', a.internalPort],
    ['NewInternalClient', a.internalClient],
    ['NewEnabled', 1],
    ['NewPortMappingDescription', UPNP_DESCRIPTION],
    ['NewLeaseDuration', a.leaseS]
  ]
}

/** A SOAP request: its headers (SOAPAction names service and action) and body. */
export function encodeSoapRequest(service: WanService, a: SoapAction): { headers: Record<string, string>; body: string } {
  const args = soapArgs(a)
    .map(([k, v]) => `<${k}>${xmlEscape(String(v))}</${k}>`)
    .join('')
  const body =
    '<?xml version="1.0"?>\r\n' +
    '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" s:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/">' +
    `<s:Body><u:${a.action} xmlns:u="${service}">${args}</u:${a.action}></s:Body></s:Envelope>\r\n`
  return {
    headers: { 'Content-Type': 'text/xml; charset="utf-8"', SOAPAction: `"${service}#${a.action}"` },
    body
  }
}

export type SoapResult =
  | { ok: true; values: Record<string, string> }
  /** errorCode 0: no UPnPError in the answer (not SOAP at all, or another fault). */
  | { ok: false; errorCode: number; description: string }

/**
 * A SOAP answer: HTTP 200 with `<{action}Response>` → its output arguments by name
 * (`wanted`); anything else → the UPnPError's code and description.
 */
export function parseSoapResponse(status: number, xml: string, action: string, wanted: readonly string[]): SoapResult {
  if (status === 200) {
    let inside = false
    let seen = false
    const values: Record<string, string> = {}
    const lower = new Map(wanted.map((w) => [w.toLowerCase(), w]))
    // miniupnpd writes an answer without arguments as <u:AddPortMappingResponse …/>: an
    // open tag here, which is all it takes.
    for (const t of tags(xml, [`${action}Response`, ...wanted])) {
      if (t.name === `${action}Response`.toLowerCase()) {
        inside = !t.close
        seen = true
      } else if (inside && !t.close) values[lower.get(t.name)!] = textAt(xml, t.end)
    }
    if (seen && Object.keys(values).length === wanted.length) return { ok: true, values }
    return { ok: false, errorCode: 0, description: `no ${action}Response with ${wanted.join(', ')} in the answer` }
  }
  let errorCode = 0
  let description = `HTTP ${status}`
  for (const t of tags(xml, ['errorCode', 'errorDescription'])) {
    if (t.close) continue
    if (t.name === 'errorcode') errorCode = /^\d{1,4}$/.test(textAt(xml, t.end)) ? Number(textAt(xml, t.end)) : 0
    else description = textAt(xml, t.end).slice(0, 100) || description
  }
  return { ok: false, errorCode, description }
}

/** WANIPConnection error codes natd acts on (IGD:2 WANIPConnection §2.5). */
export const UPNP_ERRORS = {
  NO_SUCH_ENTRY: 714,
  CONFLICT: 718,
  ONLY_PERMANENT_LEASES: 725
} as const
