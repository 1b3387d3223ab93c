/**
 * Which paths an introduction tries, from the `via` asked for and the two NAT verdicts:
 * the one place the rules live (no I/O; the manager and paths.ts act on the plan).
 *
 * - A NAT that maps per destination ('hard') gives the server one mapping and the peer
 *   another, so the peer cannot aim at it: TCP punching through it fails, and UDP needs
 *   a search (birthday on the hard side, spray on the easy side, punch.ts).
 * - A host with no NAT ('none') facing a hard one keeps the search (a public host behind a
 *   firewall that drops what it did not ask for needs it), but the hard side also probes
 *   it plainly from the agent's socket (punch.ts peerOpen): its NAT maps that socket for
 *   the peer, which answers the mapping it saw, in about one and a half round trips.
 * - When both NATs are hard, neither side can find the other's mapping: no direct path,
 *   unless one side's gateway mapped its port (PCP, NAT-PMP, UPnP).
 * - Either side's gateway holds a mapping (ours, or a mapped candidate of the peer's, even
 *   one equal to its public endpoint): the strategy is 'normal', whatever the verdicts.
 *   The other side probes that mapped endpoint at full TTL from its agent socket at once
 *   (punch.ts Candidate.mapped: it accepts what comes unasked, nothing to claim), and the
 *   mapped side answers through the mapping (the answer leaves from the mapped port, so
 *   the prober's NAT lets it in): about one and a half round trips, no birthday sockets
 *   and no spray. miniupnpd also sends the mapped port's outbound traffic from it, so the
 *   mapped side's check finds an easy NAT; searching then (birthday against spray) only
 *   worked while both event loops were idle (the lab's 3-site test failed 3 of 4 CI runs).
  A mapping can be stale (the gateway rebooted, or the lease ended before we registered
  again) or forged (a host on the LAN answering PCP/NAT-PMP/UPnP): when the strategy was
  'normal' only because of the mapping, `search` is the one the verdicts call for, and
  the puncher switches to it after MAPPED_PUNCH_MS without an answer (punch.ts). Both
  sides started punching at the introduction and count from it, so they search together.
 * - IPv6 (protocol/ipv6.ts): when both sides have it (our IPv6 socket and global address,
 *   and an IPv6 candidate of the peer's), the UDP punch runs whatever the IPv4 NATs are:
 *   IPv6 candidates are probed plainly under every strategy (punch.ts), as no NAT
 *   translates them, and the initiator prefers them (V6_GRACE_MS). Between two hard NATs
 *   the strategy is then 'normal', as with a mapping. TCP is punched too, over IPv6
 *   only (paths.ts): no NAT maps the IPv6 port, so the peer's IPv6 candidate is its TCP
 *   endpoint as well, and both firewalls let a simultaneous open through as they do
 *   between IPv4 NATs. So `auto` between two dual-stack agents gets TCP over IPv6,
 *   whatever their IPv4 NATs are (UDP over IPv6 when TCP cannot get through).
 * - Two agents behind one NAT (or one CGN) that does not hairpin: both look easy, and the
 *   peer's public candidate is our own address, which never answers. When the peer's
 *   public address is ours and none of its LAN candidates is on a link of ours
 *   (`hairpinOnly`), `auto` starts the relay at once beside the direct attempts instead of
 *   after RELAY_FALLBACK_MS (measured: 2.1 s with no delay, 3.0 s at 100 ms RTT); where the
 *   NAT does hairpin, the direct path that lands takes over (path-race.ts).
 * - `auto` (and `direct`, the upgrade attempt) skips what cannot work; an explicit
 *   `udp` or `tcp` tries regardless, except UDP between two hard NATs, which is refused
 *   at once (UNSUPPORTED_PATH) rather than spraying for the whole timeout.
 */
import type { NatVerdict, Via } from '../protocol/rendezvous.js'
import type { PunchStrategy } from './punch.js'

export interface PathPlanInput {
  via: Via
  /** Our NAT check's verdict. */
  mine: NatVerdict
  /** The peer's verdict, as the server introduced it. */
  theirs: NatVerdict
  initiator: boolean
  /** Either side holds a port mapping on its gateway (ours, or a mapped candidate of the peer's). */
  mapped?: boolean
  /** Both sides have IPv6: ours, and an IPv6 candidate of the peer's. */
  v6?: boolean
  /** The peer's public address is ours and it offers no LAN candidate on our links: a direct path needs our NAT to hairpin. */
  hairpinOnly?: boolean
}

export interface PathPlan {
  /** How to punch UDP, or null: no UDP attempt. */
  udp: PunchStrategy | null
  /** 'normal' only because of a mapping: the search the verdicts call for, tried when the mapped endpoint does not answer (punch.ts MAPPED_PUNCH_MS); else null. */
  search: PunchStrategy | null
  /** Punch TCP too. */
  tcp: boolean
  /** The relay: at once, after the direct attempts failed or RELAY_FALLBACK_MS passed, or not at all. */
  relay: 'now' | 'fallback' | 'never'
  /** The initiator waits AUTO_TCP_GRACE_MS for TCP when UDP punches first (TCP carries more). */
  preferTcp: boolean
  /** Attempts that could still give a better path run on after the winner, and the tunnel moves to one that lands (path-race.ts). */
  late: boolean
  /** A relayed tunnel keeps looking for a direct path (the initiator's upgrade loop). */
  upgrade: boolean
  /** Why nothing can be tried (then udp is null, tcp false and relay 'never'). */
  impossible: string | null
}

export const BOTH_HARD = 'both NATs map per destination, so no direct path can be punched between them; use --via auto or --via relay'

/**
 * The UDP punch strategy for two verdicts; null when both map per destination and neither
 * side holds a mapping (`mapped`) nor has IPv6 with the other (`v6`).
 */
export function punchStrategy(mine: NatVerdict, theirs: NatVerdict, mapped = false, v6 = false): PunchStrategy | null {
  // A mapped endpoint takes probes unasked: nothing to search for.
  if (mapped) return 'normal'
  if (mine === 'hard' && theirs === 'hard') return v6 ? 'normal' : null
  // An unknown verdict on the other side may be anything: punch plainly rather than search.
  if (mine === 'hard' && theirs !== 'unknown') return 'birthday'
  if (theirs === 'hard' && mine !== 'unknown') return 'spray'
  return 'normal'
}

export function planPaths({ via, mine, theirs, initiator, mapped = false, v6 = false, hairpinOnly = false }: PathPlanInput): PathPlan {
  const hard = [mine, theirs].filter((v) => v === 'hard').length
  const auto = via === 'auto' || via === 'direct'
  // IPv6 needs no mapping found: between two hard NATs it is as good as one (the IPv6 candidates are probed plainly).
  const strategy = punchStrategy(mine, theirs, mapped, v6)
  const udp = via === 'udp' || (auto && (hard < 2 || mapped || v6)) ? strategy : null
  const tcp = via === 'tcp' || (auto && (hard === 0 || v6))
  // IPv6 needs no hairpin: the relay then waits as usual.
  const relay = via === 'relay' || (via === 'auto' && hairpinOnly && !v6) ? 'now' : via === 'auto' ? 'fallback' : 'never'
  const unmapped = udp === 'normal' && mapped ? punchStrategy(mine, theirs, false, v6) : null
  const search = unmapped === 'normal' ? null : unmapped
  const impossible = (via === 'udp' || via === 'direct') && strategy === null ? BOTH_HARD : null
  return {
    udp,
    search,
    tcp,
    relay,
    preferTcp: initiator && auto && udp !== null && tcp,
    late: auto,
    upgrade: initiator && via === 'auto',
    impossible
  }
}
