/**
 * The child processes of bench/rendezvous-capacity.ts: the natd-rendezvous under test
 * (with the probe preloaded) and the load processes (rendezvous-capacity-agents.ts).
 */
import { spawn, type ChildProcess } from 'node:child_process'
import dgram from 'node:dgram'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath, pathToFileURL } from 'node:url'
import type { Command, Reply } from './rendezvous-capacity-agents.ts'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
export const SERVER_MAIN = path.join(ROOT, 'dist/rendezvous/main.js')
const AGENTS_MAIN = path.join(ROOT, 'bench/rendezvous-capacity-agents.ts')
const PROBE = path.join(ROOT, 'bench/rendezvous-capacity-probe.ts')

/** Node start-up and the first CHALLENGE; several instances starting at once on a loaded machine took over 10 s. */
const SERVER_READY_TIMEOUT_MS = 30_000
/** A probe answer; a full GC of a few hundred MB of heap takes well under this. */
const PROBE_TIMEOUT_MS = 30_000
/** Grace after SIGTERM (or a stop command) before SIGKILL. */
export const STOP_TIMEOUT_MS = 5_000
/** Writing a CPU profile of a long run takes seconds more. */
const PROFILE_STOP_TIMEOUT_MS = 60_000

/** One load process; call() sends a command and resolves with its reply. */
export class LoadProcess {
  readonly proc: ChildProcess
  private nextId = 1
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>()

  /** `prefix`: wrappers such as `nice -n N`; `nofile`: the RLIMIT_NOFILE to raise the soft limit to, if any. */
  constructor(prefix: string[], nofile: number | null) {
    let argv = [process.execPath, '--disable-warning=ExperimentalWarning', AGENTS_MAIN]
    // `ulimit -n` exists only in a shell; the exec keeps the IPC descriptor.
    if (nofile !== null) argv = ['bash', '-c', `ulimit -n ${nofile} && exec "$0" "$@"`, ...argv]
    argv = [...prefix, ...argv]
    this.proc = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], serialization: 'advanced' })
    this.proc.on('message', (r: Reply) => {
      const p = this.pending.get(r.id)
      if (!p) return
      this.pending.delete(r.id)
      if (r.ok) p.resolve(r.result)
      else p.reject(new Error(`load process: ${r.error}`))
    })
    this.proc.on('exit', (code, signal) => {
      for (const p of this.pending.values()) p.reject(new Error(`load process ${this.proc.pid} exited (${signal ?? code})`))
      this.pending.clear()
    })
  }

  call<T>(cmd: Command, timeoutMs: number): Promise<T> {
    const id = this.nextId++
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id)
        reject(new Error(`load process ${this.proc.pid}: ${cmd.op} took over ${timeoutMs / 1000}s`))
      }, timeoutMs)
      this.pending.set(id, {
        resolve: (v) => {
          clearTimeout(timer)
          resolve(v as T)
        },
        reject: (e) => {
          clearTimeout(timer)
          reject(e)
        }
      })
      this.proc.send({ id, cmd })
    })
  }

  get alive(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null
  }

  /** Asks it to close its sockets and exit; kills it if it does not within STOP_TIMEOUT_MS. */
  async stop(): Promise<void> {
    if (!this.alive) return
    const exited = new Promise((r) => this.proc.once('exit', r))
    await this.call({ op: 'stop' }, STOP_TIMEOUT_MS).catch(() => undefined)
    await Promise.race([exited, sleep(STOP_TIMEOUT_MS, undefined, { ref: false })])
    if (this.alive) this.proc.kill('SIGKILL')
  }
}

export interface ServerStats {
  loopDelayP99Ms: number
  loopDelayMaxMs: number
  gcMaxMs: number
  gcTotalMs: number
  gcCount: number
}

export interface HeapFigures {
  heapUsed: number
  external: number
  rss: number
  /** Where the RSS is, in bytes (see rendezvous-capacity-probe.ts); {} from an older probe. */
  rssParts: Record<string, number>
}

/** The node flags in a script's `#!/usr/bin/env -S node …` line: how natd-rendezvous runs when started as a command. */
export function shebangFlags(script: string): string[] {
  const first = fs.readFileSync(script, 'utf8').split('\n', 1)[0] ?? ''
  const m = /^#!\/usr\/bin\/env -S node((?: \S+)*)$/.exec(first)
  return m ? m[1]!.trim().split(' ').filter(Boolean) : []
}

/**
 * natd-rendezvous as a user runs it (dist/rendezvous/main.js), with the probe preloaded
 * and driven over its stdin: log lines, mark()/stats() around a window, heap() after a
 * full GC, stop(). Closing stdin (our exit, even a crash) makes it exit too.
 */
export class ServerProcess {
  /** Extra node flags for every server started after it is set (the bench's --cpu-prof DIR). */
  static nodeFlags: string[] = []
  readonly proc: ChildProcess
  readonly port: number
  readonly output: string[] = []
  /** Rejects when the server exits before stop(). */
  readonly died: Promise<never>
  private readonly waiters: ((answer: Record<string, unknown>) => void)[] = []
  private stopping = false
  /** Its --state-dir (key pair, names.jsonl): a temp dir, removed by stop(). */
  readonly stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-bench-rendezvous-'))

