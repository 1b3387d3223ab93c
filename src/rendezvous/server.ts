/**
 * natd-rendezvous: registry, heartbeats, peer lists, introductions, STUN reflection.
 *
 * UDP on `port` (sealed heartbeats + STUN) and `altPort` (STUN, so an agent can tell
 * whether its NAT mapping depends on the destination); TCP on `port`: control
 * connections (a Noise session with the server's key: registration, peer lists,
 * introductions) and relay connections (protocol/rendezvous.ts draws both).
 * The server never answers a UDP source it cannot verify, except STUN Binding (RFC 8489,
 * and RFC 3489 requests without the magic cookie), whose answer is at most the request +
 * 36 bytes, sent to the source's own IP (see stun-responder.ts); a heartbeat ack is
 * sealed and never larger than the heartbeat.
 * With `altHost`, UDP STUN also on altHost:port and altHost:altPort (RFC 5780).
 */
import dgram from 'node:dgram'
import net from 'node:net'
import type { Endpoint } from '../protocol/endpoint.js'
import { NatdError, ProtocolError, toNatdError } from '../protocol/errors.js'
import { isValidName, mac, NAME_RULE, networkSecretKey, peerId, randomBytes, secretProof, timingSafeEqual, verify, type KeyPair } from '../protocol/identity.js'
import { offeredCandidates } from '../protocol/lan.js'
import { systemClock, type Clock, type Logger } from '../protocol/log.js'
import {
  DATAGRAM_KEY_BYTES,
  decode,
  encode,
  INTRO_ID_BYTES,
  isRendezvousFrame,
  MAX_LIST_PEERS,
  MAX_UDP_FRAME_BYTES,
  opened,
  TOKEN_BYTES,
  type Message,
  type OutgoingMessage,
  type PeerRecord
} from '../protocol/rendezvous.js'
import { isStunRequestShaped } from '../protocol/stun-request.js'
import { DEFAULT_SERVER_LIMITS, INTRO_SOURCE_FACTOR, RateLimiter, type ServerLimits } from './limits.js'
import { RefusalLog } from '../common/refusal-log.js'
import { StunResponder, type StunSlot } from './stun-responder.js'
import { TcpGate, type TcpConn } from './tcp-gate.js'
import type { Cluster, RemoteIntroduction, RemotePeer } from './cluster.js'
import type { ServerMetrics } from './metrics.js'
import type { NameStore } from './name-store.js'
import { DEFAULT_NAME_TTL_MS, Registry, type RegRef, type Registration } from './registry.js'
import { Relay, type RelayLimits } from './relay.js'

/** A REGISTER's timestamp may differ from the server clock by this much (agents echo the challenge's time). */
export const REGISTER_CLOCK_SKEW_MS = 60_000
export { BACKLOG_POLL_MS, END_LINGER_MS, MAX_AGENT_MESSAGE_BYTES, MAX_CLEAR_FRAME_BYTES, MAX_RELAY_FRAME_BYTES, MAX_SEND_BACKLOG_BYTES, REQUEST_BACKLOG_BYTES, TCP_AUTH_TIMEOUT_MS } from './tcp-gate.js'

/** Refusals of one kind are counted this long before their line (common/refusal-log.ts): at most a line a second per kind, whatever the attack. */
export const REFUSAL_LOG_INTERVAL_MS = 1_000
/** Expiry sweep period; bounds how late past --peer-timeout a silent agent is dropped. */
export const EXPIRY_SWEEP_MS = 1_000
/**
 * Up to this many connected agents, every peer up/down event goes to everyone (live
 * `natctl peers` for a home network). Above it, only to the agents that were introduced
 * to that peer: telling everyone costs O(N²) when a server with 100k agents restarts.
 */
export const BROADCAST_MAX_AGENTS = 1_000
/** Contacts remembered per agent for the events above. */
export const MAX_CONTACTS = 32
/** UDP receive buffer we ask for: at 5k heartbeats/s the default 208 KiB covers ~30 ms of pause (a GC). */
export const UDP_RECV_BUFFER_BYTES = 4 * 1024 * 1024

