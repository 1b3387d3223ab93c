/**
 * File transfer throughput (`natctl cp`) as a ratio to a forwarded-port transfer of the
 * same bytes on the same tunnel, both measured in one NAT-lab run (issue 6). Needs root.
 *
 *   alice ── easy NAT ── inet ── easy NAT ── bob
 *     natctl cp FILE bob:                 ═══ tunnel ═══▶ bob's inbox (sha256 verified, fsynced)
 *     tcp-sink send → forward :9001       ═══ tunnel ═══▶ tcp-sink serve :7001 (counts bytes)
 *
 * Per path (direct-udp, direct-tcp; relay when this build has it) and repetition: one
 * forwarded transfer, one `natctl cp`. The cp time is what the user waits for: natd's
 * sha256 of the file before the offer, the transfer, the receiver's fsync.
 *
 *   node --disable-warning=ExperimentalWarning bench/file-transfer.ts [--mib 256] [--reps 3] [--quick] [--via udp,tcp,relay] [--cpu-prof DIR]
 *
 * Prints one JSON object; bench/run.ts can call fileTransferBench() instead.
 */
import fs from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { createLab, labAvailable } from '../test/lab/lab.ts'
import { NatdLab, ROOT } from '../test/lab/natd-lab.ts'
import { CLK_TCK, cpuTicks } from './proc-stats.ts'

const FIX = path.join(ROOT, 'bench/fixtures')
const MiB = 1024 * 1024

export interface FileTransferBenchOptions {
  mib: number
  reps: number
  /** The two agents write V8 CPU profiles here (bench/profile-summary.ts summarises them). */
  cpuProf?: string
  /** Which paths to measure (udp, tcp, relay): all by default. */
  via?: Array<'udp' | 'tcp' | 'relay'>
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  return s.length ? s[Math.floor(s.length / 2)]! : NaN
}

const r2 = (x: number): number => Math.round(x * 100) / 100

/** CPU seconds of this process's reaped children (the sender it ran through the lab, natctl). */
function childrenCpuS(): number {
  const s = fs.readFileSync('/proc/self/stat', 'utf8')
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ')
  return (Number(f[13]) + Number(f[14])) / CLK_TCK
}

/** Starts alice and bob (5 s heartbeat) with `nodeOptions` added to NODE_OPTIONS for the two agents only. */
export async function startAgentsWith(n: NatdLab, nodeOptions: string): Promise<void> {
  const savedOptions = process.env.NODE_OPTIONS
  if (nodeOptions) process.env.NODE_OPTIONS = `${savedOptions ?? ''} ${nodeOptions}`.trim()
  try {
    await n.startAgent('alice', { heartbeat: '5s' })
    await n.startAgent('bob', { heartbeat: '5s' })
  } finally {
    if (savedOptions === undefined) delete process.env.NODE_OPTIONS
    else process.env.NODE_OPTIONS = savedOptions
  }
}

