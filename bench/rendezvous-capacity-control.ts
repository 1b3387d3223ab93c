/**
 * The 1% of simulated agents that also keep a TCP control connection, as
 * src/daemon/rendezvous-client.ts does: the server sends a CHALLENGE first, the agent a
 * signed REGISTER, then PING with every heartbeat, LIST and INTRODUCE. Used by
 * rendezvous-capacity-agents.ts (one ControlConnections per load process).
 */
import net from 'node:net'
import type { Endpoint } from '../src/protocol/endpoint.js'
import type { Message, OutgoingMessage } from '../src/protocol/rendezvous.js'

const proto = (await import(new URL('../dist/protocol/rendezvous.js', import.meta.url).href)) as typeof import('../src/protocol/rendezvous.js')

/** Like the agent's TCP_REGISTER_TIMEOUT_MS and TCP_REQUEST_TIMEOUT_MS. */
const TCP_REGISTER_TIMEOUT_MS = 5_000
const TCP_REQUEST_TIMEOUT_MS = 10_000
/** Connections opened at once per process (each one is a signed REGISTER for the server). */
const TCP_OPEN_CONCURRENCY = 64
/** One agent in this many keeps a TCP control connection (1%). */
export const TCP_EVERY = 100

/** Agent g's own loopback address, 127.20.0.1 upwards, never .0 or .255. */
export function hostOf(g: number): string {
  return `127.${20 + Math.floor(g / 62_500)}.${Math.floor(g / 250) % 250}.${1 + (g % 250)}`
}

export function nameOf(g: number): string {
  return `a${g}`
}

export interface RegisterResult {
  ok: number
  retries: number // HELLOs and REGISTERs sent again after a timeout
  failed: Record<string, number>
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

/** What the control connections need from the agents they belong to (l = local agent index). */
export interface AgentIdentity {
  global(l: number): number
  signedRegister(l: number, nonce: Uint8Array, serverTime: number): Buffer
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
  /** PING seqs sent inside the measurement window, not yet answered. */
  windowPings: Set<number>
  nextReqId: number
  waiters: Map<number, Waiter>
}

export class ControlConnections {
  private readonly server: Endpoint
  private readonly agents: AgentIdentity
  private readonly tcp = new Map<number, TcpAgent>()
  private introsAsTarget = 0
  private windowPongs = 0

  constructor(server: Endpoint, agents: AgentIdentity) {
    this.server = server
    this.agents = agents
  }

  get size(): number {
    return this.tcp.size
  }

  /** PING with a heartbeat, when agent l has a control connection; `inWindow` counts its PONG. */
  ping(l: number, seq: number, inWindow: boolean): boolean {
    const t = this.tcp.get(l)
    if (!t) return false
    t.sock.write(proto.frame(proto.encode({ type: 'ping', seq })))
    if (inWindow) t.windowPings.add(seq)
    return true
  }

  /** Starts counting PONGs for PINGs sent from now on; returns the count of the previous window. */
  resetWindow(): number {
    const pongs = this.windowPongs
    this.windowPongs = 0
    for (const t of this.tcp.values()) t.windowPings.clear()
    return pongs
  }

  /** Opens the control connections of these local agents (not already open). */
  async open(agents: number[]): Promise<RegisterResult> {
    const want = agents.filter((l) => !this.tcp.has(l))
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
      const sock = net.connect({ host: this.server.host, port: this.server.port, localAddress: hostOf(this.agents.global(l)) })
      const agent: TcpAgent = { l, sock, windowPings: new Set(), nextReqId: 1, waiters: new Map() }
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
            sock.write(proto.frame(this.agents.signedRegister(l, msg.nonce, msg.serverTime)))
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
        if (agent.windowPings.delete(msg.seq)) this.windowPongs++
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
      const target = nameOf((this.agents.global(agent.l) + TCP_EVERY) % (tcpAgents * TCP_EVERY))
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

  async close(): Promise<void> {
    const closing = [...this.tcp.values()].map((t) => new Promise<void>((resolve) => {
      t.sock.once('close', () => resolve())
      t.sock.destroy()
    }))
    await Promise.all(closing)
  }

}
