/**
 * How an instance of a shared registry (redis-cluster.ts) writes the records of the agents
 * it holds: changes wait in a dirty set and go to Redis in batches (CLAIM + WRITE, or
 * DROP: redis-scripts.ts), one pipeline a batch, followed by the up/down events the batch
 * caused. What fails stays dirty for the next flush, so a Redis that was away gets every
 * change once it is back.
 */
import type { createClient } from '@redis/client'
import type { Clock, Logger } from '../protocol/log.js'
import type { PeerRecord } from '../protocol/rendezvous.js'
import { BATCH, hex, recordJson } from './redis-records.js'
import { CLAIM_SCRIPT, DROP_SCRIPT, KEY_PREFIX as P, WRITE_SCRIPT } from './redis-scripts.js'

/** Every online record's TTL is refreshed this often (one PEXPIRE per agent, pipelined). */
export const RECORD_REFRESH_MS = 5 * 60_000
/** A record not refreshed for this long expires (its instance died and no reaper ran). */
export const RECORD_TTL_MS = 3 * RECORD_REFRESH_MS

export type Client = ReturnType<typeof createClient>

/** A change to write: the record of an agent now online, or null once it went offline (at `at`). */
interface Change {
  record: PeerRecord | null
  at: number
}

export interface RecordWriterComponents {
  client: Client
  /** This instance's ID. */
  instance: string
  /** When each agent held here registered (K → ms): the newest registration of a key wins. */
  since: ReadonlyMap<string, number>
  log: Logger
  /** Request latencies (metrics). */
  monotonic: Clock
  /** Each pipeline's latency and outcome (metrics). */
  observe?: (ms: number, ok: boolean) => void
  /** A batch was written: Redis answers. */
  onWritten: () => void
  /** A batch failed: Redis is away. */
  onFailed: (err: unknown) => void
}

export class RecordWriter {
  private readonly dirty = new Map<string, Change>()
  /** Records of agents that went offline, until their DROP is written (for the down event). */
  private readonly dropped = new Map<string, PeerRecord>()
  private flushing = false

  constructor(private readonly c: RecordWriterComponents) {}

  /** Agent `k` is online with `record` (registered, or its endpoints moved). */
  online(k: string, record: PeerRecord, at: number): void {
    this.dropped.delete(k)
    this.dirty.set(k, { record, at })
  }

  /** Agent `k` went offline at `at`. */
  offline(k: string, record: PeerRecord, at: number): void {
    this.dropped.set(k, record)
    this.dirty.set(k, { record: null, at })
  }

  /** Queues these records again, unless a change of theirs is queued already (Redis lost them, or took us for gone). */
  rewrite(held: ReadonlyMap<string, PeerRecord>, at: number): void {
    for (const [k, record] of held) if (!this.dirty.has(k)) this.dirty.set(k, { record, at })
  }

  /** Writes the dirty records, BATCH at a time; what fails stays dirty for the next flush. */
  async flush(): Promise<void> {
    if (this.flushing || !this.dirty.size) return
    this.flushing = true
    try {
      while (this.dirty.size) {
        const batch = [...this.dirty].slice(0, BATCH)
        for (const [k] of batch) this.dirty.delete(k)
        try {
          await this.writeBatch(batch)
          this.c.onWritten()
        } catch (err) {
          for (const [k, v] of batch) if (!this.dirty.has(k)) this.dirty.set(k, v)
          this.c.onFailed(err)
          return
        }
      }
    } finally {
      this.flushing = false
    }
  }

  /** Refreshes the TTL of these agents' records, BATCH a pipeline. */
  async refresh(keys: string[]): Promise<void> {
    for (let i = 0; i < keys.length; i += BATCH) {
      const m = this.c.client.multi()
      for (const k of keys.slice(i, i + BATCH)) m.pExpire(`${P}peer:${k}`, RECORD_TTL_MS)
      await m.execAsPipeline()
    }
  }

  /** `from`: the instance that held them (a reaped one's ID for its agents, so the reaper's own agents hear of it too). */
  eventMessages(event: 'up' | 'down', peers: PeerRecord[], from: string): string[] {
    const out: string[] = []
    for (let i = 0; i < peers.length; i += BATCH) {
      out.push(JSON.stringify({ e: event, from, peers: peers.slice(i, i + BATCH).map((p) => ({ ...recordJson(p), s: this.c.since.get(hex(p.publicKey)) ?? 0 })) }))
    }
    return out
  }

  private async writeBatch(batch: [string, Change][]): Promise<void> {
    const { client, instance } = this.c
    const m = client.multi()
    const up: PeerRecord[] = []
    const down: PeerRecord[] = []
    for (const [k, { record, at }] of batch) {
      if (record) {
        m.eval(CLAIM_SCRIPT, { keys: [`${P}name:${record.name}`, `${P}keyname:${k}`], arguments: [k, String(at), String(Number.MAX_SAFE_INTEGER), record.name] })
        const since = this.c.since.get(k) ?? at
        m.eval(WRITE_SCRIPT, { keys: [`${P}peer:${k}`, `${P}agents:${instance}`], arguments: [instance, JSON.stringify(recordJson(record)), String(since), String(RECORD_TTL_MS), k] })
      } else {
        const name = this.nameOfDropped(k)
        m.eval(DROP_SCRIPT, { keys: [`${P}peer:${k}`, `${P}agents:${instance}`, `${P}name:${name}`], arguments: [instance, k, String(at)] })
      }
    }
    const started = this.c.monotonic.now()
    const replies = await m.execAsPipeline().catch((err: unknown) => {
      this.c.observe?.(this.c.monotonic.now() - started, false)
      throw err
    })
    this.c.observe?.(this.c.monotonic.now() - started, true)
    // A CLAIM that found the name held by another key: a split while Redis was away. The binding in Redis wins.
    let i = 0
    for (const [k, { record }] of batch) {
      if (record) {
        const held = replies[i]
        if (typeof held === 'string' && held !== '') this.c.log.warn('shared registry: name bound to another key meanwhile', { name: record.name, key: k.slice(0, 8) })
        if (Number(replies[i + 1]) === 1) up.push(record)
        i += 2
      } else {
        if (Number(replies[i]) === 1) down.push(this.dropped.get(k)!)
        this.dropped.delete(k)
        i += 1
      }
    }
    if (up.length) await this.publishEvents('up', up)
    if (down.length) await this.publishEvents('down', down)
  }

  private nameOfDropped(k: string): string {
    return this.dropped.get(k)?.name ?? ''
  }

  private async publishEvents(event: 'up' | 'down', peers: PeerRecord[]): Promise<void> {
    for (const msg of this.eventMessages(event, peers, this.c.instance)) await this.c.client.publish(`${P}events`, msg)
  }
}
