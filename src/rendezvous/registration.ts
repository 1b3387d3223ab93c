/**
 * Registration inside a control connection's Noise session: REGISTER (checked, claimed in
 * the shared registry when there are several instances, entered, acked with the
 * heartbeat key), RELEASE (a key gives up its name), and agents that moved to another
 * instance. Who may register: the key that ran the handshake, signing the connection's
 * nonce and a time within REGISTER_CLOCK_SKEW_MS, holding the network secret if the
 * server has one, at most registrationsPerKeyPerMinute times a minute (limits.ts).
 */
import { formatEndpoint, type Endpoint } from '../protocol/endpoint.js'
import { NatdError, toNatdError } from '../protocol/errors.js'
import { isValidName, NAME_RULE, networkSecretKey, peerId, randomBytes, secretProof, timingSafeEqual, verify } from '../protocol/identity.js'
import { offeredCandidates } from '../protocol/lan.js'
import type { Clock, Logger } from '../protocol/log.js'
import { FEATURE_LOOKUP, TOKEN_BYTES, type Message, type OutgoingMessage, type PeerRecord } from '../protocol/rendezvous.js'
import type { RefusalLog } from '../common/refusal-log.js'
import type { AgentConns } from './agent-conns.js'
import type { Cluster } from './cluster.js'
import type { IntroOutbox } from './intro-outbox.js'
import { RateLimiter, type ServerLimits } from './limits.js'
import type { ServerMetrics } from './metrics.js'
import { DEFAULT_NAME_TTL_MS, type Registration, type Registry } from './registry.js'
import type { RendezvousInit } from './server.js'
import type { TcpConn, TcpGate } from './tcp-gate.js'
import type { UdpSockets } from './udp-sockets.js'

/** A REGISTER's timestamp may differ from the server clock by this much (agents echo the challenge's time). */
export const REGISTER_CLOCK_SKEW_MS = 60_000

export type RegistrationsInit = Pick<RendezvousInit, 'secret' | 'peerTimeoutMs' | 'heartbeatMs' | 'nameTtlMs'>

export interface RegistrationsComponents {
  clock: Clock
  log: Logger
  limits: Pick<ServerLimits, 'registrationsPerKeyPerMinute'>
  refusals: Pick<RefusalLog, 'refused'>
  registry: Registry
  gate: Pick<TcpGate, 'send' | 'end' | 'authenticated'>
  agents: Pick<AgentConns, 'adopt' | 'close' | 'broadcast' | 'wentDown'>
  udp: Pick<UdpSockets, 'heartbeatKey' | 'v6Endpoint'>
  cluster: Cluster | null
  metrics: Pick<ServerMetrics, 'registration'> | null
  /** Introductions sent to the agent's previous control connection, sent again on its new one. */
  outbox: Pick<IntroOutbox, 'redeliver'>
}

export class Registrations {
  private readonly secretKey: Buffer | null
  private readonly rate: RateLimiter

  constructor(
    private readonly init: RegistrationsInit,
    private readonly c: RegistrationsComponents
  ) {
    this.secretKey = init.secret ? networkSecretKey(init.secret) : null
    this.rate = new RateLimiter(c.limits.registrationsPerKeyPerMinute, c.clock)
  }

  /** Whether only agents holding the network secret may register. */
  get needsSecret(): boolean {
    return !!this.secretKey
  }

  /** Forgets rate-limit buckets that filled up again (the server's sweep). */
  sweep(): void {
    this.rate.sweep()
  }

  /** REGISTER (never rejects): checked, claimed in the shared registry when there is one, entered, acked. */
  async onRegister(conn: TcpConn, msg: Extract<Message, { type: 'register' }>): Promise<void> {
    const { gate, metrics } = this.c
    try {
      this.check(msg, conn)
      if (this.c.cluster) {
        await this.claimShared(this.c.cluster, msg.name, msg.publicKey)
        if (conn.socket.destroyed) return
      }
      const reg = this.accept(msg, conn)
      this.c.agents.adopt(conn, reg.ref)
      gate.send(conn, this.ack(reg, conn.remote))
      metrics?.registration('ok')
      const again = this.c.outbox.redeliver(reg.ref, conn)
      if (again) this.c.log.debug('introductions sent again on the new control connection', { name: reg.name, count: again })
    } catch (err) {
      metrics?.registration('refused')
      const e = toNatdError(err)
      this.c.refusals.refused('registration refused', conn.remote, e.code, e.message)
      gate.send(conn, { type: 'error', reqId: 0, code: e.code, message: e.message })
      gate.end(conn)
    }
  }

