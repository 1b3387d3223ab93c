/**
 * `natd-rendezvous names ls|rm --redis URL`: the name bindings of a deployment that keeps
 * its registry in Redis (redis-scripts.ts draws the keys: natd:name:NAME is a hash of
 * key, boundAt, lastSeenAt; natd:keyname:K the name K holds).
 *
 * ls walks natd:name:* with SCAN (never KEYS: it would block Redis for every instance),
 * SCAN_COUNT keys a step, and reads each hash; a value that does not parse is skipped and
 * counted, as names.jsonl's malformed lines are. rm deletes the binding and the key's
 * back reference in one script, unless the holder is online (its peer record exists):
 * its instance would write the binding back, and two agents would answer to one name.
 */
import { createClient } from '@redis/client'
import { KEY_BYTES } from '../protocol/rendezvous.js'
import type { NameBinding } from './name-store.js'
import { REDIS_TIMEOUT_MS } from './redis-connection.js'
import { KEY_PREFIX as P } from './redis-scripts.js'

/** Keys per SCAN step (Redis's hint: how much work one call does). */
const SCAN_COUNT = 1_000

/** REMOVE: KEYS name; ARGV prefix. 'unbound', 'online:INSTANCE', or the key hex it was bound to (now freed). */
const REMOVE_SCRIPT = `
local held = redis.call('HGET', KEYS[1], 'key')
if not held then return 'unbound' end
local inst = redis.call('HGET', ARGV[1] .. 'peer:' .. held, 'inst')
if inst then return 'online:' .. inst end
redis.call('DEL', KEYS[1])
if redis.call('GET', ARGV[1] .. 'keyname:' .. held) == KEYS[1]:sub(#ARGV[1] + 6) then redis.call('DEL', ARGV[1] .. 'keyname:' .. held) end
return held
`

export type RemoveOutcome = { kind: 'removed'; binding: NameBinding } | { kind: 'unbound' } | { kind: 'online'; instance: string }

function bytesOfHex(h: unknown): Uint8Array | null {
  return typeof h === 'string' && /^[0-9a-f]{64}$/.test(h) ? Buffer.from(h, 'hex') : null
}

export class RedisNames {
  private readonly client

  constructor(url: string) {
    this.client = createClient({ url, disableOfflineQueue: true, commandOptions: { timeout: REDIS_TIMEOUT_MS }, socket: { connectTimeout: REDIS_TIMEOUT_MS, reconnectStrategy: false } })
    this.client.on('error', () => undefined) // a failed command or connect rejects; that is what the caller reports
  }

  async connect(): Promise<void> {
    await this.client.connect()
  }

  close(): void {
    this.client.destroy()
  }

  /** Every binding, and how many natd:name:* values were malformed. */
  async list(): Promise<{ bindings: NameBinding[]; skipped: number }> {
    const bindings: NameBinding[] = []
    let skipped = 0
    for await (const keys of this.client.scanIterator({ MATCH: `${P}name:*`, COUNT: SCAN_COUNT })) {
      const hashes = await Promise.all(keys.map((k) => this.client.hGetAll(k)))
      keys.forEach((k, i) => {
        const h = hashes[i]!
        const publicKey = bytesOfHex(h.key)
        const boundAt = Number(h.boundAt)
        const lastSeenAt = Number(h.lastSeenAt)
        if (!publicKey || !Number.isFinite(boundAt) || !Number.isFinite(lastSeenAt)) skipped++
        else bindings.push({ name: k.slice(P.length + 'name:'.length), publicKey, boundAt, lastSeenAt })
      })
    }
    return { bindings, skipped }
  }

  /** Frees `name` unless its holder is online. */
  async remove(name: string): Promise<RemoveOutcome> {
    const key = `${P}name:${name}`
    const before = await this.client.hGetAll(key)
    const r = await this.client.eval(REMOVE_SCRIPT, { keys: [key], arguments: [P] })
    if (r === 'unbound') return { kind: 'unbound' }
    if (typeof r === 'string' && r.startsWith('online:')) return { kind: 'online', instance: r.slice('online:'.length) }
    const publicKey = bytesOfHex(r) ?? new Uint8Array(KEY_BYTES)
    return { kind: 'removed', binding: { name, publicKey, boundAt: Number(before.boundAt), lastSeenAt: Number(before.lastSeenAt) } }
  }
}

