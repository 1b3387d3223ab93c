/**
 * The rendezvous server's registry: which key holds which name, where each agent was
 * last seen, and who has gone quiet. Pure state (no sockets), driven by a Clock, so
 * expiry is tested with a fake clock. The registrations themselves live in the slots of
 * a RegistrationTable (registration-table.ts: its memory layout).
 */
import type { Endpoint } from '../protocol/endpoint.js'
import { NatdError } from '../protocol/errors.js'
import { base32Bytes, peerId } from '../protocol/identity.js'
import type { Clock } from '../protocol/log.js'
import { withV6Candidate } from '../protocol/ipv6.js'
import { KEY_BYTES, MAX_LAN_ENDPOINTS, NAT_VERDICTS, TOKEN_BYTES, type NatVerdict, type PeerRecord } from '../protocol/rendezvous.js'
import { MemoryNameStore, type NameStore } from './name-store.js'
import { FREE, OFFLINE, ONLINE, packEndpoints, RegistrationTable, unpackEndpoints, type Registration, type RegRef } from './registration-table.js'
import { bytesEqual } from './slot-index.js'

export type { Registration, RegRef } from './registration-table.js'

/**
 * An online agent whose control connection ended (without BYE) is dropped this long
 * after, unless it registered again in between. An agent that lost only its connection
 * reconnects after BACKOFF_FIRST_MS (500 ms) plus a TCP and a Noise handshake and the
 * registration (~5 round trips: ~2 s at 300 ms RTT); an agent whose process died (crash,
 * OOM, SIGKILL: its kernel closes the connection) never does. Waiting for heartbeats to
 * stop instead (--peer-timeout, 60 s) listed such a peer online for up to a minute while
 * introductions to it already failed with PEER_OFFLINE.
 */
export const CONTROL_LOST_GRACE_MS = 5_000
/** How long a dropped agent stays listed as offline ("last seen …") before it is forgotten. */
export const OFFLINE_RETENTION_MS = 24 * 3_600_000
/** Bound on remembered offline agents, so churn cannot grow memory without limit. */
export const MAX_OFFLINE_ENTRIES = 10_000
/**
 * A name whose holder has not been seen for this long is released (--name-ttl): a name
 * is bound for good, but not forever to a key nobody uses any more. Three months, so a
 * machine off for a long holiday comes back to its name.
 */
export const DEFAULT_NAME_TTL_MS = 90 * 24 * 3_600_000
/** How often expire() also releases names past their TTL (it walks every binding). */
export const NAME_SWEEP_MS = 3_600_000

export interface RegisterInput {
  publicKey: Uint8Array
  name: string
  lan: Endpoint[]
  nat: NatVerdict
  token: Uint8Array // used only when the key has no registration yet
  udp?: Endpoint
  tcp?: Endpoint
}

export interface RegistryInit {
  /** Who holds which name, for good. Default: in memory (tests; a server without a state directory). */
  names?: NameStore
  /** Release a name whose holder has not been seen for this long. Default DEFAULT_NAME_TTL_MS. */
  nameTtlMs?: number
}

export class Registry {
  private readonly slots: RegistrationTable
  readonly nameStore: NameStore
  private readonly nameTtlMs: number
  private lastNameSweep: number

  constructor(
    private readonly clock: Clock,
    private readonly peerTimeoutMs: number,
    init: RegistryInit = {}
  ) {
    this.slots = new RegistrationTable(clock)
    this.nameStore = init.names ?? new MemoryNameStore()
    this.nameTtlMs = init.nameTtlMs ?? DEFAULT_NAME_TTL_MS
    this.lastNameSweep = clock.now()
  }

