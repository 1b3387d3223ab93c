/**
 * natd-rendezvous: registry, heartbeats, peer lists, introductions, STUN reflection.
 *
 * UDP on `port` (rendezvous frames + STUN) and `altPort` (STUN, so an agent can tell
 * whether its NAT mapping depends on the destination); TCP control connections on `port`.
 * The server never sends an unverified UDP source more bytes than it sent (no
 * amplification), except a STUN Binding success, which RFC 8489 fixes at 32 bytes for
 * a 20-byte request (56 bytes with --alt-host; see stun-responder.ts).
 * With `altHost`, UDP STUN also on altHost:port and altHost:altPort (RFC 5780).
 */
import dgram from 'node:dgram'
import net from 'node:net'
import type { Endpoint } from '../protocol/endpoint.js'
import { NatdError, ProtocolError, toNatdError } from '../protocol/errors.js'
import { isValidName, NAME_RULE, networkSecretKey, peerId, randomBytes, secretProof, verify, type KeyPair } from '../protocol/identity.js'
import { systemClock, type Clock, type Logger } from '../protocol/log.js'
import {
  decode,
  encode,
  frame,
  FrameSplitter,
  INTRO_ID_BYTES,
  isRendezvousFrame,
  MAX_LIST_PEERS,
  MAX_UDP_FRAME_BYTES,
  TOKEN_BYTES,
  type Message,
  type OutgoingMessage
} from '../protocol/rendezvous.js'
import { isStun } from '../protocol/stun.js'
import { CookieJar } from './cookies.js'
import { StunResponder, type StunSlot } from './stun-responder.js'
import type { NameStore } from './name-store.js'
import { Registry, type RegRef, type Registration } from './registry.js'
import { Relay, type RelayLimits } from './relay.js'

/** A REGISTER's timestamp may differ from the server clock by this much (agents echo the challenge's time). */
export const REGISTER_CLOCK_SKEW_MS = 60_000
/** A TCP connection must register within this long or it is closed. */
export const TCP_AUTH_TIMEOUT_MS = 10_000
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
}

export interface RendezvousComponents {
  log: Logger
  clock?: Clock
  /** The server's own identity (server-identity.ts). */
  keyPair: KeyPair
  /** Name bindings (name-store.ts); default in memory. The caller closes it after stop(). */
  names?: NameStore
}

interface TcpConn {
  socket: net.Socket
  remote: Endpoint
  nonce: Buffer
  /** The registration this connection controls, once it has registered. */
  reg: RegRef | null
  splitter: FrameSplitter
  /** The connection sent RELAY: from now on it carries relayed frames only. */
  relay: boolean
}

export class RendezvousServer {
  private readonly log: Logger
  private readonly clock: Clock
  readonly registry: Registry
  private readonly cookies: CookieJar
  private udp: dgram.Socket | null = null
  private udpAlt: dgram.Socket | null = null
  /** STUN answers, and the UDP socket of each of its slots (main, alt-port, alt-ip, alt-both). */
  private readonly stun: StunResponder
  private readonly udpBySlot = new Map<StunSlot, dgram.Socket>()
  private tcp: net.Server | null = null
  private readonly conns = new Set<TcpConn>()
  private readonly connByPeer = new Map<RegRef, TcpConn>()
  private sweepTimer: NodeJS.Timeout | null = null
  private readonly secretKey: Buffer | null
  readonly relay: Relay | null
  readonly keyPair: KeyPair

  constructor(
    private readonly init: RendezvousInit,
    components: RendezvousComponents
  ) {
    this.log = components.log
    this.clock = components.clock ?? systemClock
    this.keyPair = components.keyPair
    this.registry = new Registry(this.clock, init.peerTimeoutMs, { names: components.names, nameTtlMs: init.nameTtlMs })
    this.cookies = new CookieJar(this.clock)
    this.secretKey = init.secret ? networkSecretKey(init.secret) : null
    this.stun = new StunResponder({ host: init.host, port: init.port, altPort: init.altPort, altHost: init.altHost ?? null })
    this.relay = init.relay ? new Relay(init.relay, this.clock, this.log.child({ component: 'relay' })) : null
  }

