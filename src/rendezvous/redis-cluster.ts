/**
 * The Cluster (cluster.ts) on Redis 7, through node-redis's core client (@redis/client:
 * released monthly by Redis itself, its own types, no dependencies; ioredis calls itself
 * best-effort maintained now).
 *
 * Keys (`natd:` prefix; `K` = a public key in hex, `I` = an instance ID):
 *   natd:instance:I   string  the address agents dial for this instance's relay; PX
 *                             INSTANCE_TTL_MS, refreshed every BEAT_MS on a connection of
 *                             its own (see BEAT_MS): an instance that dies is gone from
 *                             Redis within the TTL, and only then (Redis' own clock)
 *   natd:instances    set     every instance that has started and not been reaped
 *   natd:gone:I       string  set by BEAT when I finds it was taken for gone; kept until I
 *                             has queued its records for rewriting (a lost reply loses nothing)
 *   natd:agents:I     set     K of the agents I holds online
 *   natd:peer:K       hash    inst, rec (the peer record as JSON); PX RECORD_TTL_MS,
 *                             refreshed in batches (a safety net: records are deleted
 *                             when the agent goes offline, or by the reaper below)
 *   natd:name:NAME    hash    key (K), boundAt, lastSeenAt: the binding, for good
 *   natd:keyname:K    string  the name K holds
 * Channels: natd:to:I (introductions for I's agents), natd:events (peer up/down).
 *
 * Why pub/sub and not streams for introductions: an introduction is worth something for
 * the seconds the initiator waits, and only to the instance holding the target now. If
 * that instance is gone, its agents re-register elsewhere and the initiator retries; a
 * stream would keep entries nobody can use and need trimming. PUBLISH tells how many
 * instances listened, so "nobody" becomes PEER_OFFLINE at once.
 *
 * Redis operations, steady state: heartbeats touch only the instance's memory. An agent
 * costs one batched write when it registers or its UDP mapping moves (CLAIM and WRITE
 * scripts + a PUBLISH shared by the batch), one when it leaves, and one PEXPIRE every
 * RECORD_REFRESH_MS (5 min): 0.2 operations per agent per minute, 20,000 a minute (333/s)
 * at 100,000 agents. Per instance: the BEAT script every 2.5 s, the reaper's SMEMBERS + EXISTS every 5 s.
 *
 * Trust: Redis is the operator's (a private network, a password, TLS with rediss://):
 * it sees peer records, names and introductions' punch keys. Still, whatever comes back
 * from it is parsed and bounded like wire input, so a corrupt key cannot crash a server.
 */
import { createClient } from '@redis/client'
import type { Endpoint } from '../protocol/endpoint.js'
import { NatdError } from '../protocol/errors.js'
import { base32Bytes, randomBytes } from '../protocol/identity.js'
import { monotonicClock, systemClock, type Clock, type Logger } from '../protocol/log.js'
import { DATAGRAM_KEY_BYTES, INTRO_ID_BYTES, KEY_BYTES, NAT_VERDICTS, type NatVerdict, type PeerRecord } from '../protocol/rendezvous.js'
import { VIAS, type Via } from '../protocol/via.js'
import { hexBytes, isJsonObject as isObject, parseJson } from '../common/untrusted-json.js'
import type { Cluster, ClusterHandlers, RemoteIntroduction, RemotePeer } from './cluster.js'
import { systemTimers, type Timer, type Timers } from './timers.js'

/** An instance's key lives this long unrefreshed: how late a dead instance is noticed (plus the reaper's period). */
export const INSTANCE_TTL_MS = 15_000
/** The reaper's period (and the record refresh's check). */
export const INSTANCE_REFRESH_MS = 5_000
/**
 * The instance key is refreshed this often (BEAT_SCRIPT), on its own connection with its
 * own timeout (BEAT_TIMEOUT_MS): never queued behind registrations' pipelines on the bulk
 * connection, whose commands may wait out REDIS_TIMEOUT_MS under load (issue 16, 60,000
 * agents). Any beat Redis executes keeps the key INSTANCE_TTL_MS, so a live instance's
 * key expires only when Redis executed none for INSTANCE_TTL_MS - BEAT_MS = 12.5 s: this
 * process or Redis stalled that long. Even then the next beat finds the key gone and puts
 * the key and every record back (reassert()).
 */
