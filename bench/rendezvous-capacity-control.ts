/**
 * The simulated agents' TCP control connections, as src/daemon/control-connection.ts
 * opens them (protocol 2): the server sends a clear CHALLENGE, the agent SECURE, then a
 * Noise XX session (secret-stream) inside which it sends its signed REGISTER and gets
 * REGISTER_ACK (token, heartbeat key). Every agent registers so; the 1% that keep the
 * connection then PING with every heartbeat, LIST and INTRODUCE, the others close it
 * (RST, no TIME_WAIT) and keep only their sealed UDP heartbeats. A real natd keeps its
 * control connection open for good (introductions arrive on it only): the server's
 * memory per agent measured here leaves the other 99% of sessions out.
 * Used by rendezvous-capacity-agents.ts (one ControlConnections per load process).
 */
import type SecretStream from '@hyperswarm/secret-stream'
import net from 'node:net'
import type { Endpoint } from '../src/protocol/endpoint.js'
import type { Message, OutgoingMessage } from '../src/protocol/rendezvous.js'

const proto = (await import(new URL('../dist/protocol/rendezvous.js', import.meta.url).href)) as typeof import('../src/protocol/rendezvous.js')
const secure = (await import(new URL('../dist/tunnel/secure-socket.js', import.meta.url).href)) as typeof import('../src/tunnel/secure-socket.js')

/** Like the agent's TCP_REGISTER_TIMEOUT_MS and TCP_REQUEST_TIMEOUT_MS. */
const TCP_REGISTER_TIMEOUT_MS = 5_000
const TCP_REQUEST_TIMEOUT_MS = 10_000
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
  retries: number // registrations started again after a failed one
  failed: Record<string, number>
}

/** What REGISTER_ACK gave an agent. */
export interface Registered {
  token: Uint8Array
  udpKey: Uint8Array
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
  keyPair(l: number): { publicKey: Buffer; secretKey: Buffer }
  signedRegister(l: number, nonce: Uint8Array, serverTime: number): Buffer
}

interface Waiter {
  resolve: (m: { msg: Message; bytes: number } | null) => void
  timer: NodeJS.Timeout
}

interface TcpAgent {
  l: number
  sock: net.Socket
  session: SecretStream
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
    t.session.write(proto.encode({ type: 'ping', seq }))
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

  /**
   * Registers agent l over a new control connection from its own address; keeps the
   * connection (for PING, LIST, INTRODUCE) when `keep`, else resets it once acked.
   */
  async register(l: number, keep: boolean): Promise<Registered> {
    const { agent, ack } = await this.connect(l)
    if (keep) this.tcp.set(l, agent)
    else agent.sock.resetAndDestroy()
    return ack
  }

  /** CHALLENGE, SECURE, Noise, REGISTER; resolves once the server acknowledged it. */
  private connect(l: number): Promise<{ agent: TcpAgent; ack: Registered }> {
    return new Promise((resolve, reject) => {
      const sock = net.connect({ host: this.server.host, port: this.server.port, localAddress: hostOf(this.agents.global(l)) })
      let agent: TcpAgent | null = null
      const splitter = new proto.FrameSplitter()
      let state: 'challenge' | 'ack' | 'registered' = 'challenge'
      const fail = (err: Error): void => {
        if (state === 'registered') return
        clearTimeout(timer)
        sock.destroy()
        reject(err)
      }
      const timer = setTimeout(() => fail(Object.assign(new Error('tcp register timed out'), { code: 'TCP_TIMEOUT' })), TCP_REGISTER_TIMEOUT_MS)
      sock.setNoDelay(true)
      sock.on('error', fail)
      sock.on('close', () => {
        if (agent && this.tcp.get(l) === agent) this.tcp.delete(l)
        for (const w of agent?.waiters.values() ?? []) w.resolve(null)
        agent?.waiters.clear()
        fail(Object.assign(new Error('closed during registration'), { code: 'TCP_CLOSED' }))
      })
      const onMessage = (msg: Message, bytes: number): void => {
        if (state === 'ack') {
          if (msg.type !== 'register-ack') return fail(Object.assign(new Error(`tcp register: ${msg.type}`), { code: msg.type === 'error' ? msg.code : 'TCP_UNEXPECTED' }))
          state = 'registered'
          clearTimeout(timer)
          resolve({ agent: agent!, ack: { token: Buffer.from(msg.token), udpKey: Buffer.from(msg.udpKey) } })
        } else if (agent) this.onTcpMessage(agent, msg, bytes)
      }
      const onClear = (chunk: Buffer): void => {
        try {
          splitter.add(chunk)
          const f = splitter.next()
          if (!f) return
          const msg = proto.decode(f)
          if (msg.type !== 'challenge') return fail(Object.assign(new Error(`expected a challenge, got ${msg.type}`), { code: msg.type === 'error' ? msg.code : 'TCP_UNEXPECTED' }))
          sock.off('data', onClear)
          sock.write(proto.frame(proto.encode({ type: 'secure' })))
          const session = secure.secureSocket(true, sock, splitter.rest(), this.agents.keyPair(l))
          agent = { l, sock, session, windowPings: new Set(), nextReqId: 1, waiters: new Map() }
          state = 'ack'
          session.on('data', (b: Buffer) => {
            let m: Message
            try {
              m = proto.decode(b)
            } catch (err) {
              fail(err as Error)
              sock.destroy()
              return
            }
            onMessage(m, b.length)
          })
          void session.opened.then((ok) => {
            if (ok) session.write(this.agents.signedRegister(l, msg.nonce, msg.serverTime))
            else fail(Object.assign(new Error('noise handshake failed'), { code: 'NOISE_FAILED' }))
          })
        } catch (err) {
          fail(err as Error)
        }
      }
      sock.on('data', onClear)
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
      agent.session.write(proto.encode({ ...msg, reqId }))
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

  /**
   * Drops the kept control connections with a reset, as the others are dropped after
   * registering: a FIN would tell the server the agent's host ended it, and the server
   * drops such an agent (agent-conns.ts), whose heartbeats would then go unanswered.
   */
  async close(): Promise<void> {
    const closing = [...this.tcp.values()].map((t) => new Promise<void>((resolve) => {
      t.sock.once('close', () => resolve())
      t.sock.resetAndDestroy()
    }))
    await Promise.all(closing)
  }

}
