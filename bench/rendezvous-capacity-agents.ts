/**
 * One load-generator process for bench/rendezvous-capacity.ts: a slice of simulated
 * agents, driven by the controller over the IPC channel (one command, one reply).
 *
 *   controller ──ipc──▶ this process: agents g ≡ worker (mod workers)
 *                         agent g: TCP control connection from 127.A.B.C ──▶ server :port
 *                                  (CHALLENGE, SECURE, Noise XX, REGISTER, REGISTER_ACK)
 *                                  UDP socket on 127.A.B.C (its own address) ──▶ server :port
 *                         agent g % 100 == 0 keeps its control connection; the others reset it
 *
 * Each agent has its own source endpoint because the server keys a registration by the
 * address:port it saw (a heartbeat from anywhere else is answered 'moved'), and a
 * process may hold only RLIMIT_NOFILE sockets, hence several of these processes.
 *
 * An agent does what src/daemon/rendezvous-client.ts does (protocol 2): a control
 * connection, a Noise handshake with the server, a signed REGISTER inside it ->
 * REGISTER_ACK (token, heartbeat key); then a first sealed HEARTBEAT (the server answers
 * 'moved': it learns the UDP mapping) and one per interval at a fixed phase. The 1% of
 * TCP agents keep the control connection and PING with every heartbeat, LIST and
 * INTRODUCE (rendezvous-capacity-control.ts says what that leaves out).
 */
import dgram from 'node:dgram'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'
import sodium from 'sodium-native'
import type { Endpoint } from '../src/protocol/endpoint.js'
import type { Message } from '../src/protocol/rendezvous.js'
import { ControlConnections, hostOf, nameOf, TCP_EVERY, type IntroResult, type ListResult, type RegisterResult } from './rendezvous-capacity-control.ts'

export { TCP_EVERY, type IntroResult, type ListResult, type RegisterResult }

// Project code as built (Node strips types but cannot run src/: it uses parameter
// properties); typed from src/ for the type-checker.
const DIST = new URL('../dist/', import.meta.url)
const proto = (await import(new URL('protocol/rendezvous.js', DIST).href)) as typeof import('../src/protocol/rendezvous.js')
const identity = (await import(new URL('protocol/identity.js', DIST).href)) as typeof import('../src/protocol/identity.js')

/** Like the agent's BACKOFF_FIRST_MS: a failed registration session is retried after this, doubling. */
const BACKOFF_FIRST_MS = 500
/** A real agent never gives up; a simulated one that cannot register in this long counts as failed. */
const REGISTER_GIVE_UP_MS = 15_000
/** A heartbeat ack later than this counts as lost (the agent's request timeout). */
export const ACK_TIMEOUT_MS = 1_000
/** Granularity of the heartbeat schedule and of registration pacing. */
const TICK_MS = 10
/** Sampling period of the event-loop delay histogram (how late this process reads its sockets). */
const LOOP_DELAY_RESOLUTION_MS = 5
/** Golden-ratio phases spread any number of agents evenly over the interval. */
const PHI = 0.6180339887498949

export type Command =
  | { op: 'init'; worker: number; workers: number; capacity: number; server: Endpoint; intervalMs: number }
  | { op: 'register'; total: number; ratePerS: number; maxInFlight: number }
  | { op: 'tcp-open'; total: number }
  | { op: 'window-start' }
  | { op: 'window-end' }
  | { op: 'list'; samples: number }
  | { op: 'intro-burst'; total: number; durationMs: number; depth: number }
  | { op: 'tcp-close' }
  | { op: 'stop' }

export interface WindowResult {
  sent: number
  latenciesMs: Float64Array
  lost: number // no ack within ACK_TIMEOUT_MS
  badStatus: number // acked 'moved' (the server lost our mapping), or an ack whose seal does not open
  pings: number
  pongs: number
  loopDelayP99Ms: number
  loopDelayMaxMs: number
}
export type Reply = { id: number; ok: true; result: unknown } | { id: number; ok: false; error: string }