export const BEAT_MS = 2_500
/** A beat not answered by then is reported; below BEAT_MS, so beats do not pile up. */
export const BEAT_TIMEOUT_MS = 2_000
/** Records of registrations and moves are written this often, in one pipeline. */
export const FLUSH_MS = 500
/** Every online record's TTL is refreshed this often (one PEXPIRE per agent, pipelined). */
export const RECORD_REFRESH_MS = 5 * 60_000
/** A record not refreshed for this long expires (its instance died and no reaper ran). */
export const RECORD_TTL_MS = 3 * RECORD_REFRESH_MS
/** A Redis command that has not answered by then fails: the server then serves what it holds. */
export const REDIS_TIMEOUT_MS = 1_000
/** Reconnect backoff cap while Redis is down. */
export const RECONNECT_MAX_MS = 2_000
/** Records per flush pipeline and per published event: bounds one message and one burst. */
const BATCH = 500
/** A message from Redis larger than this is ignored (a record is < 1 KiB; events carry BATCH). */
const MAX_MESSAGE_CHARS = 1_000_000

/** Every key and channel of the shared registry starts with this (redis-names.ts reads the names too). */
export const KEY_PREFIX = 'natd:'
const P = KEY_PREFIX

/**
 * CLAIM: KEYS name, keyname(K); ARGV K, now, ttlMs, name.
 * Binds the name to K unless another key holds it, is online (its record exists) or was
 * seen within the TTL. K's previous name is released (one name per key).
 */
const CLAIM_SCRIPT = `
local held = redis.call('HGET', KEYS[1], 'key')
local now = tonumber(ARGV[2])
if held and held ~= ARGV[1] then
  local seen = tonumber(redis.call('HGET', KEYS[1], 'lastSeenAt') or '0')
  if redis.call('EXISTS', '${P}peer:' .. held) == 1 or now - seen <= tonumber(ARGV[3]) then return held end
  redis.call('DEL', '${P}keyname:' .. held)
end
local old = redis.call('GET', KEYS[2])
if old and old ~= ARGV[4] then redis.call('DEL', '${P}name:' .. old) end
if held == ARGV[1] then
  redis.call('HSET', KEYS[1], 'lastSeenAt', ARGV[2])
else
  redis.call('HSET', KEYS[1], 'key', ARGV[1], 'boundAt', ARGV[2], 'lastSeenAt', ARGV[2])
end
redis.call('SET', KEYS[2], ARGV[4])
return ''
`

/**
 * WRITE: KEYS peer(K), agents(I); ARGV I, rec, since, ttlMs. The record of the newest
 * registration wins (`since`: when it registered), whatever order the batches of two
 * instances reach Redis in: an agent that failed over is not claimed back by its old
 * instance's late batch. 1 written, 0 a newer registration holds it.
 */
const WRITE_SCRIPT = `
local cur = tonumber(redis.call('HGET', KEYS[1], 'since') or '0')
if cur > tonumber(ARGV[3]) and redis.call('HGET', KEYS[1], 'inst') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'inst', ARGV[1], 'rec', ARGV[2], 'since', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('SADD', KEYS[2], ARGV[5])
return 1
`

/** RELEASE: KEYS name; ARGV K. 1 released, 0 unbound, -1 another key holds it. */
const RELEASE_SCRIPT = `
local held = redis.call('HGET', KEYS[1], 'key')
if not held then return 0 end
if held ~= ARGV[1] then return -1 end
redis.call('DEL', KEYS[1], '${P}keyname:' .. held)
return 1
`

/** DROP: KEYS peer(K), agents(I), name; ARGV I, K, now. Deletes K's record only if I still holds it. */
const DROP_SCRIPT = `
redis.call('SREM', KEYS[2], ARGV[2])
if redis.call('HGET', KEYS[1], 'inst') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
if redis.call('HGET', KEYS[3], 'key') == ARGV[2] then redis.call('HSET', KEYS[3], 'lastSeenAt', ARGV[3]) end
return 1
`

