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
 * hyperdht (issue 15) in the same lab, after natd's opens, through the same emulated links: a
 * 3-node DHT on the server host, and per pair a `serve` on the responder and REPS connects from
 * the initiator (bench/fixtures/hyperdht-peer.ts `open`): whether it connected and its open time
 * (connect() to 'open'), median in ms and RTTs, and natd's median over it (`hyperdht_vs_natd`:
 * natd / hyperdht; below 1, natd opens faster). hyperdht has no relay here (none is configured
 * in the testnet), so what it cannot punch fails. `--skip-hyperdht`, `--hyperdht-pairs a,b`.
 *
 * Then, at each RTT, a forwarded TCP transfer over direct-tcp and direct-udp between two
 * easy sites (delay only: no jitter, no loss), with what the link emulator counted: the
 * emulator must carry the benchmark's traffic without dropping a frame of its own (and
 * `bare`: the same with no emulator, for what the emulator itself costs).
 *
 *   node bench/grid-conditions.ts [--quick] [--rtts 0,20,100,300] [--reps N] [--mib N] [--skip-grid] [--skip-mapped] [--skip-throughput] [--skip-hyperdht] [--hyperdht-pairs P1,P2] [--hyperdht-gap-ms N] [--pairs P1,P2] [--json FILE]
 *
 * Run by `npm run bench` (section `grid`); needs root (network namespaces).
 */
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { CGN_GRID, CGN_GRID_FINDINGS, GRID, GRID_CGN_SPEC, linkFor, settledPath, startAll, withLinks, type GridRow } from '../test/lab/grid.ts'
import { createLab, labAvailable, type LabSpec } from '../test/lab/lab.ts'
import { MINIUPNPD, startMiniupnpd } from '../test/lab/miniupnpd.ts'
import { NatdLab, ROOT, waitFor } from '../test/lab/natd-lab.ts'
import { ready } from './baselines.ts'

const argv = process.argv.slice(2)
const QUICK = argv.includes('--quick')
const opt = (name: string): string | undefined => (argv.includes(name) ? argv[argv.indexOf(name) + 1] : undefined)
const RTTS = (opt('--rtts') ?? (QUICK ? '0,100' : '0,20,100,300')).split(',').map(Number)
const REPS = Number(opt('--reps')) || (QUICK ? 3 : 5)
const JSON_OUT = opt('--json')
const MIB = Number(opt('--mib')) || (QUICK ? 16 : 64)
const SINK = path.join(ROOT, 'bench/fixtures/tcp-sink.ts')
const DHT_FIXTURE = path.join(ROOT, 'bench/fixtures/hyperdht-peer.ts')
const HYPERDHT = !argv.includes('--skip-hyperdht')
/** The pairs hyperdht is measured on (default: every row of the grid). */
const HYPERDHT_PAIRS = opt('--hyperdht-pairs')?.split(',')
/**
 * The pause between two hyperdht connects. hyperdht lets a node start one birthday ("random")
 * punch per 20 s (`randomPunchInterval`, its default): attempts closer than that on a pair with
 * a hard NAT fail with HOLEPUNCH_ABORTED by design. `--hyperdht-gap-ms 21000` measures every
 * attempt under that rule; the default (natd's pause) shows what back-to-back opens get.
 */
const dhtGapMs = (rttMs: number): number => Number(opt('--hyperdht-gap-ms')) || CLOSE_SETTLE_MS + rttMs
/** Only these rows of the grid (natd and hyperdht), in a lab of only their sites. */
const PAIRS = opt('--pairs')?.split(',')
/** The DHT's bootstrap port on the server host (the rendezvous server has 3478-3479). */
const DHT_PORT = 49737
/** A hyperdht connect that has not opened by then is a failure: 20 s plus 20 RTTs (its punch rounds are RTT-paced). */
const dhtTimeoutMs = (rttMs: number): number => 20_000 + 20 * rttMs
/** A hyperdht node bootstraps, announces and learns its NAT before it is ready; at 300 ms RTT that takes several seconds. */
const DHT_READY_MS = 120_000
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

/** hyperdht's connects on one pair: how many opened, and the open time of those that did. */
interface DhtResult {
  opened: number
  failures: Record<string, number>
  open_ms: { median: number; min: number; max: number } | null
  open_rtts_median: number | null
  /** natd's median open time over hyperdht's, same pair, same lab, same RTT (null when either never opened). */
  hyperdht_vs_natd: number | null
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.floor(s.length / 2)]!
}

/** The sites (and the CGNs they sit behind) that `rows` need. */
function sitesFor(spec: LabSpec, rows: GridRow[]): LabSpec {
  const hosts = new Set(rows.flatMap((g) => [g.from, g.to]))
  const sites = spec.sites.filter((s) => (s.hosts ?? [s.name]).some((h) => hosts.has(h)))
  const cgns = spec.cgns?.filter((c) => sites.some((s) => s.cgn === c.name))
  return { ...spec, sites, ...(cgns ? { cgns } : {}) }
}

