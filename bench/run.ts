/**
 * npm run bench: natd's speed figures, each beside a baseline measured in the same run
 * on the same NAT-lab path (these machines are shared and noisy; only ratios compare).
 * Needs root (network namespaces). Prints a table; writes bench/results/<date>.json.
 *
 *   alice 10.1.0.2 ── NAT ── inet ── NAT ── bob 10.2.0.2      (+ DNAT on bob's router for the
 *                                                               baselines: iperf3, bare UDX)
 *
 * Options: --quick (fewer repetitions, smaller transfers), --skip-capacity, --skip-footprint,
 * --skip-files, --skip-relay, --skip-grid, --skip-roaming, --mib N, --only SECTION (throughput | open | relay | capacity | footprint | files | grid | roaming | cluster: three
 * rendezvous instances on Redis beside one, ~30 min, only when asked),
 * --baselines ssh_L,wireguard_go,hyperdht|none (bench/baselines.ts; all by default), --no-fairness,
 * --no-bare (of the bare rows only iperf3 TCP and the bare session over TCP),
 * --reps N, --via udp,tcp,relay (which forwards to run), --agent-node-options '…' (Node flags
 * for the two natd agents of the throughput section, for experiments), --cpu-prof DIR (the two natd agents of the throughput section and natd-rendezvous in the relay section write V8 CPU
 * profiles there; bench/profile-summary.ts summarises them).
 */
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { createLab, labAvailable, type LabSpec, type NatKind } from '../test/lab/lab.ts'
import { NatdLab, ROOT, waitFor } from '../test/lab/natd-lab.ts'
import { BASELINE_PORTS, baselineRatios, startBaselines } from './baselines.ts'
import { fairness } from './fairness.ts'
import { CLK_TCK, kernelTicks } from './proc-stats.ts'
import { relayFanout } from './relay-fanout.ts'
import { startAgentsWith } from './file-transfer.ts'

const argv = process.argv.slice(2)
const QUICK = argv.includes('--quick')
const MIB = Number(argv[argv.indexOf('--mib') + 1]) || (QUICK ? 16 : 64)
const REPS = Number(argv[argv.indexOf('--reps') + 1]) || (QUICK ? 2 : 5)
const ONLY = argv.includes('--only') ? argv[argv.indexOf('--only') + 1] : null
const VIA = (argv.includes('--via') ? argv[argv.indexOf('--via') + 1]!.split(',') : ['udp', 'tcp', 'relay']) as Array<'udp' | 'tcp' | 'relay'>
/** Which of bench/baselines.ts to run (ssh_L, wireguard_go, hyperdht; `none`): all by default. */
const BASELINES = argv.includes('--baselines') ? argv[argv.indexOf('--baselines') + 1]!.split(',') : null
/** --no-bare: of the bare baselines only iperf3 TCP and the bare session over TCP (quicker before/after runs of the TCP forward). */
const NO_BARE = argv.includes('--no-bare')
const CPU_PROF = argv.includes('--cpu-prof') ? path.resolve(argv[argv.indexOf('--cpu-prof') + 1]!) : null
const AGENT_NODE_OPTIONS = [argv.includes('--agent-node-options') ? argv[argv.indexOf('--agent-node-options') + 1]! : '', CPU_PROF ? `--cpu-prof --cpu-prof-dir=${CPU_PROF}` : ''].join(' ').trim()
/** Whether a section runs: --only picks one; otherwise every section not --skip-ped. */
const runs = (section: string): boolean => (ONLY ? ONLY === section : !argv.includes(`--skip-${section}`))
const OPEN_RUNS = QUICK ? 5 : 20
const BYTES = MIB * 1024 * 1024
const FIX = path.join(ROOT, 'bench/fixtures')
const RELAY = path.join(ROOT, 'bench/tcp-relay.ts')
const node = process.execPath

interface Stat {
  median: number
  min: number
  max: number
  p90?: number
  n: number
}

function stat(xs: number[]): Stat {
  const s = [...xs].sort((a, b) => a - b)
  const q = (p: number): number => s[Math.min(s.length - 1, Math.floor(p * s.length))]!
  return { median: q(0.5), min: s[0]!, max: s[s.length - 1]!, p90: q(0.9), n: s.length }
}

const r1 = (x: number): number => Math.round(x * 10) / 10

async function run(n: NatdLab, host: string, args: string[], timeoutMs = 300_000): Promise<Record<string, unknown>> {
  const r = await n.lab.exec(n.lab.hosts[host]!.ns, args, { timeoutMs })
  try {
    const text = r.stdout.trim()
    return JSON.parse(text.startsWith('{\n') ? text : text.split('\n').pop()!) as Record<string, unknown> // iperf3 -J prints indented JSON
  } catch {
    throw new Error(`${args.join(' ')} failed (${r.code}): ${r.stdout} ${r.stderr}`)
  }
}

