/**
 * The NAT grid and the CGN grid (test/lab/grid.ts) at several RTTs with jitter and loss
 * (the lab's link emulator on every link): per pair, the path each `natctl open` (auto)
 * settles on (`paths`; `open_paths`: the one `open` returned on, before a late path took
 * over) and the open time as a median, in ms and in RTTs. A pair whose path
 * differs from the one it gets with no delay is listed under `path_changes`.
 *
 * A `mapped` row: two hard NATs, one whose gateway (miniupnpd, forwarding inbound only)
 * maps the agent's port (test/lab/portmap.test.ts): bob opens alice, which without the
 * mapped candidate would be relayed.
 *
 * Then, at each RTT, a forwarded TCP transfer over direct-tcp and direct-udp between two
 * easy sites (delay only: no jitter, no loss), with what the link emulator counted: the
 * emulator must carry the benchmark's traffic without dropping a frame of its own (and
 * `bare`: the same with no emulator, for what the emulator itself costs).
 *
 *   node bench/grid-conditions.ts [--quick] [--rtts 0,20,100,300] [--reps N] [--mib N] [--skip-grid] [--skip-mapped] [--skip-throughput] [--json FILE]
 *
 * Run by `npm run bench` (section `grid`); needs root (network namespaces).
 */
import fs from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { CGN_GRID, CGN_GRID_FINDINGS, GRID, GRID_CGN_SPEC, linkFor, settledPath, startAll, withLinks, type GridRow } from '../test/lab/grid.ts'
import { createLab, labAvailable, type LabSpec } from '../test/lab/lab.ts'
import { MINIUPNPD, startMiniupnpd } from '../test/lab/miniupnpd.ts'
import { NatdLab, ROOT, waitFor } from '../test/lab/natd-lab.ts'

const argv = process.argv.slice(2)
const QUICK = argv.includes('--quick')
const opt = (name: string): string | undefined => (argv.includes(name) ? argv[argv.indexOf(name) + 1] : undefined)
const RTTS = (opt('--rtts') ?? (QUICK ? '0,100' : '0,20,100,300')).split(',').map(Number)
const REPS = Number(opt('--reps')) || (QUICK ? 3 : 5)
const JSON_OUT = opt('--json')
const MIB = Number(opt('--mib')) || (QUICK ? 16 : 64)
const SINK = path.join(ROOT, 'bench/fixtures/tcp-sink.ts')
// Time for the peer to see a closed tunnel's goodbye before the next open.
const CLOSE_SETTLE_MS = 500

interface PairResult {
  /** The paths the tunnels settled on (grid.ts settledPath), by opens. */
  paths: Record<string, number>
  /** The paths `open` returned on (the first to authenticate; a better one may take over). */
  open_paths: Record<string, number>
  open_ms: { median: number; min: number; max: number } | null
  open_rtts_median: number | null
  failures: number
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.floor(s.length / 2)]!
}

async function runGrid(spec: LabSpec, rows: GridRow[], rttMs: number): Promise<Record<string, PairResult>> {
  const n = new NatdLab(await createLab(rttMs > 0 ? withLinks(spec, linkFor(rttMs)) : spec))
  let failed = true
  try {
    await startAll(n, { registerTimeoutMs: 60_000 })
    const out = await openTimes(n, rows, rttMs)
    failed = false
    return out
  } finally {
    await n.teardown(failed)
  }
}

/** hard×hard where alice's gateway maps her port (forwarding inbound only), `rttMs` apart. */
async function runMapped(rttMs: number): Promise<Record<string, PairResult>> {
  const spec: LabSpec = { sites: [{ name: 'alice', nat: 'hard' }, { name: 'bob', nat: 'hard' }] }
  const n = new NatdLab(await createLab(rttMs > 0 ? withLinks(spec, linkFor(rttMs)) : spec))
  let failed = true
  try {
    await n.startServer(['--host', n.lab.server.ip, '--alt-host', n.lab.server.altIp])
    let log = ''
    const router = await startMiniupnpd(n.lab, 'alice', 1, n.dir, { snat: false })
    router.stdout?.on('data', (d: Buffer) => (log += d.toString()))
    router.stderr?.on('data', (d: Buffer) => (log += d.toString()))
    await waitFor(() => /Port forwarding is now enabled/.test(log) && /Listening for NAT-PMP\/PCP/.test(log), 30_000, 'miniupnpd ready')
    for (const h of ['alice', 'bob']) await n.startAgent(h)
    for (const h of ['alice', 'bob']) await n.waitRegistered(h, 60_000)
    const out = await openTimes(n, [{ pair: 'hard(mapped)×hard', from: 'bob', to: 'alice', path: 'direct-udp' }], rttMs)
    failed = false
    return out
  } finally {
    await n.teardown(failed)
  }
}

/** REPS opens (auto) of each row, closed after each: the paths taken and the open times. */
async function openTimes(n: NatdLab, rows: GridRow[], rttMs: number): Promise<Record<string, PairResult>> {
  const out: Record<string, PairResult> = {}
  for (const g of rows) {
    const paths: Record<string, number> = {}
    const openPaths: Record<string, number> = {}
    const ms: number[] = []
    let failures = 0
    for (let i = 0; i < REPS; i++) {
      const r = await n.natctl(g.from, ['open', g.to], { timeoutMs: 60_000 })
      const res = r.json as { path?: string; tookMs?: number } | null
      if (r.code === 0 && res?.path && res.tookMs !== undefined) {
        openPaths[res.path] = (openPaths[res.path] ?? 0) + 1
        const settled = await settledPath(n, g)
        paths[settled] = (paths[settled] ?? 0) + 1
        ms.push(res.tookMs)
      } else failures++
      await n.natctl(g.from, ['close', g.to])
      await sleep(CLOSE_SETTLE_MS + rttMs)
    }
    const m = ms.length ? median(ms) : null
    out[g.pair] = {
      paths,
      open_paths: openPaths,
      open_ms: m === null ? null : { median: m, min: Math.min(...ms), max: Math.max(...ms) },
      open_rtts_median: m === null || rttMs === 0 ? null : Math.round((m / rttMs) * 10) / 10,
      failures
    }
    process.stderr.write(`grid ${rttMs} ms ${g.pair}: ${JSON.stringify(out[g.pair])}\n`)
  }
  return out
}

