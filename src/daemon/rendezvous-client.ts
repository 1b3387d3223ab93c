/**
 * The agent's side of the rendezvous protocol: register over a TCP control connection
 * from a fixed local port (the one TCP punching reuses), inside a Noise session with the
 * server's pinned key; then sealed heartbeats over UDP (the one socket that also carries
 * punching and tunnels, so the server learns the mapping peers must punch to) and pings
 * over TCP; reconnect when the server is lost.
 *
 *   connecting ──ok──▶ registered ──lost──▶ backoff ──timer──▶ connecting
 *        └────fail────────────────────────────▲
 *
 * The state changes in one place, transition(), which logs each change once
 * (client-state.ts); retries inside a state log at debug only. The UDP side, sealed
 * heartbeats and their acks, is server-heartbeats.ts.
 */
import { EventEmitter } from 'node:events'
import { RefusalLog } from '../common/refusal-log.js'
import { formatEndpoint, sameEndpoint, type Endpoint } from '../protocol/endpoint.js'
import { NatdError, toNatdError } from '../protocol/errors.js'
import { peerId, timingSafeEqual, type KeyPair } from '../protocol/identity.js'
import type { TimerClock } from '../protocol/clock.js'
import type { Logger } from '../protocol/log.js'
import type { Message, NatVerdict, OutgoingMessage, PeerDownReason, PeerRecord, Via } from '../protocol/rendezvous.js'
import type { Introduction } from '../tunnel/paths.js'
import { ControlConnection, serverError, TCP_REGISTER_TIMEOUT_MS, URGENT_CONNECT_TIMEOUT_MS } from './control-connection.js'
import { PathProbe, type ProbeResult } from './path-probe.js'
import { resolveServers, type ServerSpec } from './server-address.js'
import { rankServers } from './server-choice.js'
import { reconnectDelay } from './reconnect-policy.js'
import { logClientMove, type ClientState } from './client-state.js'
import { ServerHeartbeats, type HeartbeatAck, type UdpSender } from './server-heartbeats.js'
import { namedRecord, SERVER_RECORD_LOG } from './server-records.js'
import { signedRegister } from './signed-register.js'

// The UDP side (heartbeats and their acks) lives in server-heartbeats.ts; re-exported here.
export { UDP_REQUEST_TIMEOUT_MS, UDP_REQUEST_TRIES, UNSEALED_LOG_MS, type UdpSender } from './server-heartbeats.js'
/** Heartbeats unanswered in a row before the server counts as lost. */
export const MISSED_HEARTBEATS_LOST = 3

export type { ClientState } from './client-state.js'

export interface RendezvousClientInit {
  server: ServerSpec
  name: string
  heartbeatMs: number
  /** Local TCP port for the control connection (same number as the UDP port). */
  tcpPort: number
  secretKey: Buffer | null
}

/** The server key the agent holds: pinned by `--server …#KEY`, or learnt on first use. */
export interface ServerKeyStore {
  /** The key to insist on, or null when none is pinned yet. */
  expected(): Uint8Array | null
  /** First contact: the key the server proved (pin it). */
  learned(key: Uint8Array): void
}

export interface RendezvousClientComponents {
  udp: UdpSender
  keyPair: KeyPair
  serverKey: ServerKeyStore
  log: Logger
  clock: TimerClock
  lan: () => Endpoint[]
  nat: () => NatVerdict
  /** Whether we have an IPv6 socket and a global IPv6 address (then we heartbeat the server's IPv6 socket too); default no. */
  ipv6?: () => boolean
  /** True while a tunnel waits for a new path (it migrates): reconnect with URGENT_BACKOFF_CAP_MS, connect within URGENT_CONNECT_TIMEOUT_MS. */
  urgent?: () => boolean
}

interface ClientEvents {
  state: [state: ClientState, error: NatdError | null]
  peer: [event: 'up' | 'down', peer: PeerRecord, reason: PeerDownReason | undefined]
  introduction: [intro: Introduction]
  /** The server saw our heartbeats come from another mapping (our NAT or address changed). */
  moved: []
}

export class RendezvousClient extends EventEmitter<ClientEvents> {
  state: ClientState = { kind: 'connecting', attempt: 0 }
  lastError: NatdError | null = null
  serverEndpoint: Endpoint | null = null
  lastHeartbeatAt: number | null = null
  rttMs: number | null = null

