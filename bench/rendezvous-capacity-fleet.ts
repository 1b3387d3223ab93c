/**
 * The natd-rendezvous instances under test in bench/rendezvous-capacity.ts: one (the
 * registry in memory), or several sharing a registry in a redis-server that this starts
 * and stops (`--instances N`). Gives the step the figures it reads per window, summed or
 * per instance, and Redis's own (memory, commands processed, CPU).
 *
 *   core 1: instance 0 127.0.0.1:P0 ┐
 *           instance 1 127.0.0.1:P1 ├── redis-server 127.0.0.1:R (append-only, fsync every second)
 *           instance 2 127.0.0.1:P2 ┘
 *   load process i ──▶ instance i mod N (its agents, their control connections)
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { rssBytes, runqueueWaitMs, udpDrops } from './proc-stats.ts'
import { freePort, ServerProcess, STOP_TIMEOUT_MS, type HeapFigures, type ServerStats } from './rendezvous-capacity-procs.ts'

const REDIS_SERVER = '/usr/bin/redis-server'
const REDIS_READY_TIMEOUT_MS = 10_000
/** After start-up, before the baselines are read: the instances' first Redis writes and timers settle. */
const SETTLE_MS = 1_000

export interface InstanceFigures {
  port: number
  /** Agents registered through the load processes that target this instance. */
  agents: number
  rssBytes: number
  bytesPerAgent: number
  heapBytesPerAgent: number
}

export interface RedisFigures {
  /** INFO memory: used_memory (what Redis allocated for data and buffers), and its RSS. */
  usedMemoryBytes: number
  rssBytes: number
  /** (used_memory - its value before any agent) / agents registered. */
  bytesPerAgent: number
  keys: number
}

/** INFO fields as numbers (redis-cli on the loopback port). */
function info(port: number, section: string): Record<string, number> {
  const out: Record<string, number> = {}
  try {
    const text = execFileSync('redis-cli', ['-h', '127.0.0.1', '-p', String(port), 'INFO', section], { encoding: 'utf8', timeout: 10_000 })
    for (const line of text.split('\r\n')) {
      const m = /^(\w+):(-?[\d.]+)$/.exec(line)
      if (m) out[m[1]!] = Number(m[2])
    }
    const ks = /^db0:keys=(\d+)/m.exec(text)
    if (ks) out.keys = Number(ks[1])
  } catch (err) {
    process.stderr.write(`redis-cli INFO failed: ${(err as Error).message}\n`)
  }
  return out
}

/** redis-server on 127.0.0.1 with its files in a temp dir (removed by stop()). */
class RedisProcess {
  readonly proc: ChildProcess
  readonly dir = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-bench-redis-'))
  readonly port: number

  constructor(port: number, prefix: string[]) {
    this.port = port
    // Persistence as docs/OPERATIONS.md advises (append-only); everysec: Redis's default fsync.
    const argv = [...prefix, REDIS_SERVER, '--bind', '127.0.0.1', '--port', String(port), '--dir', this.dir, '--appendonly', 'yes', '--appendfsync', 'everysec', '--save', '', '--loglevel', 'warning']
    this.proc = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'ignore', 'inherit'] })
  }

  get pid(): number {
    return this.proc.pid!
  }

  async ready(): Promise<void> {
    const deadline = performance.now() + REDIS_READY_TIMEOUT_MS
    while (performance.now() < deadline) {
      if (this.proc.exitCode !== null) throw new Error(`redis-server exited (${this.proc.exitCode})`)
      const up = await new Promise<boolean>((resolve) => {
        const s = net.connect({ host: '127.0.0.1', port: this.port }, () => (s.destroy(), resolve(true)))
        s.on('error', () => resolve(false))
      })
      if (up) return
      await sleep(100)
    }
    throw new Error('redis-server did not listen in time')
  }

  async stop(): Promise<void> {
    if (this.proc.exitCode === null && this.proc.signalCode === null) {
      const exited = new Promise((r) => this.proc.once('exit', r))
      this.proc.kill('SIGTERM')
      if (!(await Promise.race([exited.then(() => true), sleep(STOP_TIMEOUT_MS, undefined, { ref: false }).then(() => false)]))) this.proc.kill('SIGKILL')
    }
    fs.rmSync(this.dir, { recursive: true, force: true })
  }
}

/** Largest of some numbers, NaN when any is NaN (a probe that did not answer). */
const max = (xs: number[]): number => xs.reduce((a, b) => (Number.isNaN(a) || Number.isNaN(b) ? NaN : Math.max(a, b)), -Infinity)
const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0)

export class Fleet {
  readonly servers: ServerProcess[] = []
  readonly redis: RedisProcess | null
  /** Per instance: agents registered through it, and its RSS and live heap before any agent. */
  readonly agents: number[]
  private baselineRss: number[] = []
  private baselineHeap: number[] = []
  private baselineRedis = 0
  /** The probe's RSS breakdown of instance 0 before any agent. */
  baselineRssParts: Record<string, number> = {}

  private constructor(
    ports: number[],
    redis: RedisProcess | null,
    prefix: string[],
    args: string[]
  ) {
    this.redis = redis
    this.agents = ports.map(() => 0)
    for (const port of ports) {
      const cluster = redis ? ['--redis', `redis://127.0.0.1:${redis.port}`, '--advertise', `127.0.0.1:${port}`] : []
      this.servers.push(new ServerProcess(port, prefix, [...args, ...cluster]))
    }
  }