  /**
   * Registers or refreshes an agent. A name belongs to the first key that takes it, for
   * good: another key asking for it gets NAME_TAKEN whether the holder is online, offline
   * or long forgotten by this registry, and across restarts (the name store remembers).
   * The name is freed only by its holder (releaseName), by the operator (`names rm`), or
   * when its holder has not been seen for the name TTL.
   *
   * A key registering under another name than the one it holds moves its binding: the old
   * name is released. A key is one agent with one name; keeping the old name too would
   * let one key hoard names, and agents are renamed by restarting natd with --name.
   */
  register(input: RegisterInput): { ref: RegRef; isNew: boolean } {
    let slot = this.slots.slotOfKey(input.publicKey)
    if (slot < 0 && input.token.length !== TOKEN_BYTES) throw new RangeError(`a token is ${TOKEN_BYTES} bytes`)
    this.claimName(input.name, input.publicKey)
    const holder = this.slots.slotOfName(input.name)
    // The store gave the name to this key: an earlier holder this registry still
    // remembers (offline, or whose binding was released) is forgotten.
    if (holder !== undefined && holder !== slot) this.slots.forget(holder)
    const isNew = slot < 0 || this.slots.state[slot] !== ONLINE
    if (slot < 0) slot = this.slots.allocate(input.publicKey, input.token, input.name)
    this.slots.rename(slot, input.name)
    this.slots.lans[slot] = packEndpoints(input.lan)
    this.slots.nat[slot] = Math.max(0, NAT_VERDICTS.indexOf(input.nat))
    if (input.udp) this.slots.udp.set(slot, input.udp)
    if (input.tcp) this.slots.tcp.set(slot, input.tcp)
    this.slots.setState(slot, ONLINE)
    this.slots.lastSeen[slot] = this.clock.now()
    this.slots.lostAt[slot] = 0
    return { ref: this.slots.refOf(slot), isNew }
  }

  /** The online registration holding this token. */
  byTokenBytes(token: Uint8Array): RegRef | undefined {
    if (token.length !== TOKEN_BYTES) return undefined
    const slot = this.slots.slotOfToken(token)
    return slot >= 0 && this.slots.state[slot] === ONLINE ? this.slots.refOf(slot) : undefined
  }

  /**
   * A new control session registered: its heartbeats get a new seal key (the server
   * derives it from the token and this epoch) and sequence numbers start over, so a
   * datagram of an earlier session cannot be replayed into this one.
   */
  beginSession(ref: RegRef): number {
    const slot = this.slots.slotOf(ref)
    if (slot < 0) return 0
    this.slots.hbSeq[slot] = 0
    return (this.slots.epoch[slot] = (this.slots.epoch[slot]! + 1) >>> 0)
  }

  epochOf(ref: RegRef): number {
    const slot = this.slots.slotOf(ref)
    return slot >= 0 ? this.slots.epoch[slot]! : 0
  }

  /** Takes a sealed heartbeat's sequence number when it is newer than the last one (no replays, no reordering back). */
  acceptHeartbeat(ref: RegRef, seq: number): boolean {
    const slot = this.slots.slotOf(ref)
    if (slot < 0 || seq <= this.slots.hbSeq[slot]!) return false
    this.slots.hbSeq[slot] = seq
    return true
  }

  /** Where the agent's sealed heartbeats come from now: its UDP endpoint. */
  setUdp(ref: RegRef, ep: Endpoint): void {
    const slot = this.slots.slotOf(ref)
    if (slot >= 0) this.slots.udp.set(slot, ep)
  }

  /**
   * Where the agent's sealed heartbeats to our IPv6 socket come from: its IPv6
   * candidate, first in its candidate list (protocol/ipv6.ts). Returns whether it changed.
   */
  setV6(ref: RegRef, ep: Endpoint): boolean {
    const slot = this.slots.slotOf(ref)
    if (slot < 0) return false
    const packed = this.slots.lans[slot]!
    const first = `${ep.host} ${ep.port}`
    if (packed === first || packed.startsWith(`${first} `)) return false
    this.slots.lans[slot] = packEndpoints(withV6Candidate(unpackEndpoints(packed), ep, MAX_LAN_ENDPOINTS))
    return this.slots.lans[slot] !== packed
  }

  touch(ref: RegRef): void {
    const slot = this.slots.slotOf(ref)
    if (slot >= 0) this.slots.lastSeen[slot] = this.clock.now()
  }

  isOnline(ref: RegRef): boolean {
    const slot = this.slots.slotOf(ref)
    return slot >= 0 && this.slots.state[slot] === ONLINE
  }

  /** Whether the agent's registered UDP endpoint is `ep` (the heartbeat check; builds nothing). */
  udpIs(ref: RegRef, ep: Endpoint): boolean {
    const slot = this.slots.slotOf(ref)
    return slot >= 0 && this.slots.udp.is(slot, ep)
  }