export async function fileTransferBench(opts: FileTransferBenchOptions): Promise<Record<string, unknown>> {
  const bytes = opts.mib * MiB
  const n = new NatdLab(await createLab({ sites: [{ name: 'alice', nat: 'easy' }, { name: 'bob', nat: 'easy' }] }))
  let failed = true
  try {
    // Lift the relay's per-tunnel limits (1 GiB, 8 MiB/s by default): both transfers share one tunnel.
    await n.startServer(['--relay-max-bytes', '1TiB', '--relay-rate', '100GiB'])
    await startAgentsWith(n, opts.cpuProf ? `--cpu-prof --cpu-prof-dir=${opts.cpuProf}` : '')
    await n.waitRegistered('alice')
    await n.waitRegistered('bob')
    const sink = n.lab.spawn(n.lab.hosts.bob!.ns, [process.execPath, path.join(FIX, 'tcp-sink.ts'), 'serve', '7001'], { cwd: ROOT }).pid!
    await sleep(500)
    await n.natctl('bob', ['expose', 'add', '7001'])
    await n.natctl('alice', ['forward', 'add', '9001', 'bob:7001'])
    const file = path.join(n.dir, 'bench.bin')
    const fd = fs.openSync(file, 'w')
    const chunk = Buffer.alloc(8 * MiB)
    for (let left = bytes; left > 0; left -= chunk.length) fs.writeSync(fd, chunk.fill(left & 0xff).subarray(0, Math.min(chunk.length, left)))
    fs.closeSync(fd)
    const inbox = path.join(n.agents.bob!.stateDir, 'inbox')

    const out: Record<string, unknown> = { bytes }
    for (const via of opts.via ?? (['udp', 'tcp', 'relay'] as const)) {
      await n.natctl('alice', ['close', 'bob'])
      await sleep(300)
      const opened = await n.natctl('alice', ['open', 'bob', '--via', via])
      if (opened.code !== 0) {
        out[via] = { skipped: (opened.json as { error?: { code: string; message: string } }).error ?? opened.stderr.trim() }
        continue
      }
      const pathKind = (opened.json as { path: string }).path
      const forward: number[] = []
      const cp: number[] = []
      // CPU per MiB of each process a transfer crosses: the two agents, the sender (tcp-sink or natctl), the sink.
      const cpu: Record<string, number[]> = {}
      const pids = { alice: n.agents.alice!.proc.pid!, bob: n.agents.bob!.proc.pid! }
      const meter = (kind: string, extra: Record<string, number> = {}): (() => void) => {
        const all = { ...pids, ...extra }
        const t0 = Object.fromEntries(Object.entries(all).map(([k, pid]) => [k, cpuTicks(pid)]))
        const c0 = childrenCpuS()
        return () => {
          const perMiB = (sec: number): number => (sec * 1000) / (bytes / MiB)
          for (const [k, pid] of Object.entries(all)) (cpu[`${kind}_${k}`] ??= []).push(perMiB((cpuTicks(pid) - t0[k]!) / CLK_TCK))
          ;(cpu[`${kind}_${kind === 'cp' ? 'natctl' : 'client'}`] ??= []).push(perMiB(childrenCpuS() - c0))
        }
      }
      for (let i = 0; i < opts.reps; i++) {
        const fwdDone = meter('forward', { server: sink })
        const f = await n.lab.exec(n.lab.hosts.alice!.ns, [process.execPath, path.join(FIX, 'tcp-sink.ts'), 'send', '127.0.0.1', '9001', String(bytes)], { timeoutMs: 600_000 })
        const fr = JSON.parse(f.stdout.trim().split('\n').pop()!) as { bytes: number; ms: number }
        if (fr.bytes !== bytes) throw new Error(`forward: ${fr.bytes} of ${bytes} bytes arrived`)
        forward.push(bytes / MiB / (fr.ms / 1000))
        fwdDone()
        const cpDone = meter('cp')
        const c = await n.natctl('alice', ['cp', file, 'bob:'], { timeoutMs: 600_000 })
        if (c.code !== 0) throw new Error(`natctl cp failed (${c.code}): ${c.stderr}`)
        const cr = JSON.parse(c.stdout) as { tookMs: number; sent: number; tunnel: string }
        if (cr.sent !== bytes) throw new Error(`cp sent ${cr.sent} of ${bytes} bytes`)
        cp.push(bytes / MiB / (cr.tookMs / 1000))
        cpDone()
        for (const name of fs.readdirSync(inbox)) if (name !== '.partial') fs.rmSync(path.join(inbox, name))
      }
      const fwd = median(forward)
      const file_ = median(cp)
      out[via] = { path: pathKind, forward_MiBps: r2(fwd), cp_MiBps: r2(file_), ratio_cp_vs_forward: r2(file_ / fwd), cpu_ms_per_MiB: Object.fromEntries(Object.entries(cpu).map(([k, v]) => [k, r2(median(v))])), runs: { forward: forward.map(r2), cp: cp.map(r2) } }
    }
    if (opts.cpuProf) for (const a of ['alice', 'bob']) await n.stopAgent(a) // SIGTERM: a clean exit writes the profile
    failed = false
    return out
  } finally {
    await n.teardown(failed)
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const argv = process.argv.slice(2)
  const quick = argv.includes('--quick')
  const num = (flag: string, dflt: number): number => (argv.includes(flag) ? Number(argv[argv.indexOf(flag) + 1]) : dflt)
  if (!labAvailable()) {
    process.stderr.write('bench/file-transfer.ts needs root (network namespaces)\n')
    process.exit(1)
  }
  const cpuProf = argv.includes('--cpu-prof') ? path.resolve(argv[argv.indexOf('--cpu-prof') + 1]!) : undefined
  const via = argv.includes('--via') ? (argv[argv.indexOf('--via') + 1]!.split(',') as Array<'udp' | 'tcp' | 'relay'>) : undefined
  const result = await fileTransferBench({ mib: num('--mib', quick ? 64 : 256), reps: num('--reps', quick ? 1 : 3), cpuProf, via })
  process.stdout.write(JSON.stringify(result, null, 2) + '\n')
}