  private readonly log: Logger
  /** The server's records refused (server-records.ts). */
  private readonly badRecords: RefusalLog
  /** Sealed heartbeats over UDP and their acks. */
  private readonly heartbeats: ServerHeartbeats
  private readonly abort = new AbortController()
  private control: ControlConnection | null = null
  /** The session's server answers LOOKUP (peer()). */
  private lookupSupported = false
  private missedUdp = 0
  private missedTcp = 0
  private lost: ((err: NatdError) => void) | null = null
  /** A path check found the session dead: register again at once, without backoff. */
  private reconnectNow = false
  /** When the server last saw our mapping move: a session lost soon after registers again at once. */
  private movedAt = -Infinity
  /** Our UDP mapping as the last session's server saw it (a new session seen elsewhere means we moved). */
  private lastUdp: Endpoint | null = null
  /** Path checks waiting for the ack of their heartbeat and the pong of their ping. */
  private readonly pathProbe: PathProbe

  constructor(
    private readonly init: RendezvousClientInit,
    private readonly c: RendezvousClientComponents
  ) {
    super()
    this.log = c.log
    this.badRecords = new RefusalLog(c.log, SERVER_RECORD_LOG, c.clock)
    const hooks = { acked: (rttMs: number) => this.onHeartbeatAck(rttMs), sessionAck: (msg: HeartbeatAck) => this.onSessionAck(msg) }
    this.heartbeats = new ServerHeartbeats(c.udp, () => c.ipv6?.() ?? false, hooks, this.log, c.clock)
    this.pathProbe = new PathProbe(c.clock)
  }

  /** Our IPv6 endpoint as the server's IPv6 socket sees it (our IPv6 candidate, protocol/ipv6.ts); null while unknown. */
  get udp6(): Endpoint | null {
    return this.heartbeats.udp6
  }

  /** Runs until stop(); never rejects. */
  async run(): Promise<void> {
    let attempt = 0
    while (!this.abort.signal.aborted) {
      this.transition({ kind: 'connecting', attempt })
      const started = this.c.clock.now()
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
      const delay = reconnectDelay({ attempt, reconnectNow: this.reconnectNow, sinceMovedMs: this.c.clock.now() - this.movedAt, urgent: this.c.urgent?.() ?? false, tookMs: this.c.clock.now() - started })
      this.reconnectNow = false
      this.transition({ kind: 'backoff', attempt, until: this.c.clock.now() + delay, error })
      await this.c.clock.sleep(delay, this.abort.signal)
      if (this.abort.signal.aborted) break
    }
    this.transition({ kind: 'stopped' })
  }

  /** Says goodbye to the server (peers learn at once) and stops. */
  async stop(): Promise<void> {
    if (this.control && this.state.kind === 'registered') await this.control.send({ type: 'bye' })
    this.abort.abort()
    this.lost?.(new NatdError('SERVER_UNREACHABLE', 'stopping'))
    this.closeTcp()
    this.heartbeats.flush()
  }

  /** Local port of the control connection (TCP punching reuses it); 0 while disconnected. */
  get tcpLocalPort(): number {
    return this.control?.localPort ?? 0
  }

  /** Peer list from the server. */
  async list(): Promise<PeerRecord[]> {
    const reply = await this.request({ type: 'list', reqId: 0 })
    if (reply.type !== 'peers') throw new NatdError('INTERNAL', `unexpected ${reply.type}`)
    return reply.peers.filter((p) => namedRecord(p, this.badRecords, this.init.server.text, 'list'))
  }

  /**
   * One peer's record on the server now (null when it has none): a LOOKUP where the
   * server understands it (REGISTER_ACK's features), the whole LIST from an older server
   * (which would end the connection on an unknown request).
   */
  async peer(publicKey: Uint8Array): Promise<PeerRecord | null> {
    if (!this.lookupSupported) return (await this.list()).find((p) => timingSafeEqual(p.publicKey, publicKey)) ?? null
    const reply = await this.request({ type: 'lookup', reqId: 0, publicKey })
    if (reply.type !== 'peers') throw new NatdError('INTERNAL', `unexpected ${reply.type}`)
    const found = reply.peers[0]
    return found && timingSafeEqual(found.publicKey, publicKey) && namedRecord(found, this.badRecords, this.init.server.text, 'lookup') ? found : null
  }

  /** Asks the server to introduce us to `target`; resolves with our side of the introduction. */
  async introduce(target: string, via: Via): Promise<Introduction> {
    const reply = await this.request({ type: 'introduce', reqId: 0, target, via })
    if (reply.type !== 'introduction') throw new NatdError('INTERNAL', `unexpected ${reply.type}`)
    if (!namedRecord(reply.peer, this.badRecords, this.init.server.text, 'introduction')) throw new NatdError('PEER_MISMATCH', `the server introduced a peer whose name is not a valid name, for ${target}`)
    return { introId: reply.introId, punchKey: reply.punchKey, initiator: reply.initiator, via: reply.via, peer: reply.peer, relay: reply.relay ?? null }
  }

