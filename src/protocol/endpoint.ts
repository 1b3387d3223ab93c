/**
 * An IP endpoint as the wire carries it:
 *
 *   family u8 (0 = none, 4, 6) | address (4 or 16 bytes) | port u16
 */
import type { Reader, Writer } from './bytes.js'
import { ProtocolError } from './errors.js'

export interface Endpoint {
  host: string
  port: number
}

export function formatEndpoint(ep: Endpoint | null | undefined): string {
  if (!ep) return '-'
  return isIPv6(ep.host) ? `[${ep.host}]:${ep.port}` : `${ep.host}:${ep.port}`
}

export function sameEndpoint(a: Endpoint | null | undefined, b: Endpoint | null | undefined): boolean {
  return !!a && !!b && a.host === b.host && a.port === b.port
}

/** Parses `host[:port]` / `[v6]:port`; throws RangeError for anything else. */
export function parseEndpoint(text: string, defaultPort?: number): Endpoint {
  const m = /^\[([^\]]+)\](?::(\d+))?$/.exec(text) ?? /^([^:]+)(?::(\d+))?$/.exec(text)
  if (!m || !m[1]) throw new RangeError(`not HOST[:PORT]: ${JSON.stringify(text)}`)
  const port = m[2] === undefined ? defaultPort : Number(m[2])
  if (port === undefined || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new RangeError(`bad or missing port in ${JSON.stringify(text)}`)
  }
  return { host: m[1], port }
}

export function writeEndpoint(w: Writer, ep: Endpoint | null | undefined): void {
  if (!ep) {
    w.u8(0)
    return
  }
  if (isIPv4(ep.host)) {
    w.u8(4)
    for (const part of ep.host.split('.')) w.u8(Number(part))
  } else if (isIPv6(ep.host)) {
    w.u8(6).bytes(ipv6ToBytes(ep.host))
  } else {
    throw new RangeError(`not an IP address: ${ep.host}`)
  }
  w.u16(ep.port)
}

export function readEndpoint(r: Reader): Endpoint | null {
  const family = r.u8('endpoint family')
  if (family === 0) return null
  let host: string
  if (family === 4) host = Array.from(r.bytes(4, 'IPv4 address')).join('.')
  else if (family === 6) host = bytesToIpv6(r.bytes(16, 'IPv6 address'))
  else throw new ProtocolError('BAD_REQUEST', `bad endpoint family ${family}`)
  return { host, port: r.u16('port') }
}

export function ipv6ToBytes(host: string): Uint8Array {
  if (!isIPv6(host)) throw new RangeError(`not an IPv6 address: ${host}`)
  const out = new Uint8Array(16)
  let text = host
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text)
  if (v4?.[1]) {
    const parts = v4[1].split('.').map(Number)
    text = text.slice(0, -v4[1].length) + ((parts[0]! << 8) | parts[1]!).toString(16) + ':' + ((parts[2]! << 8) | parts[3]!).toString(16)
  }
  const [head, tail] = text.split('::') as [string, string | undefined]
  const h = head ? head.split(':') : []
  const t = tail ? tail.split(':') : []
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t]
  groups.forEach((g, i) => {
    const n = parseInt(g, 16)
    out[i * 2] = n >> 8
    out[i * 2 + 1] = n & 0xff
  })
  return out
}

export function bytesToIpv6(b: Uint8Array): string {
  const groups: string[] = []
  for (let i = 0; i < 16; i += 2) groups.push(((b[i]! << 8) | b[i + 1]!).toString(16))
  // Collapse the longest run of zero groups (RFC 5952).
  let best = -1
  let bestLen = 0
  for (let i = 0; i < 8; ) {
    if (groups[i] !== '0') {
      i++
      continue
    }
    let j = i
    while (j < 8 && groups[j] === '0') j++
    if (j - i > bestLen && j - i > 1) {
      best = i
      bestLen = j - i
    }
    i = j
  }
  if (best < 0) return groups.join(':')
  return `${groups.slice(0, best).join(':')}::${groups.slice(best + bestLen).join(':')}`
}

const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/

export function isIPv4(host: string): boolean {
  return IPV4.test(host)
}

/** Strict IPv6 text check (RFC 4291 §2.2): 8 groups of 1-4 hex digits, one `::` at most, optional dotted IPv4 tail. */
export function isIPv6(host: string): boolean {
  let text = host
  let tailGroups = 0
  const v4 = /:(\d+\.\d+\.\d+\.\d+)$/.exec(text)
  if (v4?.[1]) {
    if (!isIPv4(v4[1])) return false
    text = text.slice(0, -v4[1].length) + '0:0'
    tailGroups = 0
  }
  const halves = text.split('::')
  if (halves.length > 2) return false
  const groups = halves.map((h) => (h === '' ? [] : h.split(':')))
  if (groups.flat().some((g) => !/^[0-9a-fA-F]{1,4}$/.test(g))) return false
  const count = groups.flat().length + tailGroups
  return halves.length === 2 ? count < 8 : count === 8
}
