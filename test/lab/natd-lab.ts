/**
 * natd on the NAT lab: start natd-rendezvous on the server host and agents on lab hosts
 * (the built binaries in dist/, as a user runs them), and drive them with natctl --json.
 * Every process is spawned through the lab, so teardown kills it even when a test fails.
 */
import { execFile, execFileSync, type ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
// A real file name (.ts): scripts/demo.ts and bench/run.ts load this with Node's type stripping.
import { createLab, type Lab, type LabSpec, type NatKind, type Unsolicited } from './lab.ts'
import { AgentLog } from './agent-log.ts'
import { LoopLag, nodeReport, procSnapshot, reportOptions } from './diagnose.ts'

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')
export const DIST = path.join(ROOT, 'dist')
export const SERVER_PORT = 3478
/**
 * How long a started server or agent may take to listen. A Node start costs 3–4 s of CPU
 * on a loaded 2-core machine, and a CI run (lab files in parallel) saw an agent take over
 * 10 s: a start that is slow is not a failure of what the test checks.
 */
const START_TIMEOUT_MS = 30_000

export function assertBuilt(): void {
  if (!fs.existsSync(path.join(DIST, 'daemon/main.js'))) throw new Error('dist/ is missing: run `npm run build` first (npm test does)')
}

export interface AgentHandle {
  name: string
  host: string
  ns: string
  stateDir: string
  socket: string
  logFile: string
  proc: ChildProcess
  args: string[]
  env: Record<string, string>
}

export interface NatctlResult {
  code: number
  stdout: string
  stderr: string
  json: unknown
}

/**
 * Where agents' API sockets go: tmpfs, as in use (/run/natd, $XDG_RUNTIME_DIR). natctl
 * creates its uid-proof file next to the socket; on the CI machine's disk, whose fsyncs
 * stalled for 29 s while other jobs wrote (issue 17), that create could wait as long.
 */
const RUN_ROOT = fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir()

export class NatdLab {
  readonly dir = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-lab-'))
  /** Agents' API sockets and natctl's proof files (RUN_ROOT). */
  readonly runDir = fs.mkdtempSync(path.join(RUN_ROOT, 'natd-lab-run-'))
  server: ChildProcess | null = null
  serverArgs: string[] = []
  readonly agents: Record<string, AgentHandle> = {}
  /** Extra environment for every natctl run (NATCTL_DEBUG=1: its step trace in stderr, which a failed status() shows). */
  readonly natctlEnv: Record<string, string> = {}

  readonly lab: Lab
  /** The processes' logs by file, written off the test process's thread (agent-log.ts); a restarted agent appends to its own. */
  private readonly logs = new Map<string, AgentLog>()
  /** How long our own event loop was held (a failed test's diagnosis says). */
  private readonly loopLag = new LoopLag()

  constructor(lab: Lab) {
    this.lab = lab
    assertBuilt()
  }

  /** The log of the process that prints to `file` (one per file). */
  private logFor(file: string): AgentLog {
    let log = this.logs.get(file)
    if (!log) this.logs.set(file, (log = new AgentLog(file)))
    return log
  }

  get serverAddr(): string {
    return `${this.lab.server.ip}:${SERVER_PORT}`
  }

  /**
   * The server's state directory (key pair, name bindings): in the lab's temp dir, never
   * /var/lib, and the same for every start within one lab, so bindings survive a restart.
   */
  get serverStateDir(): string {
    return path.join(this.dir, 'rendezvous-state')
  }

  /** Starts natd-rendezvous on the server host and waits until its UDP port answers. */
  async startServer(extra: string[] = []): Promise<void> {
    this.serverArgs = extra
    const log = this.logFor(path.join(this.dir, 'rendezvous.log'))
    const host = extra.includes('--host') ? [] : ['--host', '0.0.0.0'] // --alt-host needs a specific --host in `extra`
    const state = extra.includes('--state-dir') ? [] : ['--state-dir', this.serverStateDir]
    this.server = this.lab.spawn(this.lab.server.ns, [process.execPath, ...reportOptions(this.dir), path.join(DIST, 'rendezvous/main.js'), ...host, '--port', String(SERVER_PORT), '--log-level', 'debug', ...state, ...extra], { cwd: ROOT })
    this.server.stdout?.on('data', (d: Buffer) => log.write(d))
    this.server.stderr?.on('data', (d: Buffer) => log.write(d))
    await waitFor(async () => (await this.lab.exec(this.lab.server.ns, ['ss', '-Hltn', `sport = :${SERVER_PORT}`])).stdout.includes(String(SERVER_PORT)), START_TIMEOUT_MS, 'rendezvous server listening')
  }

  /** The server's key as `natd-rendezvous --print-key` shows its operator (for `--server host:port#KEY`). */
  serverKey(): string {
    return execFileSync(process.execPath, [path.join(DIST, 'rendezvous/main.js'), '--print-key', '--state-dir', this.serverStateDir], { encoding: 'utf8' }).trim()
  }

  /** `--server` with the server's key pinned, as the README tells users to start agents. */
  get pinnedServer(): string {
    return `${this.serverAddr}#${this.serverKey()}`
  }

  /** Runs `natd-rendezvous names …` against the server's state directory, as its operator would. */
  rendezvousNames(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    return new Promise((resolve) => {
      execFile(process.execPath, [path.join(DIST, 'rendezvous/main.js'), 'names', ...args, '--state-dir', this.serverStateDir], { encoding: 'utf8' }, (err, stdout, stderr) => {
        resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr })
      })
    })
  }

  async killServer(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const proc = this.server
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return
    const exited = new Promise((resolve) => proc.once('exit', resolve))
    proc.kill(signal)
    await exited
    this.server = null
  }

  /**
   * Starts an agent on a lab host. `as` is the agent's name (default: the host's name).
   * `tunnelDead` shortens the dead-peer time (NATD_TEST_TUNNEL_DEAD_MS, read by
   * daemon/main.ts for tests only) so a test need not wait TUNNEL_DEAD_MS.
   */
  async startAgent(host: string, opts: { as?: string; heartbeat?: string; extra?: string[]; stateDir?: string; tunnelDeadMs?: number; env?: Record<string, string>; server?: string } = {}): Promise<AgentHandle> {
    const h = this.lab.hosts[host]
    if (!h) throw new Error(`no lab host ${host}`)
    const name = opts.as ?? host
    const key = this.agents[name] && this.agents[name].host !== host ? `${name}@${host}` : name
    const stateDir = opts.stateDir ?? path.join(this.dir, `${key}-state`)
    const socket = path.join(this.runDir, `${key}.sock`)
    const logFile = path.join(this.dir, `${key}.log`)
    const args = ['--name', name, '--server', opts.server ?? this.serverAddr, '--state-dir', stateDir, '--socket', socket, '--heartbeat', opts.heartbeat ?? '2s', '--log-level', 'debug', ...(opts.extra ?? [])]
    const log = this.logFor(logFile)
    const env: Record<string, string> = { ...opts.env, ...(opts.tunnelDeadMs === undefined ? {} : { NATD_TEST_TUNNEL_DEAD_MS: String(opts.tunnelDeadMs) }) }
    const proc = this.lab.spawn(h.ns, [process.execPath, ...reportOptions(this.dir), path.join(DIST, 'daemon/main.js'), ...args], { cwd: ROOT, env: { ...process.env, ...env } })
    proc.stdout?.on('data', (d: Buffer) => log.write(d))
    proc.stderr?.on('data', (d: Buffer) => log.write(d))
    const agent: AgentHandle = { name, host, ns: h.ns, stateDir, socket, logFile, proc, args, env }
    this.agents[key] = agent
    await waitFor(() => fs.existsSync(socket) || proc.exitCode !== null, START_TIMEOUT_MS, `${key} API socket`)
    if (proc.exitCode !== null) throw new Error(`natd ${key} exited ${proc.exitCode}: ${log.text()}`)
    return agent
  }

  async stopAgent(key: string, signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    const a = this.agents[key]
    if (!a || a.proc.exitCode !== null || a.proc.signalCode !== null) return a?.proc.exitCode ?? null
    const exited = new Promise<number | null>((resolve) => a.proc.once('exit', (code) => resolve(code)))
    a.proc.kill(signal)
    return exited
  }

  /** Restarts an agent with the same state dir and socket, without flags (they were persisted). */
  async restartAgent(key: string): Promise<AgentHandle> {
    const a = this.agents[key]
    if (!a) throw new Error(`no agent ${key}`)
    await this.stopAgent(key)
    const dead = a.env.NATD_TEST_TUNNEL_DEAD_MS
    return this.startAgent(a.host, { as: a.name, stateDir: a.stateDir, extra: [], heartbeat: a.args[a.args.indexOf('--heartbeat') + 1]!, ...(dead ? { tunnelDeadMs: Number(dead) } : {}) })
  }

  /** Runs natctl against an agent's socket (natctl needs no namespace: the socket is a file). */
  natctl(key: string, args: string[], opts: { timeoutMs?: number; json?: boolean } = {}): Promise<NatctlResult> {
    const a = this.agents[key]
    const socket = a ? a.socket : path.join(this.runDir, `${key}.sock`)
    // natctl runs with report options too: one that never reaches natd's socket (issue 17:
    // empty stderr although traced, nothing logged by natd) is looked at before it is killed.
    const argv = [...reportOptions(this.runDir), path.join(DIST, 'cli/main.js'), '--socket', socket, ...(opts.json === false ? [] : ['--json']), ...args]
    const timeoutMs = opts.timeoutMs ?? 30_000
    return new Promise((resolve) => {
      let timedOut = false
      let seen: Promise<string> = Promise.resolve('')
      const child = execFile(process.execPath, argv, { maxBuffer: 64 * 1024 * 1024, env: { ...process.env, ...this.natctlEnv } }, (err, stdout, stderr) => {
        clearTimeout(timer)
        void seen.then((where) => {
          const code = timedOut ? 124 : err ? (typeof err.code === 'number' ? err.code : 124) : 0
          if (where) stderr += `\n----- natctl ${args.join(' ')}: no answer in ${timeoutMs} ms; where it waited -----\n${where}\n`
          finish(code, stdout, stderr)
        })
      })
      const timer = setTimeout(() => {
        timedOut = true
        const pid = child.pid
        // /proc first: the report's signal ends a natctl that has not yet set up Node's handler.
        const snapshot = pid === undefined ? '' : procSnapshot(pid)
        seen = pid === undefined ? Promise.resolve('') : nodeReport(pid, this.runDir, 2000).then((r) => `${snapshot}\n${r}`, (e: unknown) => `${snapshot}\n${String(e)}`)
        void seen.finally(() => child.kill('SIGTERM'))
      }, timeoutMs)
      const finish = (code: number, stdout: string, stderr: string): void => {
        let json: unknown = null
        try {
          json = JSON.parse(stdout)
        } catch {
          // not JSON (human output or error)
        }
        resolve({ code, stdout, stderr, json })
      }
    })
  }

  async status(key: string): Promise<Record<string, unknown>> {
    const r = await this.natctl(key, ['status'])
    if (r.code !== 0) throw new Error(`natctl status for ${key} failed (${r.code}): ${r.stderr}`)
    return r.json as Record<string, unknown>
  }

  /** The code of the last error `key`'s agent reports in its status (null when none). */
  async lastErrorCode(key: string): Promise<string | null> {
    return ((await this.status(key)).lastError as { code?: string } | null)?.code ?? null
  }

  async peers(key: string): Promise<Array<Record<string, unknown>>> {
    const r = await this.natctl(key, ['peers'])
    if (r.code !== 0) throw new Error(`natctl peers for ${key} failed (${r.code}): ${r.stderr}`)
    return r.json as Array<Record<string, unknown>>
  }

  async waitRegistered(key: string, timeoutMs = 15_000): Promise<Record<string, unknown>> {
    let last: Record<string, unknown> = {}
    await waitFor(async () => {
      last = await this.status(key)
      return last.registered === true
    }, timeoutMs, `${key} registered`)
    return last
  }

  /** Runs a TCP echo server on a host (test/lab/fixtures/echo-server.ts). */
  async startEcho(host: string, port: number): Promise<void> {
    const h = this.lab.hosts[host]!
    const p = this.lab.spawn(h.ns, [process.execPath, path.join(ROOT, 'test/lab/fixtures/echo-server.ts'), String(port)])
    await new Promise<void>((resolve, reject) => {
      p.stdout?.once('data', () => resolve())
      p.once('exit', (code) => reject(new Error(`echo server exited ${code}`)))
    })
  }

  /** Sends `bytes` on each of `conns` connections to 127.0.0.1:port on `host` and checks each gets its own bytes back. */
  async echo(host: string, port: number, bytes: number, conns = 1, timeoutMs = 120_000): Promise<{ ok: boolean; ms: number; conns: number; results: unknown[] }> {
    const h = this.lab.hosts[host]!
    const r = await this.lab.exec(h.ns, [process.execPath, path.join(ROOT, 'test/lab/fixtures/echo-client.ts'), String(port), String(bytes), String(conns)], { timeoutMs })
    if (r.code !== 0) throw new Error(`echo client failed (${r.code}): ${r.stderr}`)
    return JSON.parse(r.stdout) as { ok: boolean; ms: number; conns: number; results: unknown[] }
  }

  /** What the server (`rendezvous`) or an agent has printed so far. */
  log(key: string): string {
    const file = key === 'rendezvous' ? path.join(this.dir, 'rendezvous.log') : this.agents[key]?.logFile
    if (!file) return ''
    return this.logs.get(file)?.text() ?? (fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '')
  }

  /**
   * Where each live agent and the server wait, read while they still run (diagnose.ts):
   * a test that fails because a process stopped answering then shows where it was stuck.
   */
  async diagnose(): Promise<string> {
    const procs = [...(this.server ? [['rendezvous', this.server] as const] : []), ...Object.entries(this.agents).map(([k, a]) => [k, a.proc] as const)]
    const live = procs.filter(([, p]) => p.pid !== undefined && p.exitCode === null && p.signalCode === null)
    // /proc first, all at once: a report's signal may wake a process out of the call it was in.
    const snaps = live.map(([k, p]) => `${k}: ${procSnapshot(p.pid!)}`)
    const reports = await Promise.all(live.map(async ([k, p]) => `${k}: ${await nodeReport(p.pid!, this.dir)}`))
    return [this.loopLag.summary(), ...live.map((_, i) => `${snaps[i]}\n${reports[i]}`)].join('\n')
  }

  /** Prints where every process waits and its logs (for a failed test) and removes the temp dir. */
  async teardown(failed: boolean): Promise<void> {
    if (failed) process.stderr.write(`\n----- where each process waits (test/lab/diagnose.ts) -----\n${await this.diagnose().catch((err: unknown) => String(err))}\n`)
    this.loopLag.stop()
    if (failed || process.env.NATD_LAB_KEEP_LOGS) {
      for (const f of fs.readdirSync(this.dir).filter((f) => f.endsWith('.log'))) {
        const text = this.logs.get(path.join(this.dir, f))?.text() ?? fs.readFileSync(path.join(this.dir, f), 'utf8')
        process.stderr.write(`\n----- ${f} (last 60 lines) -----\n${text.split('\n').slice(-60).join('\n')}\n`)
      }
    }
    await this.lab.teardown()
    await Promise.all([...this.logs.values()].map((l) => l.close()))
    fs.rmSync(this.dir, { recursive: true, force: true })
    fs.rmSync(this.runDir, { recursive: true, force: true })
  }
}

