/**
 * How many agents one natd-rendezvous process holds.
 *
 *   core 0: this controller + load processes (rendezvous-capacity-agents.ts)
 *             agent g: UDP 127.20.x.y:ephemeral ──HELLO/REGISTER/HEARTBEAT──▶ 127.0.0.1:P
 *             1% of agents: TCP control connection ──REGISTER/PING/LIST/INTRODUCE──▶ :P
 *   core 1: node dist/rendezvous/main.js --host 127.0.0.1 --port P --alt-port 0
 *
 * Ramp N (1k, 5k, 10k, 25k, 50k, 100k, … up to --max): register the step's new agents
 * (signed, paced at --rate), open the 1% TCP control connections, then measure one full
 * heartbeat interval (every agent beats once, at phases spread evenly over it): ack
 * latency p50/p99, lost acks, server CPU and RSS. Then a few LISTs and a burst of
 * INTRODUCEs between TCP agents. The ramp stops at the first step whose ack p99 exceeds
 * 50 ms or that loses more than 0.1% of acks or registrations.
 *
 *   node --disable-warning=ExperimentalWarning bench/rendezvous-capacity.ts \
 *     [--max N] [--interval 20s] [--rate 5000] [--budget 5m] [--quick] [--json FILE]
 *
 * --quick: 1k and 10k at a 5 s interval (4x the heartbeat rate of 20 s), well under a
 * minute. Needs `npm run build` (it runs dist/).
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process'
import dgram from 'node:dgram'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { ACK_TIMEOUT_MS, TCP_EVERY, type Command, type IntroResult, type ListResult, type RegisterResult, type Reply, type WindowResult } from './rendezvous-capacity-agents.ts'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const SERVER_MAIN = path.join(ROOT, 'dist/rendezvous/main.js')
const AGENTS_MAIN = path.join(ROOT, 'bench/rendezvous-capacity-agents.ts')
if (!fs.existsSync(SERVER_MAIN)) {
  process.stderr.write('dist/ is missing: run `npm run build` first\n')
  process.exit(2)
}
const { parseDuration } = (await import(path.join(ROOT, 'dist/protocol/duration.js'))) as typeof import('../src/protocol/duration.js')
const proto = (await import(path.join(ROOT, 'dist/protocol/rendezvous.js'))) as typeof import('../src/protocol/rendezvous.js')

/** The issue's pass line: heartbeat-ack p99 under 50 ms, at most 0.1% lost. */
const P99_LIMIT_MS = 50
const LOSS_LIMIT = 0.001
/** Targets from the issue: 100,000 agents at a 20 s heartbeat on one core, < 1 KiB each. */
const TARGET_AGENTS = 100_000
const TARGET_BYTES_PER_AGENT = 1024
/** The server's and the agent's default heartbeat (natd-rendezvous --heartbeat). */
const DEFAULT_INTERVAL = '20s'
const QUICK_INTERVAL = '5s'
const DEFAULT_STEPS = [1_000, 5_000, 10_000, 25_000, 50_000, 100_000]
const QUICK_STEPS = [1_000, 10_000]
/**
 * Registrations per second across all load processes. Each costs the server a HELLO and
 * a REGISTER (two MACs and an Ed25519 verify): ~300 µs on the 2-core test machine, so
 * 5,000/s overflowed its UDP receive buffer; 2,000/s keeps it near 60% busy.
 */
const DEFAULT_RATE = 2_000
const DEFAULT_BUDGET = '5m'
/** Per step besides registration and the window: TCP opens, ack drain, LISTs, intro burst. */
const STEP_OVERHEAD_MS = 10_000
const LIST_SAMPLES = 3
const INTRO_BURST_MS = 3_000
/** INTRODUCE requests each TCP agent keeps in flight during the burst. */
const INTRO_DEPTH = 4
/** Sockets per load process: its RLIMIT_NOFILE minus this reserve (node, stdio, IPC). */
const FD_RESERVE = 200
/** Agents per load process even when the fd limit allows more (keeps each event loop light). */
const MAX_AGENTS_PER_PROCESS = 20_000
const MAX_PROCESSES = 16
/** Raised to this when allowed (root with CAP_SYS_RESOURCE). */
const WANTED_NOFILE = 1_048_576
/** Above this CPU share (of one core) or event-loop delay p99, a side counts as saturated. */
const SATURATED_CPU_PCT = 90
const GENERATOR_LAG_MS = 20
/** CPU (% of one core) used by processes outside this bench above which a result is suspect. */
const OTHER_LOAD_PCT = 20
const RSS_SAMPLE_MS = 1_000
const SERVER_READY_TIMEOUT_MS = 10_000
const STOP_TIMEOUT_MS = 5_000
const CLK_TCK = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100
  } catch {
    return 100
  }
})()

