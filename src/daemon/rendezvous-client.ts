/**
 * The agent's side of the rendezvous protocol: register over UDP (the one socket that
 * also carries punching and tunnels) and over a TCP control connection from a fixed
 * local port (the one TCP punching reuses); heartbeat both; re-register when the
 * server restarts or our NAT mapping changes.
 *
 *   connecting ──ok──▶ registered ──lost──▶ backoff ──timer──▶ connecting
 *        └────fail────────────────────────────▲
 *
 * The state changes in one place, transition(), which logs each change once; retries
 * inside a state log at debug only.
 */
import dns from 'node:dns/promises'
import { EventEmitter } from 'node:events'
import net from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { formatEndpoint, parseEndpoint, sameEndpoint, type Endpoint } from '../protocol/endpoint.js'
import { NatdError, toNatdError } from '../protocol/errors.js'
import { secretProof, sign, type KeyPair } from '../protocol/identity.js'
import type { Clock, Logger } from '../protocol/log.js'
import { decode, encode, encodeRegister, encodeRegisterUnsigned, type Message, type NatVerdict, type OutgoingMessage, type PeerRecord, type Via } from '../protocol/rendezvous.js'
import { DEFAULT_SERVER_PORT } from './config.js'
import type { Introduction } from '../tunnel/paths.js'
import { ControlConnection, serverError } from './control-connection.js'

/** One UDP request (HELLO, REGISTER) waits this long for its answer before a retry. */
export const UDP_REQUEST_TIMEOUT_MS = 1_000
export const UDP_REQUEST_TRIES = 3
/** Reconnect backoff: doubles from the first value up to the cap. */
export const BACKOFF_FIRST_MS = 500
export const BACKOFF_CAP_MS = 10_000
/** Heartbeats unanswered in a row before the server counts as lost. */
export const MISSED_HEARTBEATS_LOST = 3

export type ClientState =
  | { kind: 'connecting'; attempt: number }
  | { kind: 'registered'; since: number; udp: Endpoint | null; tcp: Endpoint | null }
  | { kind: 'backoff'; attempt: number; until: number; error: NatdError }
  | { kind: 'stopped' }

export interface RendezvousClientInit {
  server: string
  name: string
  heartbeatMs: number
  /** Local TCP port for the control connection (same number as the UDP port). */
  tcpPort: number
  secretKey: Buffer | null
}

export interface UdpSender {
  send(buf: Uint8Array, to: Endpoint, ttl?: number): void
}

export interface RendezvousClientComponents {
  udp: UdpSender
  keyPair: KeyPair
  log: Logger
  clock: Clock
  lan: () => Endpoint[]
  nat: () => NatVerdict
}

interface ClientEvents {
  state: [state: ClientState, error: NatdError | null]
  peer: [event: 'up' | 'down', peer: PeerRecord]
  introduction: [intro: Introduction]
}

export class RendezvousClient extends EventEmitter<ClientEvents> {
  state: ClientState = { kind: 'connecting', attempt: 0 }
  lastError: NatdError | null = null
  serverEndpoint: Endpoint | null = null
  lastHeartbeatAt: number | null = null
  rttMs: number | null = null

  private readonly log: Logger
  private readonly abort = new AbortController()
  private control: ControlConnection | null = null
  private token: Uint8Array | null = null
  private udpWaiter: { types: Message['type'][]; resolve: (m: Message) => void } | null = null
  private heartbeatSeq = 0
  private heartbeatSentAt = new Map<number, number>()
  private missedUdp = 0
  private missedTcp = 0
  private lost: ((err: NatdError) => void) | null = null

  constructor(
    private readonly init: RendezvousClientInit,
    private readonly c: RendezvousClientComponents
  ) {
    super()
    this.log = c.log
  }

  /** Runs until stop(); never rejects. */
  async run(): Promise<void> {
    let attempt = 0
    while (!this.abort.signal.aborted) {
      this.transition({ kind: 'connecting', attempt })
      let error: NatdError
      try {
        error = await this.session()
        attempt = 0
      } catch (err) {
        error = toNatdError(err, 'SERVER_UNREACHABLE')
      }
      this.closeTcp()
      if (this.abort.signal.aborted) break
      attempt++
      const delay = Math.min(BACKOFF_CAP_MS, BACKOFF_FIRST_MS * 2 ** Math.min(attempt - 1, 10))
      this.transition({ kind: 'backoff', attempt, until: this.c.clock.now() + delay, error })
      try {
        await sleep(delay, undefined, { signal: this.abort.signal })
      } catch {
        break
      }
    }
    this.transition({ kind: 'stopped' })
  }

  /** Says goodbye to the server (peers learn at once) and stops. */
  async stop(): Promise<void> {
    if (this.control && this.state.kind === 'registered') await this.control.send({ type: 'bye' })
    this.abort.abort()
    this.lost?.(new NatdError('SERVER_UNREACHABLE', 'stopping'))
    this.closeTcp()
  }

  /** Local port of the control connection (TCP punching reuses it); 0 while disconnected. */
  get tcpLocalPort(): number {
    return this.control?.localPort ?? 0
  }

