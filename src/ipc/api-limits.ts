/**
 * The local API's abuse limits (issue "Abuse resistance"), each with why its value:
 * slots are handed out by ConnectionTable (idle connections are evicted for newcomers,
 * subscribers are capped), idle connections expire, and a connection that does not read
 * what natd writes to it is dropped once MAX_QUEUED_BYTES wait for it. server.ts
 * enforces them.
 */
import type { Share } from './connection-table.js'

/** Largest request frame the daemon reads (node-ipc drops the connection past it). */
export const MAX_REQUEST_BYTES = 256 * 1024

/**
 * Connections held at once. 64 is the limit natd always had; it is no longer a lock-out
 * point because idle ones are evicted for newcomers (ConnectionTable).
 */
export const MAX_API_CONNECTIONS = 64
/**
 * Subscribed connections held at once: half the slots, so at least 32 are always either
 * idle (evictable) or busy with a request that ends. A desktop has a handful of watchers.
 */
export const MAX_API_SUBSCRIBERS = 32
/**
 * One uid's share of the slots (connection-table.ts): a quarter of the table, so one
 * user's flood leaves at least three quarters to the others, and still far more than a
 * desktop user runs at once (a few watchers and natctl calls). Half of it may be
 * subscribed and half of it may wait for answers, so a uid that fills its share with
 * busy connections still has nothing it can hold forever: subscribers are capped, and
 * requests end.
 */
export const MAX_API_CONNECTIONS_PER_UID = 16
export const MAX_API_SUBSCRIBERS_PER_UID = MAX_API_CONNECTIONS_PER_UID / 2
export const MAX_API_IN_FLIGHT_PER_UID = MAX_API_CONNECTIONS_PER_UID / 2
/**
 * The shared pool of connections that have not proved a uid (every connection until it
 * does; old clients and clients that cannot prove stay there). natctl proves at once, so
 * the pool mostly holds newcomers for a few ms; 16 slots absorb bursts of them. Only 4
 * may subscribe and 4 requests may wait in it: whoever does not prove shares little, so a
 * flood of unproven work holds at most 8 slots busy.
 */
export const UNPROVEN_API_SHARE: Readonly<Share> = Object.freeze({ connections: 16, subscribers: 4, inFlight: 4 })
/**
 * Proofs natd checks at once (each is one lstat). A proof names a path the client
 * chose, which could be on a file system that hangs (a dead NFS mount, FUSE): 2 of
 * libuv's 4 threads at most, so a hung proof can never stall natd's own file work.
 */
export const MAX_CONCURRENT_PROOFS = 2
/**
 * A connection with no request in flight and no subscription is closed after this long.
 * natctl connects and sends its request at once and is done in well under a second; a
 * script that pauses longer between requests reconnects. Matches node-ipc's 30 s deadline
 * for finishing a frame.
 */
export const API_IDLE_TIMEOUT_MS = 30_000
/**
 * Bytes natd keeps queued for one connection (in node's socket buffer, beyond what the
 * kernel holds). A subscriber that stops reading is dropped when its backlog would pass
 * this, instead of natd buffering events for it without end (before: +33 MB for 1,000 ×
 * 16 KB messages). 1 MiB is 4 of the largest frames (MAX_REQUEST_BYTES-sized responses)
 * and ~60 16 KB messages: a reader that is merely slow for a moment keeps up. The largest
 * event frame (a `message` of MAX_MESSAGE_BYTES = 16 KiB, at most ~96 KiB JSON-escaped) is
 * far below it, so one event alone never drops a subscriber that reads.
 */
export const MAX_QUEUED_BYTES = 1024 * 1024
/**
 * node's own accept limit, a last resort for file descriptors while refused connections
 * are being closed; the table refuses (with BUSY) long before. Past it node closes new
 * connections without a word.
 */
export const API_ACCEPT_LIMIT = 4 * MAX_API_CONNECTIONS

/** The abuse limits; each defaults to the constant of the same meaning above. */
export interface ApiLimits {
  maxConnections: number
  maxSubscribers: number
  /** One proven uid's share. */
  perUid: Share
  /** The pool of connections that have not proved a uid. */
  unproven: Share
  idleTimeoutMs: number
  maxQueuedBytes: number
}

export const DEFAULT_API_LIMITS: Readonly<ApiLimits> = Object.freeze({
  maxConnections: MAX_API_CONNECTIONS,
  maxSubscribers: MAX_API_SUBSCRIBERS,
  perUid: Object.freeze({ connections: MAX_API_CONNECTIONS_PER_UID, subscribers: MAX_API_SUBSCRIBERS_PER_UID, inFlight: MAX_API_IN_FLIGHT_PER_UID }),
  unproven: UNPROVEN_API_SHARE,
  idleTimeoutMs: API_IDLE_TIMEOUT_MS,
  maxQueuedBytes: MAX_QUEUED_BYTES
})