// --- options -------------------------------------------------------------------

const { values: opts } = parseArgs({
  options: {
    max: { type: 'string' },
    json: { type: 'string' },
    interval: { type: 'string' },
    rate: { type: 'string' },
    budget: { type: 'string' },
    quick: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false }
  }
})
if (opts.help) {
  process.stdout.write('usage: node --disable-warning=ExperimentalWarning bench/rendezvous-capacity.ts [--max N] [--interval 20s] [--rate 5000] [--budget 5m] [--quick] [--json FILE]\n')
  process.exit(0)
}
const intervalMs = parseDuration(opts.interval ?? (opts.quick ? QUICK_INTERVAL : DEFAULT_INTERVAL))
const budgetMs = parseDuration(opts.budget ?? DEFAULT_BUDGET)
const ratePerS = Number(opts.rate ?? DEFAULT_RATE)
let maxN = Number(opts.max ?? (opts.quick ? QUICK_STEPS.at(-1) : TARGET_AGENTS))
if (!Number.isInteger(maxN) || maxN < 2) usage('--max must be an integer >= 2')
if (!(ratePerS > 0)) usage('--rate must be > 0')
if (intervalMs < 2 * ACK_TIMEOUT_MS) usage(`--interval must be at least ${(2 * ACK_TIMEOUT_MS) / 1000}s`)

const notes: string[] = []

// --- /proc sampling ----------------------------------------------------------------

function cpuTicks(pid: number): number {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return Number(f[11]) + Number(f[12]) // utime + stime (fields 14, 15)
  } catch {
    return 0
  }
}

function rssBytes(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))
    return m ? Number(m[1]) * 1024 : 0
  } catch {
    return 0
  }
}

/** CPU use of some processes between start() and the returned function's call, in % of one core. */
function cpuMeter(pids: () => number[]): () => { pct: number; seconds: number } {
  const t0 = performance.now()
  const c0 = pids().reduce((s, p) => s + cpuTicks(p), 0)
  return () => {
    const seconds = pids().reduce((s, p) => s + cpuTicks(p), 0) / CLK_TCK - c0 / CLK_TCK
    return { pct: (100 * seconds) / ((performance.now() - t0) / 1000), seconds }
  }
}

/**
 * UDP datagrams the kernel dropped for want of receive buffer: at the server's socket
 * (/proc/net/udp, last column) and in the whole network namespace (/proc/net/snmp), so
 * `all - server` were dropped at the load generator's sockets.
 */
function udpDrops(port: number): { server: number; all: number } {
  const snmp = fs.readFileSync('/proc/net/snmp', 'utf8').split('\n').filter((l) => l.startsWith('Udp:'))
  const names = snmp[0]?.split(/\s+/) ?? []
  const all = Number(snmp[1]?.split(/\s+/)[names.indexOf('RcvbufErrors')] ?? 0)
  const table = fs.readFileSync('/proc/net/udp', 'utf8')
  const at = table.indexOf(` 0100007F:${port.toString(16).toUpperCase().padStart(4, '0')} `)
  const line = at < 0 ? '' : table.slice(at, table.indexOf('\n', at))
  return { server: Number(line.trim().split(/\s+/).at(-1) ?? 0) || 0, all }
}

/**
 * Whole-machine CPU (all cores, /proc/stat) between the call and the returned function's
 * call, in % of one core: `busy` is everything but idle and iowait; `irq` the (soft)irq
 * part, which no process is billed for (here mostly loopback packet delivery).
 */
function machineMeter(): () => { busyPct: number; irqPct: number } {
  const read = (): { busy: number; irq: number } => {
    const f = (/^cpu\s+(.*)$/m.exec(fs.readFileSync('/proc/stat', 'utf8'))?.[1] ?? '').split(/\s+/).map(Number)
    const [user = 0, nice = 0, system = 0, , , irq = 0, softirq = 0, steal = 0] = f
    return { busy: user + nice + system + irq + softirq + steal, irq: irq + softirq }
  }
  const t0 = performance.now()
  const a = read()
  return () => {
    const b = read()
    const s = (performance.now() - t0) / 1000
    return { busyPct: (100 * (b.busy - a.busy)) / CLK_TCK / s, irqPct: (100 * (b.irq - a.irq)) / CLK_TCK / s }
  }
}

