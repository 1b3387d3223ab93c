/*
 * IPv6 on the NAT lab (LabSpec.ipv6): documentation prefixes (2001:db8::/32, RFC 3849),
 * inside the lab's namespaces only. No NAT66: each site's router is a stateful firewall
 * that drops unsolicited inbound (ip6tables conntrack, RFC 6092's default), as home
 * routers ship.
 *
 *   $id-srv   eth0: 2001:db8::2/64                       default via 2001:db8::1
 *   $id-inet  srv:  2001:db8::1/64   wN: 2001:db8:f:N::1/64
 *             route 2001:db8:N::/64 via 2001:db8:f:N::2 (site N's LAN)
 *   $id-rN    wan:  2001:db8:f:N::2/64  lan: 2001:db8:N::1/64   default via 2001:db8:f:N::1
 *             FORWARD: established/related in, anything out, the rest from wan dropped
 *   $id-hN-M  eth0: 2001:db8:N::(M+1)/64                  default via 2001:db8:N::1
 *                   fd00:db8:N::(M+1)/64 (unique local: the site's own, routed nowhere)
 *   public    eth0: 2001:db8:f:N::2/64 (the host is on the wire, no firewall)
 *
 * host → its router (hop limit 2 → 1) → inet (1 → 0: dropped there) — a first probe with
 * hop limit 2 opens the sender's firewall state without reaching the peer's firewall, as
 * TTL 2 does with IPv4 NAT.
 *
 * A site's `ip`: 'v4' (default: no IPv6 address at all), 'dual', or 'v6' (IPv6 only: its
 * hosts have no IPv4 default route, so they reach the server and peers over IPv6 alone).
 *
 * Behind a CGN (an ISP that shares IPv4 addresses but routes native IPv6), CGN K (inet
 * index M) routes IPv6 plainly, without NAT or firewall; its sites' routers sit on its
 * `inner` bridge, each in a /64 of its own:
 *
 *   $id-inet  wM:    2001:db8:f:M::1/64   route 2001:db8:N::/64 via 2001:db8:f:M::2
 *   $id-cK    wan:   2001:db8:f:M::2/64   default via 2001:db8:f:M::1
 *             inner: 2001:db8:f:N::1/64   route 2001:db8:N::/64 via 2001:db8:f:N::2 (per site N)
 *   $id-rN    wan:   2001:db8:f:N::2/64   (as above)
 *
 * A first probe with hop limit 2 then dies at the CGN, after opening the home firewall.
 */

export type SiteIp = 'v4' | 'v6' | 'dual';

export const SERVER_IP6 = '2001:db8::2';

/** Addresses every `ip addr add` gets: no duplicate address detection (a tentative address cannot be bound for ~1 s). */
const NODAD = 'nodad';

export function siteLan6(n: number): string {
  return `2001:db8:${n}::`;
}

export function hostIp6(n: number, j: number, routed: boolean): string {
  return routed ? `2001:db8:${n}::${j + 2}` : `2001:db8:f:${n}::2`;
}

/** A routed site's host's unique-local address (fc00::/7, RFC 4193): hosts of one LAN share its /64, no router forwards it. */
export function hostUla(n: number, j: number): string {
  return `fd00:db8:${n}::${j + 2}`;
}

/** `ip -batch` lines for the server and inet. */
export function coreIp6(): { server: string[]; inet: string[] } {
  return {
    server: [`addr add ${SERVER_IP6}/64 dev eth0 ${NODAD}`, 'route add default via 2001:db8::1'],
    inet: [`addr add 2001:db8::1/64 dev srv ${NODAD}`]
  };
}

/** `ip -batch` lines for CGN K's IPv6 uplink (inet index `m`): inet's side and the CGN's. */
export function cgnIp6(m: number): { inet: string[]; cgn: string[] } {
  return {
    inet: [`addr add 2001:db8:f:${m}::1/64 dev w${m} ${NODAD}`],
    cgn: [`addr add 2001:db8:f:${m}::2/64 dev wan ${NODAD}`, `route add default via 2001:db8:f:${m}::1`]
  };
}

/** `ip -batch` lines for site N behind the CGN at inet index `m`: inet's route, the CGN's side (its `inner` bridge). */
export function cgnSiteIp6(n: number, m: number): { inet: string[]; cgn: string[] } {
  return {
    inet: [`route add ${siteLan6(n)}/64 via 2001:db8:f:${m}::2`],
    cgn: [`addr add 2001:db8:f:${n}::1/64 dev inner ${NODAD}`, `route add ${siteLan6(n)}/64 via 2001:db8:f:${n}::2`]
  };
}

/** `ip -batch` lines for site N: inet's side, the router's, each host's (by index). */
export function siteIp6(n: number, routed: boolean, hosts: number): { inet: string[]; router: string[]; hosts: string[][] } {
  const inet = [`addr add 2001:db8:f:${n}::1/64 dev w${n} ${NODAD}`];
  if (!routed) return { inet, router: [], hosts: [[`addr add ${hostIp6(n, 0, false)}/64 dev eth0 ${NODAD}`, `route add default via 2001:db8:f:${n}::1`]] };
  inet.push(`route add ${siteLan6(n)}/64 via 2001:db8:f:${n}::2`);
  const router = [`addr add 2001:db8:f:${n}::2/64 dev wan ${NODAD}`, `addr add ${siteLan6(n)}1/64 dev lan ${NODAD}`, `route add default via 2001:db8:f:${n}::1`];
  const hostLines = Array.from({ length: hosts }, (_, j) => [`addr add ${hostIp6(n, j, true)}/64 dev eth0 ${NODAD}`, `addr add ${hostUla(n, j)}/64 dev eth0 ${NODAD}`, `route add default via ${siteLan6(n)}1`]);
  return { inet, router, hosts: hostLines };
}

/** Sysctls of a namespace that forwards IPv6 (inet, routers): ICMPv6 unthrottled, as for IPv4. */
export const ROUTER_SYSCTLS_6 = ['net.ipv6.conf.all.forwarding=1', 'net.ipv6.icmp.ratelimit=0'];

/**
 * The router's stateful IPv6 firewall (ip6tables-restore input): unsolicited inbound is
 * dropped, counted in chain UNSOLICITED6; with 'reset' (the site's `unsolicited`, as its
 * IPv4 rules) an unsolicited TCP segment is answered with a RST first, as some routers do.
 */
export function firewall6(unsolicited: 'drop' | 'reset' = 'drop'): string {
  return [
    '*filter',
    ':INPUT ACCEPT [0:0]',
    ':FORWARD ACCEPT [0:0]',
    ':OUTPUT ACCEPT [0:0]',
    ':UNSOLICITED6 - [0:0]',
    '-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT',
    '-A FORWARD -i lan -o wan -j ACCEPT',
    '-A FORWARD -p ipv6-icmp -j ACCEPT',
    '-A FORWARD -i wan -j UNSOLICITED6',
    ...(unsolicited === 'reset' ? ['-A UNSOLICITED6 -p tcp -j REJECT --reject-with tcp-reset'] : []),
    '-A UNSOLICITED6 -j DROP',
    'COMMIT',
    ''
  ].join('\n');
}
