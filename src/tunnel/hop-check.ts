/**
 * How far the first punching probe may go (the TTL of punch.ts's first probes and of the
 * birthday sockets' probes), learnt from the rendezvous server's STUN reflection.
 *
 * The first probe must clear every NAT of ours, so that each maps the socket, yet die
 * before the peer's NAT or firewall, which would see an unsolicited packet (conntrack
 * claims the tuple, a router answers with a refusal or blacklists the source). TTL 2
 * (FIRST_PROBE_TTL) does that behind one NAT. Behind a home NAT behind a carrier-grade
 * NAT the second NAT is hop 2, where TTL 2 runs out: a CGN that maps per destination
 * never maps the birthday sockets, and the peer's spray has nothing to hit
 * (docs/BENCHMARKS.md, 2026-12-05, symmetric CGN × easy got the relay).
 *
 * Node cannot read ICMP time-exceeded errors (no IP_RECVERR, no raw sockets), so we
 * cannot count our NATs the way traceroute would. What we can see is whether a probe
 * reaches the server: STUN Binding requests with TTL 3..MAX_LEARNED_TTL + 1 (and one
 * with the default TTL, the control), HOP_PROBE_COPIES of each so one lost datagram
 * does not skew the count. The least TTL answered, t, says the server is t - 1 routers
 * away, and a first probe with TTL t - 1 dies at the last of them: past every router
 * between us and the server's network, our NATs included, and nowhere beyond it.
 *
 * That is only a safe TTL when the server is near (t - 1 ≤ MAX_LEARNED_TTL): then the
 * routers before it are our home network and our carrier's access, where our NATs are,
 * and a peer's NAT is at least as far as the server (a peer nearer than the server's
 * last router would see the probe; a peer behind our own outermost NAT is handled apart:
 * firstProbeTtlFor). A server farther away (the usual case on the internet, 8–20 hops),
 * or one that answers no TTL-limited probe, leaves today's TTL 2: we do not know where
 * our NATs end, and TTL 2 keeps its measured 20/20 for one NAT. hyperdht sends its
 * birthday probes with TTL 5 whatever the path; we stay below that unless measured.
 *
 * Cost and trust: 2 × 3 + 1 = 7 STUN requests of 20 bytes per check, one check when the
 * agent starts and one each time it registers again after losing the server (a network
 * change), never per introduction or per punch. The answers are STUN, unauthenticated
 * like every STUN answer but matched by a random 96-bit transaction id, so only the
 * server or someone on the path can shape the result, and the most they can do is pick
 * a TTL from 2 to MAX_LEARNED_TTL: how far our probes go, never how many we send or to
 * whom (the server names probe targets anyway: SECURITY.md).
 */
import { isIPv4 } from '../protocol/endpoint.js'

/** Today's first-probe TTL, and the one used whenever the hop check learnt nothing. */
export const FIRST_PROBE_TTL = 2
/**
 * The highest first-probe TTL learnt: three routers of ours (home NAT, a CGN, one more)
 * before the server's last router. A server farther than that leaves TTL 2.
 */
export const MAX_LEARNED_TTL = 4
/** TTLs probed: 3 (a server 2 routers away or nearer gives 2, today's) to MAX_LEARNED_TTL + 1. */
export const HOP_PROBE_TTLS: readonly number[] = Array.from({ length: MAX_LEARNED_TTL - 1 }, (_, i) => i + 3)
/** Each TTL is sent this many times: one lost datagram must not make the server look farther (and the TTL reach past it). */
export const HOP_PROBE_COPIES = 2
/**
 * After the first answer, the later ones (a lower TTL delayed by jitter or reordering)
 * are awaited as long again as the first took, at least this long, within the check's
 * timeout (nat-check.ts NAT_CHECK_TIMEOUT_MS).
 */
export const HOP_SETTLE_MIN_MS = 20

/** What the hop probes got back: the TTLs answered (null = the control, default TTL). */
export interface HopSamples {
  answered: Array<number | null>
}

/**
 * What the hop check concluded: the server's distance in routers when it is near enough
 * to count ('near', with the least TTL that reached it), 'far' when only the control
 * (default TTL) was answered, 'unknown' when nothing was.
 */
export type HopVerdict = { kind: 'near'; serverTtl: number } | { kind: 'far' } | { kind: 'unknown' }

export function classifyHops(s: HopSamples): HopVerdict {
  const limited = s.answered.filter((t): t is number => t !== null)
  if (limited.length) return { kind: 'near', serverTtl: Math.min(...limited) }
  return s.answered.includes(null) ? { kind: 'far' } : { kind: 'unknown' }
}

/** The first-probe TTL a verdict gives (see the top of the file): one below the least TTL that reached a near server, else FIRST_PROBE_TTL. */
export function learnedTtl(v: HopVerdict): number {
  if (v.kind !== 'near') return FIRST_PROBE_TTL
  const ttl = v.serverTtl - 1
  return ttl > MAX_LEARNED_TTL ? FIRST_PROBE_TTL : Math.max(FIRST_PROBE_TTL, ttl)
}

/**
 * The first-probe TTL towards a peer whose public address is `peerHost`. A peer seen at
 * our own public address sits behind our outermost NAT (two sites behind one CGN): a
 * probe that clears that NAT reaches the peer's home NAT, so it gets FIRST_PROBE_TTL.
 * So does a peer in our public IPv4 /24: a CGN maps its subscribers from a pool of
 * addresses (RFC 6888 allows "paired" pooling per subscriber, not one address for all),
 * so a neighbour behind the same CGN often shows another address of the pool, and a pool
 * is rarely split across /24s. And so does every peer while our public address is
 * unknown (not registered, or the NAT check failed): we cannot tell a neighbour apart.
 */
export function firstProbeTtlFor(learned: number, ourPublicHost: string | null, peerHost: string | undefined): number {
  if (ourPublicHost === null) return FIRST_PROBE_TTL
  if (peerHost !== undefined && (peerHost === ourPublicHost || samePrefix24(peerHost, ourPublicHost))) return FIRST_PROBE_TTL
  return learned
}

/** Whether two IPv4 addresses share their first 24 bits (false when either is not IPv4). */
function samePrefix24(a: string, b: string): boolean {
  return isIPv4(a) && isIPv4(b) && a.slice(0, a.lastIndexOf('.')) === b.slice(0, b.lastIndexOf('.'))
}
