/**
 * What one source (an IPv4 address, or an IPv6 /64: one subscriber's prefix) and one
 * key may make the rendezvous server do: token buckets for work (Noise handshakes,
 * introductions, relay binds) and counts for what is held (connections). Pure: the
 * clock is injected, so the buckets run under a fake clock in tests.
 *
 * Several agents behind one NAT share an address (the NAT lab runs 20 behind one; an
 * office or a carrier-grade NAT many more), so the per-source numbers are set for a
 * crowd, not for one machine; the per-key numbers are for one agent. docs/SERVICE.md
 * lists each limit with its flag.
 */
import net from 'node:net'
import type { Clock } from '../protocol/log.js'
import { TokenBucket } from '../tunnel/token-bucket.js'

export interface ServerLimits {
  /**
   * Connections from one source that have not yet registered or bound a relay, at once
   * (--max-unauth-per-ip). 32: the NAT lab starts 20 agents behind one address at the
   * same moment, and each is unauthenticated for its handshake's round trips.
   */
  maxUnauthPerSource: number
  /** Unauthenticated connections at once from everyone (--max-unauth): the memory bound over many sources. */
  maxUnauth: number
  /** All connections from one source at once, control and relay (--max-conns-per-ip). */
  maxConnsPerSource: number
  /** A connection must register or bind a relay this long after its accept (--auth-timeout); absolute. */
  authTimeoutMs: number
  /** A message started on an authenticated control connection must end within this long (absolute per message). */
  messageTimeoutMs: number
  /** Noise handshakes (SECURE: each registration needs one) per source per minute (--sessions-per-minute). */
  sessionsPerMinute: number
  /** REGISTERs per key per minute: an agent re-registers on each reconnect, with a backoff that starts at 0.5 s. */
  registrationsPerKeyPerMinute: number
  /** INTRODUCE per key per minute (--introductions-per-minute); a source gets INTRO_SOURCE_FACTOR times that. */
  introductionsPerMinute: number
  /** RELAY binds per source per minute (--relays-per-minute): each costs a signature check. */
  relaysPerMinute: number
  /** Relay permissions one key may hold at once as the agent that asked (--relay-max-permits). */
  maxRelayPermitsPerKey: number
}

/** A source may introduce as much as this many busy agents behind it. */
export const INTRO_SOURCE_FACTOR = 10

export const DEFAULT_SERVER_LIMITS: ServerLimits = {
  maxUnauthPerSource: 32,
  // × ≤ ~20 KiB each (socket, ≤ 256 B clear frame, ≤ 16 KiB Noise message): ≤ ~80 MiB.
  maxUnauth: 4096,
  // 20 agents, each with a control connection and a few relayed tunnels (two connections each), with room.
  maxConnsPerSource: 256,
  authTimeoutMs: 10_000,
  // The largest agent message is a REGISTER of < 1 KiB: seconds are plenty on any link.
  messageTimeoutMs: 10_000,
  // 20 agents behind one NAT all (re)connecting at once, three times over, within a minute.
  sessionsPerMinute: 60,
  registrationsPerKeyPerMinute: 20,
  // A relayed tunnel asks for a direct path every 5 s (12 a minute); 10 such tunnels per agent.
  introductionsPerMinute: 120,
  // Two binds per relayed tunnel (both agents may be behind the one NAT); 60 tunnels a minute.
  relaysPerMinute: 120,
  // A permission lives 30 s (RELAY_BIND_TIMEOUT_MS): 32 relayed opens pending at once per agent.
  maxRelayPermitsPerKey: 32
}

/**
 * Token buckets by key (a source or a peer ID), `perMinute` each. Full buckets are
 * forgotten by sweep(), so memory follows the keys active in the last minute.
 */
export class RateLimiter {
  private readonly buckets = new Map<string, TokenBucket>()

  constructor(
    readonly perMinute: number,
    private readonly clock: Clock
  ) {}

  take(key: string): boolean {
    let b = this.buckets.get(key)
    if (!b) {
      // A minute's worth at once, then a steady perMinute.
      b = new TokenBucket(this.perMinute / 60, this.perMinute, this.clock)
      this.buckets.set(key, b)
    }
    return b.take()
  }

  /** Forgets full buckets (the server calls it once a second with its expiry sweep). */
  sweep(): void {
    for (const [k, b] of this.buckets) if (b.full) this.buckets.delete(k)
  }

  get size(): number {
    return this.buckets.size
  }
}

/** Counts of things held per key (connections per source); a key at 0 is forgotten. */
export class Counter {
  private readonly counts = new Map<string, number>()
  total = 0

  get(key: string): number {
    return this.counts.get(key) ?? 0
  }

  add(key: string): void {
    this.counts.set(key, this.get(key) + 1)
    this.total++
  }

  remove(key: string): void {
    const n = this.get(key) - 1
    if (n > 0) this.counts.set(key, n)
    else this.counts.delete(key)
    this.total--
  }
}

/**
 * The source a limit counts against: an IPv4 address as it is, an IPv6 address by its
 * /64 (one subscriber gets a whole /64, RFC 6177, and could otherwise pick a fresh
 * address per connection).
 */
export function sourceOf(host: string): string {
  if (net.isIP(host) !== 6) return host
  const full = expandIpv6(host)
  return full ? `${full.slice(0, 4).join(':')}::/64` : host
}

function expandIpv6(host: string): string[] | null {
  const [head, tail] = host.split('%')[0]!.split('::') as [string, string | undefined]
  const h = head ? head.split(':') : []
  const t = tail ? tail.split(':') : []
  if (tail === undefined && h.length !== 8) return null
  const groups = [...h, ...Array<string>(Math.max(0, 8 - h.length - t.length)).fill('0'), ...t]
  return groups.map((g) => (g.includes('.') ? g : g.padStart(4, '0')))
}
