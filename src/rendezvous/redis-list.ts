/**
 * LIST's read of the other instances' online agents in Redis (redis-cluster.ts list()),
 * shared by every LIST the instance answers (review 9 #2). One read is a round of
 * SMEMBERS, an EXISTS per instance, an SRANDMEMBER per live instance and one HGET per
 * record, up to MAX_LIST_PEERS (2,048): before, each LIST ran its own, so 5,000
 * pipelined LISTs from one stranger put 5,000 rounds on Redis at once and every command
 * of the instance timed out. Now one round answers every LIST that arrives while it runs
 * or within LIST_CACHE_MS after it ended, from any connection: at most one round a
 * LIST_CACHE_MS per instance, whoever asks and however often.
 */
import type { Clock } from '../protocol/log.js'
import type { PeerRecord } from '../protocol/rendezvous.js'
import { parseRecord } from './redis-records.js'
import type { Client } from './redis-record-writer.js'
import { KEY_PREFIX as P } from './redis-scripts.js'

/**
 * How long a LIST's read of Redis answers later LISTs: how stale another instance's agent
 * may be in a LIST, beside the FLUSH_MS (500 ms) its record takes to reach Redis. Peer
 * events (PEER_EVENT) are not delayed by it: they are pushed, not read.
 */
export const LIST_CACHE_MS = 1_000

/** One read of `max` records at most: the client, this instance (skipped), and the cluster's call() (latency, health, TIMEOUT). */
export interface ListRead {
  client: Client
  instance: string
  call: <T>(run: () => Promise<T>) => Promise<T>
}

/** Online agents of the other live instances, at most `max` (a random `max` of each instance's set when it holds more). */
export async function readList(r: ListRead, max: number): Promise<PeerRecord[]> {
  const { client, call } = r
  const all = await call(() => client.sMembers(`${P}instances`))
  const alive = await call(() => Promise.all(all.map((i) => client.exists(`${P}instance:${i}`))))
  const out: PeerRecord[] = []
  for (const inst of all.filter((_, n) => alive[n] === 1)) {
    if (inst === r.instance || out.length >= max) continue
    const keys = await call(() => client.sRandMemberCount(`${P}agents:${inst}`, max - out.length))
    if (!keys.length) continue
    const recs = await call(() => Promise.all(keys.map((k) => client.hGet(`${P}peer:${k}`, 'rec'))))
    for (const rec of recs) {
      const record = typeof rec === 'string' ? parseRecord(rec) : null
      if (record && out.length < max) out.push(record)
    }
  }
  return out
}

/** The last read, kept LIST_CACHE_MS, and the read under way, which callers join (a failed read is not kept). */
export class ListCache {
  private fresh: { at: number; max: number; records: PeerRecord[] } | null = null
  private running: { max: number; read: Promise<PeerRecord[]> } | null = null

  /** `clock`: monotonic (a stepped wall clock must not keep a read for good). */
  constructor(
    private readonly read: (max: number) => Promise<PeerRecord[]>,
    private readonly clock: Clock
  ) {}

  get(max: number): Promise<PeerRecord[]> {
    const fresh = this.fresh
    if (fresh && fresh.max >= max && this.clock.now() - fresh.at < LIST_CACHE_MS) return Promise.resolve(fresh.records.slice(0, max))
    const running = this.running && this.running.max >= max ? this.running.read : this.start(max)
    return running.then((records) => records.slice(0, max))
  }

  private start(max: number): Promise<PeerRecord[]> {
    const read = this.read(max).then((records) => {
      this.fresh = { at: this.clock.now(), max, records }
      return records
    })
    this.running = { max, read }
    const done = (): void => {
      if (this.running?.read === read) this.running = null
    }
    read.then(done, done)
    return read
  }
}