/**
 * The API error code `natctl --json` printed (`{"error": {code, message}}`), undefined
 * when it printed none: tests tell failures apart by it, never by message text.
 */
export function errorCode(r: { json: unknown }): string | undefined {
  return (r.json as { error?: { code?: string } } | null)?.error?.code
}

/** Polls `check` every 100 ms until it is true; throws with `what` after `timeoutMs`. */
export async function waitFor(check: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<number> {
  const start = Date.now()
  let lastErr: unknown = null
  while (Date.now() - start < timeoutMs) {
    try {
      if (await check()) return Date.now() - start
    } catch (err) {
      lastErr = err
    }
    await sleep(100)
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastErr ? ` (last error: ${(lastErr as Error).message})` : ''}`)
}

/** Builds a lab, runs `fn`, and tears everything down (printing the logs when `fn` threw). */
export async function withLab(spec: LabSpec, fn: (n: NatdLab) => Promise<void>): Promise<void> {
  const n = new NatdLab(await createLab(spec))
  let failed = true
  try {
    await fn(n)
    failed = false
  } finally {
    await n.teardown(failed)
  }
}

/** alice and bob, each behind its own router of the given kinds. */
export function pair(a: NatKind, b: NatKind, unsolicited: Unsolicited = 'drop'): LabSpec {
  return { sites: [{ name: 'alice', nat: a, unsolicited }, { name: 'bob', nat: b, unsolicited }] }
}

/** The server, then alice and bob, both registered. */
export async function startPair(n: NatdLab, opts: { serverArgs?: string[]; heartbeat?: string; tunnelDeadMs?: number } = {}): Promise<void> {
  await n.startServer(opts.serverArgs ?? [])
  const agent = { ...(opts.heartbeat ? { heartbeat: opts.heartbeat } : {}), ...(opts.tunnelDeadMs ? { tunnelDeadMs: opts.tunnelDeadMs } : {}) }
  await n.startAgent('alice', agent)
  await n.startAgent('bob', agent)
  await n.waitRegistered('alice')
  await n.waitRegistered('bob')
}
