/**
 * What peers may reach on this host (`natctl expose`). Default deny: a channel to a port
 * that is not exposed, or not to that peer, is refused with NOT_EXPOSED and logged.
 */
import net from 'node:net'
import { PEER_REFUSAL_LOG, RefusalLog } from '../common/refusal-log.js'
import { systemClock, type TimerClock } from '../protocol/clock.js'
import { NatdError } from '../protocol/errors.js'
import type { Logger } from '../protocol/log.js'
import { describePeer } from '../protocol/peer-ref.js'
import type { ExposeInfo } from '../ipc/schema.js'
import type { OpenRequest } from '../tunnel/mux.js'
import type { Tunnel } from '../tunnel/tunnel.js'
import { admits, namesPeer, unresolvedAdvice, type AllowEntry } from './allow-list.js'
import type { ExposeSpec, StateStore } from './config.js'
import type { KnownPeers } from './known-peers.js'
import { join, reset } from './pipe.js'

/** Connecting to the exposed local service must finish within this. */
export const EXPOSE_CONNECT_TIMEOUT_MS = 10_000

export class Exposes {
  /** Unresolved allow entries already warned about (once each). */
  private readonly warned = new Set<string>()
  /** Connections refused: a peer may try them as fast as its tunnel carries channel opens. */
  private readonly refusals: RefusalLog

  constructor(
    private readonly store: StateStore,
    private readonly log: Logger,
    private readonly known: Pick<KnownPeers, 'resolveKey'>,
    private readonly clock: TimerClock = systemClock
  ) {
    this.refusals = new RefusalLog(log, PEER_REFUSAL_LOG, clock)
    this.warnUnresolved()
  }

  list(): ExposeInfo[] {
    return this.store.exposes
  }

  /**
   * Adds or replaces the exposure of `port`. Each `allow` peer is resolved to its whole
   * key now (PEER_UNKNOWN when no key is known for it).
   */
  async add(spec: { port: number; host: string; allow: string[] }): Promise<ExposeInfo> {
    if (!net.isIP(spec.host)) throw new NatdError('INVALID_ARGUMENT', `--host must be an IP address, not ${JSON.stringify(spec.host)}`)
    const allow: AllowEntry[] = []
    for (const p of spec.allow) allow.push(await this.known.resolveKey(p))
    const stored: ExposeSpec = { port: spec.port, host: spec.host, allow: allow.filter((a, i) => allow.findIndex((b) => b.id === a.id) === i) }
    const rest = this.store.exposes.filter((e) => e.port !== spec.port)
    this.store.setExposes([...rest, stored].sort((a, b) => a.port - b.port))
    this.log.info('port exposed', { port: stored.port, host: stored.host, allow: stored.allow.map(describePeer) })
    return stored
  }

  /** Logs each allow entry that matches nobody (an old bare name without a pinned key), once. */
  warnUnresolved(): void {
    for (const e of this.store.exposes) {
      for (const a of e.allow) {
        if (a.id !== null || this.warned.has(`${e.port} ${a.name}`)) continue
        this.warned.add(`${e.port} ${a.name}`)
        this.log.warn('an expose allows a peer by name with no pinned key: it admits nobody until re-added', { port: e.port, peer: a.name, ...unresolvedAdvice(a.name, this.store.knownPeers(), `natctl expose add ${e.port} --allow`) })
      }
    }
  }

  remove(port: number): ExposeInfo {
    const spec = this.store.exposes.find((e) => e.port === port)
    if (!spec) throw new NatdError('INVALID_ARGUMENT', `port ${port} is not exposed`)
    this.store.setExposes(this.store.exposes.filter((e) => e.port !== port))
    this.log.info('port unexposed', { port: spec.port, host: spec.host })
    return spec
  }

  /** Whether an expose's allow list names the peer by its whole key (an expose open to every peer names nobody). */
  names(peerId: string): boolean {
    return this.store.exposes.some((e) => namesPeer(e.allow, peerId))
  }

  /** A peer opens a channel to `req.port`. */
  onChannel(tunnel: Tunnel, req: OpenRequest): void {
    const peer = tunnel.peer
    const spec = this.store.exposes.find((e) => e.port === req.port)
    if (!spec || !admits(spec.allow, peer)) {
      this.refusals.refused('connection to a port', `${peer.name} (${peer.id.slice(0, 8)})`, 'NOT_EXPOSED', `port ${req.port}`)
      req.reject('NOT_EXPOSED', `port ${req.port} is not exposed to ${peer.name}`)
      return
    }
    // Half-open both ways: a client that shuts down its sending side still gets the whole reply.
    const sock = net.connect({ port: spec.port, host: spec.host, allowHalfOpen: true })
    sock.setNoDelay(true)
    const timer = this.clock.setTimeout(() => sock.destroy(new Error('connect timeout')), EXPOSE_CONNECT_TIMEOUT_MS)
    sock.once('connect', () => {
      this.clock.clear(timer)
      if (req.channel.destroyed) return reset(sock) // the tunnel closed while we connected
      req.accept()
      join(sock, req.channel, undefined, this.clock)
    })
    sock.once('error', (err: NodeJS.ErrnoException) => {
      this.clock.clear(timer)
      if (sock.connecting || !sock.remoteAddress) {
        // Counted, not logged each: the peer opens channels to it as fast as its tunnel carries them (review 9 #3).
        this.refusals.refused('connection to a port', `${peer.name} (${peer.id.slice(0, 8)})`, 'CONNECT_FAILED', `nothing answers on ${spec.host}:${spec.port} (${err.code ?? err.message})`)
        req.reject('CONNECT_FAILED', `nothing answers on ${spec.host}:${spec.port} at the peer (${err.code ?? err.message})`)
      }
    })
  }
}
