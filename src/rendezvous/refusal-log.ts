/**
 * Log lines for what strangers make the server refuse (bad frames, failed
 * registrations, refused relays, limits hit). Anyone can cause them, at any rate and
 * from spoofable or many sources, so they are aggregated: the first refusal after a
 * quiet second is logged as it is (one misconfigured agent shows its reason at once);
 * the ones that follow within REFUSAL_LOG_INTERVAL_MS are counted per what/code and
 * logged as one line when the interval ends. At most one line a second, whatever the
 * attack.
 */
import type { Endpoint } from '../protocol/endpoint.js'
import type { Clock, Logger } from '../protocol/log.js'

/** At most one refusal line per this long. */
export const REFUSAL_LOG_INTERVAL_MS = 1_000

export class RefusalLog {
  private lastLine = -Infinity
  /** Muted since the last line: count per `what (code)`, and the latest example. */
  private muted = new Map<string, number>()
  private example: { from: string; reason: string } | null = null
  private timer: NodeJS.Timeout | null = null

  constructor(
    private readonly log: Logger,
    private readonly clock: Clock
  ) {}

  refused(what: string, from: Endpoint, code: string, reason: string): void {
    const now = this.clock.now()
    if (now - this.lastLine >= REFUSAL_LOG_INTERVAL_MS && this.muted.size === 0) {
      this.lastLine = now
      this.log.info(what, { from: `${from.host}:${from.port}`, code, reason })
      return
    }
    const k = `${what} (${code})`
    this.muted.set(k, (this.muted.get(k) ?? 0) + 1)
    this.example = { from: `${from.host}:${from.port}`, reason }
    if (!this.timer) {
      this.timer = setTimeout(() => this.onIntervalExpired(), Math.max(1, this.lastLine + REFUSAL_LOG_INTERVAL_MS - now))
      this.timer.unref()
    }
  }

  private onIntervalExpired(): void {
    this.timer = null
    if (this.muted.size === 0) return
    const counts = Object.fromEntries(this.muted)
    const total = [...this.muted.values()].reduce((a, b) => a + b, 0)
    this.log.info('refused (aggregated)', { total, counts, last: this.example })
    this.muted = new Map()
    this.example = null
    this.lastLine = this.clock.now()
  }

  /** Logs what is pending now (server shutdown). */
  flush(): void {
    if (this.timer) clearTimeout(this.timer)
    this.onIntervalExpired()
  }
}