  /** Peer list from the server. */
  async list(): Promise<PeerRecord[]> {
    const reply = await this.request({ type: 'list', reqId: 0 })
    if (reply.type !== 'peers') throw new NatdError('INTERNAL', `unexpected ${reply.type}`)
    return reply.peers
  }

  /** Asks the server to introduce us to `target`; resolves with our side of the introduction. */
  async introduce(target: string, via: Via): Promise<Introduction> {
    const reply = await this.request({ type: 'introduce', reqId: 0, target, via })
    if (reply.type !== 'introduction') throw new NatdError('INTERNAL', `unexpected ${reply.type}`)
    return { introId: reply.introId, initiator: reply.initiator, via: reply.via, peer: reply.peer }
  }

  /** Datagrams from the shared UDP socket that carry our magic. */
  onDatagram(buf: Buffer, from: Endpoint): void {
    if (!sameEndpoint(from, this.serverEndpoint)) return
    let msg: Message
    try {
      msg = decode(buf)
    } catch (err) {
      this.log.debug('bad datagram from server', { err: (err as Error).message })
      return
    }
    if (msg.type === 'heartbeat-ack') return this.onHeartbeatAck(msg)
    if (this.udpWaiter && (this.udpWaiter.types.includes(msg.type) || msg.type === 'error')) {
      const w = this.udpWaiter
      this.udpWaiter = null
      w.resolve(msg)
    }
  }

  // --- one registered session ---------------------------------------------

  /** Connects and registers; resolves with the reason once the session is lost. */
  private async session(): Promise<NatdError> {
    const server = await this.resolveServer()
    this.serverEndpoint = server
    const tcpObserved = await this.registerTcp(server)
    const udpObserved = await this.registerUdp(server)
    this.missedUdp = 0
    this.missedTcp = 0
    this.lastHeartbeatAt = this.c.clock.now()
    this.transition({ kind: 'registered', since: this.c.clock.now(), udp: udpObserved, tcp: tcpObserved })
    const lostPromise = new Promise<NatdError>((resolve) => (this.lost = resolve))
    const timer = setInterval(() => this.onHeartbeatExpired(), this.init.heartbeatMs)
    try {
      return await lostPromise
    } finally {
      clearInterval(timer)
      this.lost = null
    }
  }

  private async resolveServer(): Promise<Endpoint> {
    const ep = parseEndpoint(this.init.server, DEFAULT_SERVER_PORT)
    if (net.isIP(ep.host)) return ep
    try {
      const { address } = await dns.lookup(ep.host, { family: 4 })
      return { host: address, port: ep.port }
    } catch (err) {
      throw new NatdError('SERVER_UNREACHABLE', `cannot resolve ${ep.host}: ${(err as Error).message}`, { cause: err })
    }
  }

  private signedRegister(nonce: Uint8Array, serverTime: number): Buffer {
    const publicKey = this.c.keyPair.publicKey
    const unsigned = encodeRegisterUnsigned({
      nonce,
      time: serverTime,
      publicKey,
      name: this.init.name,
      tcpPort: this.init.tcpPort,
      nat: this.c.nat(),
      lan: this.c.lan(),
      proof: this.init.secretKey ? secretProof(this.init.secretKey, nonce, publicKey) : new Uint8Array(0)
    })
    return encodeRegister(unsigned, sign(unsigned, this.c.keyPair.secretKey))
  }

  private async registerUdp(server: Endpoint): Promise<Endpoint | null> {
    const challenge = await this.udpRequest(encode({ type: 'hello' }), ['challenge'], server)
    if (challenge.type !== 'challenge') throw new NatdError('INTERNAL', 'expected a challenge')
    const ack = await this.udpRequest(this.signedRegister(challenge.nonce, challenge.serverTime), ['register-ack'], server)
    if (ack.type !== 'register-ack') throw new NatdError('INTERNAL', 'expected a register ack')
    this.token = ack.token
    return ack.observed
  }

  private async udpRequest(buf: Buffer, types: Message['type'][], server: Endpoint): Promise<Message> {
    for (let i = 0; i < UDP_REQUEST_TRIES; i++) {
      const reply = new Promise<Message | null>((resolve) => {
        this.udpWaiter = { types, resolve }
        setTimeout(() => resolve(null), UDP_REQUEST_TIMEOUT_MS).unref()
      })
      this.c.udp.send(buf, server)
      const msg = await reply
      this.udpWaiter = null
      if (this.abort.signal.aborted) throw new NatdError('SERVER_UNREACHABLE', 'stopping')
      if (msg?.type === 'error') throw serverError(msg)
      if (msg) return msg
    }
    throw new NatdError('SERVER_UNREACHABLE', `no UDP answer from ${formatEndpoint(server)} (${UDP_REQUEST_TRIES} tries)`)
  }

  private async registerTcp(server: Endpoint): Promise<Endpoint | null> {
    const control = await ControlConnection.connect(server, this.init.tcpPort, this.log)
    this.control = control
    control.on('message', (msg) => this.onServerMessage(msg))
    control.once('close', () => this.lost?.(new NatdError('SERVER_UNREACHABLE', 'control connection to the server closed')))
    return control.register((nonce, serverTime) => this.signedRegister(nonce, serverTime))
  }