/** The most frequent path of a pair, and every pair whose usual path differs from its no-delay one. */
function pathChanges(results: Record<string, Record<string, Record<string, PairResult>>>): string[] {
  const usual = (r: PairResult | undefined): string => (r ? Object.entries(r.paths).sort((a, b) => b[1] - a[1])[0]?.[0] ?? 'failed' : 'missing')
  const changes: string[] = []
  for (const [grid, byRtt] of Object.entries(results)) {
    const base = byRtt['0']
    for (const [rtt, pairs] of Object.entries(byRtt)) {
      if (rtt === '0') continue
      for (const [pair, r] of Object.entries(pairs)) {
        const was = usual(base?.[pair])
        if (base && usual(r) !== was) changes.push(`${grid} ${pair} at ${rtt} ms: ${JSON.stringify(r.paths)} (no delay: ${was})`)
      }
    }
  }
  return changes
}

/** A forwarded transfer over each direct path between two easy sites `rttMs` apart (delay only), and the emulators' counts. */
async function throughputAt(rttMs: number, emulated = true): Promise<Record<string, unknown>> {
  const link = emulated ? { delayMs: rttMs / 4 } : undefined
  const spec: LabSpec = { ...(link ? { serverLink: link } : {}), sites: [{ name: 'alice', nat: 'easy', link }, { name: 'bob', nat: 'easy', link }] }
  const n = new NatdLab(await createLab(spec))
  let failed = true
  try {
    await startAll(n, { registerTimeoutMs: 60_000 })
    n.lab.spawn(n.lab.hosts.bob!.ns, [process.execPath, SINK, 'serve', '7001'], { cwd: ROOT })
    await sleep(500)
    await n.natctl('bob', ['expose', 'add', '7001'])
    await n.natctl('alice', ['forward', 'add', '9001', 'bob:7001'])
    const out: Record<string, unknown> = {}
    for (const via of ['tcp', 'udp']) {
      await n.natctl('alice', ['close', 'bob'])
      await sleep(CLOSE_SETTLE_MS + rttMs)
      const opened = (await n.natctl('alice', ['open', 'bob', '--via', via], { timeoutMs: 60_000 })).json as { path?: string } | null
      const r = await n.lab.exec(n.lab.hosts.alice!.ns, [process.execPath, SINK, 'send', '127.0.0.1', '9001', String(MIB * 1024 * 1024)], { timeoutMs: 600_000 })
      const res = (() => {
        try {
          return JSON.parse(r.stdout.trim().split('\n').pop()!) as { bytes: number; ms: number }
        } catch {
          return null
        }
      })()
      out[`forward_${opened?.path ?? via}`] = res ? { MBps: Math.round((res.bytes / 1e6 / (res.ms / 1000)) * 10) / 10, bytes: res.bytes } : { failed: `${r.code} ${r.stderr.slice(0, 200)}` }
    }
    if (emulated) {
      const stats = { alice: await n.lab.linkStats('alice'), bob: await n.lab.linkStats('bob') }
      out.emulator_overflow_frames = stats.alice.up.overflow + stats.alice.down.overflow + stats.bob.up.overflow + stats.bob.down.overflow
      out.emulator_send_errors = stats.alice.up.sendErrors + stats.alice.down.sendErrors + stats.bob.up.sendErrors + stats.bob.down.sendErrors
      out.emulator_frames = stats.alice.up.tx + stats.alice.down.tx
    }
    process.stderr.write(`throughput at ${rttMs} ms${emulated ? '' : ' (no emulator)'}: ${JSON.stringify(out)}\n`)
    failed = false
    return out
  } finally {
    await n.teardown(failed)
  }
}

if (!labAvailable()) {
  console.error('bench/grid-conditions.ts needs root: it builds the NAT lab from network namespaces')
  process.exit(2)
}
const results: Record<string, Record<string, Record<string, PairResult>>> = { grid: {} }
if (!argv.includes('--skip-grid')) for (const rtt of RTTS) results.grid![String(rtt)] = await runGrid(GRID_CGN_SPEC, [...GRID, ...CGN_GRID, ...CGN_GRID_FINDINGS], rtt)
if (!argv.includes('--skip-mapped') && fs.existsSync(MINIUPNPD)) {
  results.mapped = {}
  for (const rtt of RTTS) results.mapped[String(rtt)] = await runMapped(rtt)
}
const throughput: Record<string, unknown> = {}
if (!argv.includes('--skip-throughput')) {
  // The same transfer with no emulator at all, for what the emulator itself costs.
  if (RTTS.includes(0)) throughput.bare = await throughputAt(0, false)
  for (const rtt of RTTS) throughput[String(rtt)] = await throughputAt(rtt)
}
const out = { rtts: RTTS, reps: REPS, mib: MIB, throughput, conditions: 'each link: delay rtt/4 one way, jitter ±10% of it, 0.5% loss each way (server link too)', results, path_changes: pathChanges(results) }
console.log(JSON.stringify(out, null, 2))
if (JSON_OUT) fs.writeFileSync(JSON_OUT, JSON.stringify(out, null, 2) + '\n')
