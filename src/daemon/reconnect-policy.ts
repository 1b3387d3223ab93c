/**
 * How long the rendezvous client waits before it connects again (rendezvous-client.ts
 * run()): a backoff that doubles, a shorter cap while a tunnel waits for us to register,
 * and no wait at all when the session was lost because our own path moved.
 */

/** Reconnect backoff: doubles from the first value up to the cap. */
export const BACKOFF_FIRST_MS = 500
export const BACKOFF_CAP_MS = 10_000
/**
 * The cap while a tunnel migrates (RendezvousClientComponents.urgent): its new path needs
 * us registered, so a link back from an outage is used within this, not after a 10 s
 * backoff. One connection attempt a second to our own server, for at most the 90 s a
 * tunnel migrates.
 */
export const URGENT_BACKOFF_CAP_MS = 1_000
/**
 * A session lost this soon after the server saw our mapping move registers again at
 * once: the control connection died with the mapping (its next segment left from a new
 * port or address), and the backoff would only add to the tunnels' stall.
 */
export const MOVED_RECONNECT_MS = 5_000
/**
 * While a tunnel migrates, the next attempt starts this long after the last one began,
 * sooner if the backoff says so: an attempt that ran out its connect deadline
 * (control-connection.ts URGENT_CONNECT_TIMEOUT_MS, 1.5 s; a connect begun while the link
 * was dark) is followed by the next at once, not after a further second of backoff
 * (bench/roaming.ts: 1 s of it in a 2.9 s stall after a 10 s outage). A server that
 * refuses fast still sees at most one attempt a second (after the first retry).
 */
export const URGENT_ATTEMPT_SPACING_MS = 1_000

export interface ReconnectInput {
  /** Failed sessions in a row (1 for the first retry). */
  attempt: number
  /** A path check found the session dead: go at once. */
  reconnectNow: boolean
  /** How long ago the server saw our mapping move (Infinity: never). */
  sinceMovedMs: number
  /** A tunnel migrates (it needs us registered). */
  urgent: boolean
  /** How long the failed attempt (or the lost session) took, from its start. */
  tookMs: number
}

/** The wait before the next connection attempt, ms. */
export function reconnectDelay(r: ReconnectInput): number {
  // Only the first try after our mapping moved goes at once: a server that refuses fast
  // (restarting, its session limit) must not see a loop of handshakes.
  const atOnce = r.reconnectNow || (r.attempt === 1 && r.sinceMovedMs < MOVED_RECONNECT_MS)
  if (atOnce) return 0
  const cap = r.urgent ? URGENT_BACKOFF_CAP_MS : BACKOFF_CAP_MS
  const backoff = Math.min(cap, BACKOFF_FIRST_MS * 2 ** Math.min(r.attempt - 1, 10))
  return r.urgent ? Math.min(backoff, Math.max(0, URGENT_ATTEMPT_SPACING_MS - r.tookMs)) : backoff
}