/**
 * REAP: KEYS instance(I), peer(K); ARGV I. A dead instance's record of K: deleted, returned.
 * Only while I's key is absent, judged inside Redis (its TTL clock, not a reaper's slow
 * reply): once I is back, the rest of its records are left to it.
 */
const REAP_SCRIPT = `
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local rec = redis.call('HGET', KEYS[2], 'rec')
if redis.call('HGET', KEYS[2], 'inst') ~= ARGV[1] then return false end
redis.call('DEL', KEYS[2])
return rec
`

/**
 * BURY: KEYS instance(I), agents(I), instances, reap lock; ARGV I, events… The end of a
 * reaping, if I is still gone: its set and membership removed, the down events published
 * in the same atomic step (so an "up" I publishes when it comes back always follows them).
 * 0 when I came back meanwhile: nothing removed or told, the lock freed.
 */
const BURY_SCRIPT = `
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('DEL', KEYS[4])
  return 0
end
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
for i = 2, #ARGV do redis.call('PUBLISH', '${P}events', ARGV[i]) end
return 1
`

/**
 * BEAT: KEYS instance(I), instances, gone(I); ARGV I, advertise, ttlMs, goneTtlMs.
 * Refreshes I's key. When I had been taken for gone (its key had expired, or a reaper
 * removed it from the set) it says so in gone(I), which stays until I deletes it after
 * queueing its records again: a beat whose reply is lost (timeout) loses nothing.
 * 1 while gone(I) is set.
 */
const BEAT_SCRIPT = `
local old = redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3], 'GET')
local added = redis.call('SADD', KEYS[2], ARGV[1])
if not old or added == 1 then redis.call('SET', KEYS[3], '1', 'PX', ARGV[4]) end
return redis.call('EXISTS', KEYS[3])
`

export interface RedisClusterInit {
  url: string
  /** The address agents dial for this instance (relay): its public host and port. */
  advertise: Endpoint
  /** Each request's latency and outcome (metrics). */
  observe?: (ms: number, ok: boolean) => void
}

export interface RedisClusterComponents {
  log: Logger
  /** Wall time: registration times and name timestamps shared with other instances (their clocks agree, NTP). */
  clock?: Clock
  /** Request latencies (metrics): never steps with the wall clock. */
  monotonic?: Clock
  /** The flush and instance-refresh intervals (timers.ts). */
  timers?: Timers
}

type Client = ReturnType<typeof createClient>

export class RedisCluster implements Cluster {
  readonly instance = randomBytes(8).toString('hex')
  private readonly client: Client
  private readonly sub: Client
  /** The instance key's own connection (BEAT_MS). */
  private readonly beat: Client
  private beating = false
  /** Whether the last beat was answered (a failed one warns once, not every BEAT_MS while Redis is away). */
  private beatOk = true
  private handlers: ClusterHandlers | null = null
  private readonly dirty = new Map<string, { record: PeerRecord | null; at: number }>()
  /** Online records this instance holds (K → record): rewritten after Redis comes back, TTLs refreshed. */
  private readonly held = new Map<string, PeerRecord>()
  /** When each agent held here registered (K → ms): the newest registration of a key wins. */
  private readonly since = new Map<string, number>()
  private intervals: Timer[] = []
  private flushing = false
  private ok = false
  private stopped = false
  private readonly log: Logger
  private readonly clock: Clock
  private readonly monotonic: Clock
  private readonly timers: Timers
  private lastRecordRefresh: number
  /** When the connection to Redis last became ready (the reaper waits INSTANCE_TTL_MS after it). */
  private readyAt: number