/** Lets the baselines reach bob directly: DNAT on bob's router, as a user opening a port would. */
async function openPorts(n: NatdLab, site: string, host: string, ports: Array<{ proto: 'tcp' | 'udp'; port: number }>): Promise<void> {
  const r = n.lab.routers[site]!
  const ip = n.lab.hosts[host]!.ip
  for (const { proto, port } of ports) {
    await n.lab.exec(r.ns, ['iptables', '-t', 'nat', '-I', 'PREROUTING', '-i', 'wan', '-p', proto, '--dport', String(port), '-j', 'DNAT', '--to-destination', ip])
    await n.lab.exec(r.ns, ['iptables', '-I', 'FORWARD', '-p', proto, '-d', ip, '--dport', String(port), '-j', 'ACCEPT'])
  }
}

async function throughput(): Promise<Record<string, unknown>> {
  const spec: LabSpec = { sites: [{ name: 'alice', nat: 'easy' }, { name: 'bob', nat: 'easy' }] }
  const n = new NatdLab(await createLab(spec))
  let failed = true
  let cleanup = (): void => undefined
  try {
    // The relay's rate limit would measure the limit, not the relay: lift it for the bench.
    await n.startServer(['--relay-rate', '10GiB', '--relay-max-bytes', '100GiB'])
    // --cpu-prof and --agent-node-options apply to the agents only (a profile is written on a clean exit).
    await startAgentsWith(n, AGENT_NODE_OPTIONS)
    await n.waitRegistered('alice')
    await n.waitRegistered('bob')
    const bobWan = n.lab.routers.bob!.wanIp
    const bob = n.lab.hosts.bob!.ns
    await openPorts(n, 'bob', 'bob', [
      { proto: 'tcp', port: 5201 },
      { proto: 'udp', port: 5201 },
      { proto: 'udp', port: 6001 },
      { proto: 'udp', port: 6002 },
      { proto: 'tcp', port: 6003 },
      { proto: 'tcp', port: 6004 },
      { proto: 'tcp', port: 6005 },
      ...BASELINE_PORTS
    ])
    n.lab.spawn(bob, ['iperf3', '-s', '-p', '5201'])
    // The receiving processes on bob, whose CPU per MiB is recorded beside natd's on bob.
    const receivers: Record<string, number> = {
      udx: n.lab.spawn(bob, [node, path.join(FIX, 'udx-peer.ts'), 'serve', '6001'], { cwd: ROOT }).pid!,
      udx_secret_stream: n.lab.spawn(bob, [node, path.join(FIX, 'udx-peer.ts'), 'serve', '6002', '--secret'], { cwd: ROOT }).pid!,
      tcp_socket: n.lab.spawn(bob, [node, path.join(FIX, 'tcp-sink.ts'), 'serve', '6003', '--any'], { cwd: ROOT }).pid!,
      tcp_secret_stream: n.lab.spawn(bob, [node, path.join(FIX, 'tcp-sink.ts'), 'serve', '6004', '--any', '--secret'], { cwd: ROOT }).pid!
    }
    const server = n.lab.spawn(bob, [node, path.join(FIX, 'tcp-sink.ts'), 'serve', '7001'], { cwd: ROOT }).pid!
    // tcp_node_relay: the forward's four-process topology with plain Node relays instead of natd.
    receivers.tcp_node_relay = n.lab.spawn(bob, [node, RELAY, '0.0.0.0', '6005', '127.0.0.1', '7001'], { cwd: ROOT }).pid!
    const relayAlice = n.lab.spawn(n.lab.hosts.alice!.ns, [node, RELAY, '127.0.0.1', '9005', bobWan, '6005'], { cwd: ROOT }).pid!
    await sleep(700)
    await n.natctl('bob', ['expose', 'add', '7001'])
    await n.natctl('alice', ['forward', 'add', '9001', 'bob:7001'])
    const { baselines, skipped } = await startBaselines(n, bobWan, server, BYTES, BASELINES)
    cleanup = () => baselines.forEach((b) => b.cleanup?.())

    const mbps = (bytes: number, ms: number): number => bytes / 1e6 / (ms / 1000)
    const series: Record<string, number[]> = {}
    const add = (k: string, v: number): void => void (series[k] ??= []).push(v)
    // Datagrams bob's kernel dropped because a UDP socket's receive buffer was full (UDX then retransmits).
    const rcvbufErrors = async (): Promise<number> => {
      const lines = (await n.lab.exec(bob, ['cat', '/proc/net/snmp'])).stdout.split('\n').filter((l) => l.startsWith('Udp: '))
      const [names, values] = lines.map((l) => l.split(/\s+/))
      return Number(values?.[names?.indexOf('RcvbufErrors') ?? -1] ?? NaN)
    }
    /**
     * CPU per MiB of every process a transfer crosses (user + system, from /proc and the
     * shell's `times` for the short-lived sender): on two shared cores, a CPU-bound
     * transfer's speed follows the sum.
     */
    const cpuOf = (key: string): Record<string, number | (() => number)> => {
      const baseline = baselines.find((b) => b.key === key)
      if (baseline) return baseline.cpu
      if (key.startsWith('forward_')) return { alice: n.agents.alice!.proc.pid!, bob: n.agents.bob!.proc.pid!, server }
      if (key === 'tcp_node_relay') return { relay_alice: relayAlice, bob: receivers.tcp_node_relay!, server }
      return receivers[key] ? { bob: receivers[key] } : {}
    }
    const send = async (key: string, args: readonly string[]): Promise<void> => {
      const pids = cpuOf(key)
      const cpuS = (p: number | (() => number)): number => (typeof p === 'number' ? procStat(p).cpuS : p())
      const cpu0 = Object.fromEntries(Object.entries(pids).map(([role, pid]) => [role, cpuS(pid)]))
      // The kernel's part of it (stime), for the processes whose pid the bench holds.
      const kernelPids = { ...Object.fromEntries(Object.entries(pids).filter((e): e is [string, number] => typeof e[1] === 'number')), ...baselines.find((b) => b.key === key)?.pids }
      const kernel0 = Object.fromEntries(Object.entries(kernelPids).map(([role, pid]) => [role, kernelTicks(pid)]))
      const drops0 = key.includes('udx') || key.includes('udp') ? await rcvbufErrors() : null
      const res = await n.lab.exec(n.lab.hosts.alice!.ns, ['sh', '-c', '"$0" "$@"; s=$?; times >&2; exit $s', ...args], { timeoutMs: 300_000 })
      let r: { bytes: number; ms: number }
      try {
        r = JSON.parse(res.stdout.trim().split('\n').pop()!) as { bytes: number; ms: number }
      } catch {
        throw new Error(`${key} failed (${res.code}): ${res.stdout} ${res.stderr}`)
      }
      const perMiB = (s: number): number => (s * 1000) / MIB
      for (const [role, pid] of Object.entries(pids)) add(`${key}_cpu_ms_per_MiB_${role}`, perMiB(cpuS(pid) - cpu0[role]!))
      for (const [role, pid] of Object.entries(kernelPids)) add(`${key}_kernel_cpu_ms_per_MiB_${role}`, perMiB((kernelTicks(pid) - kernel0[role]!) / CLK_TCK))
      // `times` prints the shell's own times, then its children's: "0m1.230000s 0m0.450000s".
      const t = res.stderr.trim().split('\n').pop()!.match(/(\d+)m([\d.]+)s\s+(\d+)m([\d.]+)s/)
      if (t) add(`${key}_cpu_ms_per_MiB_${key.startsWith('forward_') || key === 'tcp_node_relay' || baselines.some((b) => b.key === key) ? 'client' : 'alice'}`, perMiB(Number(t[1]) * 60 + Number(t[2]) + Number(t[3]) * 60 + Number(t[4])))
      if (drops0 !== null) add(`${key}_rcvbuf_drops_bob`, (await rcvbufErrors()) - drops0)
      if (r.bytes !== BYTES) throw new Error(`${key}: ${r.bytes} of ${BYTES} bytes arrived`)
      add(key, mbps(r.bytes, r.ms))
    }
    const paths: Record<string, string> = {}
    for (let i = 0; i < REPS; i++) {
      const tcp = await run(n, 'alice', ['iperf3', '-c', bobWan, '-p', '5201', '-n', String(BYTES), '-J'])
      const te = (tcp as { end: { sum_received: { bits_per_second: number; seconds: number }; cpu_utilization_percent?: { host_total: number; remote_total: number } } }).end
      add('iperf3_tcp', te.sum_received.bits_per_second / 8e6)
      // iperf3's own CPU (client + server, both busy only in the kernel): what the path costs without user-space copies.
      if (te.cpu_utilization_percent) add('iperf3_tcp_cpu_ms_per_MiB_all', ((te.cpu_utilization_percent.host_total + te.cpu_utilization_percent.remote_total) / 100) * te.sum_received.seconds * 1000 / MIB)
      if (!NO_BARE) {
        const udp = await run(n, 'alice', ['iperf3', '-c', bobWan, '-p', '5201', '-u', '-b', '0', '-l', '1400', '-t', '3', '-J'])
        const u = (udp as { end: { sum: { bits_per_second: number; lost_percent: number } } }).end.sum
        add('iperf3_udp', (u.bits_per_second * (1 - u.lost_percent / 100)) / 8e6)
        await send('udx', [node, path.join(FIX, 'udx-peer.ts'), 'send', bobWan, '6001', String(BYTES)])
        await send('udx_secret_stream', [node, path.join(FIX, 'udx-peer.ts'), 'send', bobWan, '6002', String(BYTES), '--secret'])
        await send('tcp_socket', [node, path.join(FIX, 'tcp-sink.ts'), 'send', bobWan, '6003', String(BYTES)])
      }
      // The bare session over TCP stays: its receiver's CPU per MiB is the load control of a before/after pair.
      await send('tcp_secret_stream', [node, path.join(FIX, 'tcp-sink.ts'), 'send', bobWan, '6004', String(BYTES), '--secret'])
      if (!NO_BARE) await send('tcp_node_relay', [node, path.join(FIX, 'tcp-sink.ts'), 'send', '127.0.0.1', '9005', String(BYTES)])
      for (const b of baselines) await send(b.key, b.args)
      for (const via of VIA) {
        await n.natctl('alice', ['close', 'bob'])
        await sleep(200)
        const opened = (await n.natctl('alice', ['open', 'bob', '--via', via])).json as { path: string }
        paths[via] = opened.path
        const key = `forward_${opened.path.replace('-', '_')}`
        const args = [node, path.join(FIX, 'tcp-sink.ts'), 'send', '127.0.0.1', '9001', String(BYTES)]
        // The first transfer on a fresh tunnel (new buffers, the in-flight limit's slow start)
        // apart from the next one on the same tunnel: the second is what compares with the
        // baselines, whose one connection (ssh -L's SSH session, hyperdht's stream's node,
        // wireguard-go's interface) carries every repetition.
        await send(`${key}_fresh`, args)
        await send(key, args)
      }
    }
    // A new forwarded connection on an open tunnel: connect, one byte, reply.
    const conn = (await run(n, 'alice', [node, path.join(FIX, 'tcp-sink.ts'), 'ping', '127.0.0.1', '9001', String(OPEN_RUNS)])) as { ms: number[] }
    // A 1-byte round trip beside a bulk transfer on the same tunnel (bulk 4× the transfer size, so it outlasts the round trips).
    const fair = argv.includes('--no-fairness') ? null : await fairness(n, VIA, 4 * BYTES, baselines.some((b) => b.key === 'ssh_L'))
    // What auto picks when both paths punch.
    await n.natctl('alice', ['close', 'bob'])
    await sleep(200)
    const auto = ((await n.natctl('alice', ['open', 'bob', '--via', 'auto'])).json as { path: string }).path
    if (CPU_PROF) for (const a of ['alice', 'bob']) await n.stopAgent(a) // SIGTERM: a clean exit writes the profile
    failed = false
    const out: Record<string, unknown> = { paths, auto_picks: auto, fairness: fair }
    for (const [k, v] of Object.entries(series)) out[k] = k.includes('_cpu_ms_per_MiB_') ? { ms: stat(v.map((x) => Math.round(x * 100) / 100)) } : k.endsWith('_rcvbuf_drops_bob') ? { datagrams: stat(v) } : { MBps: stat(v.map(r1)) }
    const med = (k: string): number => (series[k] ? stat(series[k]).median : NaN)
    const ratio = (a: string, b: string): number => Math.round((med(a) / med(b)) * 100) / 100
    out.ratios = {
      direct_udp_vs_udx_secret_stream: ratio('forward_direct_udp', 'udx_secret_stream'),
      direct_udp_vs_udx: ratio('forward_direct_udp', 'udx'),
      direct_tcp_vs_tcp_secret_stream: ratio('forward_direct_tcp', 'tcp_secret_stream'),
      direct_tcp_vs_tcp_socket: ratio('forward_direct_tcp', 'tcp_socket'),
      direct_tcp_vs_iperf3_tcp: ratio('forward_direct_tcp', 'iperf3_tcp'),
      direct_tcp_vs_tcp_node_relay: ratio('forward_direct_tcp', 'tcp_node_relay'),
      tcp_node_relay_vs_iperf3_tcp: ratio('tcp_node_relay', 'iperf3_tcp'),
      tcp_secret_stream_vs_iperf3_tcp: ratio('tcp_secret_stream', 'iperf3_tcp'),
      direct_udp_vs_iperf3_udp: ratio('forward_direct_udp', 'iperf3_udp'),
      relay_vs_direct_udp: ratio('forward_relay', 'forward_direct_udp'),
      relay_vs_direct_tcp: ratio('forward_relay', 'forward_direct_tcp'),
      direct_tcp_fresh_vs_warm: ratio('forward_direct_tcp_fresh', 'forward_direct_tcp'),
      direct_udp_fresh_vs_warm: ratio('forward_direct_udp_fresh', 'forward_direct_udp')
    }
    // CPU per MiB summed over every process of a transfer, and what ratio that allows when
    // the transfer is CPU-bound on the machine's cores (bare total / forward total).
    const cpuTotal = (key: string): number => {
      let sum = 0
      for (const [k, v] of Object.entries(series)) if (k.startsWith(`${key}_cpu_ms_per_MiB_`)) sum += stat(v).median
      return Math.round(sum * 100) / 100
    }
    const totals: Record<string, number> = {}
    for (const k of ['iperf3_tcp', 'udx', 'udx_secret_stream', 'tcp_socket', 'tcp_secret_stream', 'tcp_node_relay', 'forward_direct_udp', 'forward_direct_tcp', 'forward_relay', 'forward_direct_udp_fresh', 'forward_direct_tcp_fresh', 'forward_relay_fresh', ...baselines.map((b) => b.key)]) if (series[k]) totals[k] = cpuTotal(k)
    out.cpu_ms_per_MiB_all_processes = totals
    const bound = (a: string, b: string): number => Math.round(((totals[b] ?? NaN) / (totals[a] ?? NaN)) * 100) / 100
    out.cpu_bound_ratios = {
      direct_udp_vs_udx_secret_stream: bound('forward_direct_udp', 'udx_secret_stream'),
      direct_tcp_vs_tcp_secret_stream: bound('forward_direct_tcp', 'tcp_secret_stream'),
      direct_tcp_vs_tcp_node_relay: bound('forward_direct_tcp', 'tcp_node_relay'),
      direct_tcp_vs_iperf3_tcp: bound('forward_direct_tcp', 'iperf3_tcp'),
      tcp_node_relay_vs_iperf3_tcp: bound('tcp_node_relay', 'iperf3_tcp')
    }
    out.vs_baselines = baselineRatios(med, cpuTotal)
    if (Object.keys(skipped).length) out.baselines_skipped = skipped
    out.new_connection_ms = stat(conn.ms.map((x) => Math.round(x * 100) / 100))
    const relayShare = ratio('tcp_node_relay', 'iperf3_tcp')
    // What the direct-tcp target can be held to: the same topology with no crypto and no mux.
    out.direct_tcp_target_note =
      relayShare < 0.5
        ? `two plain Node TCP relays (no crypto, no mux) reach ${relayShare} of iperf3 on this path: a Node forwarder cannot meet 0.50 here`
        : `two plain Node TCP relays reach ${relayShare} of iperf3 on this path: 0.50 is within Node's reach`
    return out
  } finally {
    await n.teardown(failed)
    cleanup()
  }
}