  /** Datagrams from the shared UDP socket that carry our magic. */
  onDatagram(buf: Buffer, from: Endpoint): void {
    this.heartbeats.onDatagram(buf, from, this.serverEndpoint)
  }

  // --- one registered session ---------------------------------------------

  /** Connects and registers; resolves with the reason once the session is lost. */
  private async session(): Promise<NatdError> {
    const { tcpObserved, udpObserved } = await this.registerHome(await rankServers(await resolveServers(this.init.server), undefined, this.c.clock))
    this.missedUdp = 0
    this.missedTcp = 0
    this.lastHeartbeatAt = this.c.clock.now()
    this.transition({ kind: 'registered', since: this.c.clock.now(), udp: udpObserved, tcp: tcpObserved })
    const movedSince = this.lastUdp !== null && udpObserved !== null && !sameEndpoint(this.lastUdp, udpObserved)
    this.lastUdp = udpObserved
    if (movedSince) this.emit('moved')
    const lostPromise = new Promise<NatdError>((resolve) => (this.lost = resolve))
    const timer = this.c.clock.setInterval(() => this.onHeartbeatExpired(), this.init.heartbeatMs)
    try {
      return await lostPromise
    } finally {
      this.c.clock.clear(timer)
      this.lost = null
    }
  }

  /**
   * Registers with the first server of `servers` (fastest first) that takes us: with
   * several instances, one that is down or refuses costs a try, not the session.
   */
  private async registerHome(servers: Endpoint[]): Promise<{ tcpObserved: Endpoint | null; udpObserved: Endpoint | null }> {
    let lastErr: unknown = new NatdError('SERVER_UNREACHABLE', 'no server')
    for (const server of servers) {
      this.serverEndpoint = server
      try {
        const tcpObserved = await this.registerTcp(server)
        const udpObserved = await this.heartbeats.bind(server, this.abort.signal)
        return { tcpObserved, udpObserved }
      } catch (err) {
        lastErr = err
        this.closeTcp()
        if (this.abort.signal.aborted) break
        if (servers.length > 1) this.log.debug('server did not take us, trying the next', { server: formatEndpoint(server), err: (err as Error).message })
      }
    }
    throw lastErr
  }

  private async registerTcp(server: Endpoint): Promise<Endpoint | null> {
    const expected = this.init.server.key ?? this.c.serverKey.expected()
    const howToRepin = `start natd with --server ${this.init.server.text}#<its key> to pin it`
    // While a tunnel migrates, a connect whose SYN was lost (a link dark when it began) is not waited out (URGENT_CONNECT_TIMEOUT_MS).
    const connectMs = this.c.urgent?.() ? URGENT_CONNECT_TIMEOUT_MS : TCP_REGISTER_TIMEOUT_MS
    const control = await ControlConnection.connect(server, this.init.tcpPort, this.c.keyPair, { expected, howToRepin }, this.log, this.c.clock, connectMs)
    this.control = control
    const stored = this.c.serverKey.expected()
    if (!stored || !timingSafeEqual(stored, control.serverKey)) {
      // First contact, or a key pinned by `#KEY` that differs from the one learnt before:
      // keep the store in step, so a later start without `#KEY` insists on the same key.
      this.c.serverKey.learned(control.serverKey)
      if (!expected) this.log.info('pinned the server key on first use', { server: this.init.server.text, key: peerId(control.serverKey) })
    }
    control.on('message', (msg) => this.onServerMessage(msg))
    // (only while it is the session's: a candidate given up on closes too)
    control.once('close', () => this.control === control && this.lost?.(new NatdError('SERVER_UNREACHABLE', 'control connection to the server closed')))
    return this.register(control)
  }

  private async register(control: ControlConnection): Promise<Endpoint | null> {
    const { name, tcpPort, secretKey } = this.init
    const reg = await control.register((nonce, serverTime) => signedRegister({ keyPair: this.c.keyPair, name, tcpPort, secretKey, nat: this.c.nat(), lan: this.c.lan() }, nonce, serverTime))
    this.heartbeats.registered(reg.token, reg.udpKey, reg.server6)
    this.lookupSupported = reg.lookup
    return reg.observed
  }