  /** RELEASE (never rejects): the key of this session gives up its name (natd release-name); it is dropped if online. */
  async onRelease(conn: TcpConn, msg: Extract<Message, { type: 'release' }>): Promise<void> {
    const { registry, gate } = this.c
    const key = conn.session?.remotePublicKey
    try {
      if (!key) throw new NatdError('UNAUTHORIZED', 'no session key')
      if (this.c.cluster) {
        if (!(await this.c.cluster.releaseName(msg.name, key))) throw new NatdError('PEER_UNKNOWN', `no name ${msg.name} is bound on this server`)
        registry.nameStore.bind(msg.name, key, this.c.clock.now()) // the cache agrees, so the registry releases it too
      }
      const online = registry.lookup(msg.name)
      const wasOnline = online !== undefined && registry.isOnline(online)
      const released = registry.releaseName(msg.name, key)
      if (!released) throw new NatdError('PEER_UNKNOWN', `no name ${msg.name} is bound on this server`)
      this.c.log.info('name released', { name: msg.name, id: peerId(key).slice(0, 8) })
      if (online !== undefined) {
        this.c.agents.close(online)
        const peer = registry.peer(online)
        if (peer && wasOnline) this.c.agents.wentDown(online, peer, 'bye')
        else if (peer) this.c.agents.broadcast(online, { type: 'peer-event', event: 'down', peer, reason: 'bye' })
      }
      gate.authenticated(conn)
      gate.send(conn, { type: 'ok', reqId: msg.reqId })
    } catch (err) {
      const e = toNatdError(err)
      this.c.refusals.refused('release refused', conn.remote, e.code, e.message)
      gate.send(conn, { type: 'error', reqId: msg.reqId, code: e.code, message: e.message })
    }
  }

  /**
   * An agent we hold registered with another instance (it failed over, or came back from a
   * network change there): it is no longer ours. Dropped here without a down event (it is up).
   */
  movedAway(peer: PeerRecord): void {
    const { registry } = this.c
    const ref = registry.lookup(peerId(peer.publicKey))
    if (ref === undefined || !registry.isOnline(ref)) return
    registry.drop(ref)
    this.c.agents.close(ref)
    this.c.cluster?.offline({ ...registry.peer(ref)!, online: false }, this.c.clock.now()) // its record names the new instance: only our set forgets it
    this.c.log.info('agent moved to another instance', { name: peer.name, id: peerId(peer.publicKey).slice(0, 8) })
  }

  /** A REGISTER inside the Noise session of `conn`: the key that signed it must be the one that ran the handshake. */
  private check(msg: Extract<Message, { type: 'register' }>, conn: TcpConn): void {
    const sessionKey = conn.session?.remotePublicKey
    if (!sessionKey || !timingSafeEqual(sessionKey, msg.publicKey)) throw new NatdError('UNAUTHORIZED', 'the registration key is not the key of this session')
    if (!this.rate.take(sessionKey.toString('hex'))) {
      throw new NatdError('RATE_LIMITED', `this key registered ${this.c.limits.registrationsPerKeyPerMinute} times in the last minute; try again shortly`)
    }
    if (!timingSafeEqual(msg.nonce, conn.nonce)) throw new NatdError('UNAUTHORIZED', 'stale or foreign registration nonce')
    if (Math.abs(msg.time - this.c.clock.now()) > REGISTER_CLOCK_SKEW_MS) throw new NatdError('UNAUTHORIZED', 'registration timestamp out of range')
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
    const now = this.c.clock.now()
    try {
      await cluster.claimName(name, key, now, this.init.nameTtlMs ?? DEFAULT_NAME_TTL_MS)
    } catch (err) {
      if (toNatdError(err).code !== 'TIMEOUT' || this.c.registry.nameStore.nameOf(key) !== name) throw err
    }
    this.c.registry.nameStore.bind(name, key, now)
  }

  /** A checked REGISTER (check; claimShared with several instances) enters the registry. */
  private accept(msg: Extract<Message, { type: 'register' }>, conn: TcpConn): Registration {
    const { registry } = this.c
    const { ref, isNew } = registry.register({
      publicKey: Buffer.from(msg.publicKey),
      name: msg.name,
      // Private addresses, and ports the agent's gateway mapped at the address we see it
      // at (protocol/lan.ts): never another public address, peers would probe it.
      lan: offeredCandidates(msg.lan, conn.remote.host),
      nat: msg.nat,
      token: randomBytes(TOKEN_BYTES),
      tcp: conn.remote
    })
    registry.beginSession(ref) // a new heartbeat key: the last session's datagrams no longer count
    const reg = registry.get(ref)!
    this.c.cluster?.online(registry.record(reg), this.c.clock.now())
    if (isNew) {
      this.c.log.info('agent registered', { name: reg.name, id: reg.id.slice(0, 8), udp: formatEndpoint(reg.udp), tcp: formatEndpoint(reg.tcp) })
      this.c.agents.broadcast(ref, { type: 'peer-event', event: 'up', peer: registry.record(reg) })
    }
    return reg
  }

  private ack(reg: Registration, observed: Endpoint): OutgoingMessage {
    const udpKey = this.c.udp.heartbeatKey(reg.ref, reg.token)
    const server6 = this.c.udp.v6Endpoint()
    return { type: 'register-ack', token: reg.token, udpKey, observed, heartbeatMs: this.init.heartbeatMs, peerTimeoutMs: this.init.peerTimeoutMs, ...(server6 ? { server6 } : {}), features: FEATURE_LOOKUP }
  }
}

function verifyProof(secretKey: Uint8Array, nonce: Uint8Array, publicKey: Uint8Array, proof: Uint8Array): boolean {
  const want = secretProof(secretKey, nonce, publicKey)
  return proof.length === want.length && Buffer.compare(want, Buffer.from(proof)) === 0
}