  constructor(
    private readonly init: RedisClusterInit,
    components: RedisClusterComponents
  ) {
    this.log = components.log
    this.clock = components.clock ?? systemClock
    this.monotonic = components.monotonic ?? monotonicClock
    this.timers = components.timers ?? systemTimers
    this.lastRecordRefresh = this.readyAt = this.clock.now()
    const reconnectStrategy = (retries: number): number => Math.min(100 * 2 ** Math.min(retries, 5), RECONNECT_MAX_MS)
    this.client = createClient({
      url: init.url,
      disableOfflineQueue: true, // while Redis is down a command fails at once: the caller serves locally
      commandOptions: { timeout: REDIS_TIMEOUT_MS, rejectInFlight: true },
      socket: { connectTimeout: REDIS_TIMEOUT_MS, reconnectStrategy }
    })
    this.sub = this.client.duplicate()
    this.beat = createClient({
      url: init.url,
      disableOfflineQueue: true,
      commandOptions: { timeout: BEAT_TIMEOUT_MS, rejectInFlight: true },
      socket: { connectTimeout: BEAT_TIMEOUT_MS, reconnectStrategy }
    })
    for (const c of [this.client, this.sub, this.beat]) {
      c.on('error', (err: Error) => this.onRedisError(err))
    }
    this.client.on('ready', () => this.onReady())
  }

  get advertise(): Endpoint {
    return this.init.advertise
  }

  get healthy(): boolean {
    return this.ok
  }

  async start(handlers: ClusterHandlers): Promise<void> {
    this.handlers = handlers
    await this.client.connect()
    await this.sub.connect()
    await this.beat.connect()
    await this.sub.subscribe(`${P}to:${this.instance}`, (msg) => this.onDirected(msg))
    await this.sub.subscribe(`${P}events`, (msg) => this.onEvents(msg))
    await this.announce()
    await this.beat.del(`${P}gone:${this.instance}`) // new, not taken for gone
    this.ok = true
    this.intervals = [
      this.timers.setInterval(() => void this.onFlushExpired(), FLUSH_MS).unref(),
      this.timers.setInterval(() => void this.onBeatExpired(), BEAT_MS).unref(),
      this.timers.setInterval(() => void this.onInstanceRefreshExpired(), INSTANCE_REFRESH_MS).unref()
    ]
    this.log.info('shared registry connected', { instance: this.instance, advertise: `${this.init.advertise.host}:${this.init.advertise.port}` })
  }

  async stop(): Promise<void> {
    this.stopped = true
    for (const t of this.intervals) this.timers.clear(t)
    // A clean stop: the agents held here go offline at once, not when the TTL runs out.
    for (const record of [...this.held.values()]) this.offline(record, this.clock.now())
    try {
      await this.flush()
      await this.beat.del(`${P}instance:${this.instance}`)
      await this.beat.sRem(`${P}instances`, this.instance)
      await this.beat.del(`${P}gone:${this.instance}`)
    } catch (err) {
      this.log.warn('shared registry: cannot say goodbye', { err: (err as Error).message })
    }
    for (const c of [this.sub, this.beat, this.client]) {
      try {
        c.destroy()
      } catch {
        // already closed
      }
    }
  }

  async claimName(name: string, publicKey: Uint8Array, now: number, nameTtlMs: number): Promise<void> {
    const k = hex(publicKey)
    const held = await this.call(() =>
      this.client.eval(CLAIM_SCRIPT, { keys: [`${P}name:${name}`, `${P}keyname:${k}`], arguments: [k, String(now), String(nameTtlMs), name] })
    )
    if (typeof held === 'string' && held !== '') {
      throw new NatdError(
        'NAME_TAKEN',
        `the name ${name} is bound to another key; its holder can free it with \`natd release-name\`, the operator with \`natd-rendezvous names rm ${name}\``
      )
    }
  }

  async releaseName(name: string, publicKey: Uint8Array): Promise<boolean> {
    const r = await this.call(() => this.client.eval(RELEASE_SCRIPT, { keys: [`${P}name:${name}`], arguments: [hex(publicKey)] }))
    if (r === -1) throw new NatdError('UNAUTHORIZED', `the name ${name} is bound to another key: only its holder can release it`)
    return r === 1
  }

  online(record: PeerRecord, registeredAt?: number): void {
    const k = hex(record.publicKey)
    if (registeredAt !== undefined) this.since.set(k, registeredAt)
    this.held.set(k, record)
    this.dropped.delete(k)
    this.dirty.set(k, { record, at: this.clock.now() })
  }

  offline(record: PeerRecord, now: number): void {
    const k = hex(record.publicKey)
    this.held.delete(k)
    this.since.delete(k)
    this.dropped.set(k, record)
    this.dirty.set(k, { record: null, at: now })
  }