export interface RendezvousInit {
  host: string // address to bind ('0.0.0.0' for all)
  port: number // UDP + TCP
  altPort: number // UDP, STUN only; 0 = off
  /** Second address (RFC 5780 behaviour discovery): UDP STUN on altHost:port and altHost:altPort; needs a specific `host`. */
  altHost?: string | null
  /** Network secret: only agents proving they hold it may register. */
  secret?: Uint8Array | undefined
  peerTimeoutMs: number
  /** Heartbeat interval the server suggests to agents. */
  heartbeatMs: number
  /** Relay limits; null turns relaying off (--no-relay). */
  relay?: RelayLimits | null
  /** Release a name whose holder has not been seen for this long (--name-ttl). Default: registry.ts's DEFAULT_NAME_TTL_MS. */
  nameTtlMs?: number
  /** Per-source and per-key limits (limits.ts); each missing one takes its default. */
  limits?: Partial<ServerLimits>
}

export interface RendezvousComponents {
  log: Logger
  clock?: Clock
  /** The server's identity (server-identity.ts): agents pin its public key and run Noise against it. */
  keyPair: KeyPair
  /** Name bindings (name-store.ts); default in memory. The caller closes it after stop(). */
  names?: NameStore
  /**
   * Several instances sharing one registry (cluster.ts; `--redis`). The server starts and
   * stops it; its NameStore is then a cache of the shared bindings. Default: none.
   */
  cluster?: Cluster | null
  /** Counters for --metrics (metrics.ts); default none. */
  metrics?: ServerMetrics | null
}

export class RendezvousServer {
  private readonly log: Logger
  private readonly clock: Clock
  readonly registry: Registry
  private udp: dgram.Socket | null = null
  private udpAlt: dgram.Socket | null = null
  /** STUN answers, and the UDP socket of each of its slots (main, alt-port, alt-ip, alt-both). */
  private readonly stun: StunResponder
  private readonly udpBySlot = new Map<StunSlot, dgram.Socket>()
  private tcp: net.Server | null = null
  private readonly gate: TcpGate
  private readonly connByPeer = new Map<RegRef, TcpConn>()
  private sweepTimer: NodeJS.Timeout | null = null
  private readonly secretKey: Buffer | null
  private readonly keyPair: KeyPair
  /** Heartbeat keys are derived from this and the registration (never stored per agent). */
  private readonly udpKeySecret = randomBytes(32)
  readonly relay: Relay | null
  readonly limits: ServerLimits
  private readonly refusals: RefusalLog
  private readonly registerRate: RateLimiter
  private readonly introKeyRate: RateLimiter
  private readonly introSourceRate: RateLimiter
  private readonly cluster: Cluster | null
  private readonly metrics: ServerMetrics | null

  constructor(
    private readonly init: RendezvousInit,
    components: RendezvousComponents
  ) {
    this.log = components.log
    this.clock = components.clock ?? systemClock
    this.keyPair = components.keyPair
    this.cluster = components.cluster ?? null
    this.metrics = components.metrics ?? null
    this.registry = new Registry(this.clock, init.peerTimeoutMs, { names: components.names, nameTtlMs: init.nameTtlMs })
    this.secretKey = init.secret ? networkSecretKey(init.secret) : null
    this.stun = new StunResponder({ host: init.host, port: init.port, altPort: init.altPort, altHost: init.altHost ?? null })
    this.limits = { ...DEFAULT_SERVER_LIMITS, ...init.limits }
    const L = this.limits
    this.relay = init.relay ? new Relay({ maxPermitsPerKey: L.maxRelayPermitsPerKey, ...init.relay }, this.clock, this.log.child({ component: 'relay' })) : null
    this.refusals = new RefusalLog(this.log, { windowMs: REFUSAL_LOG_INTERVAL_MS, level: 'info' })
    this.registerRate = new RateLimiter(L.registrationsPerKeyPerMinute, this.clock)
    this.introKeyRate = new RateLimiter(L.introductionsPerMinute, this.clock)
    this.introSourceRate = new RateLimiter(L.introductionsPerMinute * INTRO_SOURCE_FACTOR, this.clock)
    const gate = { limits: L, clock: this.clock, log: this.log, keyPair: this.keyPair, refusals: this.refusals, relay: this.relay }
    this.gate = new TcpGate(gate, {
      onMessage: (conn, msg) => this.onTcpMessage(conn, msg),
      bindRelay: (conn, msg) => this.bindRelay(conn, msg),
      onClose: (conn) => this.onTcpClose(conn)
    })
  }

  /**
   * What strangers currently hold on this server: connections, the unauthenticated
   * ones, and the bytes held for them (partial frames and Noise messages, early relay
   * frames). The abuse suite asserts its bounds.
   */
  stats(): { conns: number; unauth: number; heldBytes: number } {
    const gate = this.gate.stats()
    return { ...gate, heldBytes: gate.heldBytes + (this.relay?.earlyBytes ?? 0) }
  }

