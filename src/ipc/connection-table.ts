/**
 * Who gets a slot on the local API (issue "Abuse resistance"). Slots are shared out per
 * user: a connection belongs to the uid it proved (uid-proof.ts), or to one small shared
 * "unproven" pool until it proves one (every connection starts there; old clients and
 * clients that cannot prove stay there). Each owner has its own share:
 *
 *   - at most `share.connections` connections, `share.subscribers` of them subscribed and
 *     `share.inFlight` requests in flight; one owner's flood fills only its own share, so
 *     it cannot take another owner's slots;
 *   - a newcomer (unproven) takes a free slot; when the unproven pool or the whole table
 *     is full, the connection idle the longest (no request in flight, not subscribed) is
 *     evicted to make room, from the unproven pool first — holding idle connections buys
 *     an attacker nothing; a connection that proves a uid whose share is full evicts that
 *     uid's own longest-idle connection;
 *   - at most `maxConnections` in all (file descriptors) and `maxSubscribers` subscribed;
 *   - only when no slot it may take is free or idle is a newcomer refused, and it is
 *     told so (BUSY), not silently closed.
 *
 * With the defaults (server.ts) one uid holds at most 16 slots and the unproven pool at
 * most 8 busy ones, so at least 40 of the 64 are free or evictable for everyone else.
 * Idle connections also expire on their own after the idle timeout (ApiServer's timer).
 * Pure: the caller passes the time.
 */

/** A connection's owner: the uid it proved, or the shared pool of unproven connections. */
export type Owner = number | 'unproven'

/** What one owner may hold at once. */
export interface Share {
  connections: number
  subscribers: number
  /** Requests received and not yet answered, over all its connections. */
  inFlight: number
}

export interface ConnectionTableInit {
  /** Connections held at once, all owners together (default MAX_API_CONNECTIONS). */
  maxConnections: number
  /** Subscribed connections held at once, all owners together (default MAX_API_SUBSCRIBERS). */
  maxSubscribers: number
  /** One uid's share (default: the whole table). */
  perUid?: Share
  /** The unproven pool's share (default: the whole table). */
  unproven?: Share
}

interface Slot {
  owner: Owner
  /** Requests received and not yet answered. */
  inFlight: number
  subscribed: boolean
  /** Last time a request began or ended (or the connection opened), in ms. */
  lastActiveMs: number
  /** Until when the connection is proving its uid (it asked for a nonce), in ms; 0 when not. */
  provingUntilMs: number
}

interface Held {
  connections: number
  subscribers: number
  inFlight: number
}

export type Admission<C> = { kind: 'admitted' } | { kind: 'admitted-evicting'; evicted: C; idleMs: number } | { kind: 'refused' }

export class ConnectionTable<C> {
  private readonly slots = new Map<C, Slot>()
  private readonly held = new Map<Owner, Held>()
  private subscribers = 0
  private readonly perUid: Share
  private readonly unproven: Share

  constructor(private readonly init: ConnectionTableInit) {
    const whole = { connections: init.maxConnections, subscribers: init.maxSubscribers, inFlight: Infinity }
    this.perUid = init.perUid ?? whole
    this.unproven = init.unproven ?? whole
  }

  get size(): number {
    return this.slots.size
  }

  get subscriberCount(): number {
    return this.subscribers
  }

  has(conn: C): boolean {
    return this.slots.has(conn)
  }

  /** Whom `conn` belongs to (undefined when not in the table). */
  ownerOf(conn: C): Owner | undefined {
    return this.slots.get(conn)?.owner
  }

  /** What `owner` holds now (tests, BUSY messages). */
  heldBy(owner: Owner): Readonly<Held> {
    return this.held.get(owner) ?? { connections: 0, subscribers: 0, inFlight: 0 }
  }

  /** Takes an unproven slot for `conn`, evicting the longest-idle connection when full. */
  admit(conn: C, nowMs: number): Admission<C> {
    let result: Admission<C> = { kind: 'admitted' }
    const poolFull = this.heldBy('unproven').connections >= this.unproven.connections
    if (poolFull || this.slots.size >= this.init.maxConnections) {
      // Within the pool first; a full pool never takes a slot of a proven owner.
      const victim = this.longestIdle(nowMs, 'unproven') ?? (poolFull ? undefined : this.longestIdle(nowMs))
      if (victim === undefined) return { kind: 'refused' }
      result = this.evict(victim, nowMs)
    }
    this.slots.set(conn, { owner: 'unproven', inFlight: 0, subscribed: false, lastActiveMs: nowMs, provingUntilMs: 0 })
    this.count('unproven').connections++
    return result
  }

