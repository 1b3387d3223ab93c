// Shared helpers for the unit tests: a seeded PRNG (fuzz failures reproduce), hex
// helpers, a fake clock, a fuzz driver that checks decoders throw only ProtocolError, and
// a free TCP port.
import { createHash } from 'node:crypto'
import { EventEmitter } from 'node:events'
import fs from 'node:fs'
import type { StatusResult } from '../../src/ipc/schema.js'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import type { Readable } from 'node:stream'
import { afterEach, expect } from 'vitest'
import { NatdError, ProtocolError } from '../../src/protocol/errors.js'
import { clockSleep, type Timer, type TimerClock } from '../../src/protocol/clock.js'
import type { LogFields, Logger } from '../../src/protocol/log.js'
import type { Mux } from '../../src/tunnel/mux.js'
import type { Tunnel } from '../../src/tunnel/tunnel.js'

/** mulberry32: small, fast, seeded; the fuzz tests print their seed on failure. */
export function prng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

export function randInt(rand: () => number, min: number, max: number): number {
  return min + Math.floor(rand() * (max - min + 1))
}

export function randBuf(rand: () => number, n: number): Buffer {
  const b = Buffer.alloc(n)
  for (let i = 0; i < n; i++) b[i] = Math.floor(rand() * 256)
  return b
}

/** Hex with whitespace and `|` separators allowed, so golden frames can be laid out by field. */
export function hex(text: string): Buffer {
  const clean = text.replace(/[\s|]/g, '')
  if (!/^([0-9a-f]{2})*$/i.test(clean)) throw new Error(`bad hex: ${text}`)
  return Buffer.from(clean, 'hex')
}

export function seq(from: number, n: number): Buffer {
  return Buffer.from(Array.from({ length: n }, (_, i) => (from + i) & 0xff))
}

interface FakeTimer {
  at: number
  every: number | null
  fn: () => void
  unref(): FakeTimer
}

/**
 * A clock that moves only when told: advance() runs the timers that fall due, in time
 * order (a timer set by a timer runs too when it is due); pass() also lets promises
 * settle between them, for async code.
 */
export class FakeClock implements TimerClock {
  private readonly timers = new Set<FakeTimer>()
  constructor(public t = 1_700_000_000_000) {}
  now(): number {
    return this.t
  }
  hrNow(): number {
    return this.t
  }
  setTimeout(fn: () => void, ms: number): FakeTimer {
    return this.add(fn, ms, null)
  }
  setInterval(fn: () => void, ms: number): FakeTimer {
    return this.add(fn, ms, Math.max(1, ms))
  }
  clear(timer: Timer | null | undefined): void {
    if (timer) this.timers.delete(timer as FakeTimer)
  }
  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    return clockSleep(this, ms, signal)
  }
  /** Timers not yet run (intervals count once). */
  get pending(): number {
    return this.timers.size
  }
  private add(fn: () => void, ms: number, every: number | null): FakeTimer {
    const timer: FakeTimer = { at: this.t + Math.max(0, ms), every, fn, unref: () => timer }
    this.timers.add(timer)
    return timer
  }
  private next(until: number): FakeTimer | null {
    let first: FakeTimer | null = null
    for (const x of this.timers) if (x.at <= until && (!first || x.at < first.at)) first = x
    return first
  }
  /** Moves time on by `ms`, running each timer as it falls due (synchronously). */
  advance(ms: number): void {
    const until = this.t + ms
    for (let x = this.next(until); x; x = this.next(until)) this.fire(x)
    this.t = until
  }
  /** Like advance(), but lets pending promises settle after each timer (async loops move on). */
  async pass(ms: number): Promise<void> {
    const until = this.t + ms
    await settle()
    for (let x = this.next(until); x; x = this.next(until)) {
      this.fire(x)
      await settle()
    }
    this.t = until
    await settle()
  }
  private fire(x: FakeTimer): void {
    this.t = Math.max(this.t, x.at)
    if (x.every === null) this.timers.delete(x)
    else x.at += x.every
    x.fn()
  }
}

/** Lets the promise jobs queued so far (and those they queue, a few levels deep) run. */
async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await Promise.resolve()
  await new Promise((resolve) => setImmediate(resolve))
}

export interface FuzzEscape {
  input: string
  error: string
}

/** Runs `decode` on every input; returns the inputs that threw anything but a ProtocolError. */
export function fuzzEscapes(inputs: Iterable<Uint8Array>, decode: (b: Uint8Array) => unknown): FuzzEscape[] {
  const escapes: FuzzEscape[] = []
  for (const input of inputs) {
    try {
      decode(input)
    } catch (err) {
      if (err instanceof ProtocolError) continue
      escapes.push({ input: Buffer.from(input).toString('hex'), error: err instanceof Error ? `${err.name}: ${err.message}` : String(err) })
    }
  }
  return escapes
}

