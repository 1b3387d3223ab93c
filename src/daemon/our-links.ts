/**
 * Whether a peer's LAN candidates are on a link of ours (tunnel/manager.ts hairpinOnly:
 * when none is, and the peer shares our public address, the relay starts at once).
 *
 * Only the links of the interface(s) carrying the default route count, and a candidate
 * equal to one of our own addresses never does. Hosts behind one CGN often share the
 * same local subnets that lead nowhere between them (docker0 172.17.0.1/16, virbr0
 * 192.168.122.0/24, the home router's 192.168.1.0/24 in two homes): matching every
 * interface made almost every peer look "on our link", and the early relay never
 * started. Two hosts on one link never hold the same address, so a candidate that is
 * ours is another host's own bridge or LAN.
 *
 * The default route comes from Linux's /proc/net/route; where it cannot be read (or no
 * default route is listed) every interface counts, as before: the check then errs
 * towards "on our link", which only loses the early relay's speed-up.
 */
import type { NetworkInterfaceInfo } from 'node:os'
import { onSubnet } from '../protocol/lan.js'

/** The kernel's route flag "up" (linux/route.h RTF_UP). */
const RTF_UP = 0x1

/**
 * The interfaces of IPv4 default routes (destination and mask 0, up) in the text of
 * /proc/net/route: a header line, then one route a line, fields separated by
 * whitespace, addresses and flags in hex.
 */
export function defaultRouteInterfaces(routeTable: string): string[] {
  const out: string[] = []
  for (const line of routeTable.split('\n').slice(1)) {
    const [iface, dest, , flags, , , , mask] = line.trim().split(/\s+/)
    if (!iface || dest !== '00000000' || mask !== '00000000' || (Number.parseInt(flags ?? '0', 16) & RTF_UP) === 0) continue
    if (!out.includes(iface)) out.push(iface)
  }
  return out
}

/**
 * Whether any of `hosts` is on the IPv4 subnet of an interface in `routeIfaces` (all
 * interfaces when that is empty), not being one of our own addresses.
 */
export function onLinksOf(hosts: readonly string[], ifaces: NodeJS.Dict<NetworkInterfaceInfo[]>, routeIfaces: readonly string[]): boolean {
  const all = Object.entries(ifaces).flatMap(([name, list]) => (list ?? []).map((i) => ({ name, ...i })))
  const mine = new Set(all.map((i) => i.address))
  const links = all.filter((i) => !i.internal && i.family === 'IPv4' && (routeIfaces.length === 0 || routeIfaces.includes(i.name)))
  return hosts.some((h) => !mine.has(h) && links.some((i) => onSubnet(h, i.address, i.netmask)))
}
