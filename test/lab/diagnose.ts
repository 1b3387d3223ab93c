/**
 * What a lab process is doing, read from outside while it still runs: for a test that
 * fails because an agent stopped answering (no log line, natctl timing out), so the
 * failure shows where it waits instead of leaving a guess.
 *
 * - From /proc (works even when the process's main thread is stuck in a system call, which
 *   a Node report cannot): each thread's state, kernel wait channel, the system call it is
 *   in with the file behind its fd (a pipe, a file, a socket), and its kernel stack.
 * - From Node's own report (agents run with --report-on-signal): the JS stack and libuv
 *   handles, which only come when the event loop turns — so a report that does not come
 *   is itself the answer "the event loop is blocked".
 * - The test process's own event loop (LoopLag): a natctl call that went unanswered 30 s
 *   with nothing logged on either side (issue 17) may be the test process held, not natd.
 */
import fs from 'node:fs'
import path from 'node:path'
import { monitorEventLoopDelay, performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'

/** Node options that let diagnose() ask an agent for a report (written to `dir`). */
export function reportOptions(dir: string): string[] {
  // --report-exclude-network: without it the report looks up each socket's peer name in
  // DNS from the main thread, which inside a lab namespace (no resolver) blocks for seconds.
  return ['--report-on-signal', '--report-signal=SIGUSR2', `--report-directory=${dir}`, '--report-compact', '--report-exclude-network']
}

// The x86_64 system calls a stalled agent is most likely in; others print as their number.
const SYSCALLS_X64: Record<number, string> = {
  0: 'read', 1: 'write', 2: 'open', 3: 'close', 7: 'poll', 17: 'pread64', 18: 'pwrite64', 20: 'writev',
  42: 'connect', 43: 'accept', 44: 'sendto', 45: 'recvfrom', 46: 'sendmsg', 47: 'recvmsg', 61: 'wait4',
  74: 'fsync', 75: 'fdatasync', 82: 'rename', 202: 'futex', 232: 'epoll_wait', 257: 'openat', 281: 'epoll_pwait',
  288: 'accept4', 441: 'epoll_pwait2'
}
// Calls whose first argument is an fd worth naming.
const FD_CALLS = new Set(['read', 'write', 'close', 'pread64', 'pwrite64', 'writev', 'connect', 'sendto', 'recvfrom', 'sendmsg', 'recvmsg', 'fsync', 'fdatasync'])

function readProc(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8').trim()
  } catch (err) {
    return `(${(err as NodeJS.ErrnoException).code ?? 'unreadable'})`
  }
}

/** `/proc/<pid>/task/<tid>/syscall` made readable: `write(fd 1 → pipe:[123], …)`, or `running`. */
export function describeSyscall(line: string, fdTarget: (fd: number) => string, arch: string = process.arch): string {
  const f = line.trim().split(/\s+/)
  if (f[0] === 'running') return 'running (on a CPU)'
  const nr = Number(f[0])
  if (!Number.isInteger(nr) || nr < 0) return line.trim()
  const name = (arch === 'x64' ? SYSCALLS_X64[nr] : undefined) ?? `syscall ${nr}`
  if (!FD_CALLS.has(name) || f[1] === undefined) return name
  const fd = Number(f[1])
  return `${name}(fd ${fd} → ${fdTarget(fd)})`
}

/** Each thread of `pid`: name, state, wait channel, system call; the main thread's kernel stack. Synchronous, never throws. */
export function procSnapshot(pid: number): string {
  const base = `/proc/${pid}`
  if (!fs.existsSync(base)) return `pid ${pid}: gone`
  const fdTarget = (fd: number): string => {
    try {
      return fs.readlinkSync(`${base}/fd/${fd}`)
    } catch {
      return '?'
    }
  }
  const lines = [`pid ${pid}: ${readProc(`${base}/cmdline`).split('\0').slice(0, 4).join(' ')}`]
  let tids: string[] = []
  try {
    tids = fs.readdirSync(`${base}/task`).sort((a, b) => Number(a) - Number(b))
  } catch {
    /* gone meanwhile */
  }
  for (const tid of tids) {
    const t = `${base}/task/${tid}`
    const state = /^State:\s+(.*)$/m.exec(readProc(`${t}/status`))?.[1] ?? '?'
    lines.push(`  thread ${tid} ${readProc(`${t}/comm`)}: ${state}, wchan ${readProc(`${t}/wchan`) || '-'}, in ${describeSyscall(readProc(`${t}/syscall`), fdTarget)}`)
  }
  lines.push(`  main thread kernel stack:\n${readProc(`${base}/stack`).replace(/^/gm, '    ')}`)
  return lines.join('\n')
}