/**
 * The `code` of the error `fn` throws, checking it is a `kind` (NatdError by default,
 * ProtocolError for decoders); undefined when nothing is thrown, so
 * `expect(errorCode(...)).toBe(code)` fails then too.
 */
export function errorCode(fn: () => unknown, kind: typeof NatdError = NatdError): string | undefined {
  try {
    fn()
  } catch (err) {
    expect(err).toBeInstanceOf(kind)
    return (err as NatdError).code
  }
  return undefined
}

/** A TCP port on 127.0.0.1 that was free a moment ago. */
/**
 * A TCP port free on 127.0.0.1 now, for a process that binds it later. Taken below Linux's
 * ephemeral range (32768+): a port the kernel handed out for `listen(0)` is as likely to be
 * given next to an outgoing connection of another test running in parallel, which then
 * holds it when our process binds (seen in CI as a forward that never listened).
 */
const handedOut = new Set<number>()
export async function freePort(): Promise<number> {
  for (let i = 0; i < 100; i++) {
    const port = 20_000 + Math.floor(Math.random() * 12_000)
    if (handedOut.has(port) || !(await bindable(port))) continue
    handedOut.add(port) // never the same port twice to one test file
    return port
  }
  throw new Error('no free TCP port in 20000-31999 after 100 tries')
}

function bindable(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer()
    s.once('error', () => resolve(false))
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)))
  })
}

export function sha256hex(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex')
}

/** Reads a stream to its end; resolves with the sha256 and length of what arrived. */
export function readAll(stream: Readable): Promise<{ sha256: string; bytes: number }> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256')
    let bytes = 0
    stream.on('data', (d: Buffer) => {
      h.update(d)
      bytes += d.length
    })
    stream.once('end', () => resolve({ sha256: h.digest('hex'), bytes }))
    stream.once('error', reject)
    stream.resume() // also after an explicit pause()
  })
}

/** A status result as a registered agent returns it (API tests stub natd with it); override what a test needs. */
export function fakeStatus(overrides: Partial<StatusResult> = {}): StatusResult {
  return {
    version: '0.0.0-test',
    name: 'alice',
    id: 'a'.repeat(52),
    server: 'rv.example:3478',
    serverKey: { id: 'd'.repeat(52), pinned: 'flag' },
    serverState: 'registered',
    registered: true,
    lastError: null,
    lastHeartbeatAgoMs: 1_000,
    serverRttMs: 12,
    publicUdp: '203.0.113.1:41641',
    publicTcp: null,
    publicUdp6: null,
    localUdpPort: 41641,
    lan: ['192.168.1.2:41641'],
    nat: 'easy',
    firstProbeTtl: 2,
    uptimeMs: 5_000,
    tunnels: 0,
    portMapping: { state: 'none', gateway: '192.168.1.1', via: null, udp: null, tcp: null, expiresInMs: null, retryInMs: null, reason: 'the gateway 192.168.1.1 answers none of PCP, NAT-PMP and UPnP' },
    stateWarnings: [],
    ...overrides
  }
}

/** Temp directories for a test file: the function returned makes one; all go after each test. */
export function tempDirs(prefix: string): () => string {
  const dirs: string[] = []
  afterEach(() => {
    // maxRetries: a state log may still be appending behind (ENOTEMPTY while it lands)
    for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true, maxRetries: 5, retryDelay: 20 })
  })
  return () => {
    const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
    dirs.push(d)
    return d
  }
}

/** A tunnel as the daemon's parts read it (messages, files): its peer, path and mux, up and never migrating. */
export function upTunnel(peer: { name: string; id: string }, mux: Mux): Tunnel {
  return Object.assign(new EventEmitter(), { peer, path: 'direct-udp', mux, isMigrating: false }) as unknown as Tunnel
}

/** Tracks a promise without leaving a rejection unhandled: its result or error once settled. */
export function track<T>(p: Promise<T>): { result: T | null; error: unknown; settled: () => boolean } {
  const t = { result: null as T | null, error: undefined as unknown, settled: () => t.result !== null || t.error !== undefined }
  p.then(
    (r) => (t.result = r),
    (e: unknown) => (t.error = e)
  )
  return t
}

/** A logger that keeps its lines (level, message, fields), for tests of what the log says; its children log into the same lines. */
export function recordingLog(): { log: Logger; lines: Array<{ level: string; msg: string; fields: LogFields }> } {
  const lines: Array<{ level: string; msg: string; fields: LogFields }> = []
  const at = (level: string) => (msg: string, fields: LogFields = {}): void => {
    lines.push({ level, msg, fields })
  }
  const log: Logger = { error: at('error'), warn: at('warn'), info: at('info'), debug: at('debug'), child: () => log }
  return { log, lines }
}
