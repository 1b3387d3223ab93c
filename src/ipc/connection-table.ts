/**
 * Who gets a slot on the local API (issue "Abuse resistance"). node cannot read a Unix
 * socket peer's credentials (SO_PEERCRED), so slots cannot be shared out per user.
 * Instead the table makes sure an honest short call (natctl) always gets in:
 *
 *   - at most `maxConnections` connections; when a new one arrives and the table is full,
 *     the connection idle the longest (no request in flight, not subscribed) is evicted
 *     to make room — holding idle connections buys an attacker nothing;
 *   - at most `maxSubscribers` of them subscribed (subscribers are never idle), so at
 *     least `maxConnections - maxSubscribers` slots are always evictable or busy with a
 *     request that finishes;
 *   - only when every slot is a subscriber or has a request in flight is a newcomer
 *     refused, and it is told so (BUSY), not silently closed.
 *
 * Idle connections also expire on their own after the idle timeout (ApiServer's timer).
 * Pure: the caller passes the time.
 */

export interface ConnectionTableInit {
  /** Connections held at once (default MAX_API_CONNECTIONS). */
  maxConnections: number
  /** Subscribed connections held at once (default MAX_API_SUBSCRIBERS). */
  maxSubscribers: number
}

interface Slot {
  /** Requests received and not yet answered. */
  inFlight: number
  subscribed: boolean
  /** Last time a request began or ended (or the connection opened), in ms. */
  lastActiveMs: number
}

export type Admission<C> = { kind: 'admitted' } | { kind: 'admitted-evicting'; evicted: C; idleMs: number } | { kind: 'refused' }

export class ConnectionTable<C> {
  private readonly slots = new Map<C, Slot>()
  private subscribers = 0

  constructor(private readonly init: ConnectionTableInit) {}

  get size(): number {
    return this.slots.size
  }

  get subscriberCount(): number {
    return this.subscribers
  }

  has(conn: C): boolean {
    return this.slots.has(conn)
  }

  /** Takes a slot for `conn`, evicting the longest-idle connection when full. */
  admit(conn: C, nowMs: number): Admission<C> {
    let result: Admission<C> = { kind: 'admitted' }
    if (this.slots.size >= this.init.maxConnections) {
      const victim = this.longestIdle()
      if (!victim) return { kind: 'refused' }
      const idleMs = nowMs - this.slots.get(victim)!.lastActiveMs
      this.remove(victim)
      result = { kind: 'admitted-evicting', evicted: victim, idleMs }
    }
    this.slots.set(conn, { inFlight: 0, subscribed: false, lastActiveMs: nowMs })
    return result
  }

  remove(conn: C): void {
    const slot = this.slots.get(conn)
    if (!slot) return
    if (slot.subscribed) this.subscribers--
    this.slots.delete(conn)
  }

  requestStarted(conn: C, nowMs: number): void {
    const slot = this.slots.get(conn)
    if (!slot) return
    slot.inFlight++
    slot.lastActiveMs = nowMs
  }

  requestFinished(conn: C, nowMs: number): void {
    const slot = this.slots.get(conn)
    if (!slot) return
    slot.inFlight = Math.max(0, slot.inFlight - 1)
    slot.lastActiveMs = nowMs
  }

  /** Marks `conn` subscribed; false when the subscriber slots are full (it stays a plain connection). */
  subscribe(conn: C): boolean {
    const slot = this.slots.get(conn)
    if (!slot) return false
    if (slot.subscribed) return true
    if (this.subscribers >= this.init.maxSubscribers) return false
    slot.subscribed = true
    this.subscribers++
    return true
  }

  /** Idle: in the table, not subscribed, no request in flight. Only idle connections expire or are evicted. */
  isIdle(conn: C): boolean {
    const slot = this.slots.get(conn)
    return slot !== undefined && !slot.subscribed && slot.inFlight === 0
  }

  private longestIdle(): C | undefined {
    let best: C | undefined
    let bestAt = Infinity
    for (const [conn, slot] of this.slots) {
      if (slot.subscribed || slot.inFlight > 0) continue
      if (slot.lastActiveMs < bestAt) {
        best = conn
        bestAt = slot.lastActiveMs
      }
    }
    return best
  }
}