/**
 * Asks `pid` for a Node report (SIGUSR2, see reportOptions) and waits up to `waitMs`
 * for it in `dir`: the JS stack and the libuv handles, or a line saying none came.
 */
export async function nodeReport(pid: number, dir: string, waitMs = 3000): Promise<string> {
  const mine = (): string[] => fs.readdirSync(dir).filter((f) => f.startsWith('report.') && f.includes(`.${pid}.`) && f.endsWith('.json'))
  const before = new Set(mine())
  try {
    process.kill(pid, 'SIGUSR2')
  } catch {
    return `pid ${pid}: gone, no report`
  }
  const start = Date.now()
  let unreadable: unknown = null
  while (Date.now() - start < waitMs) {
    const file = mine().find((f) => !before.has(f))
    if (file) {
      try {
        return summarizeReport(JSON.parse(fs.readFileSync(path.join(dir, file), 'utf8')) as NodeReport)
      } catch (err) {
        unreadable = err // still being written, or not JSON
      }
    }
    await sleep(100)
  }
  if (unreadable) return `pid ${pid}: its Node report came (the event loop turns) but cannot be read: ${(unreadable as Error).message}`
  return `pid ${pid}: no Node report within ${waitMs} ms — its event loop is not turning (blocked in the call above)`
}

interface NodeReport {
  javascriptStack?: { message?: string; stack?: string[] }
  libuv?: Array<{ type: string; is_active?: boolean; address?: string; localEndpoint?: unknown; remoteEndpoint?: unknown; filename?: string }>
  header?: { processId?: number }
}

function summarizeReport(r: NodeReport): string {
  const stack = (r.javascriptStack?.stack ?? []).slice(0, 12).map((l) => `    ${l.trim()}`)
  const active = (r.libuv ?? []).filter((h) => h.is_active)
  const counts = new Map<string, number>()
  for (const h of active) counts.set(h.type, (counts.get(h.type) ?? 0) + 1)
  return [
    `pid ${r.header?.processId ?? '?'}: Node report (the event loop turns)`,
    `  JS stack: ${r.javascriptStack?.message ?? ''}`,
    ...stack,
    `  active libuv handles: ${[...counts].map(([t, n]) => `${t} ×${n}`).join(', ') || 'none'}`
  ].join('\n')
}

/** LoopLag samples the test process's event loop this often. */
export const LOOP_LAG_SAMPLE_MS = 100

/**
 * How long the test process's own event loop was held since a lab started: Node's
 * delay histogram (perf_hooks monitorEventLoopDelay), and the longest gap between two
 * LOOP_LAG_SAMPLE_MS ticks with the time it ended, to set beside the agents' log times.
 */
export class LoopLag {
  private readonly histogram = monitorEventLoopDelay({ resolution: 20 })
  private readonly started = Date.now()
  private last = performance.now()
  private worst = { ms: 0, endedAt: 0 }
  private readonly timer: NodeJS.Timeout

  constructor() {
    this.histogram.enable()
    this.timer = setInterval(() => this.onTick(), LOOP_LAG_SAMPLE_MS).unref()
  }

  private onTick(): void {
    const now = performance.now()
    const held = now - this.last - LOOP_LAG_SAMPLE_MS
    this.last = now
    if (held > this.worst.ms) this.worst = { ms: held, endedAt: Date.now() }
  }

  /** One line for a failed test's diagnosis. */
  summary(): string {
    this.onTick() // a hold still going on counts too
    return describeLoopLag({ worstMs: this.worst.ms, worstEndedAt: this.worst.endedAt, maxMs: this.histogram.max / 1e6, p99Ms: this.histogram.percentile(99) / 1e6, sinceMs: Date.now() - this.started })
  }

  stop(): void {
    clearInterval(this.timer)
    this.histogram.disable()
  }
}

export function describeLoopLag(l: { worstMs: number; worstEndedAt: number; maxMs: number; p99Ms: number; sinceMs: number }): string {
  const worst = l.worstMs >= 1 ? `longest hold ${Math.round(l.worstMs)} ms, ended ${new Date(l.worstEndedAt).toISOString()}` : 'never held'
  return `test process (pid ${process.pid}) event loop over the last ${(l.sinceMs / 1000).toFixed(1)} s: ${worst}; delay max ${Math.round(l.maxMs)} ms, p99 ${Math.round(l.p99Ms)} ms`
}