/** Soft and hard RLIMIT_NOFILE of this process. */
function nofile(): { soft: number; hard: number } {
  const m = /Max open files\s+(\S+)\s+(\S+)/.exec(fs.readFileSync('/proc/self/limits', 'utf8'))
  const n = (s: string | undefined): number => (s === 'unlimited' ? WANTED_NOFILE : Number(s))
  return { soft: n(m?.[1]), hard: n(m?.[2]) }
}

// --- processes ---------------------------------------------------------------------

class LoadProcess {
  readonly proc: ChildProcess
  private nextId = 1
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>()

  constructor(nofileLimit: number, raise: boolean) {
    const args = ['--disable-warning=ExperimentalWarning', AGENTS_MAIN]
    const stdio: ['ignore', 'inherit', 'inherit', 'ipc'] = ['ignore', 'inherit', 'inherit', 'ipc']
    // `ulimit -n` exists only in a shell; the exec keeps the IPC descriptor.
    this.proc = raise
      ? spawn('bash', ['-c', `ulimit -n ${nofileLimit} && exec "$0" "$@"`, process.execPath, ...args], { stdio, serialization: 'advanced' })
      : spawn(process.execPath, args, { stdio, serialization: 'advanced' })
    this.proc.on('message', (r: Reply) => {
      const p = this.pending.get(r.id)
      if (!p) return
      this.pending.delete(r.id)
      if (r.ok) p.resolve(r.result)
      else p.reject(new Error(`load process: ${r.error}`))
    })
    this.proc.on('exit', (code, signal) => {
      for (const p of this.pending.values()) p.reject(new Error(`load process ${this.proc.pid} exited (${signal ?? code})`))
      this.pending.clear()
    })
  }

  call<T>(cmd: Command, timeoutMs: number): Promise<T> {
    const id = this.nextId++
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id)
        reject(new Error(`load process ${this.proc.pid}: ${cmd.op} took over ${timeoutMs / 1000}s`))
      }, timeoutMs)
      this.pending.set(id, {
        resolve: (v) => {
          clearTimeout(timer)
          resolve(v as T)
        },
        reject: (e) => {
          clearTimeout(timer)
          reject(e)
        }
      })
      this.proc.send({ id, cmd })
    })
  }

  get alive(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null
  }
}

async function freePort(): Promise<number> {
  for (let i = 0; i < 20; i++) {
    const srv = net.createServer()
    const port = await new Promise<number>((resolve) => srv.listen(0, '127.0.0.1', () => resolve((srv.address() as net.AddressInfo).port)))
    await new Promise((r) => srv.close(r))
    const udp = dgram.createSocket('udp4')
    const ok = await new Promise<boolean>((resolve) => {
      udp.once('error', () => resolve(false))
      udp.bind(port, '127.0.0.1', () => resolve(true))
    })
    udp.close()
    if (ok) return port
  }
  throw new Error('no free port on 127.0.0.1')
}

/** Resolves once the server answers a HELLO with a CHALLENGE. */
async function waitReady(server: ChildProcess, port: number, output: string[]): Promise<void> {
  const sock = dgram.createSocket('udp4')
  try {
    const answered = new Promise<void>((resolve) => sock.on('message', (buf) => proto.decode(buf).type === 'challenge' && resolve()))
    await new Promise<void>((r) => sock.bind(0, '127.0.0.1', r))
    const deadline = performance.now() + SERVER_READY_TIMEOUT_MS
    while (performance.now() < deadline) {
      if (server.exitCode !== null) throw new Error(`natd-rendezvous exited (${server.exitCode}): ${output.join('\n')}`)
      sock.send(proto.encode({ type: 'hello' }), port, '127.0.0.1')
      if (await Promise.race([answered.then(() => true), sleep(200).then(() => false)])) return
    }
    throw new Error('natd-rendezvous did not answer a HELLO in time')
  } finally {
    sock.close()
  }
}

// --- one ramp step -----------------------------------------------------------------

