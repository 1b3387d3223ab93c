/**
 * Fairness between channels of one tunnel (issue 18): the round trip of a 1-byte message
 * on one forwarded connection, idle and while a bulk transfer runs on another connection
 * through the same tunnel. A mux that lets the bulk channel fill the session's queue
 * shows here as round trips of the queue's length in time. The same through `ssh -L`
 * (one SSH connection carrying both forwards) when that baseline runs.
 *
 *   alice: tcp-sink rtt → :9002 ═══ tunnel ═══▶ bob: tcp-sink echo 127.0.0.1:7002
 *          tcp-sink send → :9001 ═══ (same) ══▶ bob: tcp-sink serve 127.0.0.1:7001
 */
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { ECHO_PORT, ready, SSH_LOCAL } from './baselines.ts'
import { ROOT, type NatdLab } from '../test/lab/natd-lab.ts'

const FIX = path.join(ROOT, 'bench/fixtures')
const SINK = path.join(FIX, 'tcp-sink.ts')
const node = process.execPath
const ECHO_LOCAL = 9002
/** How long each series of round trips runs (one every ~10 ms plus the round trip). */
const RTT_MS = 1_500
/** The bulk transfer starts this long before the round trips, so they all see it running. */
const BULK_HEAD_START_MS = 300

interface RttStat {
  median: number
  p90: number
  max: number
  n: number
}

function rttStat(xs: number[]): RttStat | null {
  if (xs.length === 0) return null
  const s = [...xs].sort((a, b) => a - b)
  const q = (p: number): number => s[Math.min(s.length - 1, Math.floor(p * s.length))]!
  return { median: q(0.5), p90: q(0.9), max: s[s.length - 1]!, n: s.length }
}

async function rtt(n: NatdLab, port: number): Promise<Array<[number, number]>> {
  const r = await n.lab.exec(n.lab.hosts.alice!.ns, [node, SINK, 'rtt', '127.0.0.1', String(port), String(RTT_MS)], { timeoutMs: 120_000 })
  if (r.code !== 0) throw new Error(`rtt via :${port} failed (${r.code}): ${r.stderr}`)
  return (JSON.parse(r.stdout.trim().split('\n').pop()!) as { samples: Array<[number, number]> }).samples
}

/** Round trips idle, then during a bulk transfer (only those that ended before it did). */
async function measure(n: NatdLab, bulkPort: number, echoPort: number, bytes: number): Promise<Record<string, unknown>> {
  const idle = (await rtt(n, echoPort)).map(([, ms]) => ms)
  let bulkEnd = Infinity
  const bulk = n.lab.exec(n.lab.hosts.alice!.ns, [node, SINK, 'send', '127.0.0.1', String(bulkPort), String(bytes)], { timeoutMs: 600_000 }).then((r) => {
    bulkEnd = Date.now()
    if (r.code !== 0) throw new Error(`bulk via :${bulkPort} failed (${r.code}): ${r.stderr}`)
    return r
  })
  await sleep(BULK_HEAD_START_MS)
  const during = await rtt(n, echoPort)
  await bulk
  const kept = during.filter(([t]) => t <= bulkEnd).map(([, ms]) => ms)
  return { idle_ms: rttStat(idle), during_bulk_ms: rttStat(kept), note: kept.length < during.length ? `${during.length - kept.length} round trips after the bulk ended left out` : undefined }
}

/**
 * Runs on the throughput section's lab once its forward 9001 → bob:7001 exists; opens
 * the tunnel on each of `vias` in turn. `ssh` when the ssh_L baseline is running.
 */
export async function fairness(n: NatdLab, vias: readonly string[], bytes: number, ssh: boolean): Promise<Record<string, unknown>> {
  const echo = n.lab.spawn(n.lab.hosts.bob!.ns, [node, SINK, 'echo', String(ECHO_PORT)], { cwd: ROOT })
  await ready(echo, 'echo server')
  await n.natctl('bob', ['expose', 'add', String(ECHO_PORT)])
  await n.natctl('alice', ['forward', 'add', String(ECHO_LOCAL), `bob:${ECHO_PORT}`])
  const out: Record<string, unknown> = {}
  for (const via of vias) {
    await n.natctl('alice', ['close', 'bob'])
    await sleep(200)
    const opened = (await n.natctl('alice', ['open', 'bob', '--via', via])).json as { path: string }
    out[`forward_${opened.path.replace('-', '_')}`] = await measure(n, 9001, ECHO_LOCAL, bytes)
  }
  if (ssh) out.ssh_L = await measure(n, SSH_LOCAL, SSH_LOCAL + 1, bytes)
  return out
}
