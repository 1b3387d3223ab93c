/**
 * One load-generator process for bench/rendezvous-capacity.ts: a slice of simulated
 * agents, driven by the controller over the IPC channel (one command, one reply).
 *
 *   controller ──ipc──▶ this process: agents g ≡ worker (mod workers)
 *                         agent g: UDP socket on 127.A.B.C (its own address) ──▶ server :port
 *                         agent g % 100 == 0: also a TCP control connection ──▶ server :port
 *
 * Each agent has its own source endpoint because the server keys a registration by the
 * address:port it saw (a heartbeat from anywhere else is answered 'moved'), and a
 * process may hold only RLIMIT_NOFILE sockets, hence several of these processes.
 *
 * An agent does what src/daemon/rendezvous-client.ts does: HELLO -> CHALLENGE -> signed
 * REGISTER -> REGISTER_ACK (token), then one HEARTBEAT per interval at a fixed phase;
 * TCP agents register on the control connection too, PING with every heartbeat, LIST
 * and INTRODUCE.
 */
import dgram from 'node:dgram'
import net from 'node:net'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'
import sodium from 'sodium-native'
import type { Endpoint } from '../src/protocol/endpoint.js'
import type { Message, OutgoingMessage } from '../src/protocol/rendezvous.js'

// Project code as built (Node strips types but cannot run src/: it uses parameter
// properties); typed from src/ for the type-checker.
const DIST = new URL('../dist/', import.meta.url)
const proto = (await import(new URL('protocol/rendezvous.js', DIST).href)) as typeof import('../src/protocol/rendezvous.js')
const identity = (await import(new URL('protocol/identity.js', DIST).href)) as typeof import('../src/protocol/identity.js')

/** Like the agent (UDP_REQUEST_TIMEOUT_MS, UDP_REQUEST_TRIES): HELLO and REGISTER each wait 1 s, 3 tries. */
const UDP_REQUEST_TIMEOUT_MS = 1_000
const UDP_REQUEST_TRIES = 3
/** Like the agent's BACKOFF_FIRST_MS: a failed registration session is retried after this, doubling. */
const BACKOFF_FIRST_MS = 500
/** A real agent never gives up; a simulated one that cannot register in this long counts as failed. */
const REGISTER_GIVE_UP_MS = 15_000
/** A heartbeat ack later than this counts as lost (the agent's request timeout). */
export const ACK_TIMEOUT_MS = 1_000
/** Like the agent's TCP_REGISTER_TIMEOUT_MS and TCP_REQUEST_TIMEOUT_MS. */
const TCP_REGISTER_TIMEOUT_MS = 5_000
const TCP_REQUEST_TIMEOUT_MS = 10_000
/** One agent in this many keeps a TCP control connection (1%). */
export const TCP_EVERY = 100
/** Granularity of the heartbeat schedule and of registration pacing. */
const TICK_MS = 10
/** TCP connections opened at once per process (each one is a signed REGISTER for the server). */
const TCP_OPEN_CONCURRENCY = 64
/** Sampling period of the event-loop delay histogram (how late this process reads its sockets). */
const LOOP_DELAY_RESOLUTION_MS = 5
/** Golden-ratio phases spread any number of agents evenly over the interval. */
const PHI = 0.6180339887498949

export type Command =
  | { op: 'init'; worker: number; workers: number; capacity: number; server: Endpoint; intervalMs: number }
  | { op: 'register'; total: number; ratePerS: number }
  | { op: 'tcp-open'; total: number }
  | { op: 'window-start' }
  | { op: 'window-end' }
  | { op: 'list'; samples: number }
  | { op: 'intro-burst'; total: number; durationMs: number; depth: number }
  | { op: 'tcp-close' }
  | { op: 'stop' }