interface StepResult {
  n: number
  equivalentAgentsAt20s: number
  registration: { seconds: number; ratePerS: number; retries: number; serverCpuPct: number; failed: Record<string, number>; serverUsPerAgent: number; udpDrops: { server: number; generator: number } }
  tcpAgents: number
  tcpFailed: Record<string, number>
  heartbeats: { perS: number; sent: number; acked: number; lost: number; badStatus: number; lossRate: number; p50Ms: number; p99Ms: number; maxMs: number; udpDrops: { server: number; generator: number } }
  pongs: { sent: number; received: number }
  server: { cpuPct: number; usPerHeartbeat: number; rssBytes: number; peakRssBytes: number; bytesPerAgent: number }
  generator: { cpuPct: number; loopDelayP99Ms: number }
  machine: { busyPct: number; irqPct: number; otherPct: number }
  list: { medianMs: number; bytes: number; peersInReply: number; expectedPeers: number; overMaxFrame: boolean } | null
  intro: { perS: number; completed: number; notifiedTargets: number; p50Ms: number; p99Ms: number; errors: Record<string, number>; serverCpuPct: number; generatorCpuPct: number } | null
  held: boolean
  reason: string | null
  /** Which side ran out first: the server, the load generator, or other work on this shared machine. */
  saturated: 'server' | 'generator' | 'other load' | 'none'
}

function percentile(sorted: Float64Array, p: number): number {
  if (!sorted.length) return NaN
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!
}

function mergeSorted(parts: Float64Array[]): Float64Array {
  const all = new Float64Array(parts.reduce((s, p) => s + p.length, 0))
  let o = 0
  for (const p of parts) {
    all.set(p, o)
    o += p.length
  }
  return all.sort()
}

function addCounts(into: Record<string, number>, from: Record<string, number>): void {
  for (const [k, v] of Object.entries(from)) into[k] = (into[k] ?? 0) + v
}

interface Rig {
  serverPid: number
  port: number
  procs: LoadProcess[]
  baselineRss: number
  generatorPids: () => number[]
}

