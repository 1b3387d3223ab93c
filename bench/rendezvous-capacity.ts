/**
 * How many agents one natd-rendezvous process holds (heartbeat-ack p99 under 50 ms, at
 * most 0.1% lost), with its CPU, RSS, memory per agent and introductions per second.
 *
 *   core 0: this controller + load processes (rendezvous-capacity-agents.ts)
 *             agent g: TCP ──CHALLENGE/SECURE/Noise/REGISTER──▶ 127.0.0.1:P, then
 *                      UDP 127.20.x.y:ephemeral ──sealed HEARTBEAT──▶ 127.0.0.1:P
 *             1% of agents keep their control session: PING/LIST/INTRODUCE inside it
 *   core 1: node dist/rendezvous/main.js --host 127.0.0.1 --port P --alt-port 0
 *           (+ rendezvous-capacity-probe.ts preloaded: event-loop delay, GC, heap)
 *
 * Ramp N (1k, 5k, 10k, 25k, 50k, 100k, … up to --max): register the step's new agents
 * (signed, paced at --rate), open the 1% TCP control connections, then measure one full
 * heartbeat interval (every agent beats once, at phases spread evenly over it): ack
 * latency p50/p99, lost acks, server CPU and RSS; then a few LISTs and a burst of
 * INTRODUCEs between TCP agents (rendezvous-capacity-step.ts). The ramp stops at the
 * first step whose p99 exceeds 50 ms or that loses more than 0.1% of acks or
 * registrations, or when the next step would not fit --budget.
 *
 * The machine may be shared: each window also records the CPU other processes used and
 * how long the server waited for its core, and a window that failed under such load is
 * measured again (twice at most). --nice=-10 puts the server and the load ahead of it.
 *
 *   node --disable-warning=ExperimentalWarning bench/rendezvous-capacity.ts \
 *     [--max N] [--steps N,N,…] [--interval 20s] [--rate 250] [--nice=N] [--budget 5m] [--quick] [--json FILE]
 *
 * --cpu-prof DIR: each server writes a V8 CPU profile of its whole run into DIR
 * (bench/profile-summary.ts reads it).
 *
 * --quick: 1k and 10k at a 5 s interval (4x the heartbeat rate of 20 s), well under a
 * minute. Needs `npm run build` (it runs dist/).
 *
 * --instances N (N > 1): N instances sharing a registry in a redis-server started here
 * (rendezvous-capacity-fleet.ts), all on core 1 with Redis; load process i registers its
 * agents with instance i mod N. Adds per instance RSS and memory per agent, Redis's memory
 * per agent and commands per second (bench/rendezvous-capacity-cluster.ts runs one
 * instance and three, and prints them side by side).
 */
