/**
 * The capacity bench with several instances (issue 16): three natd-rendezvous sharing a
 * registry in Redis hold N agents (default 300,000) at a 20 s heartbeat on this 2-core
 * machine, beside one instance (registry in memory) holding N/3, the same share per
 * instance, measured in the same run right before. Both are bench/rendezvous-capacity.ts
 * runs (same load generator, pinning, pass line: ack p99 under 50 ms, at most 0.1% lost).
 *
 *   node --disable-warning=ExperimentalWarning bench/rendezvous-capacity-cluster.ts \
 *     [--max N] [--instances 3] [--rate 250] [--quick] [--json FILE]
 *
 * Takes long: registration is a Noise handshake per agent (~3 ms of server CPU, all the
 * instances on one core), ~250/s: 300,000 + 100,000 agents ≈ 27 minutes, ~30 in all.
 * --quick: 3,000 agents at a 5 s heartbeat (about two minutes). `npm run bench -- --only cluster`.
 */
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { f1, int, table } from './rendezvous-capacity-report.ts'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const CAPACITY = path.join(ROOT, 'bench/rendezvous-capacity.ts')
/** The target: three instances and Redis holding 300,000 agents. */
const DEFAULT_MAX = 300_000
const DEFAULT_INSTANCES = 3
const QUICK_MAX = 3_000
/** Ramp steps as fractions of N: one halfway (a held figure if the top fails), then N. */
const STEP_FRACTIONS = [0.5, 1]
/** Per run: the budget the capacity bench enforces (registration at --rate, windows, bursts). */
const BUDGET = '45m'

const USAGE = 'usage: node --disable-warning=ExperimentalWarning bench/rendezvous-capacity-cluster.ts [--max N] [--instances 3] [--rate 250] [--quick] [--json FILE]'
const opts = parseArgs({
  options: {
    max: { type: 'string' },
    instances: { type: 'string' },
    rate: { type: 'string' },
    json: { type: 'string' },
    quick: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false }
  }
}).values
if (opts.help) {
  process.stdout.write(USAGE + '\n')
  process.exit(0)
}
const instances = Number(opts.instances ?? DEFAULT_INSTANCES)
const maxN = Number(opts.max ?? (opts.quick ? QUICK_MAX : DEFAULT_MAX))
if (!Number.isInteger(instances) || instances < 2) throw new Error(`--instances must be an integer >= 2\n${USAGE}`)
if (!Number.isInteger(maxN) || maxN < 2 * instances) throw new Error(`--max must be an integer >= ${2 * instances}\n${USAGE}`)

interface Run {
  largestHeldN: number | null
  stopReason: string
  steps: Array<{
    n: number
    held: boolean
    reason: string | null
    heartbeats: { perS: number; p50Ms: number; p99Ms: number; lost: number; badStatus: number; sent: number }
    registration: { ratePerS: number; serverUsPerAgent: number; redisCommandsPerS: number }
    server: { cpuPct: number; rssBytes: number; bytesPerAgent: number; heapBytesPerAgent: number }
    instances: Array<{ agents: number; rssBytes: number; bytesPerAgent: number; heapBytesPerAgent: number }>
    redis: { usedMemoryBytes: number; bytesPerAgent: number; commandsPerS: number; cpuPct: number; keys: number } | null
    intro: { perS: number } | null
  }>
}

function run(k: number, n: number): Run {
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'natd-bench-cluster-')), 'out.json')
  const steps = STEP_FRACTIONS.map((f) => Math.round(n * f)).join(',')
  const args = ['--disable-warning=ExperimentalWarning', CAPACITY, '--instances', String(k), '--steps', steps, '--max', String(n), '--budget', BUDGET, '--json', file]
  if (opts.quick) args.push('--interval', '5s')
  if (opts.rate) args.push('--rate', opts.rate)
  process.stderr.write(`\n=== ${k} instance(s), ${int(n)} agents ===\n`)
  execFileSync(process.execPath, args, { stdio: 'inherit', cwd: ROOT })
  const r = JSON.parse(fs.readFileSync(file, 'utf8')) as Run
  fs.rmSync(path.dirname(file), { recursive: true, force: true })
  return r
}

const started = performance.now()
const single = run(1, Math.round(maxN / instances))
const cluster = run(instances, maxN)

const top = (r: Run): Run['steps'][number] | undefined => r.steps.filter((s) => s.held).at(-1) ?? r.steps.at(-1)
const rows = [['', 'agents', 'held', 'hb/s', 'ack p50 ms', 'ack p99 ms', 'lost', 'CPU% (all instances)', 'reg/s', 'µs/reg', 'intro/s', 'per instance: agents, RSS MB, B/agent by RSS, B/agent live heap', 'Redis MB used', 'Redis B/agent', 'Redis cmd/s (hb window)', 'Redis cmd/s (registering)', 'Redis CPU%']]
for (const [label, r] of [['1 instance, in memory', single], [`${instances} instances + Redis`, cluster]] as const) {
  for (const s of r.steps) {
    rows.push([
      label,
      int(s.n),
      s.held ? 'yes' : `NO: ${s.reason}`,
      int(s.heartbeats.perS),
      s.heartbeats.p50Ms.toFixed(2),
      s.heartbeats.p99Ms.toFixed(2),
      `${s.heartbeats.lost + s.heartbeats.badStatus}/${s.heartbeats.sent}`,
      f1(s.server.cpuPct),
      int(s.registration.ratePerS),
      int(s.registration.serverUsPerAgent),
      s.intro ? int(s.intro.perS) : '-',
      s.instances.map((i) => `${int(i.agents)}, ${f1(i.rssBytes / 2 ** 20)}, ${int(i.bytesPerAgent)}, ${int(i.heapBytesPerAgent)}`).join(' | '),
      s.redis ? f1(s.redis.usedMemoryBytes / 2 ** 20) : '-',
      s.redis ? int(s.redis.bytesPerAgent) : '-',
      s.redis ? int(s.redis.commandsPerS) : '-',
      s.redis ? int(s.registration.redisCommandsPerS) : '-',
      s.redis ? f1(s.redis.cpuPct) : '-'
    ])
  }
}
let out = `\nrendezvous capacity, one instance beside ${instances} on Redis (same run; heartbeat ${opts.quick ? '5 s (--quick)' : '20 s'}; pass: ack p99 < 50 ms, ≤ 0.1% lost)\n\n${table(rows)}\n`
out += `\nlargest held: 1 instance ${single.largestHeldN === null ? 'none' : int(single.largestHeldN)} (${single.stopReason}); ${instances} instances ${cluster.largestHeldN === null ? 'none' : int(cluster.largestHeldN)} (${cluster.stopReason}); ran ${Math.round((performance.now() - started) / 1000)}s\n`
process.stdout.write(out)
if (opts.json) {
  fs.writeFileSync(opts.json, JSON.stringify({ bench: 'rendezvous-capacity-cluster', date: new Date().toISOString(), instances, maxN, single, cluster, top: { single: top(single) ?? null, cluster: top(cluster) ?? null } }, (_, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2) + '\n')
  process.stdout.write(`wrote ${opts.json}\n`)
}