  async start(): Promise<void> {
    try {
      await this.listen()
      await this.cluster?.start({
        onIntroduction: (intro) => this.onRemoteIntroduction(intro),
        onPeerEvents: (event, peers) => this.onRemotePeerEvents(event, peers),
        onMoved: (peers) => peers.forEach((p) => this.movedAway(p))
      })
    } catch (err) {
      await this.stop() // release whatever did bind
      throw err
    }
    this.sweepTimer = setInterval(() => this.onSweepExpired(), EXPIRY_SWEEP_MS)
    this.sweepTimer.unref()
    this.log.info('rendezvous listening', {
      host: this.init.host,
      port: this.init.port,
      altPort: this.init.altPort || null,
      altHost: this.init.altHost ?? null,
      key: peerId(this.keyPair.publicKey),
      secret: !!this.secretKey,
      peerTimeoutMs: this.init.peerTimeoutMs,
      limits: this.limits
    })
  }

  private async listen(): Promise<void> {
    this.udp = await bindUdp(this.init.host, this.init.port, (msg, rinfo) => this.onDatagram(this.udp!, msg, rinfo))
    if (this.init.altPort) {
      this.udpAlt = await bindUdp(this.init.host, this.init.altPort, (msg, rinfo) => this.onDatagram(this.udpAlt!, msg, rinfo))
    }
    this.udpBySlot.set('main', this.udp)
    if (this.udpAlt) this.udpBySlot.set('alt-port', this.udpAlt)
    for (const slot of this.stun.slots().filter((s) => s === 'alt-ip' || s === 'alt-both')) {
      const at = this.stun.address(slot)
      const sock: dgram.Socket = await bindUdp(at.host, at.port, (msg, rinfo) => this.onDatagram(sock, msg, rinfo))
      this.udpBySlot.set(slot, sock)
    }
    this.tcp = net.createServer((socket) => this.gate.onConnection(socket))
    await new Promise<void>((resolve, reject) => {
      this.tcp!.once('error', reject)
      this.tcp!.listen({ host: this.init.host, port: this.init.port }, () => resolve())
    })
    this.tcp.on('error', (err) => this.log.error('tcp server error', { err: err.message }))
  }

  async stop(): Promise<void> {
    if (this.sweepTimer) clearInterval(this.sweepTimer)
    await this.cluster?.stop().catch((err: Error) => this.log.warn('shared registry stop failed', { err: err.message }))
    this.refusals.flush()
    this.relay?.stop()
    this.gate.closeAll()
    for (const [slot, s] of this.udpBySlot) if (slot === 'alt-ip' || slot === 'alt-both') s.close()
    this.udpBySlot.clear()
    this.udp?.close()
    this.udpAlt?.close()
    this.udp = this.udpAlt = null
    const tcp = this.tcp
    this.tcp = null
    await new Promise<void>((resolve) => (tcp?.listening ? tcp.close(() => resolve()) : resolve()))
  }

  // --- UDP -----------------------------------------------------------------

  private onDatagram(sock: dgram.Socket, buf: Buffer, rinfo: dgram.RemoteInfo): void {
    const from: Endpoint = { host: rinfo.address, port: rinfo.port }
    try {
      if (isStunRequestShaped(buf)) return this.onStun(sock, buf, from)
      if (sock !== this.udp || !isRendezvousFrame(buf) || buf.length > MAX_UDP_FRAME_BYTES) return
      this.onUdpMessage(decode(buf), from)
    } catch (err) {
      // Malformed input from an unverified (spoofable) source: never answered; counted, one line a second at most.
      this.refusals.refused('bad datagram', from, err instanceof NatdError ? err.code : 'BAD_REQUEST', (err as Error).message)
    }
  }

  private onStun(sock: dgram.Socket, buf: Buffer, from: Endpoint): void {
    const at = [...this.udpBySlot].find(([, s]) => s === sock)?.[0] ?? 'main'
    this.metrics?.stunRequest()
    const answer = this.stun.respond(buf, at, from) // see stun-responder.ts: CHANGE-REQUEST, sizes
    if (answer) this.sendUdp(this.udpBySlot.get(answer.via) ?? sock, answer.bytes, answer.to)
  }