// IPv6: both sites dual-stack behind stateful firewalls (test/lab/lab-ipv6.ts), hard IPv4 NATs, so the path is IPv6's.
const PAIRS: Array<{ name: string; a: NatKind; b: NatKind; sameLan?: boolean; ipv6?: boolean }> = [
  { name: 'easy×easy', a: 'easy', b: 'easy' },
  { name: 'easy×full', a: 'easy', b: 'full' },
  { name: 'public×easy', a: 'public', b: 'easy' },
  { name: 'same LAN', a: 'easy', b: 'easy', sameLan: true },
  { name: 'easy×hard', a: 'easy', b: 'hard' },
  { name: 'hard×hard', a: 'hard', b: 'hard' },
  { name: 'IPv6', a: 'hard', b: 'hard', ipv6: true }
]
/** `--pairs 'IPv6,easy×easy'`: only these rows of the open-time bench. */
const PAIR_FILTER = argv.includes('--pairs') ? argv[argv.indexOf('--pairs') + 1]!.split(',') : null

/** Time from a connection on a cold forward (no tunnel) until the first byte echoes, per NAT pair. */
async function timeToOpen(): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = {}
  for (const p of PAIRS.filter((x) => !PAIR_FILTER || PAIR_FILTER.includes(x.name))) {
    const ip = p.ipv6 ? ('dual' as const) : ('v4' as const)
    const spec: LabSpec = p.sameLan ? { sites: [{ name: 'home', nat: 'easy', hosts: ['alice', 'bob'] }] } : { sites: [{ name: 'alice', nat: p.a, ip }, { name: 'bob', nat: p.b, ip }] }
    const n = new NatdLab(await createLab(spec))
    let failed = true
    try {
      await n.startServer(p.ipv6 ? ['--host6', n.lab.server.ip6!] : [])
      await n.startAgent('alice')
      await n.startAgent('bob')
      await n.waitRegistered('alice')
      await n.waitRegistered('bob')
      // The IPv6 candidates reach the server with the first answered heartbeats.
      if (p.ipv6) await waitFor(() => /"ipv6 endpoint"/.test(n.log('alice')) && /"ipv6 endpoint"/.test(n.log('bob')), 15_000, 'IPv6 endpoints')
      n.lab.spawn(n.lab.hosts.bob!.ns, [node, path.join(FIX, 'tcp-sink.ts'), 'serve', '7001'], { cwd: ROOT })
      await sleep(500)
      await n.natctl('bob', ['expose', 'add', '7001'])
      await n.natctl('alice', ['forward', 'add', '9001', 'bob:7001'])
      const ms: number[] = []
      let failures = 0
      let path_: string | null = null
      for (let i = 0; i < OPEN_RUNS; i++) {
        const r = await n.lab.exec(n.lab.hosts.alice!.ns, [node, path.join(FIX, 'tcp-sink.ts'), 'ping', '127.0.0.1', '9001', '1'], { timeoutMs: 30_000 })
        if (r.code === 0) {
          ms.push((JSON.parse(r.stdout) as { ms: number[] }).ms[0]!)
          path_ ??= ((await n.natctl('alice', ['tunnels'])).json as Array<{ path: string }>)[0]?.path ?? null
        } else failures++
        await n.natctl('alice', ['close', 'bob'])
        await sleep(300) // let bob see the goodbye
      }
      out[p.name] = ms.length ? { path: path_, ms: stat(ms.map((x) => Math.round(x * 10) / 10)), failures } : { path: null, failures, note: 'no direct path: needs birthday punching or the relay (issue 5)' }
      failed = false
    } finally {
      await n.teardown(failed)
    }
  }
  return out
}