  /** Its control connection closed: the agent no longer has a TCP endpoint. */
  clearTcp(ref: RegRef): void {
    const slot = this.slots.slotOf(ref)
    if (slot >= 0) this.slots.tcp.set(slot, null)
  }

  /**
   * Its control connection ended without BYE: unless the agent registers again within
   * CONTROL_LOST_GRACE_MS, expire() drops it (heartbeats alone do not keep it online:
   * nobody can be introduced to an agent the server cannot reach).
   */
  controlLost(ref: RegRef): void {
    const slot = this.slots.slotOf(ref)
    if (slot >= 0 && this.slots.state[slot] === ONLINE && this.slots.lostAt[slot] === 0) this.slots.lostAt[slot] = this.clock.now()
  }

  /** Finds a peer by name, full peer ID, or an unambiguous ID prefix of 8+ characters. */
  lookup(target: string): RegRef | undefined {
    const byName = this.slots.slotOfName(target)
    if (byName !== undefined) return this.slots.refOf(byName)
    const head = target.length >= 8 ? base32Bytes(target) : null
    if (!head || head.length > KEY_BYTES) return undefined
    if (head.length === KEY_BYTES) {
      const slot = this.slots.slotOfKey(head) // a full peer ID
      return slot >= 0 && peerId(this.slots.keyOf(slot)) === target ? this.slots.refOf(slot) : undefined
    }
    // A prefix: compare the whole bytes it spells raw, spell out only the keys that match them.
    const spelled = Math.ceil((target.length * 5) / 8)
    let found = -1
    for (let slot = 0; slot < this.slots.used; slot++) {
      const at = slot * KEY_BYTES
      if (this.slots.state[slot] === FREE || !bytesEqual(this.slots.keys, at, head, head.length)) continue
      if (!peerId(this.slots.keys.subarray(at, at + spelled)).startsWith(target)) continue
      if (found >= 0) return undefined
      found = slot
    }
    return found >= 0 ? this.slots.refOf(found) : undefined
  }

  /** lookup() and get(): the registration found, as it stands now. */
  find(target: string): Registration | undefined {
    const ref = this.lookup(target)
    return ref === undefined ? undefined : this.get(ref)
  }

  /** Marks an agent offline now (it said goodbye, or timed out). Returns whether it was online. */
  drop(ref: RegRef): boolean {
    const slot = this.slots.slotOf(ref)
    if (slot < 0 || this.slots.state[slot] !== ONLINE) return false
    this.slots.dropSlot(slot)
    return true
  }

  /**
   * Frees `name` at the request of `publicKey` (natd release-name): true when released;
   * false when the name is not bound; UNAUTHORIZED when another key holds it. The key's
   * live registration, if any, goes offline (the caller tells its peers).
   */
  releaseName(name: string, publicKey: Uint8Array): boolean {
    const binding = this.nameStore.get(name)
    if (!binding) return false
    if (!bytesEqual(binding.publicKey, 0, publicKey, KEY_BYTES)) {
      throw new NatdError('UNAUTHORIZED', `the name ${name} is bound to another key: only its holder can release it`)
    }
    this.nameStore.release(name)
    const slot = this.slots.slotOfKey(publicKey)
    if (slot >= 0 && this.slots.state[slot] === ONLINE) this.slots.dropSlot(slot)
    return true
  }

  /**
   * Drops agents silent for longer than the peer timeout, and those whose control
   * connection ended more than CONTROL_LOST_GRACE_MS ago; returns them (as they were
   * dropped) so peers can be told.
   */
  expire(): Registration[] {
    const now = this.clock.now()
    const dropped: Registration[] = []
    let offline = 0
    for (let slot = 0; slot < this.slots.used; slot++) {
      const lost = this.slots.lostAt[slot]! > 0 && now - this.slots.lostAt[slot]! > CONTROL_LOST_GRACE_MS
      if (this.slots.state[slot] === ONLINE && (lost || now - this.slots.lastSeen[slot]! > this.peerTimeoutMs)) {
        this.slots.dropSlot(slot)
        dropped.push(this.slots.read(slot))
      }
      if (this.slots.state[slot] === OFFLINE) {
        offline++
        if (now - this.slots.lastSeen[slot]! > OFFLINE_RETENTION_MS || offline > MAX_OFFLINE_ENTRIES) this.slots.forget(slot)
      }
    }
    if (now - this.lastNameSweep >= NAME_SWEEP_MS) this.sweepNames(now)
    return dropped
  }