  private onUdpMessage(msg: Message, from: Endpoint): void {
    // Only sealed heartbeats are answered; registration happens inside the Noise session.
    if (msg.type !== 'heartbeat') return
    // The hot path (every agent, every heartbeat interval): one hash, nothing built per agent.
    const ref = this.registry.byTokenBytes(msg.token)
    if (ref === undefined) return // unknown (the server restarted?): the agent notices its TCP session end
    const key = this.udpKeyOf(ref, msg.token)
    if (!opened(msg, key) || !this.registry.acceptHeartbeat(ref, msg.seq)) return // forged, or replayed
    let status: 'ok' | 'moved' = 'ok'
    if (!this.registry.udpIs(ref, from)) {
      // The first heartbeat of a session, or a NAT that gave the agent a new mapping.
      this.registry.setUdp(ref, from)
      status = 'moved'
      if (this.cluster) this.cluster.online(this.registry.peer(ref)!) // peers elsewhere punch to the new mapping
    }
    this.registry.touch(ref)
    this.sendUdp(this.udp!, encode({ type: 'heartbeat-ack', seq: msg.seq, status, observed: from, key }), from)
  }

  /** The key that seals one registration's heartbeats in its current session (REGISTER_ACK hands it out). */
  private udpKeyOf(ref: RegRef, token: Uint8Array): Buffer {
    const epoch = Buffer.alloc(4)
    epoch.writeUInt32BE(this.registry.epochOf(ref))
    return mac(this.udpKeySecret, token, epoch)
  }

  private sendUdp(sock: dgram.Socket, buf: Buffer, to: Endpoint): void {
    sock.send(buf, to.port, to.host, (err) => {
      if (err) this.log.debug('udp send failed', { to: `${to.host}:${to.port}`, err: err.message })
    })
  }

  // --- registration --------------------------------------------------------

  /** A REGISTER inside the Noise session of `conn`: the key that signed it must be the one that ran the handshake. */
  private checkRegister(msg: Extract<Message, { type: 'register' }>, conn: TcpConn): void {
    const sessionKey = conn.session?.remotePublicKey
    if (!sessionKey || !timingSafeEqual(sessionKey, msg.publicKey)) throw new NatdError('UNAUTHORIZED', 'the registration key is not the key of this session')
    if (!this.registerRate.take(sessionKey.toString('hex'))) {
      throw new NatdError('RATE_LIMITED', `this key registered ${this.limits.registrationsPerKeyPerMinute} times in the last minute; try again shortly`)
    }
    if (!timingSafeEqual(msg.nonce, conn.nonce)) throw new NatdError('UNAUTHORIZED', 'stale or foreign registration nonce')
    if (Math.abs(msg.time - this.clock.now()) > REGISTER_CLOCK_SKEW_MS) throw new NatdError('UNAUTHORIZED', 'registration timestamp out of range')
    if (!verify(msg.signed, msg.signature, msg.publicKey)) throw new NatdError('UNAUTHORIZED', 'bad registration signature')
    if (this.secretKey && !verifyProof(this.secretKey, msg.nonce, msg.publicKey, msg.proof)) {
      throw new NatdError('UNAUTHORIZED', 'this server needs the network secret (natd --secret-file)')
    }
    if (!isValidName(msg.name)) throw new NatdError('BAD_REQUEST', `bad name: ${NAME_RULE}`)
  }

  /**
   * Several instances: the name is claimed in the shared registry first (atomically, so two
   * instances cannot give it to two keys), then bound in this instance's cache of it.
   * Redis away: an agent whose binding this instance knows registers again (known
   * agents keep working); a name this instance has not seen bound to the key waits.
   */
  private async claimShared(cluster: Cluster, name: string, key: Uint8Array): Promise<void> {
    const now = this.clock.now()
    try {
      await cluster.claimName(name, key, now, this.init.nameTtlMs ?? DEFAULT_NAME_TTL_MS)
    } catch (err) {
      if (toNatdError(err).code !== 'TIMEOUT' || this.registry.nameStore.nameOf(key) !== name) throw err
    }
    this.registry.nameStore.bind(name, key, now)
  }

  /** A checked REGISTER (checkRegister; claimShared with several instances) enters the registry. */
  private acceptRegister(msg: Extract<Message, { type: 'register' }>, conn: TcpConn): Registration {
    const { ref, isNew } = this.registry.register({
      publicKey: Buffer.from(msg.publicKey),
      name: msg.name,
      // Private addresses, and ports the agent's gateway mapped at the address we see it
      // at (protocol/lan.ts): never another public address, peers would probe it.
      lan: offeredCandidates(msg.lan, conn.remote.host),
      nat: msg.nat,
      token: randomBytes(TOKEN_BYTES),
      tcp: conn.remote
    })
    this.registry.beginSession(ref) // a new heartbeat key: the last session's datagrams no longer count
    const reg = this.registry.get(ref)!
    this.cluster?.online(this.registry.record(reg), this.clock.now())
    if (isNew) {
      this.log.info('agent registered', { name: reg.name, id: reg.id.slice(0, 8), udp: fmt(reg.udp), tcp: fmt(reg.tcp) })
      this.broadcast(ref, { type: 'peer-event', event: 'up', peer: this.registry.record(reg) })
    }
    return reg
  }