/** CPU seconds (user + system) and RSS of a process, from /proc. */
function procStat(pid: number): { cpuS: number; rssMiB: number } {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ')
  const ticks = Number(stat[11]) + Number(stat[12])
  const rss = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))
  return { cpuS: ticks / 100, rssMiB: Math.round((Number(rss?.[1] ?? 0) / 1024) * 10) / 10 }
}

/** Idle natd with 1 and with N open tunnels: RSS, and CPU over a quiet minute (keepalives only). */
async function footprint(): Promise<Record<string, unknown>> {
  const peers = QUICK ? 10 : 100
  const names = Array.from({ length: peers }, (_, i) => `p${i + 1}`)
  // The hub and its peers on two LANs behind easy NATs (a site holds at most 99 hosts).
  const half = Math.ceil(peers / 2)
  const spec: LabSpec = { sites: [{ name: 'hubsite', nat: 'easy', hosts: ['hub', ...names.slice(0, half)] }, { name: 'far', nat: 'easy', hosts: names.slice(half) }] }
  const n = new NatdLab(await createLab(spec))
  let failed = true
  const idleMs = QUICK ? 10_000 : 30_000
  try {
    await n.startServer()
    await n.startAgent('hub', { heartbeat: '20s' })
    for (const p of names) await n.startAgent(p, { heartbeat: '20s' })
    await n.waitRegistered('hub')
    for (const p of names) await n.waitRegistered(p, 30_000)
    const hub = n.agents.hub!.proc.pid!
    const measure = async (): Promise<{ rssMiB: number; cpuPercent: number }> => {
      await sleep(3_000)
      const a = procStat(hub)
      await sleep(idleMs)
      const b = procStat(hub)
      return { rssMiB: b.rssMiB, cpuPercent: Math.round(((b.cpuS - a.cpuS) / (idleMs / 1000)) * 1000) / 10 }
    }
    const zero = await measure()
    const r1 = await n.natctl('hub', ['open', names[0]!])
    if (r1.code !== 0) throw new Error(`open failed: ${r1.stderr}`)
    const one = await measure()
    for (const p of names.slice(1)) {
      const r = await n.natctl('hub', ['open', p])
      if (r.code !== 0) throw new Error(`open ${p} failed: ${r.stderr}`)
    }
    const all = await measure()
    const open = ((await n.natctl('hub', ['tunnels'])).json as unknown[]).length
    failed = false
    return { idle_no_tunnels: zero, idle_1_tunnel: one, [`idle_${peers}_tunnels`]: { ...all, open }, per_tunnel_KiB: Math.round(((all.rssMiB - one.rssMiB) * 1024) / Math.max(1, peers - 1)) }
  } finally {
    await n.teardown(failed)
  }
}

