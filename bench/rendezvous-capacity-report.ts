/**
 * The tables and figures bench/rendezvous-capacity.ts prints: one StepResult per ramp step.
 */

import type { InstanceFigures, RedisFigures } from './rendezvous-capacity-fleet.ts'

/**
 * udpDrops: datagrams the kernel dropped for a full receive queue, at the server's socket
 * and at every other UDP socket of this network namespace (our load processes, but also
 * any other program on loopback).
 */
export interface StepResult {
  n: number
  registered: number
  equivalentAgentsAt20s: number
  registration: { seconds: number; ratePerS: number; retries: number; serverCpuPct: number; failed: Record<string, number>; serverUsPerAgent: number; udpDrops: { server: number; other: number }; redisCommandsPerS: number }
  tcpAgents: number
  tcpFailed: Record<string, number>
  heartbeats: { perS: number; sent: number; acked: number; lost: number; badStatus: number; lossRate: number; p50Ms: number; p99Ms: number; maxMs: number; udpDrops: { server: number; other: number } }
  pongs: { sent: number; received: number }
  /** Windows measured again because other processes loaded the machine. */
  remeasured: number
  /**
   * bytesPerAgent: (RSS - baseline RSS) / registered, as the issue defines it (garbage and
   * V8 heap headroom included); heapBytesPerAgent: the same for V8 heap + external memory
   * right after a full GC (bench/rendezvous-capacity-heap.ts), the live cost of an agent.
   */
  server: {
    cpuPct: number
    usPerHeartbeat: number
    rssBytes: number
    peakRssBytes: number
    bytesPerAgent: number
    heapBytesPerAgent: number
    rssAfterGcBytes: number
    /** Where that RSS is (after the GC): V8 heap committed, young generation, array buffers, anonymous, file-backed. */
    rssParts: Record<string, number>
    /** From the probe inside the server: how late its event loop ran, and its GC pauses. */
    loopDelayP99Ms: number
    loopDelayMaxMs: number
    gcMaxMs: number
    gcTotalMs: number
    gcCount: number
    /** Share of the window its main thread was runnable but waiting for a CPU (other work on its core). */
    runqueueWaitPct: number
  }
  /** Per instance (one without --instances); `server` above sums them. */
  instances: InstanceFigures[]
  /** With several instances: Redis's memory, commands per second over the window, CPU (% of one core). */
  redis: (RedisFigures & { commandsPerS: number; cpuPct: number }) | null
  generator: { cpuPct: number; loopDelayP99Ms: number }
  machine: { busyPct: number; irqPct: number; otherPct: number }
  list: { medianMs: number; bytes: number; peersInReply: number; expectedPeers: number; overMaxFrame: boolean } | null
  intro: { perS: number; completed: number; notifiedTargets: number; p50Ms: number; p99Ms: number; errors: Record<string, number>; serverCpuPct: number; generatorCpuPct: number } | null
  held: boolean
  reason: string | null
  /** Which side ran out first: the server, the load generator, or other work on this shared machine. */
  saturated: 'server' | 'generator' | 'other load' | 'none'
}

const SATURATED_NOTE: Record<StepResult['saturated'], string> = {
  server: ' (server saturated)',
  generator: ' (load generator saturated)',
  'other load': ' (other processes loaded the machine)',
  none: ''
}

export function percentile(sorted: Float64Array, p: number): number {
  if (!sorted.length) return NaN
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!
}

export function mergeSorted(parts: Float64Array[]): Float64Array {
  const all = new Float64Array(parts.reduce((s, p) => s + p.length, 0))
  let o = 0
  for (const p of parts) {
    all.set(p, o)
    o += p.length
  }
  return all.sort()
}

export function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)))
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padStart(widths[i]!))).join('  ')).join('\n')
}

export const f1 = (x: number): string => (Number.isFinite(x) ? x.toFixed(1) : '-')
export const f2 = (x: number): string => (Number.isFinite(x) ? x.toFixed(2) : '-')
export const int = (x: number): string => (Number.isFinite(x) ? Math.round(x).toLocaleString('en-US') : '-')

export function report(steps: StepResult[], intervalMs: number): string {
  const scaled = intervalMs !== 20_000
  const head = ['N', ...(scaled ? ['≙N@20s'] : []), 'hb/s', 'p50 ms', 'p99 ms', 'max ms', 'lost', 'srv CPU%', 'gen CPU%', 'RSS MB', 'B/agent', 'heap B/agent', 'result']
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
    int(s.server.heapBytesPerAgent),
    (s.held ? 'held' : `FAILED: ${s.reason}`) + SATURATED_NOTE[s.saturated] + (s.remeasured ? ` (window measured ${s.remeasured + 1}x)` : '')
  ])]
  const load = [
    ['N', 'reg/s', 'srv CPU% reg', 'srv µs/reg', 'reg retries', 'UDP drops reg srv/other', 'UDP drops hb srv/other', 'srv µs/hb', 'srv loop max ms', 'srv GC max ms', 'srv CPU wait %', 'gen lag p99 ms', 'irq CPU%', 'other CPU%'],
    ...steps.map((s) => [
      int(s.n),
      int(s.registration.ratePerS),
      f1(s.registration.serverCpuPct),
      int(s.registration.serverUsPerAgent),
      int(s.registration.retries),
      `${s.registration.udpDrops.server}/${s.registration.udpDrops.other}`,
      `${s.heartbeats.udpDrops.server}/${s.heartbeats.udpDrops.other}`,
      f1(s.server.usPerHeartbeat),
      f1(s.server.loopDelayMaxMs),
      f1(s.server.gcMaxMs),
      f2(s.server.runqueueWaitPct),
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
  let out = `${table(main)}\n\nregistration and load generator:\n${table(load)}\n\ncontrol connections (1% of agents):\n${table(control)}`
  if (steps.some((s) => s.redis)) {
    const rows = [
      ['N', ...steps[0]!.instances.map((_, i) => `inst ${i}: agents, RSS MB, B/agent, heap B/agent`), 'Redis used MB', 'Redis B/agent', 'Redis keys', 'Redis cmd/s hb', 'Redis cmd/s reg', 'Redis CPU%'],
      ...steps.map((s) => [
        int(s.n),
        ...s.instances.map((i) => `${int(i.agents)}, ${f1(i.rssBytes / 2 ** 20)}, ${int(i.bytesPerAgent)}, ${int(i.heapBytesPerAgent)}`),
        s.redis ? f1(s.redis.usedMemoryBytes / 2 ** 20) : '-',
        s.redis ? int(s.redis.bytesPerAgent) : '-',
        s.redis ? int(s.redis.keys) : '-',
        s.redis ? int(s.redis.commandsPerS) : '-',
        int(s.registration.redisCommandsPerS),
        s.redis ? f1(s.redis.cpuPct) : '-'
      ])
    ]
    out += `\n\ninstances and Redis:\n${table(rows)}`
  }
  return out
}