  private registerAck(reg: Registration, observed: Endpoint): OutgoingMessage {
    const udpKey = this.udpKeyOf(reg.ref, reg.token)
    return { type: 'register-ack', token: reg.token, udpKey, observed, heartbeatMs: this.init.heartbeatMs, peerTimeoutMs: this.init.peerTimeoutMs }
  }

  private sweeps = 0

  private onSweepExpired(): void {
    // Once a minute, forget the contacts of agents the registry has forgotten.
    if (++this.sweeps % 60 === 0) {
      for (const ref of this.contacts.keys()) if (!this.registry.has(ref)) this.contacts.delete(ref)
      for (const [k, refs] of this.remoteContacts) {
        const kept = refs.filter((ref) => this.registry.has(ref))
        if (kept.length) this.remoteContacts.set(k, kept)
        else this.remoteContacts.delete(k)
      }
    }
    this.relay?.prune()
    for (const r of [this.registerRate, this.introKeyRate, this.introSourceRate]) r.sweep()
    this.gate.sweep()
    for (const reg of this.registry.expire()) {
      this.log.info('agent timed out', { name: reg.name, id: reg.id.slice(0, 8) })
      this.closeConnOf(reg.ref)
      this.wentDown(reg.ref, this.registry.record(reg))
    }
  }

  /** A local agent went offline: its peers here and on the other instances hear of it. */
  private wentDown(ref: RegRef, peer: PeerRecord): void {
    const down = { ...peer, online: false }
    this.cluster?.offline(down, this.clock.now())
    this.broadcast(ref, { type: 'peer-event', event: 'down', peer: down })
  }

  /** Tells the other connected agents about `about` (all of them, or its contacts on a big server). */
  private broadcast(about: RegRef, msg: OutgoingMessage): void {
    const bytes = encode(msg)
    if (this.connByPeer.size <= BROADCAST_MAX_AGENTS) {
      for (const c of this.gate.conns) if (c.reg !== null && c.reg !== about) this.gate.writeSession(c, bytes)
      return
    }
    for (const ref of this.contacts.get(about) ?? []) {
      const c = this.connByPeer.get(ref)
      if (c) this.gate.writeSession(c, bytes)
    }
  }

  /** Agents introduced to each other hear of each other's comings and goings. */
  private readonly contacts = new Map<RegRef, RegRef[]>()

  private addContact(a: RegRef, b: RegRef): void {
    const list = this.contacts.get(a) ?? []
    if (list.includes(b)) return
    list.push(b)
    if (list.length > MAX_CONTACTS) list.shift()
    this.contacts.set(a, list)
  }

  // --- TCP -----------------------------------------------------------------

  private onTcpMessage(conn: TcpConn, msg: Message): void {
    if (msg.type === 'register') return this.settle(conn, this.onRegister(conn, msg))
    if (msg.type === 'release') return this.settle(conn, this.onRelease(conn, msg))
    const ref = conn.reg
    if (ref === null) throw new ProtocolError('UNAUTHORIZED', `${msg.type} before registration`)
    if (!this.registry.isOnline(ref)) {
      // Timed out (or forgotten) while the connection lingered: the agent must register again.
      this.gate.send(conn, { type: 'error', reqId: 0, code: 'NOT_REGISTERED', message: 'registration expired' })
      this.gate.end(conn)
      return
    }
    this.registry.touch(ref)
    switch (msg.type) {
      case 'ping':
        return this.gate.send(conn, { type: 'pong', seq: msg.seq })
      case 'list':
        return this.settle(conn, this.onList(conn, ref, msg.reqId))
      case 'introduce':
        return this.settle(conn, this.onIntroduce(conn, ref, msg))
      case 'bye': {
        const reg = this.registry.get(ref)!
        this.log.info('agent left', { name: reg.name, id: reg.id.slice(0, 8) })
        if (this.registry.drop(ref)) this.wentDown(ref, this.registry.peer(ref)!)
        this.gate.end(conn)
        return
      }
      default:
        throw new ProtocolError('BAD_REQUEST', `unexpected ${msg.type} on the control connection`)
    }
  }