function capacity(): Record<string, unknown> | null {
  const script = path.join(ROOT, 'bench/rendezvous-capacity.ts')
  if (!fs.existsSync(script)) return null
  const file = path.join(ROOT, 'bench/results/.capacity.json')
  execFileSync(node, ['--disable-warning=ExperimentalWarning', script, ...(QUICK ? ['--quick'] : []), '--json', file], { stdio: 'inherit', cwd: ROOT })
  const r = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>
  fs.rmSync(file)
  return r
}

function capacityCluster(): Record<string, unknown> {
  const file = path.join(ROOT, 'bench/results/.capacity-cluster.json')
  execFileSync(node, ['--disable-warning=ExperimentalWarning', path.join(ROOT, 'bench/rendezvous-capacity-cluster.ts'), ...(QUICK ? ['--quick'] : []), '--json', file], { stdio: 'inherit', cwd: ROOT })
  const r = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>
  fs.rmSync(file)
  return r
}

/** Runs a bench script that writes its results to `--json FILE` (its progress to stderr); prints and returns them. */
function jsonBench(script: string): unknown {
  const out = path.join(ROOT, `bench/results/.${path.basename(script, '.ts')}.json`)
  execFileSync(node, ['--disable-warning=ExperimentalWarning', script, '--json', out, ...(QUICK ? ['--quick'] : [])], { cwd: ROOT, stdio: ['ignore', 'ignore', 'inherit'] })
  const parsed = JSON.parse(fs.readFileSync(out, 'utf8')) as unknown
  fs.rmSync(out)
  console.log(JSON.stringify(parsed, null, 2))
  return parsed
}