class Agents {
  private readonly worker: number
  private readonly workers: number
  private readonly server: Endpoint
  private readonly intervalMs: number
  private readonly publicKeys: Buffer
  private readonly secretKeys: Buffer
  // Per local agent l (global index g = l * workers + worker).
  private readonly socks: (dgram.Socket | undefined)[] = []
  private readonly tokens: (Uint8Array | undefined)[] = []
  private readonly udpKeys: (Uint8Array | undefined)[] = []
  private readonly seq: Uint32Array
  private readonly sentAt: Float64Array // 0 = no heartbeat outstanding
  private readonly tagged: Uint8Array // 1 = sent inside the measurement window
  readonly control: ControlConnections
  private registerRetries = 0
  private registered = 0 // local agents [0, registered) have been attempted
  // Heartbeat schedule: a wheel of TICK_MS slots over one interval.
  private readonly wheel: number[][]
  private readonly epoch = performance.now()
  private lastSlot: number
  private readonly ticker: NodeJS.Timeout
  // Measurement window.
  private windowOpen = false
  private win = emptyWindow()
  private readonly loopDelay = monitorEventLoopDelay({ resolution: LOOP_DELAY_RESOLUTION_MS })

  constructor(init: Extract<Command, { op: 'init' }>) {
    this.worker = init.worker
    this.workers = init.workers
    this.server = init.server
    this.intervalMs = init.intervalMs
    // Plain buffers, not identity.generateKeyPair(): its sodium_malloc guard pages cost
    // several memory maps per key, and tens of thousands of live keys exhaust
    // vm.max_map_count (65530): node aborts in napi_create_external_buffer.
    this.publicKeys = Buffer.alloc(init.capacity * 32)
    this.secretKeys = Buffer.alloc(init.capacity * 64)
    for (let l = 0; l < init.capacity; l++) sodium.crypto_sign_keypair(this.pk(l), this.sk(l))
    this.seq = new Uint32Array(init.capacity)
    this.sentAt = new Float64Array(init.capacity)
    this.tagged = new Uint8Array(init.capacity)
    this.wheel = Array.from({ length: Math.ceil(this.intervalMs / TICK_MS) }, () => [])
    this.lastSlot = this.slotNow()
    this.ticker = setInterval(() => this.onTickExpired(), TICK_MS)
    this.control = new ControlConnections(init.server, {
      global: (l) => this.g(l),
      keyPair: (l) => ({ publicKey: this.pk(l), secretKey: this.sk(l) }),
      signedRegister: (l, nonce, time) => this.signedRegister(l, nonce, time)
    })
  }

  private pk(l: number): Buffer {
    return this.publicKeys.subarray(l * 32, l * 32 + 32)
  }

  private sk(l: number): Buffer {
    return this.secretKeys.subarray(l * 64, l * 64 + 64)
  }

  private g(l: number): number {
    return l * this.workers + this.worker
  }

  /** Local agents among the first `total` global ones. */
  private localCount(total: number): number {
    return Math.max(0, Math.ceil((total - this.worker) / this.workers))
  }

  private signedRegister(l: number, nonce: Uint8Array, serverTime: number): Buffer {
    const unsigned = proto.encodeRegisterUnsigned({
      nonce,
      time: serverTime,
      publicKey: this.pk(l),
      name: nameOf(this.g(l)),
      tcpPort: 0,
      nat: 'none',
      lan: [],
      proof: new Uint8Array(0)
    })
    return proto.encodeRegister(unsigned, identity.sign(unsigned, this.sk(l)))
  }

  // --- registration (TCP + Noise), then the UDP socket ------------------------------

