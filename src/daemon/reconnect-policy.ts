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

export interface ReconnectInput {
  /** Failed sessions in a row (1 for the first retry). */
  attempt: number
  /** A path check found the session dead: go at once. */
  reconnectNow: boolean
  /** How long ago the server saw our mapping move (Infinity: never). */
  sinceMovedMs: number
  /** A tunnel migrates (it needs us registered). */
  urgent: boolean
}

/** The wait before the next connection attempt, ms. */
export function reconnectDelay(r: ReconnectInput): number {
  // Only the first try after our mapping moved goes at once: a server that refuses fast
  // (restarting, its session limit) must not see a loop of handshakes.
  const atOnce = r.reconnectNow || (r.attempt === 1 && r.sinceMovedMs < MOVED_RECONNECT_MS)
  if (atOnce) return 0
  const cap = r.urgent ? URGENT_BACKOFF_CAP_MS : BACKOFF_CAP_MS
  return Math.min(cap, BACKOFF_FIRST_MS * 2 ** Math.min(r.attempt - 1, 10))
}
