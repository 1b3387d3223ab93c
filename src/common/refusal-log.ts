/**
 * Log lines for what others make us refuse: the server's bad frames, failed
 * registrations and limits hit; an agent's punching budget; forged datagrams from the
 * server's address. Anyone can cause them, at any rate and from spoofable or many
 * sources, so every one of them is logged the same way:
 *
 *   - the first refusal of a kind (what + code) is logged as it is, at once (one
 *     misconfigured peer shows its reason):  `refused {what, code, from, reason}`;
 *   - more of that kind are counted, and when the window ends one line tells them:
 *     `refused again {what, code, count, sources, names, last, windowMs}`;
 *   - a kind quiet for a whole window is forgotten: its next refusal is logged at once.
 *
 * Cost: per kind, one line at once and one per window, whatever the rate or the number
 * of sources (the kinds are a fixed set in the code: a `what` literal and an error
 * code). Distinct sources are counted up to SOURCES_MAX, names kept up to NAMES_SHOWN.
 */
import { formatEndpoint, type Endpoint } from '../protocol/endpoint.js'
import { systemClock, type Timer, type TimerClock } from '../protocol/clock.js'
import type { Logger } from '../protocol/log.js'

/** A summary names at most this many of the sources refused (it counts them all). */
const NAMES_SHOWN = 5
/** Distinct sources counted per kind and window, at most (a flood of fresh keys or addresses stays cheap). */
const SOURCES_MAX = 10_000

export interface RefusalLogInit {
  /** How long refusals of one kind are counted before their line. */
  windowMs: number
  /** What a refusal is worth where this log is used (a server: info; an agent's budget: warn; forgeries: debug). */
  level: 'debug' | 'info' | 'warn'
}

interface Kind {
  what: string
  code: string
  count: number
  sources: Set<string>
  last: { from: string; reason: string | undefined } | null
}

/**
 * What an authenticated peer makes an agent refuse (a message or file past its quota or
 * the policy, a connection to a port not exposed to it): a peer opens channels as fast
 * as its tunnel carries them, so these are counted like the rest, at warn (the user may
 * wonder why a peer could not get in).
 */
export const PEER_REFUSAL_LOG: RefusalLogInit = Object.freeze({ windowMs: 10_000, level: 'warn' })

/**
 * What a local user makes natd refuse through its sockets (the API, the data socket of
 * `natctl cp`): a local client connects and asks as fast as it likes, so these are
 * counted the same way, at warn.
 */
export const LOCAL_REFUSAL_LOG: RefusalLogInit = Object.freeze({ windowMs: 10_000, level: 'warn' })

export class RefusalLog {
  private readonly kinds = new Map<string, Kind>()
  private timer: Timer | null = null

  constructor(
    private readonly log: Logger,
    private readonly init: RefusalLogInit,
    /** The count window's timer (unref'd: the log never keeps a process alive). */
    private readonly timers: Pick<TimerClock, 'setTimeout' | 'clear'> = systemClock
  ) {}

  /** `from`: who made us refuse (an address, or a peer's name). */
  refused(what: string, from: Endpoint | string, code: string, reason?: string): void {
    const source = typeof from === 'string' ? from : formatEndpoint(from)
    const key = `${what}\0${code}`
    const kind = this.kinds.get(key)
    if (kind) {
      kind.count++
      if (kind.sources.size < SOURCES_MAX) kind.sources.add(source)
      kind.last = { from: source, reason }
      return
    }
    this.kinds.set(key, { what, code, count: 0, sources: new Set(), last: null })
    this.log[this.init.level]('refused', { what, code, from: source, ...(reason === undefined ? {} : { reason }) })
    this.timer ??= this.timers.setTimeout(() => this.onWindowExpired(), this.init.windowMs).unref()
  }

  private onWindowExpired(): void {
    this.timer = null
    for (const [key, k] of this.kinds) {
      if (k.count === 0) {
        this.kinds.delete(key)
        continue
      }
      const names = [...k.sources].slice(0, NAMES_SHOWN)
      this.log[this.init.level]('refused again', { what: k.what, code: k.code, count: k.count, sources: k.sources.size, names, last: k.last, windowMs: this.init.windowMs })
      k.count = 0
      k.sources.clear()
      k.last = null
    }
    if (this.kinds.size > 0) this.timer = this.timers.setTimeout(() => this.onWindowExpired(), this.init.windowMs).unref()
  }

  /** Logs what is counted now (shutdown, tests); stops the timer. */
  flush(): void {
    this.timers.clear(this.timer)
    this.onWindowExpired()
    this.timers.clear(this.timer)
    this.timer = null
  }
}
