/**
 * The rendezvous server's registry: which key holds which name, where each agent was
 * last seen, and who has gone quiet. Pure state (no sockets), driven by a Clock, so
 * expiry is tested with a fake clock.
 *
 * Memory is the point of its layout (the target is 100,000 agents under 1 KiB each):
 * a registration is a slot, a row across typed-array columns (key, token, endpoints,
 * last seen, state), not an object graph of Buffers, endpoint objects and strings. Per
 * agent the heap holds only its name (a string, as the key of the one Map) and the
 * packed text of its LAN endpoints. Keys and tokens are found through SlotIndex hash
 * tables; freed slots are reused (a free list), and a per-slot generation keeps a
 * reference held past its registration's end from resolving to the next holder.
 *
 *   slot s:  keys[32s..32s+32)  tokens[16s..16s+16)  udp/tcp: kind u8, addr u32, port u16
 *            lastSeen f64  lostAt f64 (its control connection ended; 0 while it has one)
 *            state u8 (free | offline | online)  nat u8  generation u32
 *            epoch u32 (control sessions so far: it keys the heartbeat seal)  hbSeq u32
 *            names[s] (string)  lans[s] ('host port host port …', '' for none)
 */
import type { Endpoint } from '../protocol/endpoint.js'
import { NatdError } from '../protocol/errors.js'
import { base32Bytes, peerId, randomBytes } from '../protocol/identity.js'
import type { Clock } from '../protocol/log.js'
import { withV6Candidate } from '../protocol/ipv6.js'
import { KEY_BYTES, MAX_LAN_ENDPOINTS, NAT_VERDICTS, TOKEN_BYTES, type NatVerdict, type PeerRecord } from '../protocol/rendezvous.js'
import { EndpointColumn, grown } from './endpoint-column.js'
import { MemoryNameStore, type NameStore } from './name-store.js'
import { bytesEqual, hashBytes, SlotIndex } from './slot-index.js'

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
/** Slots allocated up front; the columns double when full. */
const INITIAL_SLOTS = 1024
/** A reference is `generation * SLOT_LIMIT + slot`: 2^24 slots, 2^29 generations within 2^53. */
const SLOT_LIMIT = 2 ** 24
const GENERATION_LIMIT = 2 ** 29

const FREE = 0
const OFFLINE = 1
const ONLINE = 2

/**
 * A registration as callers hold it: a number naming its slot and the slot's generation.
 * It stays valid while the registry remembers the agent (online or offline) and stops
 * resolving once the agent is forgotten, even when the slot has a new holder.
 */
export type RegRef = number