async function runGrid(fullSpec: LabSpec, allRows: GridRow[], rttMs: number): Promise<Record<string, PairResult>> {
  const rows = PAIRS ? allRows.filter((g) => PAIRS.includes(g.pair)) : allRows
  const spec = PAIRS ? sitesFor(fullSpec, rows) : fullSpec
  const n = new NatdLab(await createLab(rttMs > 0 ? withLinks(spec, linkFor(rttMs)) : spec))
  let failed = true
  try {
    await startAll(n, { registerTimeoutMs: 60_000 })
    const out = await openTimes(n, rows, rttMs)
    if (HYPERDHT) dhtResults[String(rttMs)] = await hyperdhtOpenTimes(n, rows.filter((g) => !HYPERDHT_PAIRS || HYPERDHT_PAIRS.includes(g.pair)), rttMs, out)
    failed = false
    return out
  } finally {
    await n.teardown(failed)
  }
}

/** hyperdht's open times on `rows` in the lab natd just ran in (so: the same links, the same conditions). */
async function hyperdhtOpenTimes(n: NatdLab, rows: GridRow[], rttMs: number, natd: Record<string, PairResult>): Promise<Record<string, DhtResult>> {
  const boot = `${n.lab.server.ip}:${DHT_PORT}`
  const testnet = n.lab.spawn(n.lab.server.ns, [process.execPath, DHT_FIXTURE, 'testnet', n.lab.server.ip, String(DHT_PORT)], { cwd: ROOT })
  const out: Record<string, DhtResult> = {}
  try {
    await ready(testnet, 'hyperdht testnet', DHT_READY_MS)
    for (const g of rows) {
      const seed = randomBytes(32).toString('hex')
      const serve = n.lab.spawn(n.lab.hosts[g.to]!.ns, [process.execPath, DHT_FIXTURE, 'serve', boot, seed, '0'], { cwd: ROOT })
      try {
        await ready(serve, `hyperdht serve on ${g.to}`, DHT_READY_MS)
        const args = [process.execPath, DHT_FIXTURE, 'open', boot, seed, String(REPS), String(dhtTimeoutMs(rttMs)), String(dhtGapMs(rttMs))]
        const r = await n.lab.exec(n.lab.hosts[g.from]!.ns, args, { timeoutMs: DHT_READY_MS + REPS * (dhtTimeoutMs(rttMs) + dhtGapMs(rttMs)) })
        out[g.pair] = dhtSummary(r.stdout, r.code, rttMs, natd[g.pair])
      } catch (err) {
        out[g.pair] = dhtSummary('', -1, rttMs, natd[g.pair], (err as Error).message.slice(0, 120))
      } finally {
        serve.kill('SIGKILL')
      }
      process.stderr.write(`hyperdht ${rttMs} ms ${g.pair}: ${JSON.stringify(out[g.pair])}\n`)
    }
  } finally {
    testnet.kill('SIGKILL')
  }
  return out
}

/** The `open` fixture's JSON lines, summed up beside natd's figure for the pair. */
function dhtSummary(stdout: string, code: number | null, rttMs: number, natd: PairResult | undefined, startError?: string): DhtResult {
  const lines = stdout.split('\n').flatMap((l) => {
    try {
      return [JSON.parse(l) as { ok: boolean; ms: number; code?: string }]
    } catch {
      return []
    }
  })
  const ms = lines.filter((l) => l.ok).map((l) => l.ms)
  const failures: Record<string, number> = {}
  for (const l of lines) if (!l.ok) failures[l.code ?? 'ERROR'] = (failures[l.code ?? 'ERROR'] ?? 0) + 1
  // Attempts that never printed (the fixture died or was killed) count as failures too.
  const missing = REPS - lines.length
  if (missing > 0) failures[startError ?? `EXIT_${code}`] = missing
  const m = ms.length ? median(ms) : null
  const natdMs = natd?.open_ms?.median ?? null
  return {
    opened: ms.length,
    failures,
    open_ms: m === null ? null : { median: m, min: Math.min(...ms), max: Math.max(...ms) },
    open_rtts_median: m === null || rttMs === 0 ? null : Math.round((m / rttMs) * 10) / 10,
    hyperdht_vs_natd: m === null || natdMs === null ? null : Math.round((natdMs / m) * 100) / 100
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

// Killed (Ctrl-C, a timeout): exit through process.exit so the lab's exit hook removes its namespaces and processes.
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => process.exit(130))
if (!labAvailable()) {
  console.error('bench/grid-conditions.ts needs root: it builds the NAT lab from network namespaces')
  process.exit(2)
}
const results: Record<string, Record<string, Record<string, PairResult>>> = { grid: {} }
/** hyperdht's open times by RTT, then pair (filled by runGrid). */
const dhtResults: Record<string, Record<string, DhtResult>> = {}
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
const out = { rtts: RTTS, reps: REPS, mib: MIB, throughput, conditions: 'each link: delay rtt/4 one way, jitter ±10% of it, 0.5% loss each way (server link too)', results, ...(HYPERDHT ? { hyperdht: dhtResults } : {}), path_changes: pathChanges(results) }
console.log(JSON.stringify(out, null, 2))
if (JSON_OUT) fs.writeFileSync(JSON_OUT, JSON.stringify(out, null, 2) + '\n')