async function runStep(rig: Rig, n: number, prevN: number): Promise<StepResult> {
  const { procs } = rig
  const all = <T>(cmd: Command, timeoutMs: number): Promise<T[]> => Promise.all(procs.map((p) => p.call<T>(cmd, timeoutMs)))
  const serverPids = (): number[] => [rig.serverPid]
  const log = (msg: string): void => void process.stderr.write(`[${n}] ${msg}\n`)

  // Registration.
  const newAgents = n - prevN
  log(`registering ${newAgents} agents at ${ratePerS}/s`)
  const drops0 = udpDrops(rig.port)
  const regCpu = cpuMeter(serverPids)
  const t0 = performance.now()
  const regs = await all<RegisterResult>({ op: 'register', total: n, ratePerS: ratePerS / procs.length }, (newAgents / ratePerS) * 3_000 + 30_000)
  const regSeconds = (performance.now() - t0) / 1000
  const regFailed: Record<string, number> = {}
  for (const r of regs) addCounts(regFailed, r.failed)
  const registered = regs.reduce((s, r) => s + r.ok, 0)
  const regServer = regCpu()
  const drops1 = udpDrops(rig.port)

  // TCP control connections (1%): opened after the step's registrations, closed at its
  // end, so new registrations do not fan PEER_EVENTs out to them (see the report).
  const tcps = await all<RegisterResult>({ op: 'tcp-open', total: n }, 60_000)
  const tcpFailed: Record<string, number> = {}
  for (const r of tcps) addCounts(tcpFailed, r.failed)
  const tcpAgents = tcps.reduce((s, r) => s + r.ok, 0)
  await sleep(500)

  // One full heartbeat interval.
  log(`measuring heartbeats for ${intervalMs / 1000}s (${tcpAgents} TCP agents)`)
  const drops2 = udpDrops(rig.port)
  const winServer = cpuMeter(serverPids)
  const winGen = cpuMeter(rig.generatorPids)
  const winMachine = machineMeter()
  const windowStart = performance.now()
  await all({ op: 'window-start' }, 10_000)
  let peakRss = 0
  const windowEnd = performance.now() + intervalMs
  while (performance.now() < windowEnd) {
    peakRss = Math.max(peakRss, rssBytes(rig.serverPid))
    await sleep(Math.min(RSS_SAMPLE_MS, Math.max(0, windowEnd - performance.now())))
  }
  const serverCpu = winServer()
  const genCpu = winGen()
  const machine = winMachine()
  const rss = rssBytes(rig.serverPid)
  peakRss = Math.max(peakRss, rss)
  const windowSeconds = (performance.now() - windowStart) / 1000
  const wins = await all<WindowResult>({ op: 'window-end' }, ACK_TIMEOUT_MS + 10_000)
  const drops3 = udpDrops(rig.port)
  const lat = mergeSorted(wins.map((w) => w.latenciesMs))
  const sent = wins.reduce((s, w) => s + w.sent, 0)
  const lost = wins.reduce((s, w) => s + w.lost, 0)
  const badStatus = wins.reduce((s, w) => s + w.badStatus, 0)
  const lossRate = sent ? (lost + badStatus) / sent : 1
  const loopDelayP99Ms = Math.max(...wins.map((w) => w.loopDelayP99Ms))

  // LIST: a few, one at a time (each walks and encodes the whole registry).
  let list: StepResult['list'] = null
  if (tcpAgents) {
    log('LIST')
    const samples = await procs[0]!.call<ListResult[]>({ op: 'list', samples: LIST_SAMPLES }, 60_000)
    const ok = samples.filter((s) => s.peers >= 0).sort((a, b) => a.ms - b.ms)
    const mid = ok[Math.floor(ok.length / 2)]
    if (mid) list = { medianMs: mid.ms, bytes: mid.bytes, peersInReply: mid.peers, expectedPeers: n - 1, overMaxFrame: mid.bytes > proto.MAX_TCP_FRAME_BYTES }
  }

  // Introductions between pairs of TCP agents.
  let intro: StepResult['intro'] = null
  if (tcpAgents >= 2) {
    log(`introduction burst for ${INTRO_BURST_MS / 1000}s`)
    const iServer = cpuMeter(serverPids)
    const iGen = cpuMeter(rig.generatorPids)
    const res = await all<IntroResult>({ op: 'intro-burst', total: n, durationMs: INTRO_BURST_MS, depth: INTRO_DEPTH }, INTRO_BURST_MS + 30_000)
    const errors: Record<string, number> = {}
    for (const r of res) addCounts(errors, r.errors)
    const completed = res.reduce((s, r) => s + r.completed, 0)
    const il = mergeSorted(res.map((r) => r.latenciesMs))
    intro = {
      perS: completed / (INTRO_BURST_MS / 1000),
      completed,
      notifiedTargets: res.reduce((s, r) => s + r.asTarget, 0),
      p50Ms: percentile(il, 50),
      p99Ms: percentile(il, 99),
      errors,
      serverCpuPct: iServer().pct,
      generatorCpuPct: iGen().pct
    }
  }
  await all({ op: 'tcp-close' }, 30_000)

  const p99 = percentile(lat, 99)
  const regFailures = Object.values(regFailed).reduce((s, v) => s + v, 0)
  const reasons: string[] = []
  if (!(p99 <= P99_LIMIT_MS)) reasons.push(`ack p99 ${p99.toFixed(1)} ms > ${P99_LIMIT_MS} ms`)
  if (lossRate > LOSS_LIMIT) reasons.push(`${(lossRate * 100).toFixed(2)}% of acks lost or refused`)
  if (regFailures > newAgents * LOSS_LIMIT) reasons.push(`${regFailures} registrations failed (${JSON.stringify(regFailed)})`)
  const otherPct = Math.max(0, machine.busyPct - machine.irqPct - serverCpu.pct - genCpu.pct)
  const saturated: StepResult['saturated'] =
    serverCpu.pct >= SATURATED_CPU_PCT ? 'server'
    : genCpu.pct >= SATURATED_CPU_PCT || loopDelayP99Ms > GENERATOR_LAG_MS ? 'generator'
    : otherPct >= OTHER_LOAD_PCT ? 'other load'
    : 'none'
  const acked = lat.length
  return {
    n,
    equivalentAgentsAt20s: Math.round((n * 20_000) / intervalMs),
    registration: {
      seconds: regSeconds,
      ratePerS: newAgents / regSeconds,
      retries: regs.reduce((s, r) => s + r.retries, 0),
      failed: regFailed,
      serverCpuPct: regServer.pct,
      serverUsPerAgent: (regServer.seconds * 1e6) / Math.max(1, registered),
      udpDrops: { server: drops1.server - drops0.server, generator: drops1.all - drops0.all - (drops1.server - drops0.server) }
    },
    tcpAgents,
    tcpFailed,
    heartbeats: { perS: sent / windowSeconds, sent, acked, lost, badStatus, lossRate, p50Ms: percentile(lat, 50), p99Ms: p99, maxMs: lat.length ? lat[lat.length - 1]! : NaN,
      udpDrops: { server: drops3.server - drops2.server, generator: drops3.all - drops2.all - (drops3.server - drops2.server) }
    },
    pongs: { sent: wins.reduce((s, w) => s + w.pings, 0), received: wins.reduce((s, w) => s + w.pongs, 0) },
    server: { cpuPct: serverCpu.pct, usPerHeartbeat: (serverCpu.seconds * 1e6) / Math.max(1, acked), rssBytes: rss, peakRssBytes: peakRss, bytesPerAgent: (rss - rig.baselineRss) / n },
    generator: { cpuPct: genCpu.pct, loopDelayP99Ms },
    // Other work on the machine (it is shared): what neither the server, the generator nor interrupts used.
    machine: { busyPct: machine.busyPct, irqPct: machine.irqPct, otherPct },
    list,
    intro,
    held: reasons.length === 0,
    reason: reasons.length ? reasons.join('; ') : null,
    saturated
  }
}

