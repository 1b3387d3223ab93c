/**
 * Where the registry (registry.ts: names, sessions, expiry) keeps its registrations.
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
import { peerId, randomBytes } from '../protocol/identity.js'
import type { Clock } from '../protocol/log.js'
import { KEY_BYTES, NAT_VERDICTS, TOKEN_BYTES, type NatVerdict, type PeerRecord } from '../protocol/rendezvous.js'
import { EndpointColumn, grown } from './endpoint-column.js'
import { bytesEqual, hashBytes, SlotIndex } from './slot-index.js'

/** Slots allocated up front; the columns double when full. */
const INITIAL_SLOTS = 1024
/** A reference is `generation * SLOT_LIMIT + slot`: 2^24 slots, 2^29 generations within 2^53. */
const SLOT_LIMIT = 2 ** 24
const GENERATION_LIMIT = 2 ** 29

/** A slot's state. */
export const FREE = 0
export const OFFLINE = 1
export const ONLINE = 2

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

/** The columns, indexes and free list of the registrations' slots (registry.ts reads the columns directly in its walks). */
export class RegistrationTable {
  private capacity = 0
  keys = new Uint8Array(0)
  tokens = new Uint8Array(0)
  lastSeen = new Float64Array(0)
  lostAt = new Float64Array(0)
  state = new Uint8Array(0)
  nat = new Uint8Array(0)
  generation = new Uint32Array(0)
  epoch = new Uint32Array(0)
  hbSeq = new Uint32Array(0)
  readonly udp = new EndpointColumn()
  readonly tcp = new EndpointColumn()
  readonly names: string[] = []
  readonly lans: string[] = []
  /** Slots never used stand above `used`; freed ones wait in `free`. */
  used = 0
  private readonly free: number[] = []
  count = 0
  /** Slots whose state is ONLINE; kept true by setState(). */
  online = 0

  private readonly byName = new Map<string, number>()
  /** Keys are chosen by whoever registers: their hash is keyed with a secret seed, so collisions cannot be aimed. */
  private readonly keySeed = randomBytes(4).readUInt32LE(0)
  private readonly byKey = new SlotIndex((slot) => hashBytes(this.keys, slot * KEY_BYTES, KEY_BYTES, this.keySeed))
  /** Tokens are random bytes the server chose: their first four bytes are hash enough. */
  private readonly byToken = new SlotIndex((slot) => tokenHash(this.tokens, slot * TOKEN_BYTES))

  /** Every change of a slot's state goes through here, so the online count stays true. */
  setState(slot: number, state: typeof FREE | typeof OFFLINE | typeof ONLINE): void {
    this.online += Number(state === ONLINE) - Number(this.state[slot] === ONLINE)
    this.state[slot] = state
  }

  constructor(private readonly clock: Clock) {
    this.grow(INITIAL_SLOTS)
  }

  /** The slot filed under `name`. */
  slotOfName(name: string): number | undefined {
    return this.byName.get(name)
  }

  /** Files the slot under `name`; its previous name goes, unless another slot holds it now. */
  rename(slot: number, name: string): void {
    if (this.names[slot] === name) return
    if (this.byName.get(this.names[slot]!) === slot) this.byName.delete(this.names[slot]!)
    this.names[slot] = name
    this.byName.set(name, slot)
  }

  /** The slot whose registration (online or offline) holds this token, or -1. */
  slotOfToken(token: Uint8Array): number {
    return this.byToken.find(tokenHash(token, 0), (s) => bytesEqual(this.tokens, s * TOKEN_BYTES, token, TOKEN_BYTES))
  }

  read(slot: number): Registration {
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

  peerAt(slot: number): PeerRecord {
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

  /** The agent goes offline: it keeps its slot (listed as last seen) but no endpoints. */
  dropSlot(slot: number): void {
    this.setState(slot, OFFLINE)
    this.lostAt[slot] = 0
    this.udp.set(slot, null)
    this.tcp.set(slot, null)
  }

  keyOf(slot: number): Uint8Array {
    return this.keys.slice(slot * KEY_BYTES, (slot + 1) * KEY_BYTES)
  }

  refOf(slot: number): RegRef {
    return this.generation[slot]! * SLOT_LIMIT + slot
  }

  /** The slot `ref` names, or -1 when its registration is gone. */
  slotOf(ref: RegRef): number {
    const slot = ref % SLOT_LIMIT
    return slot < this.used && this.state[slot] !== FREE && this.refOf(slot) === ref ? slot : -1
  }

  slotOfKey(key: Uint8Array): number {
    if (key.length !== KEY_BYTES) throw new NatdError('BAD_REQUEST', `a public key is ${KEY_BYTES} bytes`)
    return this.byKey.find(hashBytes(key, 0, KEY_BYTES, this.keySeed), (s) => bytesEqual(this.keys, s * KEY_BYTES, key, KEY_BYTES))
  }

  allocate(key: Uint8Array, token: Uint8Array, name: string): number {
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

  forget(slot: number): void {
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

export function packEndpoints(list: readonly Endpoint[]): string {
  return list.map((ep) => `${ep.host} ${ep.port}`).join(' ')
}

export function unpackEndpoints(packed: string): Endpoint[] {
  if (!packed) return []
  const parts = packed.split(' ')
  const out: Endpoint[] = []
  for (let i = 0; i + 1 < parts.length; i += 2) out.push({ host: parts[i]!, port: Number(parts[i + 1]) })
  return out
}