  /** Names past their TTL, released now (expire() does this once an hour). Returns them. */
  sweepNames(now = this.clock.now()): string[] {
    this.lastNameSweep = now
    // Online agents are seen now: an agent online for months without re-registering keeps its name.
    for (let slot = 0; slot < this.slots.used; slot++) if (this.slots.state[slot] === ONLINE) this.nameStore.seen(this.slots.names[slot]!, now)
    const released: string[] = []
    for (const b of this.nameStore.list()) {
      if (now - b.lastSeenAt > this.nameTtlMs && !this.keyIsOnline(b.publicKey)) {
        this.nameStore.release(b.name)
        released.push(b.name)
      }
    }
    return released
  }

  get size(): number {
    return this.slots.count
  }

  /** Registrations online now (size counts the offline ones it still remembers too). */
  get online(): number {
    return this.slots.online
  }

  /** Whether the registry still remembers this registration (online or offline). */
  has(ref: RegRef): boolean {
    return this.slots.slotOf(ref) >= 0
  }

  /** The registration as it stands now; undefined once the agent is forgotten. */
  get(ref: RegRef): Registration | undefined {
    const slot = this.slots.slotOf(ref)
    return slot >= 0 ? this.slots.read(slot) : undefined
  }

  /** The peer record of a registration as it stands now (built from the columns: the introduction path). */
  peer(ref: RegRef): PeerRecord | undefined {
    const slot = this.slots.slotOf(ref)
    return slot >= 0 ? this.slots.peerAt(slot) : undefined
  }

  /** The peer record of a registration read earlier (expire() returns them as they were dropped). */
  record(reg: Registration): PeerRecord {
    return {
      publicKey: reg.publicKey,
      name: reg.name,
      online: reg.online,
      lastSeenAgoMs: Math.max(0, this.clock.now() - reg.lastSeen),
      nat: reg.nat,
      udp: reg.udp,
      tcp: reg.tcp,
      lan: reg.lan
    }
  }

  /** The peer list for `ref`: online agents first, then the most recently seen, at most `max`. */
  peersFor(ref: RegRef, max: number): PeerRecord[] {
    const self = this.slots.slotOf(ref)
    const online: number[] = []
    const offline: number[] = []
    for (let slot = 0; slot < this.slots.used; slot++) {
      if (slot === self) continue
      if (this.slots.state[slot] === ONLINE) {
        if (online.length < max) online.push(slot)
      } else if (this.slots.state[slot] === OFFLINE) offline.push(slot)
    }
    const room = max - online.length
    const recent = room > 0 ? offline.sort((a, b) => this.slots.lastSeen[b]! - this.slots.lastSeen[a]!).slice(0, room) : []
    return [...online, ...recent].map((slot) => this.slots.peerAt(slot))
  }

  // --- names -----------------------------------------------------------------

  /** Binds `name` to `key` in the store, or throws NAME_TAKEN; a binding past its TTL is released lazily here. */
  private claimName(name: string, key: Uint8Array): void {
    const now = this.clock.now()
    const binding = this.nameStore.get(name)
    if (binding && !bytesEqual(binding.publicKey, 0, key, KEY_BYTES)) {
      if (now - binding.lastSeenAt > this.nameTtlMs && !this.keyIsOnline(binding.publicKey)) {
        this.nameStore.release(name)
      } else {
        throw new NatdError(
          'NAME_TAKEN',
          `the name ${name} is bound to another key (${peerId(binding.publicKey).slice(0, 8)}); ` +
            `its holder can free it with \`natd release-name\`, the server's operator with \`natd-rendezvous names rm ${name}\``
        )
      }
    }
    this.nameStore.bind(name, key, now) // or just seen(), when the key holds it already
  }

  private keyIsOnline(key: Uint8Array): boolean {
    const slot = this.slots.slotOfKey(key)
    return slot >= 0 && this.slots.state[slot] === ONLINE
  }
}
