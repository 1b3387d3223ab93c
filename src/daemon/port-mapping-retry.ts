/**
 * When the port-mapping keeper (port-mapping.ts) asks the gateway again after a failed
 * attempt: a refusal, a gateway that answers none of PCP, NAT-PMP and UPnP, no default
 * gateway at all. The first retry comes PORTMAP_RETRY_MS later, each failure in a row
 * doubles the wait, up to PORTMAP_RETRY_MAX_MS; a mapping granted, or another default
 * gateway (a new network), starts again from the first.
 *
 * Why back off: a gateway that refuses stays refusing until its owner changes something,
 * and each request can cost it much more than us: a miniupnpd with a deny rule scans
 * ~65,000 ports and logs a line for each, for every PCP request (issue 17). A request a
 * minute for as long as natd runs is work and log noise on someone else's router; one
 * every 30 min still finds a gateway fixed later on the same day.
 */
import type { Random } from '../protocol/clock.js'

/** The first retry after a failed attempt (the old mapping, if any, may still hold). */
export const PORTMAP_RETRY_MS = 60_000
/** The longest wait between attempts that keep failing: 60 s doubled 5 times, capped. */
export const PORTMAP_RETRY_MAX_MS = 30 * 60_000
/**
 * Up to this fraction of each wait is taken off at random, so agents behind one gateway
 * that failed together (its reboot, its rule) do not come back in step. Only taken off,
 * so a wait is never longer than the doubling says.
 */
export const PORTMAP_RETRY_JITTER = 0.2

/** Failures in a row, and when the next attempt is due. */
export class PortMapBackoff {
  private failures = 0
  /** When the next attempt is due (clock time); null: none failed since the last success. */
  private at: number | null = null

  constructor(private readonly random: Random) {}

  /** How many attempts in a row failed. */
  get failed(): number {
    return this.failures
  }

  /**
   * Counts one more failure at `now`; returns how long to wait before the next attempt:
   * the backoff's wait, or until `leaseEnd` (a lease still held) if that is sooner, so its
   * loss is noticed then.
   */
  fail(now: number, leaseEnd: number | null = null): number {
    this.failures++
    const full = Math.min(PORTMAP_RETRY_MAX_MS, PORTMAP_RETRY_MS * 2 ** Math.min(this.failures - 1, 30))
    const wait = Math.round(full * (1 - PORTMAP_RETRY_JITTER * this.random()))
    const ms = leaseEnd === null ? wait : Math.min(wait, Math.max(0, leaseEnd - now))
    this.at = now + ms
    return ms
  }

  /** Whether failures are backing off at `now` (the next attempt is not due yet). */
  waiting(now: number): boolean {
    return this.at !== null && now < this.at
  }

  /** Until the next attempt (status), or null when the latest attempt succeeded. */
  retryInMs(now: number): number | null {
    return this.at === null ? null : Math.max(0, this.at - now)
  }

  /** A mapping was granted, or the network changed: the next failure waits PORTMAP_RETRY_MS again. */
  reset(): void {
    this.failures = 0
    this.at = null
  }
}
