/**
 * The Cluster (cluster.ts) on Redis 7, through node-redis's core client (@redis/client:
 * released monthly by Redis itself, its own types, no dependencies; ioredis calls itself
 * best-effort maintained now).
 *
 * Keys and channels (`natd:` prefix), and the Lua scripts that change them: redis-scripts.ts.
 * Records and introductions as JSON in Redis: redis-records.ts.
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
 * What agents ask (LIST, LOOKUP) goes on a connection of its own (`queries`), so a burst of
 * them never queues ahead of registrations, record writes and introductions: LIST one
 * shared read a second at most (redis-list.ts), LOOKUP paced per agent (control.ts).
 *
 * Trust: Redis is the operator's (a private network, a password, TLS with rediss://):
 * it sees peer records, names and introductions' punch keys. Still, whatever comes back
 * from it is parsed and bounded like wire input, so a corrupt key cannot crash a server.
 */
import type { Endpoint } from '../protocol/endpoint.js'
import { NatdError } from '../protocol/errors.js'
import { base32Bytes, randomBytes } from '../protocol/identity.js'
import { monotonicClock, systemClock, type Clock, type Logger } from '../protocol/log.js'
import { KEY_BYTES, type PeerRecord } from '../protocol/rendezvous.js'
import { isJsonObject as isObject, parseJson } from '../common/untrusted-json.js'
import type { Cluster, ClusterHandlers, RemoteIntroduction, RemotePeer } from './cluster.js'
import { RECORD_REFRESH_MS, RECORD_TTL_MS, RecordWriter, type Client } from './redis-record-writer.js'
import { BATCH, hex, introductionJson, MAX_MESSAGE_CHARS, parseIntroduction, parseRecord, recordFromJson } from './redis-records.js'
import { ListCache, readList } from './redis-list.js'
import { reapDead } from './redis-reaper.js'
import { REDIS_TIMEOUT_MS, redisConnection } from './redis-connection.js'
import { BEAT_SCRIPT, CLAIM_SCRIPT, KEY_PREFIX, RELEASE_SCRIPT } from './redis-scripts.js'
import { systemTimers, type Timer, type Timers } from './timers.js'

export { RECORD_REFRESH_MS, RECORD_TTL_MS } from './redis-record-writer.js'

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

const P = KEY_PREFIX

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

export class RedisCluster implements Cluster {
  readonly instance = randomBytes(8).toString('hex')
  private readonly client: Client
  private readonly sub: Client
  /** The instance key's own connection (BEAT_MS). */
  private readonly beat: Client
  /** What agents ask (LIST, LOOKUP): apart from the bulk connection's registrations and introductions. */
  private readonly queries: Client
  private readonly lists: ListCache
  private beating = false
  /** Whether the last beat was answered (a failed one warns once, not every BEAT_MS while Redis is away). */
  private beatOk = true
  private handlers: ClusterHandlers | null = null
  private readonly records: RecordWriter
  /** Online records this instance holds (K → record): rewritten after Redis comes back, TTLs refreshed. */
  private readonly held = new Map<string, PeerRecord>()
  /** When each agent held here registered (K → ms): the newest registration of a key wins. */
  private readonly since = new Map<string, number>()
  private intervals: Timer[] = []
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
    this.client = redisConnection(init.url, REDIS_TIMEOUT_MS)
    this.sub = this.client.duplicate()
    this.beat = redisConnection(init.url, BEAT_TIMEOUT_MS)
    this.queries = redisConnection(init.url, REDIS_TIMEOUT_MS)
    this.lists = new ListCache((max) => readList({ client: this.queries, instance: this.instance, call: (run) => this.call(run) }, max), this.monotonic)
    for (const c of [this.client, this.sub, this.beat, this.queries]) {
      c.on('error', (err: Error) => this.onRedisError(err))
    }
    this.client.on('ready', () => this.onReady())
    this.records = new RecordWriter({
      client: this.client,
      instance: this.instance,
      since: this.since,
      log: this.log,
      monotonic: this.monotonic,
      observe: (ms, ok) => this.init.observe?.(ms, ok),
      onWritten: () => {
        this.ok = true
      },
      onFailed: (err) => this.markDown(err)
    })
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
    await this.queries.connect()
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
      await this.records.flush()
      await this.beat.del(`${P}instance:${this.instance}`)
      await this.beat.sRem(`${P}instances`, this.instance)
      await this.beat.del(`${P}gone:${this.instance}`)
    } catch (err) {
      this.log.warn('shared registry: cannot say goodbye', { err: (err as Error).message })
    }
    for (const c of [this.sub, this.beat, this.queries, this.client]) {
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
    this.records.online(k, record, this.clock.now())
  }

  offline(record: PeerRecord, now: number): void {
    const k = hex(record.publicKey)
    this.held.delete(k)
    this.since.delete(k)
    this.records.offline(k, record, now)
  }

  find(target: string): Promise<RemotePeer | undefined> {
    return this.findOn(this.client, target)
  }

  lookup(target: string): Promise<RemotePeer | undefined> {
    return this.findOn(this.queries, target)
  }

  list(max: number): Promise<PeerRecord[]> {
    return this.lists.get(max)
  }

  private async findOn(client: Client, target: string): Promise<RemotePeer | undefined> {
    let k: string | null = null
    const key = target.length >= 8 ? base32Bytes(target) : null
    if (key && key.length === KEY_BYTES) k = hex(key)
    else {
      const bound = await this.call(() => client.hGet(`${P}name:${target}`, 'key'))
      if (typeof bound === 'string' && /^[0-9a-f]{64}$/.test(bound)) k = bound
    }
    if (!k) return undefined
    const got = await this.call(() => client.hmGet(`${P}peer:${k}`, ['inst', 'rec']))
    const [inst, rec] = got as (string | null)[]
    if (!inst || !rec || inst === this.instance) return undefined
    const alive = await this.call(() => client.exists(`${P}instance:${inst}`))
    const record = parseRecord(rec)
    return alive === 1 && record ? { record, instance: inst } : undefined
  }

  async introduce(instance: string, intro: RemoteIntroduction): Promise<boolean> {
    const listeners = await this.call(() => this.client.publish(`${P}to:${instance}`, introductionJson(intro)))
    return listeners > 0
  }

  // --- batches -------------------------------------------------------------

  /** Never rejects. */
  private async onFlushExpired(): Promise<void> {
    try {
      if (this.clock.now() - this.lastRecordRefresh >= RECORD_REFRESH_MS && this.ok) {
        this.lastRecordRefresh = this.clock.now()
        await this.records.refresh([...this.held.keys()])
      }
      await this.records.flush()
    } catch (err) {
      this.log.debug('shared registry flush failed', { err: (err as Error).message })
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
    this.records.rewrite(this.held, this.clock.now())
    void this.onFlushExpired()
    await this.beat.del(`${P}gone:${this.instance}`)
  }

  /** Never rejects. */
  private async onInstanceRefreshExpired(): Promise<void> {
    if (this.stopped) return
    try {
      // Redis back after a pause longer than the TTL: every instance key expired meanwhile.
      // The others re-announce within their reconnect backoff; reaping them now would flap their agents.
      if (this.clock.now() - this.readyAt >= INSTANCE_TTL_MS) await reapDead({ client: this.client, instance: this.instance, records: this.records, log: this.log, clock: this.clock })
      this.ok = true
    } catch (err) {
      this.markDown(err)
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
    this.records.rewrite(this.held, this.clock.now())
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