export interface RegisterResult {
  ok: number
  retries: number // HELLOs and REGISTERs sent again after UDP_REQUEST_TIMEOUT_MS
  failed: Record<string, number>
}
export interface WindowResult {
  sent: number
  latenciesMs: Float64Array
  lost: number // no ack within ACK_TIMEOUT_MS
  badStatus: number // acked 'unknown' or 'moved'
  pings: number
  pongs: number
  loopDelayP99Ms: number
  loopDelayMaxMs: number
}
export interface ListResult {
  ms: number
  bytes: number
  peers: number
}
export interface IntroResult {
  completed: number
  asTarget: number
  errors: Record<string, number>
  latenciesMs: Float64Array
}
export type Reply = { id: number; ok: true; result: unknown } | { id: number; ok: false; error: string }

/** Agent g's own loopback address, 127.20.0.1 upwards, never .0 or .255. */
export function hostOf(g: number): string {
  return `127.${20 + Math.floor(g / 62_500)}.${Math.floor(g / 250) % 250}.${1 + (g % 250)}`
}

export function nameOf(g: number): string {
  return `a${g}`
}

/** Length-prefixed frames without the agent's 1 MiB cap, so an oversized PEERS is measured, not dropped. */
class FrameReader {
  private chunks: Buffer[] = []
  private buffered = 0

  push(chunk: Buffer): Buffer[] {
    this.chunks.push(chunk)
    this.buffered += chunk.length
    const out: Buffer[] = []
    while (this.buffered >= 4) {
      if (this.chunks[0]!.length < 4) this.chunks = [Buffer.concat(this.chunks)]
      const len = this.chunks[0]!.readUInt32BE(0)
      if (this.buffered < 4 + len) break
      const joined = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks)
      out.push(joined.subarray(4, 4 + len))
      const rest = joined.subarray(4 + len)
      this.chunks = rest.length ? [rest] : []
      this.buffered -= 4 + len
    }
    return out
  }
}

interface Waiter {
  resolve: (m: { msg: Message; bytes: number } | null) => void
  timer: NodeJS.Timeout
}

