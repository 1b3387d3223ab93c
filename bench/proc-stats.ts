/**
 * What the kernel says about processes and sockets (Linux /proc, `ss`), for the benches:
 * CPU time, RSS, whole-machine CPU, UDP drops, the fd limit.
 */
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'

/** Clock ticks per second of /proc/PID/stat times. */
export const CLK_TCK = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100
  } catch {
    return 100
  }
})()

export function cpuTicks(pid: number): number {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return Number(f[11]) + Number(f[12]) // utime + stime (fields 14, 15)
  } catch {
    return 0
  }
}

/** The kernel's part of cpuTicks (stime): syscalls and, on the lab's veth links, the packet's whole way through the namespaces' NATs to the receiving socket. */
export function kernelTicks(pid: number): number {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[12]) // stime (field 15)
  } catch {
    return 0
  }
}

export function rssBytes(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))
    return m ? Number(m[1]) * 1024 : 0
  } catch {
    return 0
  }
}

/** CPU use of some processes between start() and the returned function's call, in % of one core. */
export function cpuMeter(pids: () => number[]): () => { pct: number; seconds: number } {
  const t0 = performance.now()
  const c0 = pids().reduce((s, p) => s + cpuTicks(p), 0)
  return () => {
    const seconds = pids().reduce((s, p) => s + cpuTicks(p), 0) / CLK_TCK - c0 / CLK_TCK
    return { pct: (100 * seconds) / ((performance.now() - t0) / 1000), seconds }
  }
}

/**
 * Time the process's main thread spent runnable but waiting for a CPU (ms, cumulative):
 * /proc/PID/schedstat's second field. Grows when other work shares its core.
 */
export function runqueueWaitMs(pid: number): number {
  try {
    return Number(fs.readFileSync(`/proc/${pid}/schedstat`, 'utf8').split(' ')[1]) / 1e6
  } catch {
    return NaN
  }
}

/**
 * UDP datagrams the kernel dropped (receive queue full): at the server's socket (`ss`,
 * filtered in the kernel: /proc/net/udp takes seconds to read at 100k sockets), and in
 * this network namespace (/proc/net/snmp InErrors), so `all - server` were dropped at
 * the load generator's sockets (or by another process on this machine).
 */
export function udpDrops(port: number): { server: number; all: number } {
  const snmp = fs.readFileSync('/proc/net/snmp', 'utf8').split('\n').filter((l) => l.startsWith('Udp:'))
  const names = snmp[0]?.split(/\s+/) ?? []
  const all = Number(snmp[1]?.split(/\s+/)[names.indexOf('InErrors')] ?? 0)
  let server = NaN // unknown without ss
  try {
    const out = execFileSync('ss', ['-u', '-a', '-n', '-m', `src 127.0.0.1:${port}`], { encoding: 'utf8', timeout: 30_000 })
    server = Number(/\bd(\d+)\)/.exec(out)?.[1] ?? NaN)
  } catch (err) {
    process.stderr.write(`ss failed: ${(err as Error).message}\n`)
  }
  return { server, all }
}

/**
 * Whole-machine CPU (all cores, /proc/stat) between the call and the returned function's
 * call, in % of one core: `busy` is everything but idle and iowait; `irq` the (soft)irq
 * part, which no process is billed for (here mostly loopback packet delivery).
 */
export function machineMeter(): () => { busyPct: number; irqPct: number } {
  const read = (): { busy: number; irq: number } => {
    const f = (/^cpu\s+(.*)$/m.exec(fs.readFileSync('/proc/stat', 'utf8'))?.[1] ?? '').split(/\s+/).map(Number)
    const [user = 0, nice = 0, system = 0, , , irq = 0, softirq = 0, steal = 0] = f
    return { busy: user + nice + system + irq + softirq + steal, irq: irq + softirq }
  }
  const t0 = performance.now()
  const a = read()
  return () => {
    const b = read()
    const s = (performance.now() - t0) / 1000
    return { busyPct: (100 * (b.busy - a.busy)) / CLK_TCK / s, irqPct: (100 * (b.irq - a.irq)) / CLK_TCK / s }
  }
}

/** Soft and hard RLIMIT_NOFILE of this process. */
export function nofile(): { soft: number; hard: number } {
  const m = /Max open files\s+(\S+)\s+(\S+)/.exec(fs.readFileSync('/proc/self/limits', 'utf8'))
  const n = (s: string | undefined): number => (s === 'unlimited' ? Number.MAX_SAFE_INTEGER : Number(s))
  return { soft: n(m?.[1]), hard: n(m?.[2]) }
}
