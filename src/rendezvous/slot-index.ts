/**
 * A hash index from some bytes of a registration (its public key, its token) to its slot
 * in the registry's columns, kept in one Int32Array: open addressing with linear probing,
 * at most half full. A Map keyed by a string of those bytes costs ~100 B per entry (the
 * string and the entry); this costs 8-16 B.
 *
 * The index stores slots only; the caller keeps the bytes, hashes them, and says whether
 * a slot holds the bytes being looked up. Deletion shifts the entries after the hole back
 * (no tombstones), so lookups never slow down with churn.
 */

const EMPTY = -1
const MIN_BUCKETS = 1024

export class SlotIndex {
  private table = new Int32Array(MIN_BUCKETS).fill(EMPTY)
  private count = 0

  /** `hashOf(slot)`: the hash of the bytes the slot holds (used when entries move). */
  constructor(private readonly hashOf: (slot: number) => number) {}

  /** The slot whose bytes `matches` accepts, among those filed under `hash`; -1 if none. */
  find(hash: number, matches: (slot: number) => boolean): number {
    const mask = this.table.length - 1
    for (let i = hash & mask; ; i = (i + 1) & mask) {
      const slot = this.table[i]!
      if (slot === EMPTY) return -1
      if (matches(slot)) return slot
    }
  }

  add(slot: number): void {
    if (2 * (this.count + 1) > this.table.length) this.rehash(this.table.length * 2)
    this.place(this.table, slot)
    this.count++
  }

  delete(slot: number): void {
    const t = this.table
    const mask = t.length - 1
    let hole = this.hashOf(slot) & mask
    while (t[hole] !== slot) {
      if (t[hole] === EMPTY) return
      hole = (hole + 1) & mask
    }
    // Backward shift: move up every later entry of the run that may sit in the hole.
    for (let i = (hole + 1) & mask; t[i] !== EMPTY; i = (i + 1) & mask) {
      const home = this.hashOf(t[i]!) & mask
      // The entry may move to the hole unless its home lies cyclically in (hole, i].
      const stays = hole <= i ? hole < home && home <= i : hole < home || home <= i
      if (stays) continue
      t[hole] = t[i]!
      hole = i
    }
    t[hole] = EMPTY
    this.count--
  }

  get size(): number {
    return this.count
  }

  private place(t: Int32Array, slot: number): void {
    const mask = t.length - 1
    let i = this.hashOf(slot) & mask
    while (t[i] !== EMPTY) i = (i + 1) & mask
    t[i] = slot
  }

  private rehash(buckets: number): void {
    const old = this.table
    this.table = new Int32Array(buckets).fill(EMPTY)
    for (const slot of old) if (slot !== EMPTY) this.place(this.table, slot)
  }
}

/** A 32-bit hash of `length` bytes (a multiple of 4) at `at`, keyed with `seed` (murmur3's mixing). */
export function hashBytes(bytes: Uint8Array, at: number, length: number, seed: number): number {
  let h = seed
  for (let i = at; i < at + length; i += 4) {
    let k = (bytes[i]! | (bytes[i + 1]! << 8) | (bytes[i + 2]! << 16) | (bytes[i + 3]! << 24)) >>> 0
    k = Math.imul(k, 0xcc9e2d51)
    k = Math.imul((k << 15) | (k >>> 17), 0x1b873593)
    h ^= k
    h = (Math.imul((h << 13) | (h >>> 19), 5) + 0xe6546b64) | 0
  }
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2ae35)
  return (h ^ (h >>> 16)) >>> 0
}

/** Whether `column[at, at + length)` holds the first `length` bytes of `bytes`. */
export function bytesEqual(column: Uint8Array, at: number, bytes: Uint8Array, length: number): boolean {
  for (let i = 0; i < length; i++) if (column[at + i] !== bytes[i]) return false
  return true
}