  /** A request answered asynchronously (several instances ask Redis): a bug in it ends the connection, never the server. */
  private settle(conn: TcpConn, work: Promise<void>): void {
    work.catch((err: Error) => {
      this.log.error('request failed', { err: err.message, from: fmt(conn.remote) })
      conn.socket.destroy()
    })
  }

  /** REGISTER (never rejects): checked, claimed in the shared registry when there is one, entered, acked. */
  private async onRegister(conn: TcpConn, msg: Extract<Message, { type: 'register' }>): Promise<void> {
      try {
        this.checkRegister(msg, conn)
        if (this.cluster) {
          await this.claimShared(this.cluster, msg.name, msg.publicKey)
          if (conn.socket.destroyed) return
        }
        const reg = this.acceptRegister(msg, conn)
        const previous = this.connByPeer.get(reg.ref)
        if (previous && previous !== conn) previous.socket.destroy()
        conn.reg = reg.ref
        this.connByPeer.set(reg.ref, conn)
        this.gate.authenticated(conn)
        conn.socket.setKeepAlive(true, 10_000)
        conn.socket.once('end', () => this.endedByAgent.add(conn))
        this.gate.send(conn, this.registerAck(reg, conn.remote))
        this.metrics?.registration('ok')
      } catch (err) {
        this.metrics?.registration('refused')
        const e = toNatdError(err)
        this.refusals.refused('registration refused', conn.remote, e.code, e.message)
        this.gate.send(conn, { type: 'error', reqId: 0, code: e.code, message: e.message })
        this.gate.end(conn)
      }
  }

  /** LIST (never rejects): this instance's agents, and with several instances the others' online ones. */
  private async onList(conn: TcpConn, ref: RegRef, reqId: number): Promise<void> {
    const local = this.registry.peersFor(ref, MAX_LIST_PEERS)
    let remote: PeerRecord[] = []
    if (this.cluster) {
      try {
        remote = await this.cluster.list(MAX_LIST_PEERS)
      } catch {
        // Redis away: this instance's agents only (the cluster logged it)
      }
      const here = new Set(local.filter((p) => p.online).map((p) => Buffer.from(p.publicKey).toString('hex')))
      remote = remote.filter((p) => !here.has(Buffer.from(p.publicKey).toString('hex')))
    }
    const online = local.filter((p) => p.online)
    const peers = [...online, ...remote, ...local.filter((p) => !p.online && !remote.some((r) => r.name === p.name))].slice(0, MAX_LIST_PEERS)
    if (!conn.socket.destroyed) this.gate.send(conn, { type: 'peers', reqId, peers })
  }

  /** RELEASE (never rejects): the key of this session gives up its name (natd release-name); it is dropped if online. */
  private async onRelease(conn: TcpConn, msg: Extract<Message, { type: 'release' }>): Promise<void> {
    const key = conn.session?.remotePublicKey
    try {
      if (!key) throw new NatdError('UNAUTHORIZED', 'no session key')
      if (this.cluster) {
        if (!(await this.cluster.releaseName(msg.name, key))) throw new NatdError('PEER_UNKNOWN', `no name ${msg.name} is bound on this server`)
        this.registry.nameStore.bind(msg.name, key, this.clock.now()) // the cache agrees, so the registry releases it too
      }
      const online = this.registry.lookup(msg.name)
      const wasOnline = online !== undefined && this.registry.isOnline(online)
      const released = this.registry.releaseName(msg.name, key)
      if (!released) throw new NatdError('PEER_UNKNOWN', `no name ${msg.name} is bound on this server`)
      this.log.info('name released', { name: msg.name, id: peerId(key).slice(0, 8) })
      if (online !== undefined) {
        this.closeConnOf(online)
        const peer = this.registry.peer(online)
        if (peer && wasOnline) this.wentDown(online, peer)
        else if (peer) this.broadcast(online, { type: 'peer-event', event: 'down', peer })
      }
      this.gate.authenticated(conn)
      this.gate.send(conn, { type: 'ok', reqId: msg.reqId })
    } catch (err) {
      const e = toNatdError(err)
      this.refusals.refused('release refused', conn.remote, e.code, e.message)
      this.gate.send(conn, { type: 'error', reqId: msg.reqId, code: e.code, message: e.message })
    }
  }