/** The figures the project has targets for, each beside its target (docs/BENCHMARKS.md explains them). */
function printSummary(r: Record<string, unknown>): void {
  const rows: Array<[string, string, string]> = []
  const open = r.open as Record<string, { path: string | null; ms?: Stat }> | undefined
  if (open) {
    const ms = (k: string, q: 'median' | 'p90'): string => (open[k]?.ms ? `${open[k].ms![q]} ms (${open[k].path})` : 'failed')
    rows.push(['open easy×easy, median', ms('easy×easy', 'median'), '≤ 30 ms'])
    rows.push(['open easy×hard, median / p90', `${ms('easy×hard', 'median')} / ${ms('easy×hard', 'p90')}`, '≤ 1 s / ≤ 3 s'])
    rows.push(['open hard×hard, median', ms('hard×hard', 'median'), '≤ 100 ms (relay)'])
    for (const k of Object.keys(open)) if (!['easy×easy', 'easy×hard', 'hard×hard'].includes(k)) rows.push([`open ${k}, median`, ms(k, 'median'), '-'])
  }
  const t = r.throughput as ({ ratios: Record<string, number>; auto_picks: string } & Record<string, { MBps: Stat }>) | undefined
  if (t) {
    for (const k of ['forward_direct_udp', 'forward_direct_tcp', 'forward_relay', 'forward_direct_tcp_fresh', 'udx_secret_stream', 'tcp_secret_stream', 'tcp_node_relay', 'iperf3_tcp']) if (t[k]) rows.push([`${k} MB/s (median)`, String(t[k].MBps.median), '-'])
    rows.push(['forward direct-udp / bare secret-stream (UDX)', String(t.ratios.direct_udp_vs_udx_secret_stream), '≥ 0.85'])
    rows.push(['forward direct-tcp / iperf3 TCP', String(t.ratios.direct_tcp_vs_iperf3_tcp), '≥ 0.50'])
    rows.push(['forward direct-tcp / bare secret-stream (TCP)', String(t.ratios.direct_tcp_vs_tcp_secret_stream), '-'])
    rows.push(['plain Node TCP relay pair / iperf3 TCP', String(t.ratios.tcp_node_relay_vs_iperf3_tcp), '-'])
    rows.push(['forward relay / direct-udp', String(t.ratios.relay_vs_direct_udp), '-'])
    for (const k of ['ssh_L', 'wireguard_go', 'hyperdht']) if (t[k]) rows.push([`${k} MB/s (median)`, String(t[k].MBps.median), '-'])
    const vs = (t as unknown as { vs_baselines?: { MBps: Record<string, number>; cpu_bound: Record<string, number> } }).vs_baselines
    const targets: Record<string, string> = { direct_tcp_vs_ssh_L: '≥ 1.0', direct_udp_vs_hyperdht: '≥ 1.5', direct_udp_vs_wireguard_go: '≥ 2' }
    if (vs) for (const [k, v] of Object.entries(vs.MBps)) if (Number.isFinite(v)) rows.push([`forward ${k.replace('_vs_', ' / ').replaceAll('_', ' ')} (CPU-bound)`, `${v} (${vs.cpu_bound[k]})`, targets[k] ?? '-'])
    const fair = (t as unknown as { fairness?: Record<string, { idle_ms: Stat | null; during_bulk_ms: Stat | null }> }).fairness ?? {}
    for (const [k, v] of Object.entries(fair)) rows.push([`1-byte round trip, ${k}: idle / during a bulk transfer (median ms)`, `${v.idle_ms?.median ?? '-'} / ${v.during_bulk_ms?.median ?? '-'} (p90 ${v.during_bulk_ms?.p90 ?? '-'})`, '-'])
    rows.push(['auto picks (both punch)', t.auto_picks, 'the faster: direct-tcp'])
  }
  const rl = r.relay as { tunnels: number; natd_rendezvous: { aggregate_MBps: number; relay_cpu_ms_per_MiB: number }; socat: { aggregate_MBps: number; relay_cpu_ms_per_MiB: number } } | undefined
  if (rl) rows.push([`relay, ${rl.tunnels} tunnels at once: natd-rendezvous / socat, aggregate MB/s (relay CPU ms/MiB)`, `${rl.natd_rendezvous.aggregate_MBps} (${rl.natd_rendezvous.relay_cpu_ms_per_MiB}) / ${rl.socat.aggregate_MBps} (${rl.socat.relay_cpu_ms_per_MiB})`, '-'])
  const f = r.footprint as Record<string, { rssMiB: number; cpuPercent: number }> | undefined
  if (f) for (const [k, v] of Object.entries(f)) if (typeof v === 'object') rows.push([`natd ${k.replaceAll('_', ' ')}`, `${v.rssMiB} MiB RSS, ${v.cpuPercent}% CPU`, '-'])
  if (rows.length === 0) return
  const w = [Math.max(...rows.map((x) => x[0].length)), Math.max(...rows.map((x) => x[1].length))]
  console.log(`\n${'figure'.padEnd(w[0]!)}  ${'measured'.padEnd(w[1]!)}  target`)
  for (const [a, b, c] of rows) console.log(`${a.padEnd(w[0]!)}  ${b.padEnd(w[1]!)}  ${c}`)
}

