/**
 * IPv6 candidates: which IPv6 endpoints of a peer we probe beside its IPv4 ones.
 *
 * IPv6 has (almost) no NAT: an agent's global address is its public address, and what
 * stands between two agents is a stateful firewall on each side that drops unsolicited
 * inbound (RFC 6092). Punching through two of those is the IPv4 punch without the port
 * translation: a first probe with hop limit 2 (it opens our firewall's state but dies
 * before the peer's), then probes both ways (punch.ts).
 *
 * Which addresses count (the rule, on both the server and the receiving agent):
 *
 *   global unicast 2000::/3 (RFC 4291 §2.4) only. Link-local fe80::/10 and unique-local
 *   fc00::/7 are LAN candidates already (lan.ts: probed for LAN_PROBE_MS, same site
 *   only); loopback, unspecified, multicast, v4-mapped and the rest are never probed.
 *
 * Where they come from: an IPv6 candidate is only ever the source address of the
 * agent's own sealed heartbeat, as the server saw it on its IPv6 socket (a reflection,
 * like the IPv4 public endpoint): the server does not take an agent's word for an IPv6
 * address, so a registered agent cannot aim its peers' probes at a third party. Its
 * interface addresses only tell the agent whether it has global IPv6 at all.
 *
 * The server puts that endpoint first in the peer's candidate list (the list an older
 * agent filters to LAN and mapped candidates, so it ignores it: the wire is unchanged).
 * A receiving agent keeps at most MAX_V6_CANDIDATES of them, all in the /64 of the first:
 * a malicious server can make us probe one more endpoint per introduction than the IPv4
 * public one it already names, not a list of strangers.
 */
import { ipv6ToBytes, isIPv6, type Endpoint } from './endpoint.js'

/** IPv6 candidates of a peer we probe at most (its heartbeat's source; one spare for a renumbered /64). */
export const MAX_V6_CANDIDATES = 2

/**
 * Global unicast IPv6 (2000::/3), not a v4-mapped or otherwise special text form, and not
 * one that relays deliver to an IPv4 host it embeds: 6to4 (2002::/16, RFC 3056) and Teredo
 * (2001::/32, RFC 4380) would let a server name an IPv4 target in IPv6 clothing.
 */
export function isGlobalIPv6(host: string): boolean {
  if (!isIPv6(host) || host.includes('.')) return false
  const b = ipv6ToBytes(host)
  if (b[0] === 0x20 && b[1] === 0x02) return false // 6to4
  if (b[0] === 0x20 && b[1] === 0x01 && b[2] === 0 && b[3] === 0) return false // Teredo
  return (b[0]! & 0xe0) === 0x20
}

/** Whether two IPv6 addresses share their first 64 bits (one site's subnet, RFC 4291 §2.5.4). */
export function sameV6Prefix64(a: string, b: string): boolean {
  if (!isIPv6(a) || !isIPv6(b)) return false
  const x = ipv6ToBytes(a)
  const y = ipv6ToBytes(b)
  for (let i = 0; i < 8; i++) if (x[i] !== y[i]) return false
  return true
}

function validPort(ep: Endpoint): boolean {
  return Number.isInteger(ep.port) && ep.port > 0 && ep.port <= 65535
}

/**
 * The IPv6 candidates in `list` (a peer record's candidates, the server's word): global
 * unicast with a real port, at most MAX_V6_CANDIDATES, all in the /64 of the first one.
 */
export function v6Candidates(list: readonly Endpoint[]): Endpoint[] {
  const global = list.filter((ep) => isGlobalIPv6(ep.host) && validPort(ep))
  const first = global[0]
  if (!first) return []
  return global.filter((ep) => sameV6Prefix64(ep.host, first.host)).slice(0, MAX_V6_CANDIDATES)
}

/**
 * The candidate list with `ep` (the agent's IPv6 heartbeat source) as its IPv6
 * candidate: first, replacing any global IPv6 entry it held, the rest kept in order
 * and the whole capped at `max`. `ep` null removes the IPv6 candidate.
 */
export function withV6Candidate(list: readonly Endpoint[], ep: Endpoint | null, max: number): Endpoint[] {
  const rest = list.filter((e) => !isGlobalIPv6(e.host))
  return (ep && isGlobalIPv6(ep.host) && validPort(ep) ? [ep, ...rest] : rest).slice(0, max)
}


/** Unique-local IPv6 (fc00::/7, RFC 4193): a site's own addresses, never routed on the internet. */
export function isUlaIPv6(host: string): boolean {
  return isIPv6(host) && !host.includes('.') && (ipv6ToBytes(host)[0]! & 0xfe) === 0xfc
}

/** Unique-local addresses of ours an agent offers as LAN candidates, at most (a host has one per LAN, two while renumbering). */
export const MAX_ULA_CANDIDATES = 2

/**
 * The peer's unique-local LAN candidates we probe: only those in the /64 of one of our own
 * unique-local addresses (`ours`), that is on our own LAN. A ULA prefix holds 40 random
 * bits (RFC 4193 §3.2.1), so two sites that match are one site: unlike a private IPv4
 * address (10.0.0.2 is in every other home), a ULA candidate off our LAN is never probed
 * at all. Link-local (fe80::/10) candidates are never probed: every link has the same
 * prefix, and the peer's scope id names its interface, not ours. At most
 * MAX_ULA_CANDIDATES, as many as an agent offers: a stranger who learnt our /64 from an
 * earlier introduction could otherwise list MAX_LAN_CANDIDATES (8) endpoints there, at
 * any ports, and TCP punching sends SYNs to each for the whole punch deadline.
 */
export function sameLanV6(list: readonly Endpoint[], ours: readonly string[]): Endpoint[] {
  return list.filter((ep) => isUlaIPv6(ep.host) && validPort(ep) && ours.some((o) => isUlaIPv6(o) && sameV6Prefix64(o, ep.host))).slice(0, MAX_ULA_CANDIDATES)
}