  /**
   * INTRODUCE (never rejects): sends both agents each other's candidates at once, so they
   * start punching together. A target held by another instance (several instances) gets
   * its side through that instance, and is told to relay through this one.
   */
  private async onIntroduce(conn: TcpConn, fromRef: RegRef, msg: Extract<Message, { type: 'introduce' }>): Promise<void> {
    const fail = (code: string, message: string): void => {
      this.metrics?.introduction('refused')
      this.gate.send(conn, { type: 'error', reqId: msg.reqId, code, message })
    }
    const targetRef = this.registry.lookup(msg.target)
    if (targetRef === fromRef) return fail('INVALID_ARGUMENT', 'cannot open a tunnel to yourself')
    const key = conn.session!.remotePublicKey!.toString('hex')
    if (!this.introKeyRate.take(key) || !this.introSourceRate.take(conn.source)) {
      this.refusals.refused('introduction refused', conn.remote, 'RATE_LIMITED', 'over --introductions-per-minute')
      return fail('RATE_LIMITED', `over ${this.limits.introductionsPerMinute} introductions a minute; try again shortly`)
    }
    const targetConn = targetRef !== undefined && this.registry.isOnline(targetRef) ? this.connByPeer.get(targetRef) : undefined
    let remote: RemotePeer | undefined
    if (!targetConn && this.cluster) remote = await this.cluster.find(msg.target).catch(() => undefined) // Redis away: this instance's agents only
    if (!targetConn && !remote) {
      if (targetRef === undefined) return fail('PEER_UNKNOWN', `no peer named ${msg.target} on this server`)
      return fail('PEER_OFFLINE', `${this.registry.peer(targetRef)!.name} is offline`)
    }
    if (conn.socket.destroyed || !this.registry.isOnline(fromRef)) return
    const from = this.registry.peer(fromRef)!
    const target = targetConn ? this.registry.peer(targetRef!)! : remote!.record
    const introId = randomBytes(INTRO_ID_BYTES)
    // Seals the punching probes: it travels only inside the two Noise sessions (and, between instances, through Redis).
    const punchKey = randomBytes(DATAGRAM_KEY_BYTES)
    const relaying = !!this.relay && (msg.via === 'auto' || msg.via === 'relay')
    if (relaying) {
      try {
        this.relay!.allow(introId, [from.name, target.name], [from.publicKey, target.publicKey])
      } catch (err) {
        const e = toNatdError(err)
        this.refusals.refused('introduction refused', conn.remote, e.code, e.message)
        return fail(e.code, e.message)
      }
    }
    if (targetConn) {
      this.gate.send(targetConn, { type: 'introduction', reqId: 0, introId, punchKey, initiator: false, via: msg.via, peer: from })
      this.addContact(targetRef!, fromRef)
    } else {
      const intro: RemoteIntroduction = { targetKey: target.publicKey, introId, punchKey, via: msg.via, from, relay: relaying ? this.cluster!.advertise : null }
      const delivered = await this.cluster!.introduce(remote!.instance, intro).catch(() => false)
      if (!delivered) return fail('PEER_OFFLINE', `${target.name} is offline (its server does not answer)`)
      this.addRemoteContact(fromRef, target.publicKey)
    }
    this.gate.send(conn, { type: 'introduction', reqId: msg.reqId, introId, punchKey, initiator: true, via: msg.via, peer: target })
    if (targetConn) this.addContact(fromRef, targetRef!)
    this.metrics?.introduction(targetConn ? 'local' : 'remote')
    this.log.info('introduced', { from: from.name, to: target.name, via: msg.via, instance: remote?.instance ?? null })
  }

  /** Another instance introduces one of our agents to one of its own: our side of it. */
  private onRemoteIntroduction(intro: RemoteIntroduction): void {
    const ref = this.registry.lookup(peerId(intro.targetKey))
    const c = ref !== undefined && this.registry.isOnline(ref) ? this.connByPeer.get(ref) : undefined
    if (!c) {
      this.log.debug('introduction for an agent not held here', { id: peerId(intro.targetKey).slice(0, 8) })
      return
    }
    const { introId, punchKey, via, from, relay } = intro
    this.gate.send(c, { type: 'introduction', reqId: 0, introId, punchKey, initiator: false, via, peer: from, relay })
    this.addRemoteContact(ref!, from.publicKey)
  }

  /** Agents of other instances came or went: our agents hear of it (all, or their contacts on a big server). */
  private onRemotePeerEvents(event: 'up' | 'down', peers: PeerRecord[]): void {
    const everyone = this.connByPeer.size <= BROADCAST_MAX_AGENTS
    for (const peer of peers) {
      const bytes = encode({ type: 'peer-event', event, peer })
      const refs = everyone ? [...this.connByPeer.keys()] : (this.remoteContacts.get(Buffer.from(peer.publicKey).toString('hex')) ?? [])
      for (const ref of refs) {
        const c = this.connByPeer.get(ref)
        if (c) this.gate.writeSession(c, bytes)
      }
    }
  }