  async start(): Promise<void> {
    try {
      await this.listen()
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
      secret: !!this.secretKey,
      peerTimeoutMs: this.init.peerTimeoutMs,
      key: peerId(this.keyPair.publicKey)
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
    this.tcp = net.createServer((socket) => this.onTcpConnection(socket))
    await new Promise<void>((resolve, reject) => {
      this.tcp!.once('error', reject)
      this.tcp!.listen({ host: this.init.host, port: this.init.port }, () => resolve())
    })
    this.tcp.on('error', (err) => this.log.error('tcp server error', { err: err.message }))
  }

  async stop(): Promise<void> {
    if (this.sweepTimer) clearInterval(this.sweepTimer)
    this.relay?.stop()
    for (const c of this.conns) c.socket.destroy()
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
      if (isStun(buf)) return this.onStun(sock, buf, from)
      if (sock !== this.udp || !isRendezvousFrame(buf) || buf.length > MAX_UDP_FRAME_BYTES) return
      this.onUdpMessage(decode(buf), buf.length, from)
    } catch (err) {
      // Malformed input from an unverified source: never answered, logged at debug only.
      this.log.debug('bad datagram', { from: `${from.host}:${from.port}`, bytes: buf.length, err: (err as Error).message })
    }
  }

  private onStun(sock: dgram.Socket, buf: Buffer, from: Endpoint): void {
    const at = [...this.udpBySlot].find(([, s]) => s === sock)?.[0] ?? 'main'
    const answer = this.stun.respond(buf, at, from) // see stun-responder.ts: CHANGE-REQUEST, sizes
    if (answer) this.sendUdp(this.udpBySlot.get(answer.via) ?? sock, answer.bytes, from)
  }

  private onUdpMessage(msg: Message, size: number, from: Endpoint): void {
    switch (msg.type) {
      case 'hello':
        return this.sendUdp(this.udp!, encode({ type: 'challenge', nonce: this.cookies.issue(from), serverTime: this.clock.now() }), from)
      case 'register': {
        try {
          const reg = this.acceptRegister(msg, from, { udp: from })
          this.sendUdp(this.udp!, this.registerAck(reg, from), from)
        } catch (err) {
          this.sendUdpError(err, size, from)
        }
        return
      }
      case 'heartbeat': {
        // The hot path (every agent, every heartbeat interval): nothing is built per agent.
        const ref = this.registry.byTokenBytes(msg.token)
        let status: 'ok' | 'unknown' | 'moved' = 'ok'
        if (ref === undefined) status = 'unknown'
        else if (!this.registry.udpIs(ref, from)) status = 'moved'
        else this.registry.touch(ref)
        return this.sendUdp(this.udp!, encode({ type: 'heartbeat-ack', seq: msg.seq, status, observed: from }), from)
      }
      case 'bye': {
        return // UDP BYE is unauthenticated; agents say goodbye over TCP
      }
      default:
        return
    }
  }

  private sendUdpError(err: unknown, requestBytes: number, to: Endpoint): void {
    const e = toNatdError(err)
    // Keep the reply no larger than the request (no amplification to unverified sources).
    let reply = encode({ type: 'error', reqId: 0, code: e.code, message: e.message })
    if (reply.length > requestBytes) reply = encode({ type: 'error', reqId: 0, code: e.code, message: '' })
    if (e.code !== 'UNAUTHORIZED' || reply.length <= requestBytes) this.sendUdp(this.udp!, reply, to)
    this.log.info('registration refused', { from: `${to.host}:${to.port}`, code: e.code, reason: e.message })
  }

  private sendUdp(sock: dgram.Socket, buf: Buffer, to: Endpoint): void {
    sock.send(buf, to.port, to.host, (err) => {
      if (err) this.log.debug('udp send failed', { to: `${to.host}:${to.port}`, err: err.message })
    })
  }

  // --- registration --------------------------------------------------------

  private acceptRegister(msg: Extract<Message, { type: 'register' }>, from: Endpoint, at: { udp?: Endpoint; tcp?: Endpoint }): Registration {
    if (!this.cookies.valid(msg.nonce, from)) throw new NatdError('UNAUTHORIZED', 'stale or foreign registration nonce')
    if (Math.abs(msg.time - this.clock.now()) > REGISTER_CLOCK_SKEW_MS) throw new NatdError('UNAUTHORIZED', 'registration timestamp out of range')
    if (!verify(msg.signed, msg.signature, msg.publicKey)) throw new NatdError('UNAUTHORIZED', 'bad registration signature')
    if (this.secretKey && !verifyProof(this.secretKey, msg.nonce, msg.publicKey, msg.proof)) {
      throw new NatdError('UNAUTHORIZED', 'this server needs the network secret (natd --secret-file)')
    }
    if (!isValidName(msg.name)) throw new NatdError('BAD_REQUEST', `bad name: ${NAME_RULE}`)
    const { ref, isNew } = this.registry.register({
      publicKey: Buffer.from(msg.publicKey),
      name: msg.name,
      lan: msg.lan,
      nat: msg.nat,
      token: randomBytes(TOKEN_BYTES),
      ...at
    })
    const reg = this.registry.get(ref)!
    if (isNew) {
      this.log.info('agent registered', { name: reg.name, id: reg.id.slice(0, 8), udp: fmt(reg.udp), tcp: fmt(reg.tcp) })
      this.broadcast(ref, { type: 'peer-event', event: 'up', peer: this.registry.record(reg) })
    }
    return reg
  }