  /**
   * Registers local agents up to the global count `total`: at most `ratePerS` a second
   * and `maxInFlight` at a time in this process (so a slow server slows the ramp instead
   * of overflowing its receive queue and drowning in retries).
   */
  async register(total: number, ratePerS: number, maxInFlight: number): Promise<RegisterResult> {
    const upTo = this.localCount(total)
    const result: RegisterResult = { ok: 0, retries: 0, failed: {} }
    const running: Promise<void>[] = []
    const start = performance.now()
    const first = this.registered
    const retries0 = this.registerRetries
    let inFlight = 0
    while (this.registered < upTo) {
      const due = Math.min(upTo, first + Math.floor(((performance.now() - start) / 1000) * ratePerS) + 1)
      while (this.registered < due && inFlight < maxInFlight) {
        const l = this.registered++
        inFlight++
        running.push(
          this.registerAgent(l).then(
            () => void result.ok++,
            (err: NodeJS.ErrnoException) => {
              const code = err.code ?? err.message
              result.failed[code] = (result.failed[code] ?? 0) + 1
            }
          ).finally(() => inFlight--)
        )
      }
      await sleep(TICK_MS)
    }
    await Promise.all(running)
    result.retries = this.registerRetries - retries0
    return result
  }

  private async registerAgent(l: number): Promise<void> {
    const sock = dgram.createSocket('udp4')
    this.socks[l] = sock
    sock.on('message', (buf) => this.onDatagram(l, buf))
    await new Promise<void>((resolve, reject) => {
      sock.once('error', reject)
      sock.bind(0, hostOf(this.g(l)), () => {
        sock.off('error', reject)
        sock.on('error', () => undefined)
        resolve()
      })
    })
    // Like the agent: a failed registration backs off (doubling) and starts over, here
    // until REGISTER_GIVE_UP_MS.
    const start = performance.now()
    const keep = this.g(l) % TCP_EVERY === 0
    for (let backoff = BACKOFF_FIRST_MS; ; backoff *= 2) {
      try {
        const ack = await this.control.register(l, keep)
        this.tokens[l] = ack.token
        this.udpKeys[l] = ack.udpKey
        break
      } catch (err) {
        if (performance.now() - start + backoff > REGISTER_GIVE_UP_MS) throw err
        this.registerRetries++
        await sleep(backoff)
      }
    }
    this.beat(l) // the session's first heartbeat: the server learns our UDP mapping ('moved')
    const phase = (this.g(l) * PHI) % 1
    this.wheel[Math.floor(phase * this.wheel.length)]!.push(l)
  }

  private onDatagram(l: number, buf: Buffer): void {
    let msg: Message
    try {
      msg = proto.decode(buf)
    } catch {
      return
    }
    if (msg.type === 'heartbeat-ack') this.onHeartbeatAck(l, msg)
  }

  // --- heartbeats ---------------------------------------------------------------

  private slotNow(): number {
    return Math.floor((performance.now() - this.epoch) / TICK_MS)
  }

  /** Sends the heartbeats of every slot passed since the last tick (catching up if late). */
  private onTickExpired(): void {
    const now = this.slotNow()
    for (let s = this.lastSlot + 1; s <= now; s++) {
      for (const l of this.wheel[s % this.wheel.length]!) this.beat(l)
    }
    this.lastSlot = now
  }

  private beat(l: number): void {
    const token = this.tokens[l]
    const key = this.udpKeys[l]
    const sock = this.socks[l]
    if (!token || !key || !sock) return
    if (this.sentAt[l] && this.tagged[l]) this.win.lost++ // the previous one was never answered
    const seq = (this.seq[l]! + 1) >>> 0
    this.seq[l] = seq
    this.sentAt[l] = performance.now()
    this.tagged[l] = this.windowOpen ? 1 : 0
    if (this.windowOpen) this.win.sent++
    sock.send(proto.encode({ type: 'heartbeat', token, seq, key }), this.server.port, this.server.host)
    if (this.control.ping(l, seq, this.windowOpen) && this.windowOpen) this.win.pings++
  }