import { execFileSync, spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { nofile } from './proc-stats.ts'
import { Fleet } from './rendezvous-capacity-fleet.ts'
import { LoadProcess, ServerProcess } from './rendezvous-capacity-procs.ts'
import { f1, f2, int, report, type StepResult } from './rendezvous-capacity-report.ts'
import type { Rig } from './rendezvous-capacity-step.ts'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
if (!fs.existsSync(path.join(ROOT, 'dist/rendezvous/main.js'))) {
  process.stderr.write('dist/ is missing: run `npm run build` first\n')
  process.exit(2)
}
// These load dist/ as they are imported.
const { parseDuration } = (await import(path.join(ROOT, 'dist/protocol/duration.js'))) as typeof import('../src/protocol/duration.js')
const { ACK_TIMEOUT_MS, TCP_EVERY } = await import('./rendezvous-capacity-agents.ts')
const { INTRO_DEPTH, LOSS_LIMIT, P99_LIMIT_MS, REGISTER_IN_FLIGHT, runStep, STEP_OVERHEAD_MS } = await import('./rendezvous-capacity-step.ts')

/** Targets from the issue: 100,000 agents at a 20 s heartbeat on one core, < 1 KiB each. */
const TARGET_AGENTS = 100_000
const TARGET_BYTES_PER_AGENT = 1024
/** The server's and the agent's default heartbeat (natd-rendezvous --heartbeat). */
const DEFAULT_INTERVAL = '20s'
const QUICK_INTERVAL = '5s'
const DEFAULT_STEPS = [1_000, 5_000, 10_000, 25_000, 50_000, 100_000]
const QUICK_STEPS = [1_000, 10_000]
/**
 * Registrations per second across all load processes. Since protocol 2 each is a TCP
 * connection, a Noise XX handshake and a signed REGISTER: ~2.2-2.8 ms of server CPU on
 * the 2-core test machine (protocol 1's HELLO + REGISTER took ~300 µs), so ~300/s is
 * what one core takes; 250/s leaves it headroom for the heartbeats being measured.
 */
const DEFAULT_RATE = 250
const DEFAULT_BUDGET = '5m'
/** Sockets per load process: its RLIMIT_NOFILE minus this reserve (node, stdio, IPC). */
const FD_RESERVE = 200
/** Agents per load process even when the fd limit allows more (keeps each event loop light). */
const MAX_AGENTS_PER_PROCESS = 20_000
const MAX_PROCESSES = 18
/** Raised to this when allowed (root with CAP_SYS_RESOURCE). */
const WANTED_NOFILE = 1_048_576

// --- options -------------------------------------------------------------------

const USAGE = 'usage: node --disable-warning=ExperimentalWarning bench/rendezvous-capacity.ts [--max N] [--steps N,N,…] [--interval 20s] [--rate 250] [--nice=N] [--budget 5m] [--instances N] [--cpu-prof DIR] [--quick] [--json FILE]'
const opts = (() => {
  try {
    return parseArgs({
      options: {
        max: { type: 'string' },
        json: { type: 'string' },
        interval: { type: 'string' },
        rate: { type: 'string' },
        budget: { type: 'string' },
        steps: { type: 'string' },
        nice: { type: 'string' },
        instances: { type: 'string' },
        'cpu-prof': { type: 'string' },
        quick: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false }
      }
    }).values
  } catch (err) {
    usage(`${(err as Error).message}\n${USAGE}`)
  }
})()
if (opts.help) {
  process.stdout.write(USAGE + '\n')
  process.exit(0)
}
const intervalMs = parseDuration(opts.interval ?? (opts.quick ? QUICK_INTERVAL : DEFAULT_INTERVAL))
const budgetMs = parseDuration(opts.budget ?? DEFAULT_BUDGET)
const ratePerS = Number(opts.rate ?? DEFAULT_RATE)
/** Scheduling priority of the server and the load processes (negative: ahead of other work on a shared machine). */
const niceness = Number(opts.nice ?? 0)
/** natd-rendezvous processes; more than one share the registry in Redis. */
const instances = Number(opts.instances ?? 1)
let maxN = Number(opts.max ?? (opts.quick ? QUICK_STEPS.at(-1) : TARGET_AGENTS))
if (!Number.isInteger(maxN) || maxN < 2) usage('--max must be an integer >= 2')
if (!Number.isInteger(instances) || instances < 1 || instances > MAX_PROCESSES) usage(`--instances must be an integer from 1 to ${MAX_PROCESSES}`)
if (instances > 1 && !fs.existsSync('/usr/bin/redis-server')) usage('--instances needs redis-server (apt-get install redis-server)')
if (!(ratePerS > 0)) usage('--rate must be > 0')
if (!Number.isInteger(niceness) || niceness < -20 || niceness > 19) usage('--nice must be an integer from -20 to 19')
if (intervalMs < 2 * ACK_TIMEOUT_MS) usage(`--interval must be at least ${(2 * ACK_TIMEOUT_MS) / 1000}s`)

const notes: string[] = []
if (opts['cpu-prof']) ServerProcess.nodeFlags = ['--cpu-prof', `--cpu-prof-dir=${path.resolve(opts['cpu-prof'])}`]

