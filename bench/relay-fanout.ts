/**
 * The relay under load (issue 18): one natd-rendezvous relaying N tunnels at once, each
 * carrying one forwarded transfer, against a plain `socat` relay on the same host moving
 * the same bytes for the same N client/server pairs. Aggregate MB/s (all bytes over the
 * longest client's time, connect to the sink's count) and the relay process's CPU per MiB.
 *
 *   site a (easy NAT): a1..aN ── inet ── server host ── inet ── site b (easy NAT): b1..bN
 *     natd:  a_i: tcp-sink send → forward :9001 ═ natd a_i ═ relay (natd-rendezvous) ═ natd b_i ═▶ sink b_i:7001
 *     socat: a_i: tcp-sink send → server:8100+i ─ socat ─ b's router :7100+i (DNAT) ─▶ sink b_i:6101
 *
 * Both relays sit on the same server host; the natd relay carries ciphertext in
 * RELAY_DATA frames, socat plain bytes. Every process of both runs shares the two cores.
 */
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { ready, treeCpuS } from './baselines.ts'
import { CLK_TCK, cpuTicks } from './proc-stats.ts'
import { createLab } from '../test/lab/lab.ts'
import { NatdLab, ROOT } from '../test/lab/natd-lab.ts'

const SINK = path.join(ROOT, 'bench/fixtures/tcp-sink.ts')
const node = process.execPath
const MiB = 1024 * 1024

export interface RelayFanoutOptions {
  tunnels: number
  /** Bytes each tunnel carries. */
  bytes: number
  reps: number
  /** natd-rendezvous writes a V8 CPU profile here (bench/profile-summary.ts summarises it). */
  cpuProf?: string
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN
const r2 = (x: number): number => Math.round(x * 100) / 100

export async function relayFanout(o: RelayFanoutOptions): Promise<Record<string, unknown>> {
  const as = Array.from({ length: o.tunnels }, (_, i) => `a${i + 1}`)
  const bs = Array.from({ length: o.tunnels }, (_, i) => `b${i + 1}`)
  const n = new NatdLab(await createLab({ sites: [{ name: 'a', nat: 'easy', hosts: as }, { name: 'b', nat: 'easy', hosts: bs }] }))
  let failed = true
  try {
    const saved = process.env.NODE_OPTIONS
    if (o.cpuProf) process.env.NODE_OPTIONS = `${saved ?? ''} --cpu-prof --cpu-prof-dir=${o.cpuProf}`.trim()
    try {
      await n.startServer(['--relay-rate', '10GiB', '--relay-max-bytes', '100GiB'])
    } finally {
      if (saved === undefined) delete process.env.NODE_OPTIONS
      else process.env.NODE_OPTIONS = saved
    }
    for (const h of [...as, ...bs]) await n.startAgent(h, { heartbeat: '5s' })
    for (const h of [...as, ...bs]) await n.waitRegistered(h, 30_000)
    const bRouter = n.lab.routers.b!
    const socats: number[] = []
    for (let i = 0; i < o.tunnels; i++) {
      const b = n.lab.hosts[bs[i]!]!
      await ready(n.lab.spawn(b.ns, [node, SINK, 'serve', '7001'], { cwd: ROOT }), 'sink')
      await ready(n.lab.spawn(b.ns, [node, SINK, 'serve', '6101', '--any'], { cwd: ROOT }), 'sink')
      await n.natctl(bs[i]!, ['expose', 'add', '7001'])
      await n.natctl(as[i]!, ['forward', 'add', '9001', `${bs[i]}:7001`])
      const opened = await n.natctl(as[i]!, ['open', bs[i]!, '--via', 'relay'])
      if (opened.code !== 0) throw new Error(`open ${as[i]} → ${bs[i]} via relay: ${opened.stderr}`)
      // socat's way to b_i: a DNAT rule on b's router, as a user opening a port would.
      await n.lab.exec(bRouter.ns, ['iptables', '-t', 'nat', '-I', 'PREROUTING', '-i', 'wan', '-p', 'tcp', '--dport', String(7100 + i), '-j', 'DNAT', '--to-destination', `${b.ip}:6101`])
      await n.lab.exec(bRouter.ns, ['iptables', '-I', 'FORWARD', '-p', 'tcp', '-d', b.ip, '--dport', '6101', '-j', 'ACCEPT'])
      socats.push(n.lab.spawn(n.lab.server.ns, ['socat', `TCP-LISTEN:${8100 + i},fork,reuseaddr,nodelay`, `TCP:${bRouter.wanIp}:${7100 + i},nodelay`]).pid!)
    }
    await sleep(500)
    const run = async (target: (i: number) => [string, number], cpuS: () => number): Promise<{ MBps: number; cpuMsPerMiB: number }> => {
      const c0 = cpuS()
      // Each client's own time from connect to the sink's byte count (not its process start-up): they start together.
      const ms = await Promise.all(
        as.map(async (a, i) => {
          const [host, port] = target(i)
          const r = await n.lab.exec(n.lab.hosts[a]!.ns, [node, SINK, 'send', host, String(port), String(o.bytes)], { timeoutMs: 600_000 })
          const got = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as { bytes?: number; ms?: number }
          if (got.bytes !== o.bytes) throw new Error(`${a}: ${got.bytes} of ${o.bytes} bytes arrived (${r.code}): ${r.stderr}`)
          return got.ms!
        })
      )
      const s = Math.max(...ms) / 1000
      const total = o.bytes * o.tunnels
      return { MBps: total / 1e6 / s, cpuMsPerMiB: ((cpuS() - c0) * 1000) / (total / MiB) }
    }
    const server = n.server!.pid!
    const natd = { MBps: [] as number[], cpu: [] as number[] }
    const socat = { MBps: [] as number[], cpu: [] as number[] }
    for (let rep = 0; rep < o.reps; rep++) {
      const a = await run(() => ['127.0.0.1', 9001], () => cpuTicks(server) / CLK_TCK)
      natd.MBps.push(a.MBps)
      natd.cpu.push(a.cpuMsPerMiB)
      const b = await run((i) => [n.lab.server.ip, 8100 + i], () => socats.reduce((sum, pid) => sum + treeCpuS(pid), 0))
      socat.MBps.push(b.MBps)
      socat.cpu.push(b.cpuMsPerMiB)
    }
    if (o.cpuProf) await n.killServer('SIGTERM') // a clean exit writes the profile
    failed = false
    const sum = (x: { MBps: number[]; cpu: number[] }): Record<string, unknown> => ({ aggregate_MBps: r2(median(x.MBps)), relay_cpu_ms_per_MiB: r2(median(x.cpu)), runs_MBps: x.MBps.map(r2), runs_cpu_ms_per_MiB: x.cpu.map(r2) })
    return {
      tunnels: o.tunnels,
      MiB_per_tunnel: o.bytes / MiB,
      natd_rendezvous: sum(natd),
      socat: sum(socat),
      ratio_MBps: r2(median(natd.MBps) / median(socat.MBps)),
      ratio_relay_cpu: r2(median(natd.cpu) / median(socat.cpu))
    }
  } finally {
    await n.teardown(failed)
  }
}