// --- report ---------------------------------------------------------------------------

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)))
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padStart(widths[i]!))).join('  ')).join('\n')
}

const f1 = (x: number): string => (Number.isFinite(x) ? x.toFixed(1) : '-')
const f2 = (x: number): string => (Number.isFinite(x) ? x.toFixed(2) : '-')
const int = (x: number): string => (Number.isFinite(x) ? Math.round(x).toLocaleString('en-US') : '-')

function report(steps: StepResult[]): string {
  const scaled = intervalMs !== 20_000
  const head = ['N', ...(scaled ? ['≙N@20s'] : []), 'hb/s', 'p50 ms', 'p99 ms', 'max ms', 'lost', 'srv CPU%', 'gen CPU%', 'RSS MB', 'B/agent', 'result']
  const main = [head, ...steps.map((s) => [
    int(s.n),
    ...(scaled ? [int(s.equivalentAgentsAt20s)] : []),
    int(s.heartbeats.perS),
    f2(s.heartbeats.p50Ms),
    f2(s.heartbeats.p99Ms),
    f1(s.heartbeats.maxMs),
    `${s.heartbeats.lost + s.heartbeats.badStatus}/${s.heartbeats.sent}`,
    f1(s.server.cpuPct),
    f1(s.generator.cpuPct),
    f1(s.server.rssBytes / 2 ** 20),
    int(s.server.bytesPerAgent),
    (s.held ? 'held' : `FAILED: ${s.reason}`) + (s.saturated === 'none' ? '' : ` (saturated: ${s.saturated})`)
  ])]
  const load = [
    ['N', 'reg/s', 'srv CPU% reg', 'srv µs/reg', 'reg retries', 'UDP drops reg srv/gen', 'UDP drops hb srv/gen', 'srv µs/hb', 'gen lag p99 ms', 'irq CPU%', 'other CPU%'],
    ...steps.map((s) => [
      int(s.n),
      int(s.registration.ratePerS),
      f1(s.registration.serverCpuPct),
      int(s.registration.serverUsPerAgent),
      int(s.registration.retries),
      `${s.registration.udpDrops.server}/${s.registration.udpDrops.generator}`,
      `${s.heartbeats.udpDrops.server}/${s.heartbeats.udpDrops.generator}`,
      f1(s.server.usPerHeartbeat),
      f1(s.generator.loopDelayP99Ms),
      f1(s.machine.irqPct),
      f1(s.machine.otherPct)
    ])
  ]
  const control = [
    ['N', 'TCP agents', 'pongs', 'LIST ms', 'LIST bytes', 'peers in reply', 'intro/s', 'intro p50 ms', 'intro p99 ms', 'srv CPU% burst', 'gen CPU% burst'],
    ...steps.map((s) => [
      int(s.n),
      int(s.tcpAgents),
      `${s.pongs.received}/${s.pongs.sent}`,
      s.list ? f1(s.list.medianMs) : '-',
      s.list ? int(s.list.bytes) + (s.list.overMaxFrame ? ' (> 1 MiB)' : '') : '-',
      s.list ? `${int(s.list.peersInReply)}/${int(s.list.expectedPeers)}` : '-',
      s.intro ? int(s.intro.perS) : '-',
      s.intro ? f1(s.intro.p50Ms) : '-',
      s.intro ? f1(s.intro.p99Ms) : '-',
      s.intro ? f1(s.intro.serverCpuPct) : '-',
      s.intro ? f1(s.intro.generatorCpuPct) : '-'
    ])
  ]
  return `${table(main)}\n\nregistration and load generator:\n${table(load)}\n\ncontrol connections (1% of agents):\n${table(control)}`
}

function usage(message: string): never {
  process.stderr.write(`rendezvous-capacity: ${message}\n`)
  process.exit(2)
}