  /**
   * An agent we hold registered with another instance (it failed over, or came back from a
   * network change there): it is no longer ours. Dropped here without a down event (it is up).
   */
  private movedAway(peer: PeerRecord): void {
    const ref = this.registry.lookup(peerId(peer.publicKey))
    if (ref === undefined || !this.registry.isOnline(ref)) return
    this.registry.drop(ref)
    this.closeConnOf(ref)
    this.cluster?.offline({ ...this.registry.peer(ref)!, online: false }, this.clock.now()) // its record names the new instance: only our set forgets it
    this.log.info('agent moved to another instance', { name: peer.name, id: peerId(peer.publicKey).slice(0, 8) })
  }

  /** Our agents introduced to agents of other instances, by the remote key (hex): they hear of its comings and goings. */
  private readonly remoteContacts = new Map<string, RegRef[]>()

  private addRemoteContact(ref: RegRef, remoteKey: Uint8Array): void {
    const k = Buffer.from(remoteKey).toString('hex')
    const list = this.remoteContacts.get(k) ?? []
    if (list.includes(ref)) return
    list.push(ref)
    if (list.length > MAX_CONTACTS) list.shift()
    this.remoteContacts.set(k, list)
  }

  /** RELAY: a new connection binds itself to an introduction as one end of a relayed tunnel (TcpGate handles the rest). */
  private bindRelay(conn: TcpConn, msg: Extract<Message, { type: 'relay' }>): void {
    if (!this.relay) throw new NatdError('UNSUPPORTED_PATH', 'this rendezvous server does not relay (--no-relay)')
    this.relay.bind(msg, conn.nonce, conn.socket) // checks the introduced agent signed it
  }

  /**
   * Control connections the agent's host ended with a FIN without BYE: its natd died
   * (crash, OOM, SIGKILL), as the kernel closes a dead process's sockets. A reset or a
   * keepalive timeout says less (a NAT that lost its mapping answers with RST while the
   * agent lives on and reconnects at its next ping), so those wait for --peer-timeout.
   */
  private readonly endedByAgent = new WeakSet<TcpConn>()

  /**
   * A connection closed: the agent it controlled no longer has a TCP endpoint. One its
   * host ended is dropped (peers told) unless it registers again within
   * CONTROL_LOST_GRACE_MS. A BYE, a timeout or a newer registration got there first and
   * leave nothing to do.
   */
  private onTcpClose(conn: TcpConn): void {
    if (conn.reg !== null && this.connByPeer.get(conn.reg) === conn) {
      this.connByPeer.delete(conn.reg)
      this.registry.clearTcp(conn.reg)
      if (this.endedByAgent.has(conn)) this.registry.controlLost(conn.reg)
    }
  }

  private closeConnOf(ref: RegRef): void {
    this.connByPeer.get(ref)?.socket.destroy()
  }

  /** Agents holding a control connection here (metrics). */
  get agentsConnected(): number {
    return this.connByPeer.size
  }

  address(): { udp: number; tcp: number; alt: number | null } {
    const tcp = this.tcp?.address()
    return {
      udp: this.udp?.address().port ?? 0,
      tcp: typeof tcp === 'object' && tcp ? tcp.port : 0,
      alt: this.udpAlt?.address().port ?? null
    }
  }
}

function bindUdp(host: string, port: number, onMessage: (msg: Buffer, rinfo: dgram.RemoteInfo) => void): Promise<dgram.Socket> {
  const sock = dgram.createSocket({ type: host.includes(':') ? 'udp6' : 'udp4' })
  sock.on('message', onMessage)
  return new Promise((resolve, reject) => {
    sock.once('error', reject)
    sock.bind(port, host, () => {
      sock.off('error', reject)
      sock.on('error', () => undefined)
      try {
        sock.setRecvBufferSize(UDP_RECV_BUFFER_BYTES) // the kernel caps it at net.core.rmem_max
      } catch {
        // keep the default
      }
      resolve(sock)
    })
  })
}

function verifyProof(secretKey: Uint8Array, nonce: Uint8Array, publicKey: Uint8Array, proof: Uint8Array): boolean {
  const want = secretProof(secretKey, nonce, publicKey)
  return proof.length === want.length && Buffer.compare(want, Buffer.from(proof)) === 0
}

function fmt(ep: Endpoint | null): string | null {
  return ep ? `${ep.host}:${ep.port}` : null
}