if (!labAvailable()) {
  console.error('npm run bench needs root: it builds the NAT lab from network namespaces (sudo npm run bench)')
  process.exit(2)
}
const started = new Date()
console.log(`natd bench: ${MIB} MiB transfers × ${REPS}, ${OPEN_RUNS} opens per NAT pair${QUICK ? ' (quick)' : ''}`)
const results: Record<string, unknown> = { date: started.toISOString(), quick: QUICK, mib: MIB, reps: REPS, node: process.version }
if (runs('throughput')) {
  // Before the lab exists, so nothing else competes for the cores.
  const out = execFileSync(node, ['--disable-warning=ExperimentalWarning', path.join(ROOT, 'bench/crypto-micro.ts'), ...(QUICK ? ['--mib', '64'] : [])], { cwd: ROOT, encoding: 'utf8' })
  results.crypto_MBps_per_core = JSON.parse(out.trim().split('\n').pop()!) as unknown
  console.log(JSON.stringify(results.crypto_MBps_per_core))
  results.throughput = await throughput()
  console.log(JSON.stringify(results.throughput, null, 2))
}
if (runs('open')) {
  results.open = await timeToOpen()
  console.log(JSON.stringify(results.open, null, 2))
}
if (runs('relay')) {
  // One natd-rendezvous relaying several tunnels at once, against socat on the same host.
  results.relay = await relayFanout({ tunnels: QUICK ? 2 : 4, bytes: Math.max(1, Math.round(MIB / 2)) * 1024 * 1024, reps: QUICK ? 1 : 3, cpuProf: CPU_PROF ?? undefined })
  console.log(JSON.stringify(results.relay, null, 2))
}
if (runs('capacity')) results.capacity = capacity()
// Three instances on Redis beside one (about 30 minutes): only when asked, `--only cluster`.
if (ONLY === 'cluster') results.cluster = capacityCluster()
if (runs('footprint')) {
  results.footprint = await footprint()
  console.log(JSON.stringify(results.footprint, null, 2))
}
const fileBench = path.join(ROOT, 'bench/file-transfer.ts')
if (runs('files') && fs.existsSync(fileBench)) {
  const out = execFileSync(node, ['--disable-warning=ExperimentalWarning', fileBench, '--json', ...(QUICK ? ['--quick'] : [])], { cwd: ROOT, encoding: 'utf8' })
  const text = out.trim()
  const start = text.lastIndexOf('\n{') + 1 // the last top-level JSON object (it may be indented over lines)
  results.files = JSON.parse(text.slice(start)) as unknown
  console.log(JSON.stringify(results.files, null, 2))
}
// The NAT grid and the CGN grid at several RTTs with jitter and loss (open time per pair in RTTs).
const gridBench = path.join(ROOT, 'bench/grid-conditions.ts')
if (runs('grid') && fs.existsSync(gridBench)) results.grid = jsonBench(gridBench)
// Roaming stall per fault and RTT, and a 256 MiB cp across each fault (bench/roaming.ts).
const roamingBench = path.join(ROOT, 'bench/roaming.ts')
if (runs('roaming') && fs.existsSync(roamingBench)) results.roaming = jsonBench(roamingBench)
printSummary(results)
const file = path.join(ROOT, 'bench/results', `${started.toISOString().slice(0, 19).replaceAll(':', '-')}.json`)
fs.writeFileSync(file, JSON.stringify(results, null, 2) + '\n')
console.log(`\nwritten ${path.relative(ROOT, file)}`)