  private onHeartbeatAck(l: number, msg: Extract<Message, { type: 'heartbeat-ack' }>): void {
    const sentAt = this.sentAt[l]!
    if (!sentAt || msg.seq !== this.seq[l]) return // stale
    const ms = performance.now() - sentAt
    this.sentAt[l] = 0
    if (!this.tagged[l]) return
    this.tagged[l] = 0
    if (msg.status !== 'ok' || !proto.opened(msg, this.udpKeys[l]!)) this.win.badStatus++
    else if (ms > ACK_TIMEOUT_MS) this.win.lost++
    else this.win.latencies.push(ms)
  }

  windowStart(): void {
    this.win = emptyWindow()
    this.control.resetWindow()
    this.windowOpen = true
    this.loopDelay.reset()
    this.loopDelay.enable()
  }

  /** Stops tagging heartbeats, waits for the last acks, and counts what never came. */
  async windowEnd(): Promise<WindowResult> {
    this.windowOpen = false
    await sleep(ACK_TIMEOUT_MS)
    this.loopDelay.disable()
    const w = this.win
    for (let l = 0; l < this.tagged.length; l++) {
      if (!this.tagged[l]) continue
      this.tagged[l] = 0
      if (this.sentAt[l]) w.lost++
    }
    return {
      sent: w.sent,
      latenciesMs: Float64Array.from(w.latencies),
      lost: w.lost,
      badStatus: w.badStatus,
      pings: w.pings,
      pongs: this.control.resetWindow(),
      // The histogram holds whole timer periods: take the resolution off to get the lag.
      loopDelayP99Ms: Math.max(0, this.loopDelay.percentile(99) / 1e6 - LOOP_DELAY_RESOLUTION_MS),
      loopDelayMaxMs: Math.max(0, this.loopDelay.max / 1e6 - LOOP_DELAY_RESOLUTION_MS)
    }
  }

  /** The local TCP agents among the first `total` (1%) kept their control connection at registration: counts them. */
  tcpOpen(total: number): RegisterResult {
    let want = 0
    for (let l = 0; l < this.localCount(total); l++) if (this.g(l) % TCP_EVERY === 0 && this.tokens[l]) want++
    const ok = Math.min(want, this.control.size)
    return { ok, retries: 0, failed: want > ok ? { TCP_CLOSED: want - ok } : {} }
  }

  async stop(): Promise<void> {
    clearInterval(this.ticker)
    await this.control.close()
    for (const s of this.socks) s?.close()
  }
}

function emptyWindow(): { sent: number; latencies: number[]; lost: number; badStatus: number; pings: number } {
  return { sent: 0, latencies: [], lost: 0, badStatus: 0, pings: 0 }
}

// --- IPC loop: commands run one at a time, in order --------------------------------------

let agents: Agents | null = null

async function run(cmd: Command): Promise<unknown> {
  if (cmd.op === 'init') {
    agents = new Agents(cmd)
    return null
  }
  if (!agents) throw new Error('not initialised')
  switch (cmd.op) {
    case 'register':
      return agents.register(cmd.total, cmd.ratePerS, cmd.maxInFlight)
    case 'tcp-open':
      return agents.tcpOpen(cmd.total)
    case 'window-start':
      return agents.windowStart()
    case 'window-end':
      return agents.windowEnd()
    case 'list':
      return agents.control.list(cmd.samples)
    case 'intro-burst':
      return agents.control.introBurst(cmd.total, cmd.durationMs, cmd.depth)
    case 'tcp-close':
      return agents.control.close()
    case 'stop':
      return agents.stop()
  }
}

if (process.send) {
  let queue = Promise.resolve()
  process.on('message', (m: { id: number; cmd: Command }) => {
    queue = queue.then(async () => {
      let reply: Reply
      try {
        reply = { id: m.id, ok: true, result: (await run(m.cmd)) ?? null }
      } catch (err) {
        reply = { id: m.id, ok: false, error: (err as Error).stack ?? String(err) }
      }
      process.send!(reply)
      if (m.cmd.op === 'stop') process.disconnect()
    })
  })
  // The controller went away (even killed): nothing left to drive us.
  process.on('disconnect', () => process.exit(0))
}
