/*
 * The NAT lab's link emulator: delay, jitter, loss and reordering on a link, in both
 * directions, from a small C program (test/lab/linkem/linkem.c) that bridges two veth
 * ends in a namespace of its own and holds every frame for its delay:
 *
 *   router wan ⇄ a [ $id-lN: linkem ] b ⇄ wN inet
 *
 * This kernel has no netem (nor fq) qdisc. The program is compiled with gcc on first
 * use (once per source version, cached in node_modules/.cache). Measured on the 2 shared cores
 * (load ~7): 220 MB/s of iperf3 TCP with no delay, ~31 MB/s steady TCP at 100 ms RTT
 * (the TCP window's limit, not the emulator's: it forwarded every frame, none queued
 * past its time); ping's RTT = the configured one + 0.1–0.5 ms.
 */
import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import type { ChildProcess } from 'node:child_process'

export interface LinkSpec {
  /** One-way delay added in each direction, ms. Two sites with links of d1 and d2 are 2 × (d1 + d2) apart. */
  delayMs: number
  /** Each frame's delay is drawn in delayMs ± jitterMs (uniform), never before the frame ahead of it. */
  jitterMs?: number
  /** Probability (0–100) that a frame is lost, drawn per frame and per direction. */
  lossPercent?: number
  /** Probability (0–100) that a frame waits 2 ms more than its delay, so later frames overtake it. */
  reorderPercent?: number
}

export interface LinkDirStats {
  rx: number
  tx: number
  lost: number
  reordered: number
  /** Frames dropped because the direction already held its limit (linkem's queue argument). */
  overflow: number
  sendErrors: number
  queued: number
}
/** `up` is from the site (or the server) towards the internet, `down` the other way. */
export interface LinkStats {
  up: LinkDirStats
  down: LinkDirStats
}

const HERE = path.dirname(fileURLToPath(import.meta.url))
const SOURCE = path.join(HERE, 'linkem/linkem.c')
const ROOT = path.resolve(HERE, '../..')
// How long linkem may take to bind its sockets and say "ready".
const READY_TIMEOUT_MS = 10_000
const STATS_TIMEOUT_MS = 5_000

let binary: Promise<string> | undefined
/**
 * gcc's output for the current linkem.c, built once per source version. It runs as root,
 * so it lives in the repo's node_modules/.cache (not a world-writable temp dir where
 * anyone could plant a binary), and a cached file is used only if it is ours and
 * writable by no one else. Built to a private name, then renamed: labs run in parallel.
 */
export function linkemBinary(): Promise<string> {
  binary ??= (async () => {
    const src = fs.readFileSync(SOURCE)
    const dir = path.join(ROOT, 'node_modules/.cache/natd-linkem')
    fs.mkdirSync(dir, { recursive: true, mode: 0o755 })
    const out = path.join(dir, `linkem-${createHash('sha256').update(src).digest('hex').slice(0, 16)}`)
    const st = fs.statSync(out, { throwIfNoEntry: false })
    if (st && st.uid === process.getuid?.() && (st.mode & 0o022) === 0) return out
    const tmp = `${out}.${process.pid}.tmp`
    await new Promise<void>((resolve, reject) => {
      execFile('gcc', ['-O2', '-Wall', '-o', tmp, SOURCE], (err, _stdout, stderr) => (err ? reject(new Error(`gcc linkem.c failed (gcc is in scripts/dev.sh APT_PACKAGES): ${stderr || err.message}`)) : resolve()))
    })
    fs.chmodSync(tmp, 0o755)
    fs.renameSync(tmp, out)
    return out
  })()
  binary.catch(() => (binary = undefined))
  return binary
}