  async find(target: string): Promise<RemotePeer | undefined> {
    let k: string | null = null
    const key = target.length >= 8 ? base32Bytes(target) : null
    if (key && key.length === KEY_BYTES) k = hex(key)
    else {
      const bound = await this.call(() => this.client.hGet(`${P}name:${target}`, 'key'))
      if (typeof bound === 'string' && /^[0-9a-f]{64}$/.test(bound)) k = bound
    }
    if (!k) return undefined
    const got = await this.call(() => this.client.hmGet(`${P}peer:${k}`, ['inst', 'rec']))
    const [inst, rec] = got as (string | null)[]
    if (!inst || !rec || inst === this.instance) return undefined
    const alive = await this.call(() => this.client.exists(`${P}instance:${inst}`))
    const record = parseRecord(rec)
    return alive === 1 && record ? { record, instance: inst } : undefined
  }

  async list(max: number): Promise<PeerRecord[]> {
    const out: PeerRecord[] = []
    for (const inst of await this.liveInstances()) {
      if (inst === this.instance || out.length >= max) continue
      const keys = await this.call(() => this.client.sRandMemberCount(`${P}agents:${inst}`, max - out.length))
      if (!keys.length) continue
      const recs = await this.call(() => Promise.all(keys.map((k) => this.client.hGet(`${P}peer:${k}`, 'rec'))))
      for (const rec of recs) {
        const record = typeof rec === 'string' ? parseRecord(rec) : null
        if (record && out.length < max) out.push(record)
      }
    }
    return out
  }

  async introduce(instance: string, intro: RemoteIntroduction): Promise<boolean> {
    const msg = JSON.stringify({
      t: hex(intro.targetKey),
      id: hex(intro.introId),
      pk: hex(intro.punchKey),
      via: intro.via,
      from: recordJson(intro.from),
      relay: intro.relay
    })
    const listeners = await this.call(() => this.client.publish(`${P}to:${instance}`, msg))
    return listeners > 0
  }

  // --- batches -------------------------------------------------------------

  /** Never rejects. */
  private async onFlushExpired(): Promise<void> {
    try {
      if (this.clock.now() - this.lastRecordRefresh >= RECORD_REFRESH_MS && this.ok) {
        this.lastRecordRefresh = this.clock.now()
        await this.refreshRecords()
      }
      await this.flush()
    } catch (err) {
      this.log.debug('shared registry flush failed', { err: (err as Error).message })
    }
  }

  /** Writes the dirty records, BATCH at a time; what fails stays dirty for the next flush. */
  private async flush(): Promise<void> {
    if (this.flushing || !this.dirty.size) return
    this.flushing = true
    try {
      while (this.dirty.size) {
        const batch = [...this.dirty].slice(0, BATCH)
        for (const [k] of batch) this.dirty.delete(k)
        try {
          await this.writeBatch(batch)
          this.ok = true
        } catch (err) {
          for (const [k, v] of batch) if (!this.dirty.has(k)) this.dirty.set(k, v)
          this.markDown(err)
          return
        }
      }
    } finally {
      this.flushing = false
    }
  }