/** `nice -n N` before a command line when --nice asks for another priority. */
function niced(): string[] {
  return niceness ? ['nice', '-n', String(niceness)] : []
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
  // Whole multiples of the instance count, so that each instance gets the same share.
  const maxProcs = MAX_PROCESSES - (MAX_PROCESSES % instances)
  if (Math.ceil(maxN / perProcess) > maxProcs) {
    maxN = perProcess * maxProcs
    notes.push(`N capped at ${maxN}: ${maxProcs} load processes x ${perProcess} sockets`)
  }
  const base = opts.steps ? opts.steps.split(',').map(Number) : opts.quick ? QUICK_STEPS : DEFAULT_STEPS
  if (base.some((n, i) => !Number.isInteger(n) || n < 2 || (i > 0 && n <= base[i - 1]!))) usage('--steps must be increasing integers >= 2, e.g. 1000,10000')
  const steps = base.filter((s) => s < maxN)
  steps.push(maxN)
  const nProcs = Math.ceil(Math.ceil(maxN / perProcess) / instances) * instances

  const procs: LoadProcess[] = []
  let fleet: Fleet | null = null
  const results: StepResult[] = []
  let stopReason = 'reached --max'
  const cleanup = async (): Promise<void> => {
    await Promise.allSettled(procs.map((p) => p.stop()))
    await fleet?.stop()
  }
  const onSignal = (): void => void cleanup().finally(() => process.exit(130))
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)
  // Last resort if we die some other way: never leave the server running.
  process.once('exit', () => {
    for (const p of procs) p.proc.kill('SIGKILL')
    fleet?.kill()
  })

  try {
    process.stderr.write(`generating keys in ${nProcs} load process(es) of up to ${perProcess} agents\n`)
    for (let i = 0; i < nProcs; i++) procs.push(new LoadProcess(niced(), raise ? perProcessFds : null))
    const capacity = Math.ceil(maxN / nProcs)
    const ports = await Fleet.freePorts(instances)
    await Promise.all(procs.map((p, i) => p.call({ op: 'init', worker: i, workers: nProcs, capacity, server: { host: '127.0.0.1', port: ports[i % instances]! }, intervalMs }, 120_000)))
    if (pin) {
      // After key generation (which used both cores): generator on core 0, server(s) and Redis on core 1.
      for (const pid of [process.pid, ...procs.map((p) => p.proc.pid!)]) execFileSync('taskset', ['-a', '-cp', '0', String(pid)], { stdio: 'ignore' })
    }

    fleet = await Fleet.start(ports, [...niced(), ...(pin ? ['taskset', '-c', '1'] : [])], ['--alt-port', '0', '--heartbeat', `${intervalMs}ms`, '--log-level', 'warn'], (f) => (fleet = f))
    const rig: Rig = { intervalMs, ratePerS, deadline: started + budgetMs, registered: 0, fleet, procs, generatorPids: () => [process.pid, ...procs.map((p) => p.proc.pid!)] }
    const { rss, heap } = fleet.baseline
    process.stderr.write(`natd-rendezvous pid(s) ${fleet.pids.join(', ')} on 127.0.0.1:${ports.join(', :')}${fleet.redis ? ` with redis-server pid ${fleet.redis.pid} on :${fleet.redis.port}` : ''}, baseline RSS ${(rss / 2 ** 20).toFixed(1)} MB, heap ${(heap / 2 ** 20).toFixed(1)} MB; steps ${steps.join(', ')}\n`)

    let prev = 0
    for (const n of steps) {
      const estimateMs = ((n - prev) / ratePerS) * 1000 + intervalMs + STEP_OVERHEAD_MS
      if (performance.now() - started + estimateMs > budgetMs) {
        stopReason = `time budget (${budgetMs / 1000}s): step ${n} would need ~${Math.round(estimateMs / 1000)}s more`
        break
      }
      const r = await Promise.race([runStep(rig, n, prev), fleet.died])
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
  const warnings = (fleet?.output ?? []).filter((l) => /"level":"(warn|error)"|error/i.test(l))
  let out = `\nnatd-rendezvous capacity (heartbeat every ${intervalMs / 1000}s${intervalMs !== 20_000 ? `: ≙N@20s is the N with the same heartbeat rate at 20s` : ''}; ack p99 limit ${P99_LIMIT_MS} ms, loss limit ${LOSS_LIMIT * 100}%)\n`
  out += `${instances > 1 ? `${instances} instances sharing a registry in Redis` : 'one instance, registry in memory'}; server${instances > 1 ? 's and Redis' : ''} pinned to core 1, load generator (${procs.length} processes) to core 0: ${pin ? 'yes' : 'no'}; nice ${niceness}; CPU % = share of one core\n\n`
  out += report(results, intervalMs)
  out += `\n\nlargest N held: ${held ? int(held.n) : 'none'}`
  if (held) {
    out += ` (≙ ${int(held.equivalentAgentsAt20s)} at 20s; target ${int(TARGET_AGENTS)}): server CPU ${f1(held.server.cpuPct)}%, RSS ${f1(held.server.rssBytes / 2 ** 20)} MB, ${int(held.server.bytesPerAgent)} B/agent by RSS, ${int(held.server.heapBytesPerAgent)} B/agent of live heap (target < ${TARGET_BYTES_PER_AGENT})`
    out += `\nintroductions/s at that N: ${introAtHeld === null ? '-' : int(introAtHeld)} (${held.tcpAgents} TCP agents, ${INTRO_DEPTH} in flight each)`
    if (held.redis) {
      out += `\nper instance: ${held.instances.map((i) => `${int(i.agents)} agents, ${int(i.bytesPerAgent)} B/agent by RSS, ${int(i.heapBytesPerAgent)} of live heap`).join('; ')}`
      out += `\nRedis: ${f1(held.redis.usedMemoryBytes / 2 ** 20)} MB used, ${int(held.redis.bytesPerAgent)} B/agent, ${int(held.redis.commandsPerS)} commands/s over the heartbeat window (${int(held.registration.redisCommandsPerS)}/s while registering), CPU ${f1(held.redis.cpuPct)}%`
    }
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
      config: { intervalMs, ratePerS, registerInFlight: REGISTER_IN_FLIGHT, niceness, maxN, steps, budgetMs, p99LimitMs: P99_LIMIT_MS, lossLimit: LOSS_LIMIT, tcpShare: 1 / TCP_EVERY, loadProcesses: procs.length, agentsPerProcess: perProcess, nofile: { ...lim, used: perProcessFds } },
      instances,
      baselineRssBytes: fleet?.baseline.rss ?? null,
      baselineHeapBytes: fleet?.baseline.heap ?? null,
      baselineRssParts: fleet?.baselineRssParts ?? null,
      baselineRedisUsedMemoryBytes: fleet?.baseline.redisUsedMemory ?? null,
      steps: results,
      largestHeldN: held?.n ?? null,
      largestHeldEquivalentAt20s: held?.equivalentAgentsAt20s ?? null,
      serverCpuPctAtHeld: held?.server.cpuPct ?? null,
      serverRssBytesAtHeld: held?.server.rssBytes ?? null,
      bytesPerAgentAtHeld: held?.server.bytesPerAgent ?? null,
      heapBytesPerAgentAtHeld: held?.server.heapBytesPerAgent ?? null,
      instancesAtHeld: held?.instances ?? null,
      redisAtHeld: held?.redis ?? null,
      introductionsPerSecond: introAtHeld,
      stopReason,
      notes,
      serverWarnings: warnings.slice(0, 20)
    }
    fs.writeFileSync(opts.json, JSON.stringify(json, (_, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2) + '\n')
    process.stdout.write(`wrote ${opts.json}\n`)
  }
}

try {
  await main()
} catch (err) {
  process.stderr.write(`rendezvous-capacity: ${(err as Error).message}\n`)
  process.exitCode = 1
}
