/**
 * What the messages of the server's TCP connections mean (TcpGate's TcpHandler): inside a
 * control session REGISTER and RELEASE (registration.ts), then, from a registered agent
 * only, PING, LIST, LOOKUP, INTRODUCE (introductions.ts) and BYE; in the clear, RELAY binds a
 * relay connection (relay.ts). Anything else ends the connection with an error.
 */
import { formatEndpoint } from '../protocol/endpoint.js'
import { NatdError, ProtocolError } from '../protocol/errors.js'
import { peerId } from '../protocol/identity.js'
import type { Logger } from '../protocol/log.js'
import { MAX_LIST_PEERS, type Message, type PeerRecord } from '../protocol/rendezvous.js'
import type { AgentConns } from './agent-conns.js'
import type { Cluster } from './cluster.js'
import type { Introductions } from './introductions.js'
import type { Registrations } from './registration.js'
import type { Registry, RegRef } from './registry.js'
import type { Relay } from './relay.js'
import type { TcpConn, TcpGate, TcpHandler } from './tcp-gate.js'

export interface ControlComponents {
  log: Logger
  registry: Pick<Registry, 'isOnline' | 'touch' | 'get' | 'drop' | 'peer' | 'peersFor' | 'lookup'>
  gate: Pick<TcpGate, 'send' | 'end'>
  agents: Pick<AgentConns, 'onClose' | 'wentDown'>
  registrations: Pick<Registrations, 'onRegister' | 'onRelease'>
  introductions: Pick<Introductions, 'onIntroduce'>
  relay: Pick<Relay, 'bind'> | null
  cluster: Pick<Cluster, 'list' | 'find'> | null
}

export class Control implements TcpHandler {
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
        return this.settle(conn, this.onList(conn, ref, msg.reqId))
      case 'lookup':
        return this.settle(conn, this.onLookup(conn, ref, msg))
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

  /** A request answered asynchronously (several instances ask Redis): a bug in it ends the connection, never the server. */
  private settle(conn: TcpConn, work: Promise<void>): void {
    work.catch((err: Error) => {
      this.c.log.error('request failed', { err: err.message, from: formatEndpoint(conn.remote) })
      conn.socket.destroy()
    })
  }

  /** LIST (never rejects): this instance's agents, and with several instances the others' online ones. */
  private async onList(conn: TcpConn, ref: RegRef, reqId: number): Promise<void> {
    const local = this.c.registry.peersFor(ref, MAX_LIST_PEERS)
    let remote: PeerRecord[] = []
    if (this.c.cluster) {
      try {
        remote = await this.c.cluster.list(MAX_LIST_PEERS)
      } catch {
        // Redis away: this instance's agents only (the cluster logged it)
      }
      const here = new Set(local.filter((p) => p.online).map((p) => Buffer.from(p.publicKey).toString('hex')))
      remote = remote.filter((p) => !here.has(Buffer.from(p.publicKey).toString('hex')))
    }
    const online = local.filter((p) => p.online)
    const peers = [...online, ...remote, ...local.filter((p) => !p.online && !remote.some((r) => r.name === p.name))].slice(0, MAX_LIST_PEERS)
    if (!conn.socket.destroyed) this.c.gate.send(conn, { type: 'peers', reqId, peers })
  }

  /**
   * LOOKUP (never rejects): the one record LIST would show for this key, as PEERS with 0
   * or 1 of them. The same visibility as LIST (any agent this deployment holds, online or
   * recently offline; never the asker's own), at a fraction of its cost: a map lookup
   * and, with several instances, one Redis read instead of a list of up to
   * MAX_LIST_PEERS. Bounded as every request is (the connection's request backlog and
   * message deadline, tcp-gate.ts); an agent's path check sends at most two a second.
   */
  private async onLookup(conn: TcpConn, ref: RegRef, msg: Extract<Message, { type: 'lookup' }>): Promise<void> {
    const id = peerId(msg.publicKey)
    const found = this.c.registry.lookup(id)
    const self = found === ref
    const local = found !== undefined && !self ? (this.c.registry.peer(found) ?? null) : null
    let record: PeerRecord | null = local?.online ? local : null
    if (!record && !self && this.c.cluster) {
      // Redis away: this instance's record only (the cluster logged it)
      record = (await this.c.cluster.find(id).catch(() => undefined))?.record ?? null
    }
    record ??= local
    if (!conn.socket.destroyed) this.c.gate.send(conn, { type: 'peers', reqId: msg.reqId, peers: record ? [record] : [] })
  }
}