  private async writeBatch(batch: [string, { record: PeerRecord | null; at: number }][]): Promise<void> {
    const m = this.client.multi()
    const up: PeerRecord[] = []
    const down: PeerRecord[] = []
    for (const [k, { record, at }] of batch) {
      if (record) {
        m.eval(CLAIM_SCRIPT, { keys: [`${P}name:${record.name}`, `${P}keyname:${k}`], arguments: [k, String(at), String(Number.MAX_SAFE_INTEGER), record.name] })
        const since = this.since.get(k) ?? at
        m.eval(WRITE_SCRIPT, { keys: [`${P}peer:${k}`, `${P}agents:${this.instance}`], arguments: [this.instance, JSON.stringify(recordJson(record)), String(since), String(RECORD_TTL_MS), k] })
      } else {
        const name = this.nameOfDropped(k)
        m.eval(DROP_SCRIPT, { keys: [`${P}peer:${k}`, `${P}agents:${this.instance}`, `${P}name:${name}`], arguments: [this.instance, k, String(at)] })
      }
    }
    const started = this.monotonic.now()
    const replies = await m.execAsPipeline().catch((err: unknown) => {
      this.init.observe?.(this.monotonic.now() - started, false)
      throw err
    })
    this.init.observe?.(this.monotonic.now() - started, true)
    // A CLAIM that found the name held by another key: a split while Redis was away. The binding in Redis wins.
    let i = 0
    for (const [k, { record }] of batch) {
      if (record) {
        const held = replies[i]
        if (typeof held === 'string' && held !== '') this.log.warn('shared registry: name bound to another key meanwhile', { name: record.name, key: k.slice(0, 8) })
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

  /** Records of agents that went offline, until their DROP is written (for the down event). */
  private readonly dropped = new Map<string, PeerRecord>()

  private nameOfDropped(k: string): string {
    return this.dropped.get(k)?.name ?? ''
  }

  private async publishEvents(event: 'up' | 'down', peers: PeerRecord[]): Promise<void> {
    for (const msg of this.eventMessages(event, peers, this.instance)) await this.client.publish(`${P}events`, msg)
  }

  /** `from`: the instance that held them (a reaped one's ID for its agents, so the reaper's own agents hear of it too). */
  private eventMessages(event: 'up' | 'down', peers: PeerRecord[], from: string): string[] {
    const out: string[] = []
    for (let i = 0; i < peers.length; i += BATCH) {
      out.push(JSON.stringify({ e: event, from, peers: peers.slice(i, i + BATCH).map((p) => ({ ...recordJson(p), s: this.since.get(hex(p.publicKey)) ?? 0 })) }))
    }
    return out
  }

  private async refreshRecords(): Promise<void> {
    const keys = [...this.held.keys()]
    for (let i = 0; i < keys.length; i += BATCH) {
      const m = this.client.multi()
      for (const k of keys.slice(i, i + BATCH)) m.pExpire(`${P}peer:${k}`, RECORD_TTL_MS)
      await m.execAsPipeline()
    }
  }

  // --- instances -----------------------------------------------------------

  /** The BEAT script on the beat connection: true when this instance had been taken for gone. */
  private async announce(): Promise<boolean> {
    const r = await this.beat.eval(BEAT_SCRIPT, {
      keys: [`${P}instance:${this.instance}`, `${P}instances`, `${P}gone:${this.instance}`],
      arguments: [this.instance, JSON.stringify(this.init.advertise), String(INSTANCE_TTL_MS), String(RECORD_TTL_MS)]
    })
    return Number(r) === 1
  }

  /** Never rejects. */
  private async onBeatExpired(): Promise<void> {
    if (this.stopped || this.beating) return
    this.beating = true
    try {
      if (await this.announce()) await this.reassert()
      this.beatOk = true
    } catch (err) {
      if (this.beatOk && !this.stopped) this.log.warn('shared registry: instance key not refreshed', { err: (err as Error).message, ttlMs: INSTANCE_TTL_MS })
      this.beatOk = false
    } finally {
      this.beating = false
    }
  }

  /**
   * Our key had expired or a reaper had removed us while we served our agents (Redis or
   * this process stalled): the beat has put the key back, so no reaper deletes our records
   * any more; every record we hold is queued to be written again (flush retries until it
   * is), and the up events of that write tell the peers that heard "down".
   */
  private async reassert(): Promise<void> {
    this.log.warn('shared registry: this instance was taken for gone while alive: its key and records are written again', { instance: this.instance, agents: this.held.size })
    this.rewriteHeld()
    void this.onFlushExpired()
    await this.beat.del(`${P}gone:${this.instance}`)
  }

  private rewriteHeld(): void {
    for (const [k, record] of this.held) if (!this.dirty.has(k)) this.dirty.set(k, { record, at: this.clock.now() })
  }

  /** Never rejects. */
  private async onInstanceRefreshExpired(): Promise<void> {
    if (this.stopped) return
    try {
      await this.reapDead()
      this.ok = true
    } catch (err) {
      this.markDown(err)
    }
  }

  private async liveInstances(): Promise<string[]> {
    const all = await this.call(() => this.client.sMembers(`${P}instances`))
    const alive = await this.call(() => Promise.all(all.map((i) => this.client.exists(`${P}instance:${i}`))))
    return all.filter((_, n) => alive[n] === 1)
  }

  /**
   * Instances whose key expired: one live instance (whoever sets the reap lock first)
   * deletes their records and tells everyone their agents went down. The agents
   * themselves re-register elsewhere; a record they rewrote meanwhile names their new
   * instance and is left alone.
   */
  private async reapDead(): Promise<void> {
    // Redis back after a pause longer than the TTL: every instance key expired meanwhile.
    // The others re-announce within their reconnect backoff; reaping them now would flap their agents.
    if (this.clock.now() - this.readyAt < INSTANCE_TTL_MS) return
    const all = await this.client.sMembers(`${P}instances`)
    for (const inst of all) {
      if (inst === this.instance || !/^[0-9a-f]{16}$/.test(inst)) continue
      if ((await this.client.exists(`${P}instance:${inst}`)) === 1) continue
      const lock = await this.client.set(`${P}reap:${inst}`, this.instance, { condition: 'NX', expiration: { type: 'PX', value: 60_000 } })
      if (lock !== 'OK') continue
      const keys = await this.client.sMembers(`${P}agents:${inst}`)
      const gone: PeerRecord[] = []
      const now = this.clock.now()
      for (const k of keys) {
        const rec = await this.client.eval(REAP_SCRIPT, { keys: [`${P}instance:${inst}`, `${P}peer:${k}`], arguments: [inst] })
        const record = typeof rec === 'string' ? parseRecord(rec) : null
        if (!record) continue
        gone.push({ ...record, online: false })
        await this.client.hSet(`${P}name:${record.name}`, 'lastSeenAt', String(now))
      }
      // `from`: the reaped instance's ID, so the reaper's own agents hear of it too.
      const events = this.eventMessages('down', gone, inst)
      const buried = await this.client.eval(BURY_SCRIPT, { keys: [`${P}instance:${inst}`, `${P}agents:${inst}`, `${P}instances`, `${P}reap:${inst}`], arguments: [inst, ...events] })
      if (Number(buried) === 1) this.log.warn('instance gone: its agents are offline until they register elsewhere', { instance: inst, agents: gone.length })
      else this.log.warn('instance back while reaped: it writes its records again', { instance: inst, reaped: gone.length })
    }
  }

  // --- incoming --------------------------------------------------------------

  private onDirected(raw: string): void {
    const intro = parseIntroduction(raw)
    if (intro) this.handlers?.onIntroduction(intro)
    else this.log.warn('shared registry: malformed introduction ignored', { chars: raw.length })
  }

  private onEvents(raw: string): void {
    const parsed = raw.length <= MAX_MESSAGE_CHARS ? parseJson(raw) : null
    if (!isObject(parsed) || (parsed.e !== 'up' && parsed.e !== 'down') || parsed.from === this.instance || !Array.isArray(parsed.peers)) return
    const list = parsed.peers.slice(0, BATCH) as unknown[]
    const peers = list.map(recordFromJson).filter((r): r is PeerRecord => r !== null)
    const online = parsed.e === 'up'
    if (online) {
      // Agents we hold that registered with another instance since: they moved.
      const moved = list.filter((v): v is { k: string; s: number } => isObject(v) && typeof v.k === 'string' && typeof v.s === 'number' && (this.since.get(v.k) ?? Infinity) < v.s)
      const gone = peers.filter((p) => moved.some((m) => m.k === hex(p.publicKey)))
      if (gone.length) this.handlers?.onMoved(gone)
    }
    // An agent held here (it re-homed) is not down because its old instance was reaped.
    const relevant = peers.filter((p) => online || !this.held.has(hex(p.publicKey))).map((p) => ({ ...p, online }))
    if (relevant.length) this.handlers?.onPeerEvents(parsed.e, relevant)
  }

  // --- connection state ------------------------------------------------------

  private onReady(): void {
    this.readyAt = this.clock.now()
    if (!this.handlers || this.stopped) return
    // Redis is back (maybe restarted empty): say who we are and rewrite every record we hold.
    this.rewriteHeld()
    void this.onBeatExpired()
    void this.onInstanceRefreshExpired()
    if (!this.ok) this.log.info('shared registry reachable again', { instance: this.instance, agents: this.held.size })
  }

  private onRedisError(err: Error): void {
    this.markDown(err)
  }

  private markDown(err: unknown): void {
    if (this.ok) this.log.warn('shared registry unreachable: serving this instance\'s agents only', { err: (err as Error).message })
    this.ok = false
  }

  /** A request whose failure means "Redis is away": TIMEOUT for the caller to map. */
  private async call<T>(run: () => Promise<T>): Promise<T> {
    const started = this.monotonic.now()
    try {
      const r = await run()
      this.ok = true
      this.init.observe?.(this.monotonic.now() - started, true)
      return r
    } catch (err) {
      this.init.observe?.(this.monotonic.now() - started, false)
      this.markDown(err)
      throw new NatdError('TIMEOUT', 'the shared registry (Redis) does not answer', { cause: err })
    }
  }
}

// --- records in Redis ----------------------------------------------------------

interface RecordJson {
  k: string
  n: string
  nat: string
  u: [string, number] | null
  t: [string, number] | null
  l: [string, number][]
}

function recordJson(r: PeerRecord): RecordJson {
  const ep = (e: Endpoint | null): [string, number] | null => (e ? [e.host, e.port] : null)
  return { k: hex(r.publicKey), n: r.name, nat: r.nat, u: ep(r.udp), t: ep(r.tcp), l: r.lan.map((e) => [e.host, e.port]) }
}

function parseRecord(raw: string): PeerRecord | null {
  return raw.length <= MAX_MESSAGE_CHARS ? recordFromJson(parseJson(raw)) : null
}

function recordFromJson(v: unknown): PeerRecord | null {
  if (!isObject(v) || typeof v.k !== 'string' || !/^[0-9a-f]{64}$/.test(v.k) || typeof v.n !== 'string' || v.n.length > 255) return null
  if (!(NAT_VERDICTS as readonly string[]).includes(v.nat as string)) return null
  const udp = endpointFrom(v.u)
  const tcp = endpointFrom(v.t)
  if (udp === undefined || tcp === undefined || !Array.isArray(v.l) || v.l.length > 16) return null
  const lan: Endpoint[] = []
  for (const e of v.l) {
    const ep = endpointFrom(e)
    if (!ep) return null
    lan.push(ep)
  }
  return { publicKey: Buffer.from(v.k, 'hex'), name: v.n, online: true, lastSeenAgoMs: 0, nat: v.nat as NatVerdict, udp, tcp, lan }
}

/** An endpoint, null for none, undefined when malformed. */
function endpointFrom(v: unknown): Endpoint | null | undefined {
  if (v === null) return null
  if (Array.isArray(v) && v.length === 2 && typeof v[0] === 'string' && v[0].length <= 64 && Number.isInteger(v[1]) && v[1] > 0 && v[1] < 65536) {
    return { host: v[0], port: v[1] as number }
  }
  if (isObject(v) && typeof v.host === 'string' && v.host.length <= 64 && Number.isInteger(v.port) && (v.port as number) > 0 && (v.port as number) < 65536) {
    return { host: v.host, port: v.port as number }
  }
  return undefined
}

function parseIntroduction(raw: string): RemoteIntroduction | null {
  const v = raw.length <= MAX_MESSAGE_CHARS ? parseJson(raw) : null
  if (!isObject(v)) return null
  const from = recordFromJson(v.from)
  const relay = endpointFrom(v.relay)
  const targetKey = hexBytes(v.t, KEY_BYTES)
  const introId = hexBytes(v.id, INTRO_ID_BYTES)
  const punchKey = hexBytes(v.pk, DATAGRAM_KEY_BYTES)
  if (!from || relay === undefined || !targetKey || !introId || !punchKey || !(VIAS as readonly string[]).includes(v.via as string)) return null
  return { targetKey, introId, punchKey, via: v.via as Via, from, relay }
}

function hex(b: Uint8Array): string {
  return Buffer.from(b).toString('hex')
}