  /**
   * Moves `conn` into `uid`'s share, evicting that uid's longest-idle connection when its
   * share is full; refused (conn stays where it was) when the share is full of busy ones.
   */
  prove(conn: C, uid: number, nowMs: number): Admission<C> {
    const slot = this.slots.get(conn)
    if (!slot) return { kind: 'refused' }
    if (slot.owner === uid) return { kind: 'admitted' }
    const h = this.heldBy(uid)
    if ((slot.subscribed && h.subscribers >= this.perUid.subscribers) || h.inFlight + slot.inFlight > this.perUid.inFlight) return { kind: 'refused' }
    let result: Admission<C> = { kind: 'admitted' }
    if (h.connections >= this.perUid.connections) {
      const victim = this.longestIdle(nowMs, uid)
      if (victim === undefined) return { kind: 'refused' }
      result = this.evict(victim, nowMs)
    }
    this.uncount(slot)
    slot.owner = uid
    const to = this.count(uid)
    to.connections++
    to.inFlight += slot.inFlight
    if (slot.subscribed) to.subscribers++
    return result
  }

  remove(conn: C): void {
    const slot = this.slots.get(conn)
    if (!slot) return
    if (slot.subscribed) this.subscribers--
    this.uncount(slot)
    this.slots.delete(conn)
  }

  /**
   * `conn` asked for a nonce and is proving its uid until `untilMs` (the proof's
   * deadline), or is done (`untilMs` 0). Until then it is evicted only after every idle
   * connection that is not proving: a client between its nonce and its proof is idle for
   * a moment, and a flood of idle newcomers must not push it out in that moment.
   */
  proving(conn: C, untilMs: number): void {
    const slot = this.slots.get(conn)
    if (slot) slot.provingUntilMs = untilMs
  }

  /** A request begins on `conn`; false (nothing counted) when its owner has its share of requests in flight. */
  requestStarted(conn: C, nowMs: number): boolean {
    const slot = this.slots.get(conn)
    if (!slot) return false
    const h = this.count(slot.owner)
    if (h.inFlight >= this.shareOf(slot.owner).inFlight) return false
    slot.inFlight++
    h.inFlight++
    slot.lastActiveMs = nowMs
    return true
  }

  requestFinished(conn: C, nowMs: number): void {
    const slot = this.slots.get(conn)
    if (!slot) return
    if (slot.inFlight > 0) {
      slot.inFlight--
      this.count(slot.owner).inFlight--
    }
    slot.lastActiveMs = nowMs
  }

  /** Marks `conn` subscribed; false when the subscriber slots (its owner's or all) are full (it stays a plain connection). */
  subscribe(conn: C): boolean {
    const slot = this.slots.get(conn)
    if (!slot) return false
    if (slot.subscribed) return true
    const h = this.count(slot.owner)
    if (this.subscribers >= this.init.maxSubscribers || h.subscribers >= this.shareOf(slot.owner).subscribers) return false
    slot.subscribed = true
    this.subscribers++
    h.subscribers++
    return true
  }

  /** Idle: in the table, not subscribed, no request in flight. Only idle connections expire or are evicted. */
  isIdle(conn: C): boolean {
    const slot = this.slots.get(conn)
    return slot !== undefined && !slot.subscribed && slot.inFlight === 0
  }

  /** The share `owner` may hold. */
  shareOf(owner: Owner): Share {
    return owner === 'unproven' ? this.unproven : this.perUid
  }

  private evict(victim: C, nowMs: number): Admission<C> {
    const idleMs = nowMs - this.slots.get(victim)!.lastActiveMs
    this.remove(victim)
    return { kind: 'admitted-evicting', evicted: victim, idleMs }
  }

  private count(owner: Owner): Held {
    let h = this.held.get(owner)
    if (!h) this.held.set(owner, (h = { connections: 0, subscribers: 0, inFlight: 0 }))
    return h
  }

  private uncount(slot: Slot): void {
    const h = this.count(slot.owner)
    h.connections--
    h.inFlight -= slot.inFlight
    if (slot.subscribed) h.subscribers--
    if (h.connections === 0) this.held.delete(slot.owner)
  }

  /** The longest-idle connection, of `owner` only when given; one proving its uid only when no other is idle. */
  private longestIdle(nowMs: number, owner?: Owner): C | undefined {
    let best: C | undefined
    let bestProving = true
    let bestAt = Infinity
    for (const [conn, slot] of this.slots) {
      if (slot.subscribed || slot.inFlight > 0) continue
      if (owner !== undefined && slot.owner !== owner) continue
      const proving = slot.provingUntilMs > nowMs
      if ((bestProving && !proving) || (proving === bestProving && slot.lastActiveMs < bestAt)) {
        best = conn
        bestProving = proving
        bestAt = slot.lastActiveMs
      }
    }
    return best
  }
}