  /** `prefix`: wrappers such as `nice -n N` and `taskset -c 1`; `args`: natd-rendezvous options. */
  constructor(port: number, prefix: string[], args: string[]) {
    this.port = port
    const node = [process.execPath, ...shebangFlags(SERVER_MAIN), '--expose-gc', ...ServerProcess.nodeFlags, '--disable-warning=ExperimentalWarning', '--import', pathToFileURL(PROBE).href, SERVER_MAIN]
    const argv = [...prefix, ...node, '--host', '127.0.0.1', '--port', String(port), '--state-dir', this.stateDir, ...args]
    this.proc = spawn(argv[0]!, argv.slice(1), { stdio: ['pipe', 'pipe', 'pipe'] })
    for (const stream of [this.proc.stdout!, this.proc.stderr!]) {
      let partial = ''
      stream.setEncoding('utf8')
      stream.on('data', (chunk: string) => {
        const lines = (partial + chunk).split('\n')
        partial = lines.pop()!
        for (const line of lines) this.onLine(line)
      })
    }
    this.proc.stdin!.on('error', () => undefined) // EPIPE once it has exited
    this.died = new Promise<never>((_, reject) =>
      this.proc.once('exit', (code, signal) => {
        if (!this.stopping) reject(new Error(`natd-rendezvous exited (${signal ?? code}): ${this.output.slice(-5).join('\n')}`))
      })
    )
    this.died.catch(() => undefined)
  }

  get pid(): number {
    return this.proc.pid!
  }

  private onLine(line: string): void {
    if (line.startsWith('BENCH ')) this.waiters.shift()?.(JSON.parse(line.slice(6)) as Record<string, unknown>)
    else if (line) this.output.push(line)
  }

  /** Sends a probe command; null when no answer came in PROBE_TIMEOUT_MS. */
  private probe(command: 'mark' | 'stats' | 'heap'): Promise<Record<string, unknown> | null> {
    const answer = new Promise<Record<string, unknown>>((resolve) => this.waiters.push(resolve))
    this.proc.stdin!.write(`${command}\n`)
    return Promise.race([answer, sleep(PROBE_TIMEOUT_MS, null, { ref: false })])
  }

  /** Resolves once the server accepts a TCP connection and sends its CHALLENGE. */
  async ready(): Promise<void> {
    const proto = (await import(path.join(ROOT, 'dist/protocol/rendezvous.js'))) as typeof import('../src/protocol/rendezvous.js')
    const deadline = performance.now() + SERVER_READY_TIMEOUT_MS
    while (performance.now() < deadline) {
      const challenged = await Promise.race([this.challenge(proto), sleep(200).then(() => false), this.died])
      if (challenged) return
      await sleep(100)
    }
    throw new Error('natd-rendezvous did not send a CHALLENGE in time')
  }

  /** One TCP connection: true when the first frame is a CHALLENGE (then it hangs up). */
  private challenge(proto: typeof import('../src/protocol/rendezvous.js')): Promise<boolean> {
    return new Promise((resolve) => {
      const sock = net.connect({ host: '127.0.0.1', port: this.port })
      const splitter = new proto.FrameSplitter()
      const done = (ok: boolean): void => {
        sock.destroy()
        resolve(ok)
      }
      sock.on('error', () => done(false))
      sock.setTimeout(1_000, () => done(false))
      sock.on('data', (chunk: Buffer) => {
        try {
          splitter.add(chunk)
          const f = splitter.next()
          if (f) done(proto.decode(f).type === 'challenge')
        } catch {
          done(false)
        }
      })
    })
  }

  /** Starts counting event-loop delay and GC pauses. */
  async mark(): Promise<void> {
    await this.probe('mark')
  }

  /** Event-loop delay and GC pauses since mark(); NaNs when the probe did not answer. */
  async stats(): Promise<ServerStats> {
    const a = await this.probe('stats')
    const n = (k: string): number => (typeof a?.[k] === 'number' ? (a[k] as number) : NaN)
    return { loopDelayP99Ms: n('loopDelayP99Ms'), loopDelayMaxMs: n('loopDelayMaxMs'), gcMaxMs: n('gcMaxMs'), gcTotalMs: n('gcTotalMs'), gcCount: n('gcCount') }
  }

  /** Heap and RSS right after a full GC; NaNs when the probe did not answer. */
  async heap(): Promise<HeapFigures> {
    const a = await this.probe('heap')
    const n = (k: string): number => (typeof a?.[k] === 'number' ? (a[k] as number) : NaN)
    const parts = typeof a?.rssParts === 'object' && a.rssParts ? (a.rssParts as Record<string, number>) : {}
    return { heapUsed: n('heapUsed'), external: n('external'), rss: n('rss'), rssParts: parts }
  }

  async stop(): Promise<void> {
    this.stopping = true
    if (this.proc.exitCode === null && this.proc.signalCode === null) {
      const exited = new Promise((r) => this.proc.once('exit', r))
      this.proc.kill('SIGTERM')
      // A server that writes a CPU profile on exit needs longer than its usual stop.
      const timeoutMs = ServerProcess.nodeFlags.length ? PROFILE_STOP_TIMEOUT_MS : STOP_TIMEOUT_MS
      if (!(await Promise.race([exited.then(() => true), sleep(timeoutMs, undefined, { ref: false }).then(() => false)]))) this.proc.kill('SIGKILL')
    }
    fs.rmSync(this.stateDir, { recursive: true, force: true })
  }
}

/** A port free for both TCP and UDP on 127.0.0.1. */
export async function freePort(): Promise<number> {
  for (let i = 0; i < 20; i++) {
    const srv = net.createServer()
    const port = await new Promise<number>((resolve) => srv.listen(0, '127.0.0.1', () => resolve((srv.address() as net.AddressInfo).port)))
    await new Promise((r) => srv.close(r))
    const udp = dgram.createSocket('udp4')
    const ok = await new Promise<boolean>((resolve) => {
      udp.once('error', () => resolve(false))
      udp.bind(port, '127.0.0.1', () => resolve(true))
    })
    udp.close()
    if (ok) return port
  }
  throw new Error('no free port on 127.0.0.1')
}