  private registerAck(reg: Registration, observed: Endpoint): Buffer {
    return encode({ type: 'register-ack', token: reg.token, observed, heartbeatMs: this.init.heartbeatMs, peerTimeoutMs: this.init.peerTimeoutMs })
  }

  private sweeps = 0

  private onSweepExpired(): void {
    // Once a minute, forget the contacts of agents the registry has forgotten.
    if (++this.sweeps % 60 === 0) for (const ref of this.contacts.keys()) if (!this.registry.has(ref)) this.contacts.delete(ref)
    this.relay?.prune()
    for (const reg of this.registry.expire()) {
      this.log.info('agent timed out', { name: reg.name, id: reg.id.slice(0, 8) })
      this.closeConnOf(reg.ref)
      this.broadcast(reg.ref, { type: 'peer-event', event: 'down', peer: this.registry.record(reg) })
    }
  }

  /** Tells the other connected agents about `about` (all of them, or its contacts on a big server). */
  private broadcast(about: RegRef, msg: OutgoingMessage): void {
    const bytes = frame(encode(msg))
    if (this.connByPeer.size <= BROADCAST_MAX_AGENTS) {
      for (const c of this.conns) if (c.reg !== null && c.reg !== about) c.socket.write(bytes)
      return
    }
    for (const ref of this.contacts.get(about) ?? []) this.connByPeer.get(ref)?.socket.write(bytes)
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

  private onTcpConnection(socket: net.Socket): void {
    const remote = { host: normalizeHost(socket.remoteAddress ?? ''), port: socket.remotePort ?? 0 }
    const conn: TcpConn = { socket, remote, nonce: this.cookies.issue(remote), reg: null, splitter: new FrameSplitter(), relay: false }
    this.conns.add(conn)
    socket.setNoDelay(true)
    socket.setTimeout(TCP_AUTH_TIMEOUT_MS, () => {
      if (!conn.reg) socket.destroy()
    })
    socket.on('data', (chunk) => {
      try {
        for (const f of conn.splitter.push(chunk)) {
          if (conn.relay) this.relay?.onFrame(socket, f)
          else this.onTcpMessage(conn, decode(f))
        }
      } catch (err) {
        if (err instanceof ProtocolError) {
          this.sendTcp(conn, { type: 'error', reqId: 0, code: err.code, message: err.message })
          this.log.debug('bad tcp frame', { from: fmt(remote), err: err.message })
          socket.end()
          socket.destroySoon()
        } else {
          this.log.error('tcp handler failed', { err: (err as Error).stack })
          socket.destroy()
        }
      }
    })
    socket.on('error', () => undefined)
    socket.on('close', () => {
      this.conns.delete(conn)
      if (conn.reg !== null && this.connByPeer.get(conn.reg) === conn) {
        this.connByPeer.delete(conn.reg)
        this.registry.clearTcp(conn.reg)
      }
    })
    this.sendTcp(conn, { type: 'challenge', nonce: conn.nonce, serverTime: this.clock.now() })
  }

  private sendTcp(conn: TcpConn, msg: OutgoingMessage): void {
    if (!conn.socket.destroyed) conn.socket.write(frame(encode(msg)))
  }

  private onTcpMessage(conn: TcpConn, msg: Message): void {
    if (msg.type === 'register') {
      try {
        const reg = this.acceptRegister(msg, conn.remote, { tcp: conn.remote })
        const previous = this.connByPeer.get(reg.ref)
        if (previous && previous !== conn) previous.socket.destroy()
        conn.reg = reg.ref
        this.connByPeer.set(reg.ref, conn)
        conn.socket.setTimeout(0)
        conn.socket.setKeepAlive(true, 10_000)
        conn.socket.write(frame(this.registerAck(reg, conn.remote)))
      } catch (err) {
        const e = toNatdError(err)
        this.log.info('registration refused', { from: fmt(conn.remote), code: e.code, reason: e.message })
        this.sendTcp(conn, { type: 'error', reqId: 0, code: e.code, message: e.message })
        conn.socket.end()
      }
      return
    }
    if (msg.type === 'relay') return this.onRelay(conn, msg)
    const ref = conn.reg
    if (ref === null) throw new ProtocolError('UNAUTHORIZED', `${msg.type} before registration`)
    if (!this.registry.isOnline(ref)) {
      // Timed out (or forgotten) while the connection lingered: the agent must register again.
      this.sendTcp(conn, { type: 'error', reqId: 0, code: 'NOT_REGISTERED', message: 'registration expired' })
      conn.socket.end()
      return
    }
    this.registry.touch(ref)
    switch (msg.type) {
      case 'ping':
        return this.sendTcp(conn, { type: 'pong', seq: msg.seq })
      case 'list':
        return this.sendTcp(conn, { type: 'peers', reqId: msg.reqId, peers: this.registry.peersFor(ref, MAX_LIST_PEERS) })
      case 'introduce':
        return this.onIntroduce(conn, ref, msg)
      case 'bye': {
        const reg = this.registry.get(ref)!
        this.log.info('agent left', { name: reg.name, id: reg.id.slice(0, 8) })
        if (this.registry.drop(ref)) this.broadcast(ref, { type: 'peer-event', event: 'down', peer: this.registry.peer(ref)! })
        conn.socket.end()
        return
      }
      default:
        throw new ProtocolError('BAD_REQUEST', `unexpected ${msg.type} on the control connection`)
    }
  }

  /** Sends both agents each other's candidates at once, so they start punching together. */
  private onIntroduce(conn: TcpConn, fromRef: RegRef, msg: Extract<Message, { type: 'introduce' }>): void {
    const targetRef = this.registry.lookup(msg.target)
    const fail = (code: string, message: string): void => this.sendTcp(conn, { type: 'error', reqId: msg.reqId, code, message })
    if (targetRef === undefined) return fail('PEER_UNKNOWN', `no peer named ${msg.target} on this server`)
    if (targetRef === fromRef) return fail('INVALID_ARGUMENT', 'cannot open a tunnel to yourself')
    const from = this.registry.peer(fromRef)!
    const target = this.registry.peer(targetRef)!
    const targetConn = this.connByPeer.get(targetRef)
    if (!target.online || !targetConn) return fail('PEER_OFFLINE', `${target.name} is offline`)
    const introId = randomBytes(INTRO_ID_BYTES)
    if (this.relay && (msg.via === 'auto' || msg.via === 'relay')) this.relay.allow(introId, from.name, target.name)
    this.sendTcp(targetConn, { type: 'introduction', reqId: 0, introId, initiator: false, via: msg.via, peer: from })
    this.sendTcp(conn, { type: 'introduction', reqId: msg.reqId, introId, initiator: true, via: msg.via, peer: target })
    this.addContact(fromRef, targetRef)
    this.addContact(targetRef, fromRef)
    this.log.info('introduced', { from: from.name, to: target.name, via: msg.via })
  }

  /** A new connection binds itself to an introduction as one end of a relayed tunnel. */
  private onRelay(conn: TcpConn, msg: Extract<Message, { type: 'relay' }>): void {
    if (conn.reg) throw new ProtocolError('BAD_REQUEST', 'RELAY on a control connection (open a new connection)')
    try {
      if (!this.relay) throw new NatdError('UNSUPPORTED_PATH', 'this rendezvous server does not relay (--no-relay)')
      conn.socket.setTimeout(0) // the relay sets its own (bind, then none once paired)
      this.relay.bind(msg, conn.socket)
      conn.relay = true
      conn.socket.setKeepAlive(true, 10_000)
    } catch (err) {
      const e = toNatdError(err)
      this.log.info('relay refused', { from: fmt(conn.remote), code: e.code, reason: e.message })
      this.sendTcp(conn, { type: 'error', reqId: 0, code: e.code, message: e.message })
      conn.socket.end()
    }
  }

  private closeConnOf(ref: RegRef): void {
    this.connByPeer.get(ref)?.socket.destroy()
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

function normalizeHost(host: string): string {
  return host.startsWith('::ffff:') ? host.slice(7) : host
}

function fmt(ep: Endpoint | null): string | null {
  return ep ? `${ep.host}:${ep.port}` : null
}