  /** What the server sends on its own over the control connection (replies go to their requests). */
  private onServerMessage(msg: Message): void {
    switch (msg.type) {
      case 'pong':
        this.missedTcp = 0
        this.pathProbe.onPong(msg.seq)
        return
      case 'peer-event':
        if (namedRecord(msg.peer, this.badRecords, this.init.server.text, 'peer event')) this.emit('peer', msg.event, msg.peer, msg.reason)
        return
      case 'introduction':
        // reqId 0: a peer asked for us. Another is a reply that came after its request gave up.
        if (msg.reqId === 0 && namedRecord(msg.peer, this.badRecords, this.init.server.text, 'introduction')) this.emit('introduction', { introId: msg.introId, punchKey: msg.punchKey, initiator: msg.initiator, via: msg.via, peer: msg.peer, relay: msg.relay ?? null })
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
      return Promise.reject(new NatdError('NOT_REGISTERED', `not registered with ${this.init.server.text} (${this.lastError?.message ?? this.state.kind})`))
    }
    return this.control.request(msg)
  }

  // --- heartbeats -----------------------------------------------------------

  private onHeartbeatExpired(): void {
    if (this.state.kind !== 'registered' || !this.serverEndpoint) return
    if (this.missedUdp >= MISSED_HEARTBEATS_LOST || this.missedTcp >= MISSED_HEARTBEATS_LOST) {
      this.lost?.(new NatdError('SERVER_UNREACHABLE', `${MISSED_HEARTBEATS_LOST} heartbeats unanswered`))
      return
    }
    this.missedUdp++
    this.missedTcp++
    const seq = this.heartbeats.send(this.serverEndpoint)
    void this.control?.send({ type: 'ping', seq }) // fire and forget: resolves once flushed or after 300 ms, never rejects; a lost ping counts as missed
  }

  /** Any answered IPv4 heartbeat of ours (server-heartbeats.ts). */
  private onHeartbeatAck(rttMs: number): void {
    this.missedUdp = 0
    this.rttMs = rttMs
    this.lastHeartbeatAt = this.c.clock.now()
  }

  /** An answered heartbeat once the session's mapping is known: path checks, and a mapping the server saw move. */
  private onSessionAck(msg: HeartbeatAck): void {
    this.pathProbe.onAck(msg.seq, msg.status)
    if (msg.status === 'moved' && this.state.kind === 'registered') {
      // The server took the new mapping from the sealed heartbeat already.
      this.log.info('nat mapping changed', { from: formatEndpoint(this.state.udp), to: formatEndpoint(msg.observed) })
      this.state = { ...this.state, udp: msg.observed }
      this.lastUdp = msg.observed
      this.movedAt = this.c.clock.now()
      this.emit('moved')
      this.dropMovedControl()
    }
  }

  /**
   * Checks our side of the paths now (a tunnel went silent: daemon/path-check.ts): a
   * sealed heartbeat (the server takes a new mapping from it and says 'moved') and a ping
   * on the control connection. A control connection that does not answer is dropped and
   * the agent registers again at once (its NAT mapping or address changed under it).
   * Null when not registered. Never rejects.
   */
  async probe(): Promise<ProbeResult | null> {
    const control = this.control
    const server = this.serverEndpoint
    if (this.state.kind !== 'registered' || !control || !server) return null
    const r = await this.pathProbe.run({ control, server, rttMs: this.rttMs, sendHeartbeat: (to) => this.heartbeats.send(to) })
    if (r.control === 'lost') {
      this.reconnectNow = true
      if (this.control === control) this.lost?.(new NatdError('SERVER_UNREACHABLE', `the control connection did not answer a path check in ${r.waitedMs} ms`))
    }
    return { mapping: r.mapping, control: r.control }
  }

  /**
   * Our UDP mapping moved: the control connection, TCP from the same host through the
   * same NAT, lost its mapping too (a new address, or state the NAT flushed: its next
   * segment leaves from another port and the server resets it). Waiting for it to be
   * found dead (a path check's unanswered ping, or three heartbeats: 60 s at the
   * default) kept a moved host unregistered, so its peers' introductions could not reach
   * it (bench/roaming.ts: an 8.9 s stall after a move). It is dropped now and the agent
   * registers again at once; should the connection have survived, that costs one
   * handshake, and peers see nothing (no down event within the server's grace).
   */
  private dropMovedControl(): void {
    if (!this.control) return
    this.reconnectNow = true
    this.lost?.(new NatdError('SERVER_UNREACHABLE', 'our NAT mapping moved: the control connection went with it'))
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
    logClientMove(this.log, prev, next, this.init.server.text, this.serverEndpoint)
    if (prev.kind !== next.kind) this.emit('state', next, this.lastError)
  }

  /**
   * Registers over UDP again so the server learns what changed on our side (our NAT
   * verdict after a netcheck). Does nothing unless registered; never rejects (a failure
   * ends the session, which reconnects).
   */
  async refreshRegistration(): Promise<void> {
    if (this.state.kind !== 'registered' || !this.control) return
    try {
      await this.register(this.control)
    } catch (err) {
      this.lost?.(toNatdError(err, 'SERVER_UNREACHABLE'))
    }
  }
}
