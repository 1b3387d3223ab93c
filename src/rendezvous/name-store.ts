/**
 * Which key holds which name, for good: the bindings outlive the registration (an agent
 * that stops keeps its name) and, in a FileNameStore, a restart of the server. The
 * Registry asks the store before it gives anyone a name (registry.ts has the rules).
 *
 * The interface is synchronous and small so that a store shared by several servers
 * (Redis, later) can stand behind it with a local cache. A key holds at most one name:
 * bind() moves the key's binding, releasing its old name.
 *
 * MemoryNameStore keeps bindings in columns like the registry (a row per binding: key
 * bytes, bound-at and last-seen times), not an object per binding: at 100,000 agents it
 * adds ~100 B each (the Map entry for the name, 32 B of key, 16 B of times, the key index).
 */
import { randomBytes } from '../protocol/identity.js'
import { KEY_BYTES } from '../protocol/rendezvous.js'
import { grown } from './endpoint-column.js'
import { bytesEqual, hashBytes, SlotIndex } from './slot-index.js'

export interface NameBinding {
  name: string
  publicKey: Uint8Array // KEY_BYTES, a copy
  boundAt: number // ms since the epoch
  lastSeenAt: number // ms since the epoch; a FileNameStore keeps it to the day
}

export interface NameStore {
  get(name: string): NameBinding | undefined
  /** The name `publicKey` holds, if any. */
  nameOf(publicKey: Uint8Array): string | undefined
  /** Binds `name` to `publicKey` (replacing any binding of the name; the key's old name is released). */
  bind(name: string, publicKey: Uint8Array, now: number): void
  /** The holder of `name` was seen now (registered, or online at a sweep). */
  seen(name: string, now: number): void
  /** Frees `name`; false when it was not bound. */
  release(name: string): boolean
  list(): NameBinding[]
  close(): void
}

/** Rows allocated up front; the columns double when full. */
const INITIAL_ROWS = 1024

export class MemoryNameStore implements NameStore {
  private capacity = 0
  private keys = new Uint8Array(0)
  private boundAt = new Float64Array(0)
  private lastSeenAt = new Float64Array(0)
  private readonly names: string[] = []
  private readonly byName = new Map<string, number>()
  private readonly free: number[] = []
  private used = 0
  /** Keys are chosen by whoever registers: their hash is keyed with a secret seed, so collisions cannot be aimed. */
  private readonly keySeed = randomBytes(4).readUInt32LE(0)
  private readonly byKey = new SlotIndex((row) => hashBytes(this.keys, row * KEY_BYTES, KEY_BYTES, this.keySeed))

  constructor() {
    this.grow(INITIAL_ROWS)
  }

  get(name: string): NameBinding | undefined {
    const row = this.byName.get(name)
    return row === undefined ? undefined : this.read(row)
  }

  nameOf(publicKey: Uint8Array): string | undefined {
    const row = this.rowOfKey(publicKey)
    return row >= 0 ? this.names[row] : undefined
  }

  bind(name: string, publicKey: Uint8Array, now: number): void {
    const held = this.byName.get(name)
    if (held !== undefined && bytesEqual(this.keys, held * KEY_BYTES, publicKey, KEY_BYTES)) {
      if (now > this.lastSeenAt[held]!) this.lastSeenAt[held] = now // not this.seen(): subclasses log that
      return
    }
    if (held !== undefined) this.remove(held)
    const old = this.rowOfKey(publicKey)
    if (old >= 0) this.remove(old)
    let row = this.free.pop()
    if (row === undefined) {
      if (this.used === this.capacity) this.grow(this.capacity * 2)
      row = this.used++
    }
    this.keys.set(publicKey, row * KEY_BYTES)
    this.boundAt[row] = now
    this.lastSeenAt[row] = now
    this.names[row] = name
    this.byName.set(name, row)
    this.byKey.add(row)
  }

  seen(name: string, now: number): void {
    const row = this.byName.get(name)
    if (row !== undefined && now > this.lastSeenAt[row]!) this.lastSeenAt[row] = now
  }

  release(name: string): boolean {
    const row = this.byName.get(name)
    if (row === undefined) return false
    this.remove(row)
    return true
  }

  list(): NameBinding[] {
    return [...this.byName.values()].map((row) => this.read(row))
  }

  get size(): number {
    return this.byName.size
  }

  close(): void {}

  /** When the holder of `name` was last seen, without copying its key. */
  protected lastSeenOf(name: string): number | undefined {
    const row = this.byName.get(name)
    return row === undefined ? undefined : this.lastSeenAt[row]
  }

  private read(row: number): NameBinding {
    return {
      name: this.names[row]!,
      publicKey: this.keys.slice(row * KEY_BYTES, (row + 1) * KEY_BYTES),
      boundAt: this.boundAt[row]!,
      lastSeenAt: this.lastSeenAt[row]!
    }
  }

  private rowOfKey(key: Uint8Array): number {
    if (key.length !== KEY_BYTES) throw new RangeError(`a public key is ${KEY_BYTES} bytes`)
    return this.byKey.find(hashBytes(key, 0, KEY_BYTES, this.keySeed), (r) => bytesEqual(this.keys, r * KEY_BYTES, key, KEY_BYTES))
  }

  private remove(row: number): void {
    this.byKey.delete(row)
    this.byName.delete(this.names[row]!)
    this.names[row] = ''
    this.free.push(row)
  }

  private grow(capacity: number): void {
    this.keys = grown(this.keys, new Uint8Array(capacity * KEY_BYTES))
    this.boundAt = grown(this.boundAt, new Float64Array(capacity))
    this.lastSeenAt = grown(this.lastSeenAt, new Float64Array(capacity))
    this.capacity = capacity
  }
}
