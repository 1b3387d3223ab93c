/**
 * The rendezvous server's registry: which key holds which name, where each agent was
 * last seen, and who has gone quiet. Pure state (no sockets), driven by a Clock, so
 * expiry is tested with a fake clock.
 */
import type { Endpoint } from '../protocol/endpoint.js'
import { NatdError } from '../protocol/errors.js'
import { peerId } from '../protocol/identity.js'
import type { Clock } from '../protocol/log.js'
import type { NatVerdict, PeerRecord } from '../protocol/rendezvous.js'

/** How long a dropped agent stays listed as offline ("last seen …") before it is forgotten. */
export const OFFLINE_RETENTION_MS = 24 * 3_600_000
/** Bound on remembered offline agents, so churn cannot grow memory without limit. */
export const MAX_OFFLINE_ENTRIES = 10_000

export interface Registration {
  id: string // peer ID (base32 public key)
  publicKey: Uint8Array
  name: string
  token: Uint8Array
  tokenKey: string
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
  token: Uint8Array // used only when the key has no live registration
  udp?: Endpoint
  tcp?: Endpoint
}

export class Registry {
  private readonly byId = new Map<string, Registration>()
  private readonly byName = new Map<string, Registration>()
  private readonly byToken = new Map<string, Registration>()

  constructor(
    private readonly clock: Clock,
    private readonly peerTimeoutMs: number
  ) {}

  /**
   * Registers or refreshes an agent. A name belongs to the first live key that takes it;
   * another key asking for it while the holder is online gets NAME_TAKEN.
   */
  register(input: RegisterInput): { reg: Registration; isNew: boolean } {
    const id = peerId(input.publicKey)
    const holder = this.byName.get(input.name)
    if (holder && holder.id !== id && holder.online) {
      throw new NatdError('NAME_TAKEN', `the name ${input.name} is held by another key (${holder.id.slice(0, 8)})`)
    }
    if (holder && holder.id !== id) this.forget(holder) // an offline holder loses the name
    let reg = this.byId.get(id)
    const isNew = !reg || !reg.online
    if (!reg) {
      const tokenKey = Buffer.from(input.token).toString('hex')
      reg = { id, publicKey: input.publicKey, name: input.name, token: input.token, tokenKey, udp: null, tcp: null, lan: [], nat: 'unknown', lastSeen: 0, online: false }
      this.byId.set(id, reg)
      this.byToken.set(tokenKey, reg)
    }
    if (reg.name !== input.name) {
      if (this.byName.get(reg.name) === reg) this.byName.delete(reg.name)
      reg.name = input.name
    }
    this.byName.set(input.name, reg)
    reg.lan = input.lan
    reg.nat = input.nat
    if (input.udp) reg.udp = input.udp
    if (input.tcp) reg.tcp = input.tcp
    reg.online = true
    reg.lastSeen = this.clock.now()
    return { reg, isNew }
  }

  byTokenBytes(token: Uint8Array): Registration | undefined {
    const reg = this.byToken.get(Buffer.from(token).toString('hex'))
    return reg?.online ? reg : undefined
  }

  touch(reg: Registration): void {
    reg.lastSeen = this.clock.now()
  }

  /** Finds a peer by name, full peer ID, or an unambiguous ID prefix of 8+ characters. */
  lookup(target: string): Registration | undefined {
    const byName = this.byName.get(target)
    if (byName) return byName
    const exact = this.byId.get(target)
    if (exact) return exact
    if (target.length < 8) return undefined
    let found: Registration | undefined
    for (const reg of this.byId.values()) {
      if (!reg.id.startsWith(target)) continue
      if (found) return undefined
      found = reg
    }
    return found
  }

  /** Marks an agent offline now (it said goodbye, or timed out). Returns whether it was online. */
  drop(reg: Registration): boolean {
    if (!reg.online) return false
    reg.online = false
    reg.udp = null
    reg.tcp = null
    return true
  }

  /** Drops agents silent for longer than the peer timeout; returns them so peers can be told. */
  expire(): Registration[] {
    const now = this.clock.now()
    const dropped: Registration[] = []
    let offline = 0
    for (const reg of this.byId.values()) {
      if (reg.online && now - reg.lastSeen > this.peerTimeoutMs) {
        this.drop(reg)
        dropped.push(reg)
      }
      if (!reg.online) {
        offline++
        if (now - reg.lastSeen > OFFLINE_RETENTION_MS || offline > MAX_OFFLINE_ENTRIES) this.forget(reg)
      }
    }
    return dropped
  }

  private forget(reg: Registration): void {
    this.byId.delete(reg.id)
    this.byToken.delete(reg.tokenKey)
    if (this.byName.get(reg.name) === reg) this.byName.delete(reg.name)
  }

  has(id: string): boolean {
    return this.byId.has(id)
  }

  get size(): number {
    return this.byId.size
  }

  *all(): IterableIterator<Registration> {
    yield* this.byId.values()
  }

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
}