  /** `n` distinct free ports on 127.0.0.1, one per instance. */
  static async freePorts(n: number): Promise<number[]> {
    const ports: number[] = []
    while (ports.length < n) {
      const p = await freePort()
      if (!ports.includes(p)) ports.push(p)
    }
    return ports
  }

  /**
   * Several `ports` share a registry in Redis (started first: an instance refuses to
   * start when Redis does not answer); `prefix`: wrappers such as `nice` and `taskset`.
   * Resolves once every instance answers, with the baselines read.
   */
  static async start(ports: number[], prefix: string[], args: string[], started: (fleet: Fleet) => void): Promise<Fleet> {
    const redis = ports.length > 1 ? new RedisProcess(await freePort(), prefix) : null
    try {
      await redis?.ready()
    } catch (err) {
      await redis?.stop()
      throw err
    }
    const fleet = new Fleet(ports, redis, prefix, args)
    started(fleet) // the caller's cleanup owns it from here
    await fleet.ready()
    return fleet
  }

  get ports(): number[] {
    return this.servers.map((s) => s.port)
  }

  get pids(): number[] {
    return this.servers.map((s) => s.pid)
  }

  /** The instances and Redis: what runs on the server core. */
  get allPids(): number[] {
    return this.redis ? [...this.pids, this.redis.pid] : this.pids
  }

  /** Rejects when any instance exits before stop(). */
  get died(): Promise<never> {
    return Promise.race(this.servers.map((s) => s.died))
  }

  get output(): string[] {
    return this.servers.flatMap((s) => s.output)
  }

  private async ready(): Promise<void> {
    await Promise.all(this.servers.map((s) => s.ready()))
    await sleep(SETTLE_MS)
    const heaps = await Promise.all(this.servers.map((s) => s.heap()))
    this.baselineRss = this.pids.map(rssBytes)
    this.baselineHeap = heaps.map((h) => h.heapUsed + h.external)
    this.baselineRssParts = heaps[0]!.rssParts
    if (this.redis) this.baselineRedis = info(this.redis.port, 'memory').used_memory ?? NaN
  }

  get baseline(): { rss: number; heap: number; redisUsedMemory: number } {
    return { rss: sum(this.baselineRss), heap: sum(this.baselineHeap), redisUsedMemory: this.baselineRedis }
  }

  rss(): number {
    return sum(this.pids.map(rssBytes))
  }

  /** Largest cumulative run-queue wait of the instances (ms): with several on one core they also wait for each other. */
  runqueueWaitMs(): number {
    return max(this.pids.map(runqueueWaitMs))
  }

  udpDrops(): ReturnType<typeof udpDrops> {
    const d = this.ports.map(udpDrops)
    return { server: sum(d.map((x) => x.server)), all: d[0]!.all }
  }

  async mark(): Promise<void> {
    await Promise.all(this.servers.map((s) => s.mark()))
  }

  /** Event-loop delay and GC pauses: the worst instance's, GC time summed. */
  async stats(): Promise<ServerStats> {
    const s = await Promise.all(this.servers.map((x) => x.stats()))
    return { loopDelayP99Ms: max(s.map((x) => x.loopDelayP99Ms)), loopDelayMaxMs: max(s.map((x) => x.loopDelayMaxMs)), gcMaxMs: max(s.map((x) => x.gcMaxMs)), gcTotalMs: sum(s.map((x) => x.gcTotalMs)), gcCount: sum(s.map((x) => x.gcCount)) }
  }

  /** Heap figures after a full GC: summed over the instances (rssParts: instance 0's), and per instance. */
  async heap(): Promise<{ total: HeapFigures; each: HeapFigures[] }> {
    const each = await Promise.all(this.servers.map((s) => s.heap()))
    return { total: { heapUsed: sum(each.map((h) => h.heapUsed)), external: sum(each.map((h) => h.external)), rss: sum(each.map((h) => h.rss)), rssParts: each[0]!.rssParts }, each }
  }

  instances(heaps: HeapFigures[]): InstanceFigures[] {
    return this.servers.map((s, i) => {
      const rss = rssBytes(s.pid)
      const agents = Math.max(1, this.agents[i]!)
      return { port: s.port, agents: this.agents[i]!, rssBytes: rss, bytesPerAgent: (rss - this.baselineRss[i]!) / agents, heapBytesPerAgent: (heaps[i]!.heapUsed + heaps[i]!.external - this.baselineHeap[i]!) / agents }
    })
  }

  /** Commands Redis processed so far (INFO stats total_commands_processed); NaN without Redis. */
  redisCommands(): number {
    return this.redis ? (info(this.redis.port, 'stats').total_commands_processed ?? NaN) : NaN
  }

  redisFigures(registered: number): RedisFigures | null {
    if (!this.redis) return null
    const m = info(this.redis.port, 'memory')
    const k = info(this.redis.port, 'keyspace')
    const used = m.used_memory ?? NaN
    return { usedMemoryBytes: used, rssBytes: rssBytes(this.redis.pid), bytesPerAgent: (used - this.baselineRedis) / Math.max(1, registered), keys: k.keys ?? NaN }
  }

  async stop(): Promise<void> {
    await Promise.allSettled(this.servers.map((s) => s.stop()))
    await this.redis?.stop()
  }

  kill(): void {
    for (const s of this.servers) s.proc.kill('SIGKILL')
    this.redis?.proc.kill('SIGKILL')
  }
}