interface TcpAgent {
  l: number
  sock: net.Socket
  nextReqId: number
  waiters: Map<number, Waiter>
}

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
  private readonly seq: Uint32Array
  private readonly sentAt: Float64Array // 0 = no heartbeat outstanding
  private readonly tagged: Uint8Array // 1 = sent inside the measurement window
  private readonly udpWaiters = new Map<number, { type: Message['type']; resolve: (m: Message | null) => void }>()
  private readonly tcp = new Map<number, TcpAgent>()
  private udpRetries = 0
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
  private introsAsTarget = 0

  constructor(init: Extract<Command, { op: 'init' }>) {
    this.worker = init.worker
    this.workers = init.workers
    this.server = init.server
    this.intervalMs = init.intervalMs
    // Plain buffers, not identity.generateKeyPair(): its sodium_malloc guard pages cost
    // three memory maps per key, and ~21,000 live keys hit vm.max_map_count (65530).
    this.publicKeys = Buffer.alloc(init.capacity * 32)
    this.secretKeys = Buffer.alloc(init.capacity * 64)
    for (let l = 0; l < init.capacity; l++) sodium.crypto_sign_keypair(this.pk(l), this.sk(l))
    this.seq = new Uint32Array(init.capacity)
    this.sentAt = new Float64Array(init.capacity)
    this.tagged = new Uint8Array(init.capacity)
    this.wheel = Array.from({ length: Math.ceil(this.intervalMs / TICK_MS) }, () => [])
    this.lastSlot = this.slotNow()
    this.ticker = setInterval(() => this.onTickExpired(), TICK_MS)
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

  // --- UDP registration ------------------------------------------------------

  /** Registers local agents up to the global count `total`, paced at `ratePerS` for this process. */
  async register(total: number, ratePerS: number): Promise<RegisterResult> {
    const upTo = this.localCount(total)
    const result: RegisterResult = { ok: 0, retries: 0, failed: {} }
    const running: Promise<void>[] = []
    const start = performance.now()
    const first = this.registered
    const retries0 = this.udpRetries
    while (this.registered < upTo) {
      const due = Math.min(upTo, first + Math.floor(((performance.now() - start) / 1000) * ratePerS) + 1)
      while (this.registered < due) {
        const l = this.registered++
        running.push(
          this.registerUdp(l).then(
            () => void result.ok++,
            (err: NodeJS.ErrnoException) => {
              const code = err.code ?? err.message
              result.failed[code] = (result.failed[code] ?? 0) + 1
            }
          )
        )
      }
      await sleep(TICK_MS)
    }
    await Promise.all(running)
    result.retries = this.udpRetries - retries0
    return result
  }

  private async registerUdp(l: number): Promise<void> {
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
    // Like the agent: a session is HELLO + REGISTER (3 tries each); after a failed one it
    // backs off (doubling) and starts over, here until REGISTER_GIVE_UP_MS.
    const start = performance.now()
    let ack: Message | null = null
    for (let backoff = BACKOFF_FIRST_MS; !ack; backoff *= 2) {
      try {
        const challenge = await this.udpRequest(l, proto.encode({ type: 'hello' }), 'challenge')
        if (challenge.type !== 'challenge') throw new Error('expected a challenge')
        ack = await this.udpRequest(l, this.signedRegister(l, challenge.nonce, challenge.serverTime), 'register-ack')
      } catch (err) {
        if (performance.now() - start + backoff > REGISTER_GIVE_UP_MS) throw err
        this.udpRetries++
        await sleep(backoff)
      }
    }
    if (ack.type !== 'register-ack') throw new Error('expected a register ack')
    this.tokens[l] = Buffer.from(ack.token)
    const phase = (this.g(l) * PHI) % 1
    this.wheel[Math.floor(phase * this.wheel.length)]!.push(l)
  }

  private async udpRequest(l: number, buf: Buffer, type: Message['type']): Promise<Message> {
    for (let i = 0; i < UDP_REQUEST_TRIES; i++) {
      if (i) this.udpRetries++
      const reply = new Promise<Message | null>((resolve) => {
        const timer = setTimeout(() => resolve(null), UDP_REQUEST_TIMEOUT_MS)
        this.udpWaiters.set(l, {
          type,
          resolve: (m) => {
            clearTimeout(timer)
            resolve(m)
          }
        })
      })
      this.socks[l]!.send(buf, this.server.port, this.server.host)
      const msg = await reply
      this.udpWaiters.delete(l)
      if (msg?.type === 'error') throw Object.assign(new Error(msg.message), { code: msg.code })
      if (msg) return msg
    }
    throw Object.assign(new Error(`no ${type}`), { code: 'UDP_TIMEOUT' })
  }

  private onDatagram(l: number, buf: Buffer): void {
    let msg: Message
    try {
      msg = proto.decode(buf)
    } catch {
      return
    }
    if (msg.type === 'heartbeat-ack') return this.onHeartbeatAck(l, msg)
    const w = this.udpWaiters.get(l)
    if (w && (msg.type === w.type || msg.type === 'error')) w.resolve(msg)
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
    const sock = this.socks[l]
    if (!token || !sock) return
    if (this.sentAt[l] && this.tagged[l]) this.win.lost++ // the previous one was never answered
    const seq = (this.seq[l]! + 1) >>> 0
    this.seq[l] = seq
    this.sentAt[l] = performance.now()
    this.tagged[l] = this.windowOpen ? 1 : 0
    if (this.windowOpen) this.win.sent++
    sock.send(proto.encode({ type: 'heartbeat', token, seq }), this.server.port, this.server.host)
    const t = this.tcp.get(l)
    if (t) {
      t.sock.write(proto.frame(proto.encode({ type: 'ping', seq })))
      if (this.windowOpen) this.win.pings++
    }
  }

  private onHeartbeatAck(l: number, msg: Extract<Message, { type: 'heartbeat-ack' }>): void {
    const sentAt = this.sentAt[l]!
    if (!sentAt || msg.seq !== this.seq[l]) return // stale
    const ms = performance.now() - sentAt
    this.sentAt[l] = 0
    if (!this.tagged[l]) return
    this.tagged[l] = 0
    if (msg.status !== 'ok') this.win.badStatus++
    else if (ms > ACK_TIMEOUT_MS) this.win.lost++
    else this.win.latencies.push(ms)
  }

  windowStart(): void {
    this.win = emptyWindow()
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
      pongs: w.pongs,
      // The histogram holds whole timer periods: take the resolution off to get the lag.
      loopDelayP99Ms: Math.max(0, this.loopDelay.percentile(99) / 1e6 - LOOP_DELAY_RESOLUTION_MS),
      loopDelayMaxMs: Math.max(0, this.loopDelay.max / 1e6 - LOOP_DELAY_RESOLUTION_MS)
    }
  }

  // --- TCP control connections ------------------------------------------------------

  /** Opens the control connections of local TCP agents among the first `total` (1%). */
  async tcpOpen(total: number): Promise<RegisterResult> {
    const want: number[] = []
    for (let l = 0; l < this.localCount(total); l++) if (this.g(l) % TCP_EVERY === 0 && this.tokens[l] && !this.tcp.has(l)) want.push(l)
    const result: RegisterResult = { ok: 0, retries: 0, failed: {} }
    let next = 0
    const lane = async (): Promise<void> => {
      while (next < want.length) {
        const l = want[next++]!
        try {
          this.tcp.set(l, await this.connect(l))
          result.ok++
        } catch (err) {
          const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message
          result.failed[code] = (result.failed[code] ?? 0) + 1
        }
      }
    }
    await Promise.all(Array.from({ length: TCP_OPEN_CONCURRENCY }, lane))
    return result
  }

  /** Connects from the agent's own address; resolves once the server acknowledged the signed REGISTER. */
  private connect(l: number): Promise<TcpAgent> {
    return new Promise((resolve, reject) => {
      const sock = net.connect({ host: this.server.host, port: this.server.port, localAddress: hostOf(this.g(l)) })
      const agent: TcpAgent = { l, sock, nextReqId: 1, waiters: new Map() }
      const reader = new FrameReader()
      let state: 'challenge' | 'ack' | 'registered' = 'challenge'
      const fail = (err: Error): void => {
        clearTimeout(timer)
        sock.destroy()
        reject(err)
      }
      const timer = setTimeout(() => fail(Object.assign(new Error('tcp register timed out'), { code: 'TCP_TIMEOUT' })), TCP_REGISTER_TIMEOUT_MS)
      sock.setNoDelay(true)
      sock.on('error', (err) => {
        if (state !== 'registered') fail(err)
      })
      sock.on('close', () => {
        this.tcp.delete(l)
        for (const w of agent.waiters.values()) w.resolve(null)
        agent.waiters.clear()
        if (state !== 'registered') fail(Object.assign(new Error('closed during registration'), { code: 'TCP_CLOSED' }))
      })
      sock.on('data', (chunk: Buffer) => {
        let frames: Buffer[]
        let msgs: Message[]
        try {
          frames = reader.push(chunk)
          msgs = frames.map((f) => proto.decode(f))
        } catch (err) {
          if (state !== 'registered') fail(err as Error)
          sock.destroy()
          return
        }
        for (let i = 0; i < msgs.length; i++) {
          const msg = msgs[i]!
          const f = frames[i]!
          if (state === 'challenge' && msg.type === 'challenge') {
            state = 'ack'
            sock.write(proto.frame(this.signedRegister(l, msg.nonce, msg.serverTime)))
          } else if (state === 'ack') {
            if (msg.type !== 'register-ack') return fail(Object.assign(new Error(`tcp register: ${msg.type}`), { code: msg.type === 'error' ? msg.code : 'TCP_UNEXPECTED' }))
            state = 'registered'
            clearTimeout(timer)
            resolve(agent)
          } else this.onTcpMessage(agent, msg, f.length)
        }
      })
    })
  }

  private onTcpMessage(agent: TcpAgent, msg: Message, bytes: number): void {
    switch (msg.type) {
      case 'pong':
        if (this.windowOpen) this.win.pongs++
        return
      case 'introduction':
        if (msg.reqId === 0) {
          this.introsAsTarget++
          return
        }
        break
      case 'peers':
      case 'error':
        break
      default:
        return // peer events
    }
    const w = agent.waiters.get(msg.reqId)
    if (!w) return
    agent.waiters.delete(msg.reqId)
    clearTimeout(w.timer)
    w.resolve({ msg, bytes })
  }

  /** One request on a control connection; null when it timed out or the connection closed. */
  private request(agent: TcpAgent, msg: Extract<OutgoingMessage, { reqId: number }>): Promise<{ msg: Message; bytes: number } | null> {
    const reqId = agent.nextReqId++
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        agent.waiters.delete(reqId)
        resolve(null)
      }, TCP_REQUEST_TIMEOUT_MS)
      agent.waiters.set(reqId, { resolve, timer })
      agent.sock.write(proto.frame(proto.encode({ ...msg, reqId })))
    })
  }

  /** LIST from the first `samples` TCP agents in turn (one at a time: each is a full-registry walk). */
  async list(samples: number): Promise<ListResult[]> {
    const out: ListResult[] = []
    for (const agent of [...this.tcp.values()].slice(0, samples)) {
      const t0 = performance.now()
      const reply = await this.request(agent, { type: 'list', reqId: 0 })
      const ms = performance.now() - t0
      if (reply?.msg.type === 'peers') out.push({ ms, bytes: reply.bytes, peers: reply.msg.peers.length })
      else out.push({ ms, bytes: 0, peers: -1 })
    }
    return out
  }

  /**
   * Each TCP agent keeps `depth` INTRODUCE requests in flight to the next TCP agent
   * (global index + TCP_EVERY, wrapping) until the deadline; counts the answers that
   * came before it.
   */
  async introBurst(total: number, durationMs: number, depth: number): Promise<IntroResult> {
    const tcpAgents = Math.ceil(total / TCP_EVERY)
    const result: IntroResult = { completed: 0, asTarget: 0, errors: {}, latenciesMs: new Float64Array(0) }
    const latencies: number[] = []
    if (tcpAgents < 2) return result
    const asTarget0 = this.introsAsTarget
    const deadline = performance.now() + durationMs
    const loop = async (agent: TcpAgent): Promise<void> => {
      const target = nameOf((this.g(agent.l) + TCP_EVERY) % (tcpAgents * TCP_EVERY))
      while (performance.now() < deadline && !agent.sock.destroyed) {
        const t0 = performance.now()
        const reply = await this.request(agent, { type: 'introduce', reqId: 0, target, via: 'auto' })
        const t1 = performance.now()
        if (t1 > deadline) break
        if (reply?.msg.type === 'introduction') {
          result.completed++
          latencies.push(t1 - t0)
        } else {
          const code = reply ? (reply.msg.type === 'error' ? reply.msg.code : reply.msg.type) : 'TIMEOUT'
          result.errors[code] = (result.errors[code] ?? 0) + 1
        }
      }
    }
    const loops: Promise<void>[] = []
    for (const agent of this.tcp.values()) for (let i = 0; i < depth; i++) loops.push(loop(agent))
    await Promise.all(loops)
    result.asTarget = this.introsAsTarget - asTarget0
    result.latenciesMs = Float64Array.from(latencies)
    return result
  }

  async tcpClose(): Promise<void> {
    const closing = [...this.tcp.values()].map((t) => new Promise<void>((resolve) => {
      t.sock.once('close', () => resolve())
      t.sock.destroy()
    }))
    await Promise.all(closing)
  }

  async stop(): Promise<void> {
    clearInterval(this.ticker)
    await this.tcpClose()
    for (const s of this.socks) s?.close()
  }
}

function emptyWindow(): { sent: number; latencies: number[]; lost: number; badStatus: number; pings: number; pongs: number } {
  return { sent: 0, latencies: [], lost: 0, badStatus: 0, pings: 0, pongs: 0 }
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
      return agents.register(cmd.total, cmd.ratePerS)
    case 'tcp-open':
      return agents.tcpOpen(cmd.total)
    case 'window-start':
      return agents.windowStart()
    case 'window-end':
      return agents.windowEnd()
    case 'list':
      return agents.list(cmd.samples)
    case 'intro-burst':
      return agents.introBurst(cmd.total, cmd.durationMs, cmd.depth)
    case 'tcp-close':
      return agents.tcpClose()
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
