/**
 * Which addresses an agent may offer as LAN candidates: only those no one on the
 * internet can be made to receive probes at, so a registered agent cannot aim its
 * peers' punching at a third party (a stranger's public server, port 22).
 *
 *   IPv4  10/8, 172.16/12, 192.168/16 (RFC 1918), 100.64/10 (CGNAT, RFC 6598),
 *         169.254/16 (link-local, RFC 3927)
 *   IPv6  fc00::/7 (unique local, RFC 4193), fe80::/10 (link-local)
 *
 * The server keeps only these from a REGISTER, and agents keep only these from an
 * introduction (they do not take the server's word for it), at most MAX_LAN_CANDIDATES.
 */
import { ipv6ToBytes, isIPv4, isIPv6, type Endpoint } from './endpoint.js'

export const MAX_LAN_CANDIDATES = 8

export function isLanAddress(host: string): boolean {
  if (isIPv4(host)) {
    const [a, b] = host.split('.').map(Number) as [number, number]
    return a === 10 || (a === 172 && b >= 16 && b <= 31) || (a === 192 && b === 168) || (a === 100 && b >= 64 && b <= 127) || (a === 169 && b === 254)
  }
  if (isIPv6(host)) {
    const b = ipv6ToBytes(host)
    return (b[0]! & 0xfe) === 0xfc || (b[0] === 0xfe && (b[1]! & 0xc0) === 0x80)
  }
  return false
}

/** The LAN candidates worth keeping: private addresses, a real port, at most MAX_LAN_CANDIDATES. */
export function lanCandidates(list: readonly Endpoint[]): Endpoint[] {
  return list.filter((ep) => isLanAddress(ep.host) && Number.isInteger(ep.port) && ep.port > 0 && ep.port <= 65535).slice(0, MAX_LAN_CANDIDATES)
}

/**
 * Ports an agent's gateway mapped for it (PCP, NAT-PMP) are offered in the same list, at
 * the agent's own public address: at most this many (its UDP and its TCP port).
 */
export const MAX_MAPPED_CANDIDATES = 2

/**
 * The mapped candidates in `list`: endpoints at `publicHost`, the address the server sees
 * the agent at. Nothing else public is ever kept, so a peer probes only ports of the
 * agent's own address — as it already may when it sprays a hard NAT (punch.ts).
 */
export function mappedCandidates(list: readonly Endpoint[], publicHost: string | null | undefined): Endpoint[] {
  if (!publicHost || isLanAddress(publicHost)) return []
  return list.filter((ep) => ep.host === publicHost && Number.isInteger(ep.port) && ep.port > 0 && ep.port <= 65535).slice(0, MAX_MAPPED_CANDIDATES)
}

/** What the server keeps of a REGISTER's candidates: the mapped ones first, then the LAN ones. */
export function offeredCandidates(list: readonly Endpoint[], publicHost: string | null | undefined): Endpoint[] {
  return [...mappedCandidates(list, publicHost), ...lanCandidates(list)].slice(0, MAX_LAN_CANDIDATES)
}

/** An IPv4 address as a 32-bit number; null when it is not one. */
function ipv4ToNumber(host: string): number | null {
  if (!isIPv4(host)) return null
  return host.split('.').reduce((n, part) => n * 256 + Number(part), 0)
}

/**
 * Whether `host` is on the IPv4 subnet of `address`/`netmask` (an interface of ours, as
 * os.networkInterfaces() gives it). IPv6 is never: every host has fe80::/64, so a
 * link-local match says nothing about a shared link.
 */
export function onSubnet(host: string, address: string, netmask: string): boolean {
  const h = ipv4ToNumber(host)
  const a = ipv4ToNumber(address)
  const m = ipv4ToNumber(netmask)
  if (h === null || a === null || m === null || m === 0) return false
  return (h & m) >>> 0 === (a & m) >>> 0
}
