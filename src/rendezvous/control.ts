/**
 * What the messages of the server's TCP connections mean (TcpGate's TcpHandler): inside a
 * control session REGISTER and RELEASE (registration.ts), then, from a registered agent
 * only, PING, LIST, LOOKUP, INTRODUCE (introductions.ts) and BYE; in the clear, RELAY binds a
 * relay connection (relay.ts). Anything else ends the connection with an error.
 */
import { formatEndpoint } from '../protocol/endpoint.js'
import { NatdError, ProtocolError } from '../protocol/errors.js'
import { peerId } from '../protocol/identity.js'
import type { Clock, Logger } from '../protocol/log.js'
import { MAX_LIST_PEERS, type Message, type PeerRecord } from '../protocol/rendezvous.js'
import type { AgentConns } from './agent-conns.js'
import type { Cluster } from './cluster.js'
import type { Introductions } from './introductions.js'
import type { Registrations } from './registration.js'
import type { Registry, RegRef } from './registry.js'
import type { Relay } from './relay.js'
import { MAX_REQUESTS_IN_FLIGHT, type TcpConn, type TcpGate, type TcpHandler } from './tcp-gate.js'
import type { Timers } from './timers.js'

/**
 * LOOKUPs that ask Redis (a key this instance does not hold online), per control
 * connection: at most one per LOOKUP_PACE_MS (5 a second); a later one waits its turn,
 * counted among the connection's requests in flight (tcp-gate.ts MAX_REQUESTS_IN_FLIGHT),
 * so a burst is paced, never refused. An agent's path check sends at most two a second
 * (daemon/path-check.ts), so an honest agent never waits (review 9 #2).
 */
export const LOOKUP_PACE_MS = 200

export interface ControlComponents {
  log: Logger
  clock: Clock
  timers: Timers
  registry: Pick<Registry, 'isOnline' | 'touch' | 'get' | 'drop' | 'peer' | 'peersFor' | 'lookup'>
  gate: Pick<TcpGate, 'send' | 'end' | 'started' | 'finished'>
  agents: Pick<AgentConns, 'onClose' | 'wentDown'>
  registrations: Pick<Registrations, 'onRegister' | 'onRelease'>
  introductions: Pick<Introductions, 'onIntroduce'>
  relay: Pick<Relay, 'bind'> | null
  cluster: Pick<Cluster, 'list' | 'lookup'> | null
}

export class Control implements TcpHandler {
  /** When each connection's next LOOKUP may ask Redis (LOOKUP_PACE_MS). */
  private readonly lookupTurn = new WeakMap<TcpConn, number>()

  constructor(private readonly c: ControlComponents) {}

  onMessage(conn: TcpConn, msg: Message): void {
    const { registry, gate } = this.c
    if (msg.type === 'register') return this.settle(conn, this.c.registrations.onRegister(conn, msg))
    if (msg.type === 'release') return this.settle(conn, this.c.registrations.onRelease(conn, msg))
    const ref = conn.reg
    if (ref === null) throw new ProtocolError('UNAUTHORIZED', `${msg.type} before registration`)
    if (!registry.isOnline(ref)) {
      // Timed out (or forgotten) while the connection lingered: the agent must register again.
      gate.send(conn, { type: 'error', reqId: 0, code: 'NOT_REGISTERED', message: 'registration expired' })
      gate.end(conn)
      return
    }
    registry.touch(ref)
    switch (msg.type) {
      case 'ping':
        return gate.send(conn, { type: 'pong', seq: msg.seq })
      case 'list':
        // One instance answers at once, in order with the requests around it; several ask Redis first.
        return this.c.cluster ? this.settle(conn, this.onClusterList(conn, ref, msg.reqId)) : this.sendList(conn, ref, msg.reqId, [])
      case 'lookup':
        return this.onLookup(conn, ref, msg)
      case 'introduce':
        return this.settle(conn, this.c.introductions.onIntroduce(conn, ref, msg))
      case 'bye': {
        const reg = registry.get(ref)!
        this.c.log.info('agent left', { name: reg.name, id: reg.id.slice(0, 8) })
        if (registry.drop(ref)) this.c.agents.wentDown(ref, registry.peer(ref)!, 'bye')
        gate.end(conn)
        return
      }
      default:
        throw new ProtocolError('BAD_REQUEST', `unexpected ${msg.type} on the control connection`)
    }
  }

