/**
 * What a forwarded transfer costs the two agents beside its bytes (issue 18): on one warm
 * direct-tcp tunnel, N connections of each size in a row (one client process,
 * bench/fixtures/multi-send.ts), and the CPU of alice and bob per connection and per MiB;
 * with --fresh, a new tunnel before each round: its first 64 MiB beside the next two.
 * A fixed cost per connection shows as the 1-byte row's per-connection figure; one that
 * grows with the size shows in the per-MiB column. Needs root (NAT lab, easy × easy).
 *
 *   npm run --silent build && node bench/per-transfer.ts [--plan BYTES:N,…] [--reps N] [--fresh]
 *     [--agent-node-options '--cpu-prof --cpu-prof-dir=DIR'] (profiles are written at the end)
 *
 * Prints one JSON line per row. CPU from /proc (10 ms ticks: use enough connections).
 */
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { createLab } from '../test/lab/lab.ts'
import { NatdLab, ROOT } from '../test/lab/natd-lab.ts'
import { startAgentsWith } from './file-transfer.ts'
import { CLK_TCK, cpuTicks, kernelTicks } from './proc-stats.ts'

const argv = process.argv.slice(2)
const opt = (k: string, d: string): string => (argv.includes(k) ? argv[argv.indexOf(k) + 1]! : d)
const MiB = 1024 * 1024
/** BYTES:CONNECTIONS per row: 1 byte (the fixed cost) up to 256 MiB (the steady state). */
const PLAN = opt('--plan', `1:200,${256 * 1024}:100,${MiB}:40,${4 * MiB}:16,${16 * MiB}:4,${64 * MiB}:2,${256 * MiB}:1`)
const REPS = Number(opt('--reps', '2'))
const FRESH = argv.includes('--fresh')
const FIX = path.join(ROOT, 'bench/fixtures')
const node = process.execPath

const n = new NatdLab(await createLab({ sites: [{ name: 'alice', nat: 'easy' }, { name: 'bob', nat: 'easy' }] }))
let failed = true
try {
  await n.startServer()
  await startAgentsWith(n, opt('--agent-node-options', ''))
  await n.waitRegistered('alice')
  await n.waitRegistered('bob')
  n.lab.spawn(n.lab.hosts.bob!.ns, [node, path.join(FIX, 'tcp-sink.ts'), 'serve', '7001'], { cwd: ROOT })
  await sleep(700)
  await n.natctl('bob', ['expose', 'add', '7001'])
  await n.natctl('alice', ['forward', 'add', '9001', 'bob:7001'])
  await n.natctl('alice', ['open', 'bob', '--via', 'tcp'])
  const pids = { alice: n.agents.alice!.proc.pid!, bob: n.agents.bob!.proc.pid! }
  const ms = (ticks: number): number => (ticks * 1000) / CLK_TCK
  const row = async (label: string, bytes: number, conns: number): Promise<void> => {
    const cpu0 = { alice: cpuTicks(pids.alice), bob: cpuTicks(pids.bob) }
    const sys0 = { alice: kernelTicks(pids.alice), bob: kernelTicks(pids.bob) }
    const r = await n.lab.exec(n.lab.hosts.alice!.ns, [node, path.join(FIX, 'multi-send.ts'), '127.0.0.1', '9001', String(bytes), String(conns)], { timeoutMs: 600_000 })
    const { ms: wallMs } = JSON.parse(r.stdout.trim().split('\n').pop()!) as { ms: number }
    const mib = (bytes * conns) / MiB
    const out: Record<string, unknown> = { label, bytes, conns, wall_ms: Math.round(wallMs) }
    for (const who of ['alice', 'bob'] as const) {
      const cpu = ms(cpuTicks(pids[who]) - cpu0[who])
      out[`${who}_cpu_ms`] = cpu
      out[`${who}_kernel_ms`] = ms(kernelTicks(pids[who]) - sys0[who])
      out[`${who}_ms_per_conn`] = Math.round((cpu / conns) * 100) / 100
      out[`${who}_ms_per_MiB`] = Math.round((cpu / mib) * 100) / 100
    }
    console.log(JSON.stringify(out))
  }
  await row('warm-up', 64 * MiB, 1) // the code paths compiled, the tunnel's buffers and limit grown
  for (let rep = 0; rep < REPS; rep++) {
    if (FRESH) {
      await n.natctl('alice', ['close', 'bob'])
      await sleep(200)
      await n.natctl('alice', ['open', 'bob', '--via', 'tcp'])
      await row('fresh tunnel, first', 64 * MiB, 1)
      await row('fresh tunnel, second', 64 * MiB, 1)
      await row('fresh tunnel, third', 64 * MiB, 1)
      continue
    }
    for (const spec of PLAN.split(',')) {
      const [bytes, conns] = spec.split(':').map(Number) as [number, number]
      await row(`${conns} × ${bytes} B`, bytes, conns)
    }
  }
  // A clean exit writes the agents' --cpu-prof profiles.
  for (const a of ['alice', 'bob']) await n.stopAgent(a)
  failed = false
} finally {
  await n.teardown(failed)
}