  /** What the server sends on its own over the control connection (replies go to their requests). */
  private onServerMessage(msg: Message): void {
    switch (msg.type) {
      case 'pong':
        this.missedTcp = 0
        return
      case 'peer-event':
        this.emit('peer', msg.event, msg.peer)
        return
      case 'introduction':
        // reqId 0: a peer asked for us. Another is a reply that came after its request gave up.
        if (msg.reqId === 0) this.emit('introduction', { introId: msg.introId, initiator: msg.initiator, via: msg.via, peer: msg.peer })
        return
      case 'error':
        if (msg.reqId) return // a late reply
        this.log.warn('server error', { code: msg.code, message: msg.message })
        this.lost?.(serverError(msg))
        return
      default:
        return
    }
  }

  private request(msg: Extract<OutgoingMessage, { reqId: number }>): Promise<Message> {
    if (this.state.kind !== 'registered' || !this.control) {
      return Promise.reject(new NatdError('NOT_REGISTERED', `not registered with ${this.init.server} (${this.lastError?.message ?? this.state.kind})`))
    }
    return this.control.request(msg)
  }

  // --- heartbeats -----------------------------------------------------------

  private onHeartbeatExpired(): void {
    if (this.state.kind !== 'registered' || !this.serverEndpoint || !this.token) return
    if (this.missedUdp >= MISSED_HEARTBEATS_LOST || this.missedTcp >= MISSED_HEARTBEATS_LOST) {
      this.lost?.(new NatdError('SERVER_UNREACHABLE', `${MISSED_HEARTBEATS_LOST} heartbeats unanswered`))
      return
    }
    const seq = ++this.heartbeatSeq
    this.heartbeatSentAt.set(seq, this.c.clock.now())
    if (this.heartbeatSentAt.size > 8) this.heartbeatSentAt.delete(this.heartbeatSentAt.keys().next().value!)
    this.missedUdp++
    this.missedTcp++
    this.c.udp.send(encode({ type: 'heartbeat', token: this.token, seq }), this.serverEndpoint)
    void this.control?.send({ type: 'ping', seq })
  }

  private onHeartbeatAck(msg: Extract<Message, { type: 'heartbeat-ack' }>): void {
    const sent = this.heartbeatSentAt.get(msg.seq)
    if (sent === undefined) return
    this.heartbeatSentAt.delete(msg.seq)
    this.missedUdp = 0
    if (msg.status === 'unknown') {
      this.lost?.(new NatdError('NOT_REGISTERED', 'the server no longer knows us (restarted?)'))
      return
    }
    this.rttMs = this.c.clock.now() - sent
    this.lastHeartbeatAt = this.c.clock.now()
    if (msg.status === 'moved' && this.state.kind === 'registered') {
      const from = this.state.udp
      this.log.info('nat mapping changed, registering again', { from: formatEndpoint(from), to: formatEndpoint(msg.observed) })
      void this.reregisterUdp()
    }
  }

  private async reregisterUdp(): Promise<void> {
    if (!this.serverEndpoint) return
    try {
      const udp = await this.registerUdp(this.serverEndpoint)
      if (this.state.kind === 'registered') this.state = { ...this.state, udp }
    } catch (err) {
      this.lost?.(toNatdError(err, 'SERVER_UNREACHABLE'))
    }
  }

  private closeTcp(): void {
    this.control?.close()
    this.control = null
  }

  private transition(next: ClientState): void {
    const prev = this.state
    this.state = next
    if (next.kind === 'backoff') this.lastError = next.error
    if (next.kind === 'registered') this.lastError = null
    if (prev.kind === next.kind) {
      if (next.kind === 'backoff') this.log.debug('retrying server', { attempt: next.attempt, err: next.error.message })
      return
    }
    const server = this.init.server
    switch (next.kind) {
      case 'registered':
        this.log.info('registered', { server, publicUdp: formatEndpoint(next.udp), publicTcp: formatEndpoint(next.tcp) })
        break
      case 'backoff': {
        const level = next.error.code === 'NAME_TAKEN' || next.error.code === 'UNAUTHORIZED' ? 'error' : 'warn'
        this.log[level](prev.kind === 'registered' ? 'lost the server, retrying' : 'cannot register, retrying', { server, code: next.error.code, err: next.error.message })
        break
      }
      case 'connecting':
        if (prev.kind === 'backoff') break // the retry loop: logged once when backoff began
        this.log.info('connecting', { server })
        break
      case 'stopped':
        this.log.info('stopped')
        break
    }
    this.emit('state', next, this.lastError)
  }

  /**
   * Registers over UDP again so the server learns what changed on our side (our NAT
   * verdict after a netcheck). Does nothing unless registered; never rejects (a failure
   * ends the session, which reconnects).
   */
  async refreshRegistration(): Promise<void> {
    if (this.state.kind !== 'registered') return
    await this.reregisterUdp()
  }
}
