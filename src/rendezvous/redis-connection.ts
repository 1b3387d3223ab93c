/**
 * How a rendezvous server connects to the shared registry's Redis (redis-cluster.ts): a
 * command fails at once while Redis is down (no offline queue: the caller serves
 * locally) and after its timeout otherwise, and a lost connection is retried with a
 * capped backoff.
 */
import { createClient } from '@redis/client'
import type { Client } from './redis-record-writer.js'

/** A Redis command that has not answered by then fails: the server then serves what it holds. */
export const REDIS_TIMEOUT_MS = 1_000
/** Reconnect backoff cap while Redis is down. */
export const RECONNECT_MAX_MS = 2_000

/** Reconnect delay after `retries` failed attempts: 100 ms doubling, at most RECONNECT_MAX_MS. */
function reconnectDelay(retries: number): number {
  return Math.min(100 * 2 ** Math.min(retries, 5), RECONNECT_MAX_MS)
}

/** A connection to `url` whose commands (and connect) time out after `timeoutMs`; in-flight commands fail when it drops. */
export function redisConnection(url: string, timeoutMs: number): Client {
  return createClient({
    url,
    disableOfflineQueue: true, // while Redis is down a command fails at once: the caller serves locally
    commandOptions: { timeout: timeoutMs, rejectInFlight: true },
    socket: { connectTimeout: timeoutMs, reconnectStrategy: reconnectDelay }
  })
}
