/**
 * INTRODUCE: both agents get each other's candidates and a fresh punch key at once, so
 * they start punching together; with relaying allowed the relay gets a permit for the
 * pair. A target held by another instance gets its side through that instance (cluster.ts)
 * and is told to relay through this one. Who may make us do this work: a registered
 * agent, at most introductionsPerMinute per key and INTRO_SOURCE_FACTOR times that per
 * source address (limits.ts); each costs two messages and, relaying, one permit.
 */
import { peerId, randomBytes } from '../protocol/identity.js'
import { toNatdError } from '../protocol/errors.js'
import type { Clock, Logger } from '../protocol/log.js'
import { DATAGRAM_KEY_BYTES, INTRO_ID_BYTES, type Message } from '../protocol/rendezvous.js'
import type { RefusalLog } from '../common/refusal-log.js'
import type { AgentConns } from './agent-conns.js'
import type { Cluster, RemoteIntroduction, RemotePeer } from './cluster.js'
import type { Contacts } from './contacts.js'
import type { IntroOutbox } from './intro-outbox.js'
import { INTRO_SOURCE_FACTOR, RateLimiter, type ServerLimits } from './limits.js'
import type { ServerMetrics } from './metrics.js'
import type { Registry, RegRef } from './registry.js'
import type { Relay } from './relay.js'
import type { TcpConn, TcpGate } from './tcp-gate.js'

export interface IntroductionsComponents {
  clock: Clock
  log: Logger
  limits: Pick<ServerLimits, 'introductionsPerMinute'>
  refusals: Pick<RefusalLog, 'refused'>
  registry: Pick<Registry, 'lookup' | 'isOnline' | 'peer'>
  gate: Pick<TcpGate, 'send'>
  agents: Pick<AgentConns, 'of'>
  contacts: Pick<Contacts, 'add' | 'addRemote'>
  relay: Pick<Relay, 'allow'> | null
  cluster: Pick<Cluster, 'find' | 'introduce' | 'advertise'> | null
  metrics: Pick<ServerMetrics, 'introduction'> | null
  /** Sends the target its side, held to be sent again should it register anew (intro-outbox.ts). */
  outbox: Pick<IntroOutbox, 'send'>
}

export class Introductions {
  private readonly keyRate: RateLimiter
  private readonly sourceRate: RateLimiter

  constructor(private readonly c: IntroductionsComponents) {
    this.keyRate = new RateLimiter(c.limits.introductionsPerMinute, c.clock)
    this.sourceRate = new RateLimiter(c.limits.introductionsPerMinute * INTRO_SOURCE_FACTOR, c.clock)
  }

  /** Forgets rate-limit buckets that filled up again (the server's sweep). */
  sweep(): void {
    this.keyRate.sweep()
    this.sourceRate.sweep()
  }

  /** INTRODUCE from the registered agent `fromRef` (never rejects). */
  async onIntroduce(conn: TcpConn, fromRef: RegRef, msg: Extract<Message, { type: 'introduce' }>): Promise<void> {
    const { registry, gate, cluster, metrics } = this.c
    const fail = (code: string, message: string): void => {
      metrics?.introduction('refused')
      gate.send(conn, { type: 'error', reqId: msg.reqId, code, message })
    }
    const targetRef = registry.lookup(msg.target)
    if (targetRef === fromRef) return fail('INVALID_ARGUMENT', 'cannot open a tunnel to yourself')
    const key = conn.session!.remotePublicKey!.toString('hex')
    if (!this.keyRate.take(key) || !this.sourceRate.take(conn.source)) {
      this.c.refusals.refused('introduction refused', conn.remote, 'RATE_LIMITED', 'over --introductions-per-minute')
      return fail('RATE_LIMITED', `over ${this.c.limits.introductionsPerMinute} introductions a minute; try again shortly`)
    }
    const targetConn = targetRef !== undefined && registry.isOnline(targetRef) ? this.c.agents.of(targetRef) : undefined
    let remote: RemotePeer | undefined
    if (!targetConn && cluster) remote = await cluster.find(msg.target).catch(() => undefined) // Redis away: this instance's agents only
    if (!targetConn && !remote) {
      if (targetRef === undefined) return fail('PEER_UNKNOWN', `no peer named ${msg.target} on this server`)
      return fail('PEER_OFFLINE', `${registry.peer(targetRef)!.name} is offline`)
    }
    if (conn.socket.destroyed || !registry.isOnline(fromRef)) return
    const from = registry.peer(fromRef)!
    const target = targetConn ? registry.peer(targetRef!)! : remote!.record
    const introId = randomBytes(INTRO_ID_BYTES)
    // Seals the punching probes: it travels only inside the two Noise sessions (and, between instances, through Redis).
    const punchKey = randomBytes(DATAGRAM_KEY_BYTES)
    const relaying = !!this.c.relay && (msg.via === 'auto' || msg.via === 'relay')
    if (relaying) {
      try {
        this.c.relay!.allow(introId, [from.name, target.name], [from.publicKey, target.publicKey])
      } catch (err) {
        const e = toNatdError(err)
        this.c.refusals.refused('introduction refused', conn.remote, e.code, e.message)
        return fail(e.code, e.message)
      }
    }
    if (targetConn) {
      this.c.outbox.send(targetRef!, targetConn, { type: 'introduction', reqId: 0, introId, punchKey, initiator: false, via: msg.via, peer: from })
      this.c.contacts.add(targetRef!, fromRef)
    } else {
      const intro: RemoteIntroduction = { targetKey: target.publicKey, introId, punchKey, via: msg.via, from, relay: relaying ? cluster!.advertise : null }
      const delivered = await cluster!.introduce(remote!.instance, intro).catch(() => false)
      if (!delivered) return fail('PEER_OFFLINE', `${target.name} is offline (its server does not answer)`)
      this.c.contacts.addRemote(fromRef, target.publicKey)
    }
    gate.send(conn, { type: 'introduction', reqId: msg.reqId, introId, punchKey, initiator: true, via: msg.via, peer: target })
    if (targetConn) this.c.contacts.add(fromRef, targetRef!)
    metrics?.introduction(targetConn ? 'local' : 'remote')
    this.c.log.info('introduced', { from: from.name, to: target.name, via: msg.via, instance: remote?.instance ?? null })
  }

  /** Another instance introduces one of our agents to one of its own: our side of it. */
  onRemoteIntroduction(intro: RemoteIntroduction): void {
    const { registry } = this.c
    const ref = registry.lookup(peerId(intro.targetKey))
    const c = ref !== undefined && registry.isOnline(ref) ? this.c.agents.of(ref) : undefined
    if (!c) {
      this.c.log.debug('introduction for an agent not held here', { id: peerId(intro.targetKey).slice(0, 8) })
      return
    }
    const { introId, punchKey, via, from, relay } = intro
    this.c.outbox.send(ref!, c, { type: 'introduction', reqId: 0, introId, punchKey, initiator: false, via, peer: from, relay })
    this.c.contacts.addRemote(ref!, from.publicKey)
  }
}