/** A registration as it stood when read (a copy: later changes do not show). */
export interface Registration {
  ref: RegRef
  id: string // peer ID (base32 public key)
  publicKey: Uint8Array
  name: string
  token: Uint8Array
  udp: Endpoint | null
  tcp: Endpoint | null
  lan: Endpoint[]
  nat: NatVerdict
  lastSeen: number
  online: boolean
}

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
  private capacity = 0
  private keys = new Uint8Array(0)
  private tokens = new Uint8Array(0)
  private lastSeen = new Float64Array(0)
  private lostAt = new Float64Array(0)
  private state = new Uint8Array(0)
  private nat = new Uint8Array(0)
  private generation = new Uint32Array(0)
  private epoch = new Uint32Array(0)
  private hbSeq = new Uint32Array(0)
  private readonly udp = new EndpointColumn()
  private readonly tcp = new EndpointColumn()
  private readonly names: string[] = []
  private readonly lans: string[] = []
  /** Slots never used stand above `used`; freed ones wait in `free`. */
  private used = 0
  private readonly free: number[] = []
  private count = 0
  private onlineCount = 0

  private readonly byName = new Map<string, number>()
  /** Keys are chosen by whoever registers: their hash is keyed with a secret seed, so collisions cannot be aimed. */
  private readonly keySeed = randomBytes(4).readUInt32LE(0)
  private readonly byKey = new SlotIndex((slot) => hashBytes(this.keys, slot * KEY_BYTES, KEY_BYTES, this.keySeed))
  /** Tokens are random bytes the server chose: their first four bytes are hash enough. */
  private readonly byToken = new SlotIndex((slot) => tokenHash(this.tokens, slot * TOKEN_BYTES))

  readonly nameStore: NameStore
  private readonly nameTtlMs: number
  private lastNameSweep: number

  constructor(
    private readonly clock: Clock,
    private readonly peerTimeoutMs: number,
    init: RegistryInit = {}
  ) {
    this.nameStore = init.names ?? new MemoryNameStore()
    this.nameTtlMs = init.nameTtlMs ?? DEFAULT_NAME_TTL_MS
    this.lastNameSweep = clock.now()
    this.grow(INITIAL_SLOTS)
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
    let slot = this.slotOfKey(input.publicKey)
    if (slot < 0 && input.token.length !== TOKEN_BYTES) throw new RangeError(`a token is ${TOKEN_BYTES} bytes`)
    this.claimName(input.name, input.publicKey)
    const holder = this.byName.get(input.name)
    // The store gave the name to this key: an earlier holder this registry still
    // remembers (offline, or whose binding was released) is forgotten.
    if (holder !== undefined && holder !== slot) this.forget(holder)
    const isNew = slot < 0 || this.state[slot] !== ONLINE
    if (slot < 0) slot = this.allocate(input.publicKey, input.token, input.name)
    if (this.names[slot] !== input.name) {
      if (this.byName.get(this.names[slot]!) === slot) this.byName.delete(this.names[slot]!)
      this.names[slot] = input.name
      this.byName.set(input.name, slot)
    }
    this.lans[slot] = packEndpoints(input.lan)
    this.nat[slot] = Math.max(0, NAT_VERDICTS.indexOf(input.nat))
    if (input.udp) this.udp.set(slot, input.udp)
    if (input.tcp) this.tcp.set(slot, input.tcp)
    this.setState(slot, ONLINE)
    this.lastSeen[slot] = this.clock.now()
    this.lostAt[slot] = 0
    return { ref: this.refOf(slot), isNew }
  }

  /** The online registration holding this token. */
  byTokenBytes(token: Uint8Array): RegRef | undefined {
    if (token.length !== TOKEN_BYTES) return undefined
    const slot = this.byToken.find(tokenHash(token, 0), (s) => bytesEqual(this.tokens, s * TOKEN_BYTES, token, TOKEN_BYTES))
    return slot >= 0 && this.state[slot] === ONLINE ? this.refOf(slot) : undefined
  }

  /**
   * A new control session registered: its heartbeats get a new seal key (the server
   * derives it from the token and this epoch) and sequence numbers start over, so a
   * datagram of an earlier session cannot be replayed into this one.
   */
  beginSession(ref: RegRef): number {
    const slot = this.slotOf(ref)
    if (slot < 0) return 0
    this.hbSeq[slot] = 0
    return (this.epoch[slot] = (this.epoch[slot]! + 1) >>> 0)
  }

  epochOf(ref: RegRef): number {
    const slot = this.slotOf(ref)
    return slot >= 0 ? this.epoch[slot]! : 0
  }

  /** Takes a sealed heartbeat's sequence number when it is newer than the last one (no replays, no reordering back). */
  acceptHeartbeat(ref: RegRef, seq: number): boolean {
    const slot = this.slotOf(ref)
    if (slot < 0 || seq <= this.hbSeq[slot]!) return false
    this.hbSeq[slot] = seq
    return true
  }

  /** Where the agent's sealed heartbeats come from now: its UDP endpoint. */
  setUdp(ref: RegRef, ep: Endpoint): void {
    const slot = this.slotOf(ref)
    if (slot >= 0) this.udp.set(slot, ep)
  }

  /**
   * Where the agent's sealed heartbeats to our IPv6 socket come from: its IPv6
   * candidate, first in its candidate list (protocol/ipv6.ts). Returns whether it changed.
   */
  setV6(ref: RegRef, ep: Endpoint): boolean {
    const slot = this.slotOf(ref)
    if (slot < 0) return false
    const packed = this.lans[slot]!
    const first = `${ep.host} ${ep.port}`
    if (packed === first || packed.startsWith(`${first} `)) return false
    this.lans[slot] = packEndpoints(withV6Candidate(unpackEndpoints(packed), ep, MAX_LAN_ENDPOINTS))
    return this.lans[slot] !== packed
  }

  touch(ref: RegRef): void {
    const slot = this.slotOf(ref)
    if (slot >= 0) this.lastSeen[slot] = this.clock.now()
  }

  isOnline(ref: RegRef): boolean {
    const slot = this.slotOf(ref)
    return slot >= 0 && this.state[slot] === ONLINE
  }

  /** Whether the agent's registered UDP endpoint is `ep` (the heartbeat check; builds nothing). */
  udpIs(ref: RegRef, ep: Endpoint): boolean {
    const slot = this.slotOf(ref)
    return slot >= 0 && this.udp.is(slot, ep)
  }

  /** Its control connection closed: the agent no longer has a TCP endpoint. */
  clearTcp(ref: RegRef): void {
    const slot = this.slotOf(ref)
    if (slot >= 0) this.tcp.set(slot, null)
  }

  /**
   * Its control connection ended without BYE: unless the agent registers again within
   * CONTROL_LOST_GRACE_MS, expire() drops it (heartbeats alone do not keep it online:
   * nobody can be introduced to an agent the server cannot reach).
   */
  controlLost(ref: RegRef): void {
    const slot = this.slotOf(ref)
    if (slot >= 0 && this.state[slot] === ONLINE && this.lostAt[slot] === 0) this.lostAt[slot] = this.clock.now()
  }

  /** Finds a peer by name, full peer ID, or an unambiguous ID prefix of 8+ characters. */
  lookup(target: string): RegRef | undefined {
    const byName = this.byName.get(target)
    if (byName !== undefined) return this.refOf(byName)
    const head = target.length >= 8 ? base32Bytes(target) : null
    if (!head || head.length > KEY_BYTES) return undefined
    if (head.length === KEY_BYTES) {
      const slot = this.slotOfKey(head) // a full peer ID
      return slot >= 0 && peerId(this.keyOf(slot)) === target ? this.refOf(slot) : undefined
    }
    // A prefix: compare the whole bytes it spells raw, spell out only the keys that match them.
    const spelled = Math.ceil((target.length * 5) / 8)
    let found = -1
    for (let slot = 0; slot < this.used; slot++) {
      const at = slot * KEY_BYTES
      if (this.state[slot] === FREE || !bytesEqual(this.keys, at, head, head.length)) continue
      if (!peerId(this.keys.subarray(at, at + spelled)).startsWith(target)) continue
      if (found >= 0) return undefined
      found = slot
    }
    return found >= 0 ? this.refOf(found) : undefined
  }

  /** lookup() and get(): the registration found, as it stands now. */
  find(target: string): Registration | undefined {
    const ref = this.lookup(target)
    return ref === undefined ? undefined : this.get(ref)
  }

  /** Marks an agent offline now (it said goodbye, or timed out). Returns whether it was online. */
  drop(ref: RegRef): boolean {
    const slot = this.slotOf(ref)
    if (slot < 0 || this.state[slot] !== ONLINE) return false
    this.dropSlot(slot)
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
    const slot = this.slotOfKey(publicKey)
    if (slot >= 0 && this.state[slot] === ONLINE) this.dropSlot(slot)
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
    for (let slot = 0; slot < this.used; slot++) {
      const lost = this.lostAt[slot]! > 0 && now - this.lostAt[slot]! > CONTROL_LOST_GRACE_MS
      if (this.state[slot] === ONLINE && (lost || now - this.lastSeen[slot]! > this.peerTimeoutMs)) {
        this.dropSlot(slot)
        dropped.push(this.read(slot))
      }
      if (this.state[slot] === OFFLINE) {
        offline++
        if (now - this.lastSeen[slot]! > OFFLINE_RETENTION_MS || offline > MAX_OFFLINE_ENTRIES) this.forget(slot)
      }
    }
    if (now - this.lastNameSweep >= NAME_SWEEP_MS) this.sweepNames(now)
    return dropped
  }

  /** Names past their TTL, released now (expire() does this once an hour). Returns them. */
  sweepNames(now = this.clock.now()): string[] {
    this.lastNameSweep = now
    // Online agents are seen now: an agent online for months without re-registering keeps its name.
    for (let slot = 0; slot < this.used; slot++) if (this.state[slot] === ONLINE) this.nameStore.seen(this.names[slot]!, now)
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
    return this.count
  }

  /** Registrations online now (size counts the offline ones it still remembers too). */
  get online(): number {
    return this.onlineCount
  }

  /** Whether the registry still remembers this registration (online or offline). */
  has(ref: RegRef): boolean {
    return this.slotOf(ref) >= 0
  }

  /** The registration as it stands now; undefined once the agent is forgotten. */
  get(ref: RegRef): Registration | undefined {
    const slot = this.slotOf(ref)
    return slot >= 0 ? this.read(slot) : undefined
  }

  /** The peer record of a registration as it stands now (built from the columns: the introduction path). */
  peer(ref: RegRef): PeerRecord | undefined {
    const slot = this.slotOf(ref)
    return slot >= 0 ? this.peerAt(slot) : undefined
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
    const self = this.slotOf(ref)
    const online: number[] = []
    const offline: number[] = []
    for (let slot = 0; slot < this.used; slot++) {
      if (slot === self) continue
      if (this.state[slot] === ONLINE) {
        if (online.length < max) online.push(slot)
      } else if (this.state[slot] === OFFLINE) offline.push(slot)
    }
    const room = max - online.length
    const recent = room > 0 ? offline.sort((a, b) => this.lastSeen[b]! - this.lastSeen[a]!).slice(0, room) : []
    return [...online, ...recent].map((slot) => this.peerAt(slot))
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
    const slot = this.slotOfKey(key)
    return slot >= 0 && this.state[slot] === ONLINE
  }

  // --- slots -----------------------------------------------------------------

  private read(slot: number): Registration {
    const publicKey = this.keyOf(slot)
    return {
      ref: this.refOf(slot),
      id: peerId(publicKey),
      publicKey,
      name: this.names[slot]!,
      token: this.tokens.slice(slot * TOKEN_BYTES, (slot + 1) * TOKEN_BYTES),
      udp: this.udp.get(slot),
      tcp: this.tcp.get(slot),
      lan: unpackEndpoints(this.lans[slot]!),
      nat: NAT_VERDICTS[this.nat[slot]!]!,
      lastSeen: this.lastSeen[slot]!,
      online: this.state[slot] === ONLINE
    }
  }

  private peerAt(slot: number): PeerRecord {
    return {
      publicKey: this.keyOf(slot),
      name: this.names[slot]!,
      online: this.state[slot] === ONLINE,
      lastSeenAgoMs: Math.max(0, this.clock.now() - this.lastSeen[slot]!),
      nat: NAT_VERDICTS[this.nat[slot]!]!,
      udp: this.udp.get(slot),
      tcp: this.tcp.get(slot),
      lan: unpackEndpoints(this.lans[slot]!)
    }
  }

  /** Every change of a slot's state goes through here, so the online count stays true. */
  private setState(slot: number, state: typeof FREE | typeof OFFLINE | typeof ONLINE): void {
    this.onlineCount += Number(state === ONLINE) - Number(this.state[slot] === ONLINE)
    this.state[slot] = state
  }

  private dropSlot(slot: number): void {
    this.setState(slot, OFFLINE)
    this.lostAt[slot] = 0
    this.udp.set(slot, null)
    this.tcp.set(slot, null)
  }

  private keyOf(slot: number): Uint8Array {
    return this.keys.slice(slot * KEY_BYTES, (slot + 1) * KEY_BYTES)
  }

  private refOf(slot: number): RegRef {
    return this.generation[slot]! * SLOT_LIMIT + slot
  }

  /** The slot `ref` names, or -1 when its registration is gone. */
  private slotOf(ref: RegRef): number {
    const slot = ref % SLOT_LIMIT
    return slot < this.used && this.state[slot] !== FREE && this.refOf(slot) === ref ? slot : -1
  }

  private slotOfKey(key: Uint8Array): number {
    if (key.length !== KEY_BYTES) throw new NatdError('BAD_REQUEST', `a public key is ${KEY_BYTES} bytes`)
    return this.byKey.find(hashBytes(key, 0, KEY_BYTES, this.keySeed), (s) => bytesEqual(this.keys, s * KEY_BYTES, key, KEY_BYTES))
  }

  private allocate(key: Uint8Array, token: Uint8Array, name: string): number {
    if (token.length !== TOKEN_BYTES) throw new RangeError(`a token is ${TOKEN_BYTES} bytes`)
    let slot = this.free.pop()
    if (slot === undefined) {
      if (this.used === SLOT_LIMIT) throw new RangeError(`the registry holds its maximum of ${SLOT_LIMIT} agents`)
      if (this.used === this.capacity) this.grow(Math.min(SLOT_LIMIT, this.capacity * 2))
      slot = this.used++
    }
    this.keys.set(key, slot * KEY_BYTES)
    this.tokens.set(token, slot * TOKEN_BYTES)
    this.names[slot] = name
    this.lans[slot] = ''
    this.byName.set(name, slot)
    this.setState(slot, OFFLINE)
    this.byKey.add(slot)
    this.byToken.add(slot)
    this.count++
    return slot
  }

  private forget(slot: number): void {
    this.byKey.delete(slot)
    this.byToken.delete(slot)
    if (this.byName.get(this.names[slot]!) === slot) this.byName.delete(this.names[slot]!)
    this.udp.set(slot, null)
    this.tcp.set(slot, null)
    this.names[slot] = ''
    this.lans[slot] = ''
    this.setState(slot, FREE)
    this.generation[slot] = (this.generation[slot]! + 1) % GENERATION_LIMIT
    this.free.push(slot)
    this.count--
  }

  private grow(capacity: number): void {
    this.keys = grown(this.keys, new Uint8Array(capacity * KEY_BYTES))
    this.tokens = grown(this.tokens, new Uint8Array(capacity * TOKEN_BYTES))
    this.lastSeen = grown(this.lastSeen, new Float64Array(capacity))
    this.lostAt = grown(this.lostAt, new Float64Array(capacity))
    this.state = grown(this.state, new Uint8Array(capacity))
    this.nat = grown(this.nat, new Uint8Array(capacity))
    this.generation = grown(this.generation, new Uint32Array(capacity))
    this.epoch = grown(this.epoch, new Uint32Array(capacity))
    this.hbSeq = grown(this.hbSeq, new Uint32Array(capacity))
    this.udp.grow(capacity)
    this.tcp.grow(capacity)
    this.capacity = capacity
  }
}

function tokenHash(bytes: Uint8Array, at: number): number {
  return (bytes[at]! | (bytes[at + 1]! << 8) | (bytes[at + 2]! << 16) | (bytes[at + 3]! << 24)) >>> 0
}

// LAN endpoints are few per agent and read only for peer records: one short string each.

function packEndpoints(list: readonly Endpoint[]): string {
  return list.map((ep) => `${ep.host} ${ep.port}`).join(' ')
}

function unpackEndpoints(packed: string): Endpoint[] {
  if (!packed) return []
  const parts = packed.split(' ')
  const out: Endpoint[] = []
  for (let i = 0; i + 1 < parts.length; i += 2) out.push({ host: parts[i]!, port: Number(parts[i + 1]) })
  return out
}