  /** RELAY: a new connection binds itself to an introduction as one end of a relayed tunnel (TcpGate handles the rest). */
  bindRelay(conn: TcpConn, msg: Extract<Message, { type: 'relay' }>): void {
    if (!this.c.relay) throw new NatdError('UNSUPPORTED_PATH', 'this rendezvous server does not relay (--no-relay)')
    this.c.relay.bind(msg, conn.nonce, conn.socket) // checks the introduced agent signed it
  }

  onClose(conn: TcpConn): void {
    this.c.agents.onClose(conn)
  }

  /**
   * A request answered asynchronously (several instances ask Redis): counted in flight on
   * its connection until it ends (tcp-gate.ts MAX_REQUESTS_IN_FLIGHT); a bug in it ends
   * the connection, never the server.
   */
  private settle(conn: TcpConn, work: Promise<void>): void {
    this.c.gate.started(conn)
    void work
      .catch((err: Error) => {
        this.c.log.error('request failed', { err: err.message, from: formatEndpoint(conn.remote) })
        conn.socket.destroy()
      })
      .finally(() => this.c.gate.finished(conn))
  }

  /**
   * LIST with several instances (never rejects): the others' online agents as well. The
   * cluster shares one Redis round among the LISTs of a second (redis-list.ts
   * LIST_CACHE_MS), whoever sends them.
   */
  private async onClusterList(conn: TcpConn, ref: RegRef, reqId: number): Promise<void> {
    let remote: PeerRecord[] = []
    try {
      remote = await this.c.cluster!.list(MAX_LIST_PEERS)
    } catch {
      // Redis away: this instance's agents only (the cluster logged it)
    }
    this.sendList(conn, ref, reqId, remote)
  }

  /** PEERS for LIST: this instance's agents, and `remote`, the other instances' online ones. */
  private sendList(conn: TcpConn, ref: RegRef, reqId: number, remote: PeerRecord[]): void {
    if (conn.socket.destroyed) return
    const local = this.c.registry.peersFor(ref, MAX_LIST_PEERS)
    const online = local.filter((p) => p.online)
    const here = new Set(online.map((p) => Buffer.from(p.publicKey).toString('hex')))
    const others = remote.filter((p) => !here.has(Buffer.from(p.publicKey).toString('hex')))
    const peers = [...online, ...others, ...local.filter((p) => !p.online && !others.some((r) => r.name === p.name))].slice(0, MAX_LIST_PEERS)
    this.c.gate.send(conn, { type: 'peers', reqId, peers })
  }

  /**
   * LOOKUP: the one record LIST would show for this key, as PEERS with 0 or 1 of them.
   * The same visibility as LIST (any agent this deployment holds, online or recently
   * offline; never the asker's own), at a fraction of its cost: a map lookup, answered at
   * once, and with several instances, for a key not online here, one Redis read, paced
   * per connection (LOOKUP_PACE_MS) and bounded in flight (tcp-gate.ts).
   */
  private onLookup(conn: TcpConn, ref: RegRef, msg: Extract<Message, { type: 'lookup' }>): void {
    const id = peerId(msg.publicKey)
    const found = this.c.registry.lookup(id)
    const self = found === ref
    const local = found !== undefined && !self ? (this.c.registry.peer(found) ?? null) : null
    if (local?.online || self || !this.c.cluster) return this.sendLookup(conn, msg.reqId, local)
    this.settle(conn, this.onClusterLookup(conn, msg.reqId, id, local))
  }

  /** LOOKUP of a key not online here, on its connection's turn (never rejects). */
  private async onClusterLookup(conn: TcpConn, reqId: number, id: string, local: PeerRecord | null): Promise<void> {
    const now = this.c.clock.now()
    // At most MAX_REQUESTS_IN_FLIGHT turns are taken ahead; the cap only bites when the clock steps back.
    const turn = Math.min(Math.max(now, this.lookupTurn.get(conn) ?? 0), now + MAX_REQUESTS_IN_FLIGHT * LOOKUP_PACE_MS)
    this.lookupTurn.set(conn, turn + LOOKUP_PACE_MS)
    if (turn > now) await new Promise<void>((resolve) => this.c.timers.setTimeout(resolve, turn - now).unref())
    if (conn.socket.destroyed) return
    // Redis away: this instance's record only (the cluster logged it)
    const remote = (await this.c.cluster!.lookup(id).catch(() => undefined))?.record
    this.sendLookup(conn, reqId, remote ?? local)
  }

  private sendLookup(conn: TcpConn, reqId: number, record: PeerRecord | null): void {
    if (!conn.socket.destroyed) this.c.gate.send(conn, { type: 'peers', reqId, peers: record ? [record] : [] })
  }
}
