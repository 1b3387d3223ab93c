/**
 * The timings and counts of UDP hole punching (punch.ts), each beside its reason; punch.ts
 * re-exports them.
 */

/** Normal probes start this long after the first (TTL-limited) ones, so both NATs have their mappings. */
export const PROBE_START_DELAY_MS = 10
/** Probe period while punching; after PROBE_FAST_MS it slows to PROBE_SLOW_INTERVAL_MS. */
export const PROBE_INTERVAL_MS = 20
export const PROBE_FAST_MS = 2_000
export const PROBE_SLOW_INTERVAL_MS = 100
/**
 * LAN candidates are probed only this long: a peer on our LAN answers within a
 * millisecond or not at all, and the addresses are the peer's word (private, but
 * possibly aimed at someone else on our LAN), so they get ~50 probes each, not 15 s.
 */
export const LAN_PROBE_MS = 1_000
/** After a public candidate validates, a LAN candidate validating within this still wins. */
export const LAN_GRACE_MS = 30
/**
 * After an IPv4 public candidate validates, an IPv6 one validating within this still
 * wins: IPv6 is preferred when both sides have it and it works (no NAT mapping to keep
 * alive or lose, what Tailscale prefers too), and both were probed at the same moment,
 * so a working IPv6 path answers within a round trip of the IPv4 one. RFC 8305's
 * smallest connection attempt delay, so a broken IPv6 costs at most this much.
 */
export const V6_GRACE_MS = 100
/** Endpoints learnt from probes (peer-reflexive candidates) we add at most. */
export const MAX_LEARNT_CANDIDATES = 4
/** Extra sockets the hard side opens: with 256 mappings a random probe hits one in ~250 tries. */
export const BIRTHDAY_SOCKETS = 256
/** The hard side repeats its first-TTL probes this often (the mappings must not expire). */
export const BIRTHDAY_REFRESH_MS = 1_000
/**
 * Birthday sockets that open and probe in one turn of the event loop: all 256 at once
 * (binds and sends) held the agent's loop for ~200 ms on a loaded machine (lab, public×hard
 * at 20 ms RTT: the peer's answers waited that long), so probes and acks of the punch
 * itself go out between batches.
 */
export const BIRTHDAY_BATCH = 32
/** The easy side sprays this many random ports per second, in bursts every SPRAY_TICK_MS. */
export const SPRAY_RATE_PER_S = 1_000
export const SPRAY_TICK_MS = 10
/** At most this many spray probes per punch (bounded in count as well as time). */
export const SPRAY_MAX_PROBES = 20_000

/**
 * A punch 'normal' only because of a mapping searches (PunchInit.search) after this long
 * with nothing validated: a mapping answers in about 1.5 round trips, and the search keeps
 * 1 s before `auto` adds the relay (RELAY_FALLBACK_MS; birthday median 0.1-0.3 s, worst 0.6 s).
 */
export const MAPPED_PUNCH_MS = 1_000