// --- main -----------------------------------------------------------------------------

async function main(): Promise<void> {
  const started = performance.now()
  const cpus = os.availableParallelism()
  const pin = cpus >= 2 && spawnSync('taskset', ['--version']).status === 0
  if (!pin) notes.push(cpus < 2 ? 'one CPU: server and load generator share it' : 'taskset missing: processes not pinned')

  // File descriptors: one socket per agent, so the per-process limit sets agents per process.
  const lim = nofile()
  let perProcessFds = lim.hard
  if (spawnSync('bash', ['-c', `ulimit -n ${WANTED_NOFILE}`]).status === 0) perProcessFds = WANTED_NOFILE
  else if (lim.hard < WANTED_NOFILE) notes.push(`RLIMIT_NOFILE hard limit is ${lim.hard} and cannot be raised (no CAP_SYS_RESOURCE): agents are spread over several load processes`)
  const raise = perProcessFds > lim.soft
  const perProcess = Math.min(MAX_AGENTS_PER_PROCESS, Math.floor((perProcessFds - FD_RESERVE) / (1 + 1 / TCP_EVERY)))
  if (Math.ceil(maxN / perProcess) > MAX_PROCESSES) {
    maxN = perProcess * MAX_PROCESSES
    notes.push(`N capped at ${maxN}: ${MAX_PROCESSES} load processes x ${perProcess} sockets`)
  }
  const base = opts.quick ? QUICK_STEPS : DEFAULT_STEPS
  const steps = base.filter((s) => s < maxN)
  steps.push(maxN)
  const nProcs = Math.ceil(maxN / perProcess)

  const procs: LoadProcess[] = []
  let server: ChildProcess | null = null
  const serverOutput: string[] = []
  const results: StepResult[] = []
  let stopReason = 'reached --max'
  const baseline = { rss: 0 }
  const cleanup = async (): Promise<void> => {
    await Promise.allSettled(procs.filter((p) => p.alive).map((p) => p.call({ op: 'stop' }, STOP_TIMEOUT_MS)))
    for (const p of procs) if (p.alive) p.proc.kill('SIGKILL')
    if (server && server.exitCode === null && server.signalCode === null) {
      const s = server
      const exited = new Promise((r) => s.once('exit', r))
      s.kill('SIGTERM')
      if (!(await Promise.race([exited.then(() => true), sleep(STOP_TIMEOUT_MS).then(() => false)]))) s.kill('SIGKILL')
    }
  }
  const onSignal = (): void => void cleanup().finally(() => process.exit(130))
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)
  // Last resort if we die some other way: never leave the server running.
  process.once('exit', () => {
    for (const p of procs) p.proc.kill('SIGKILL')
    server?.kill('SIGKILL')
  })

  try {
    process.stderr.write(`generating keys in ${nProcs} load process(es) of up to ${perProcess} agents\n`)
    const port = await freePort()
    for (let i = 0; i < nProcs; i++) procs.push(new LoadProcess(perProcessFds, raise))
    const capacity = Math.ceil(maxN / nProcs)
    await Promise.all(procs.map((p, i) => p.call({ op: 'init', worker: i, workers: nProcs, capacity, server: { host: '127.0.0.1', port }, intervalMs }, 120_000)))
    if (pin) {
      // After key generation (which used both cores): generator on core 0, server on core 1.
      for (const pid of [process.pid, ...procs.map((p) => p.proc.pid!)]) execFileSync('taskset', ['-a', '-cp', '0', String(pid)], { stdio: 'ignore' })
    }

    const serverArgs = [SERVER_MAIN, '--host', '127.0.0.1', '--port', String(port), '--alt-port', '0', '--heartbeat', `${intervalMs}ms`, '--log-level', 'warn']
    server = pin ? spawn('taskset', ['-c', '1', process.execPath, ...serverArgs], { stdio: ['ignore', 'pipe', 'pipe'] }) : spawn(process.execPath, serverArgs, { stdio: ['ignore', 'pipe', 'pipe'] })
    for (const stream of [server.stdout!, server.stderr!]) {
      stream.setEncoding('utf8')
      stream.on('data', (s: string) => serverOutput.push(...s.split('\n').filter(Boolean)))
    }
    const serverDied = new Promise<never>((_, reject) => server!.once('exit', (code, signal) => reject(new Error(`natd-rendezvous exited (${signal ?? code}): ${serverOutput.slice(-5).join('\n')}`))))
    serverDied.catch(() => undefined)
    await waitReady(server, port, serverOutput)
    await sleep(1_000)
    baseline.rss = rssBytes(server.pid!)
    const rig: Rig = { serverPid: server.pid!, port, procs, baselineRss: baseline.rss, generatorPids: () => [process.pid, ...procs.map((p) => p.proc.pid!)] }
    process.stderr.write(`natd-rendezvous pid ${server.pid} on 127.0.0.1:${port}, baseline RSS ${(baseline.rss / 2 ** 20).toFixed(1)} MB; steps ${steps.join(', ')}\n`)

    let prev = 0
    for (const n of steps) {
      const estimateMs = ((n - prev) / ratePerS) * 1000 + intervalMs + STEP_OVERHEAD_MS
      if (performance.now() - started + estimateMs > budgetMs) {
        stopReason = `time budget (${budgetMs / 1000}s): step ${n} would need ~${Math.round(estimateMs / 1000)}s more`
        break
      }
      const r = await Promise.race([runStep(rig, n, prev), serverDied])
      results.push(r)
      process.stderr.write(`[${n}] ${r.held ? 'held' : `failed: ${r.reason}`}: p99 ${f2(r.heartbeats.p99Ms)} ms, server CPU ${f1(r.server.cpuPct)}%, RSS ${f1(r.server.rssBytes / 2 ** 20)} MB\n`)
      prev = n
      if (!r.held) {
        stopReason = `step ${n} failed: ${r.reason}`
        break
      }
    }
  } finally {
    await cleanup()
  }

  const held = results.filter((r) => r.held).at(-1) ?? null
  const introAtHeld = held?.intro?.perS ?? null
  const warnings = serverOutput.filter((l) => /"level":"(warn|error)"|error/i.test(l))
  let out = `\nnatd-rendezvous capacity (heartbeat every ${intervalMs / 1000}s${intervalMs !== 20_000 ? `: ≙N@20s is the N with the same heartbeat rate at 20s` : ''}; ack p99 limit ${P99_LIMIT_MS} ms, loss limit ${LOSS_LIMIT * 100}%)\n`
  out += `server pinned to core 1, load generator (${procs.length} processes) to core 0: ${pin ? 'yes' : 'no'}; CPU % = share of one core\n\n`
  out += report(results)
  out += `\n\nlargest N held: ${held ? int(held.n) : 'none'}`
  if (held) {
    out += ` (≙ ${int(held.equivalentAgentsAt20s)} at 20s; target ${int(TARGET_AGENTS)}): server CPU ${f1(held.server.cpuPct)}%, RSS ${f1(held.server.rssBytes / 2 ** 20)} MB, ${int(held.server.bytesPerAgent)} B/agent (target < ${TARGET_BYTES_PER_AGENT})`
    out += `\nintroductions/s at that N: ${introAtHeld === null ? '-' : int(introAtHeld)} (${held.tcpAgents} TCP agents, ${INTRO_DEPTH} in flight each)`
  }
  out += `\nramp stopped: ${stopReason}; ran ${Math.round((performance.now() - started) / 1000)}s`
  for (const note of notes) out += `\nnote: ${note}`
  if (warnings.length) out += `\nserver logged ${warnings.length} warning/error line(s), first: ${warnings[0]}`
  process.stdout.write(out + '\n')

  if (opts.json) {
    const json = {
      bench: 'rendezvous-capacity',
      date: new Date().toISOString(),
      node: process.version,
      cpus,
      pinned: pin,
      config: { intervalMs, ratePerS, maxN, steps, budgetMs, p99LimitMs: P99_LIMIT_MS, lossLimit: LOSS_LIMIT, tcpShare: 1 / TCP_EVERY, loadProcesses: procs.length, agentsPerProcess: perProcess, nofile: { ...lim, used: perProcessFds } },
      baselineRssBytes: baseline.rss,
      steps: results,
      largestHeldN: held?.n ?? null,
      largestHeldEquivalentAt20s: held?.equivalentAgentsAt20s ?? null,
      serverCpuPctAtHeld: held?.server.cpuPct ?? null,
      serverRssBytesAtHeld: held?.server.rssBytes ?? null,
      bytesPerAgentAtHeld: held?.server.bytesPerAgent ?? null,
      introductionsPerSecond: introAtHeld,
      stopReason,
      notes,
      serverWarnings: warnings.slice(0, 20)
    }
    fs.writeFileSync(opts.json, JSON.stringify(json, (_, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2) + '\n')
    process.stdout.write(`wrote ${opts.json}\n`)
  }
}

await main()