export function validateLink(spec: LinkSpec): void {
  const pct = (x: number | undefined): boolean => x === undefined || (x >= 0 && x <= 100)
  if (!(spec.delayMs >= 0 && spec.delayMs <= 10_000)) throw new Error(`link delayMs must be 0..10000, got ${spec.delayMs}`)
  if (!(spec.jitterMs === undefined || (spec.jitterMs >= 0 && spec.jitterMs <= spec.delayMs))) throw new Error(`link jitterMs must be 0..delayMs, got ${spec.jitterMs}`)
  if (!pct(spec.lossPercent) || !pct(spec.reorderPercent)) throw new Error('link lossPercent and reorderPercent must be 0..100')
}

/** The control line linkem reads: delay and jitter in µs, loss and reorder in parts per million. */
function controlLine(spec: LinkSpec): string {
  const us = (ms: number | undefined): number => Math.round((ms ?? 0) * 1000)
  const ppm = (pct: number | undefined): number => Math.round((pct ?? 0) * 10_000)
  return `set ${us(spec.delayMs)} ${us(spec.jitterMs)} ${ppm(spec.lossPercent)} ${ppm(spec.reorderPercent)}\n`
}

/** One running linkem (spawned by the lab, so teardown kills it by PID). */
export class LinkEmulator {
  readonly proc: ChildProcess
  private spec: LinkSpec
  private readonly lines: string[] = []
  private readonly waiters: Array<(line: string) => void> = []

  private constructor(proc: ChildProcess, spec: LinkSpec) {
    this.proc = proc
    this.spec = spec
    let buf = ''
    proc.stdout?.setEncoding('utf8')
    proc.stdout?.on('data', (d: string) => {
      buf += d
      let i: number
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i)
        buf = buf.slice(i + 1)
        const w = this.waiters.shift()
        if (w) w(line)
        else this.lines.push(line)
      }
    })
    proc.stdin?.on('error', () => undefined) // linkem gone (teardown): nothing to tell it
  }

  /** Waits for `ready`, then applies the spec. `proc` runs `linkem a b` in the link's namespace. */
  static async start(proc: ChildProcess, spec: LinkSpec): Promise<LinkEmulator> {
    validateLink(spec)
    const em = new LinkEmulator(proc, spec)
    let stderr = ''
    proc.stderr?.on('data', (d: Buffer) => (stderr += d.toString()))
    const line = await em.nextLine(READY_TIMEOUT_MS).catch((err: Error) => {
      throw new Error(`linkem did not start: ${err.message} ${stderr}`)
    })
    if (line !== 'ready') throw new Error(`linkem said ${line} ${stderr}`)
    em.set(spec)
    return em
  }

  get pid(): number | undefined {
    return this.proc.pid
  }

  get current(): LinkSpec {
    return { ...this.spec }
  }

  /** Changes the link at once; frames already held keep the delay they were given. */
  set(spec: LinkSpec): void {
    validateLink(spec)
    this.spec = { ...spec }
    this.proc.stdin?.write(controlLine(spec))
  }

  async stats(): Promise<LinkStats> {
    this.proc.stdin?.write('stats\n')
    return JSON.parse(await this.nextLine(STATS_TIMEOUT_MS)) as LinkStats
  }

  private nextLine(timeoutMs: number): Promise<string> {
    const queued = this.lines.shift()
    if (queued !== undefined) return Promise.resolve(queued)
    return new Promise((resolve, reject) => {
      const onExit = (): void => fail(new Error(`linkem exited (${this.proc.exitCode ?? this.proc.signalCode})`))
      const timer = setTimeout(() => fail(new Error(`no answer from linkem in ${timeoutMs} ms`)), timeoutMs)
      const fail = (err: Error): void => {
        const i = this.waiters.indexOf(ok)
        if (i >= 0) this.waiters.splice(i, 1)
        clearTimeout(timer)
        reject(err)
      }
      const ok = (line: string): void => {
        clearTimeout(timer)
        this.proc.off('exit', onExit)
        resolve(line)
      }
      this.waiters.push(ok)
      this.proc.once('exit', onExit)
    })
  }
}
