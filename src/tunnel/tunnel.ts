/**
 * One open tunnel to a peer: an authenticated session (secret-stream, Noise) over a
 * punched path, the channel multiplexer on top, and the keepalive that both keeps the
 * NAT mappings open and notices a dead path.
 *
 *   up ──(GOODBYE | path silent DEAD_MS | close())──▶ closed{reason}
 */
import { EventEmitter } from 'node:events'
import type { Duplex } from 'node:stream'
import { formatEndpoint, type Endpoint } from '../protocol/endpoint.js'
import { formatDuration } from '../protocol/duration.js'
import { NatdError } from '../protocol/errors.js'
import type { Clock, Logger } from '../protocol/log.js'
import { Mux, type MessageStream } from './mux.js'

export type PathKind = 'lan' | 'direct-udp' | 'direct-tcp' | 'relay'

export interface TunnelPeer {
  name: string
  id: string
}

export interface TunnelTiming {
  /** Keepalive period: inside the tightest NAT UDP timeout we must survive. */
  keepaliveMs: number
  /** A path silent this long is dead. */
  deadMs: number
}

export interface TunnelSnapshot {
  peer: string
  id: string
  path: PathKind
  remote: string
  rttMs: number | null
  bytesIn: number
  bytesOut: number
  since: string
  streams: number
  transport: 'udp' | 'tcp'
}

type TunnelState = { kind: 'up' } | { kind: 'closed'; reason: string }

interface TunnelEvents {
  closed: [reason: string]
}

export class Tunnel extends EventEmitter<TunnelEvents> {
  readonly mux: Mux
  private state: TunnelState = { kind: 'up' }
  private readonly since: number
  private lastHeard: number
  private rttMs: number | null = null
  private pingSeq = 0
  private readonly pings = new Map<number, { sent: number; resolve: (rtt: number) => void; reject: (err: Error) => void }>()
  private readonly keepalive: NodeJS.Timeout

  constructor(
    readonly peer: TunnelPeer,
    readonly path: PathKind,
    readonly remote: Endpoint,
    readonly transport: 'udp' | 'tcp',
    /** Tie-breaker when both sides open at once: both keep the tunnel with the smaller key. */
    readonly introKey: string,
    readonly opener: boolean,
    private readonly session: Duplex & MessageStream,
    private readonly timing: TunnelTiming,
    private readonly clock: Clock,
    private readonly log: Logger
  ) {
    super()
    this.since = clock.now()
    this.lastHeard = this.since
    this.mux = new Mux(session, opener, log)
    session.resume() // the responder paused it while it waited for the initiator's choice
    this.mux.on('frame', () => (this.lastHeard = this.clock.now()))
    this.mux.on('pong', (seq) => this.onPong(seq))
    this.mux.on('goodbye', (reason) => this.close(`peer closed the tunnel (${reason})`, { goodbye: false }))
    session.on('close', () => this.close('session closed', { goodbye: false }))
    session.on('error', (err: Error) => this.log.debug('session error', { err: err.message }))
    this.keepalive = setInterval(() => this.onKeepaliveExpired(), timing.keepaliveMs)
  }

  get isUp(): boolean {
    return this.state.kind === 'up'
  }

  /** Round trip over the tunnel; rejects TIMEOUT. */
  ping(timeoutMs: number): Promise<number> {
    if (this.state.kind !== 'up') return Promise.reject(new NatdError('TUNNEL_CLOSED', 'tunnel closed'))
    const seq = ++this.pingSeq
    return new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pings.delete(seq)
        reject(new NatdError('TIMEOUT', `no pong from ${this.peer.name} in ${timeoutMs} ms`))
      }, timeoutMs)
      this.pings.set(seq, {
        sent: performance.now(),
        resolve: (rtt) => {
          clearTimeout(timer)
          resolve(rtt)
        },
        reject: (err) => {
          clearTimeout(timer)
          reject(err)
        }
      })
      this.mux.ping(seq)
    })
  }

  private onPong(seq: number): void {
    const p = this.pings.get(seq)
    if (!p) return
    this.pings.delete(seq)
    this.rttMs = Math.round((performance.now() - p.sent) * 100) / 100
    p.resolve(this.rttMs)
  }

  private onKeepaliveExpired(): void {
    if (this.clock.now() - this.lastHeard > this.timing.deadMs) {
      this.close(`path silent for ${formatDuration(this.timing.deadMs)}`, { goodbye: false })
      return
    }
    this.ping(this.timing.deadMs).catch(() => undefined)
  }

  /** Closes the tunnel; with goodbye the peer learns at once instead of after DEAD_MS. */
  close(reason: string, opts: { goodbye: boolean } = { goodbye: true }): void {
    if (this.state.kind === 'closed') return
    if (opts.goodbye) this.mux.goodbye(reason)
    this.state = { kind: 'closed', reason }
    clearInterval(this.keepalive)
    for (const p of this.pings.values()) p.reject(new NatdError('TUNNEL_CLOSED', `tunnel closed: ${reason}`))
    this.pings.clear()
    this.mux.close(reason)
    // Give the goodbye a moment to leave before the session goes.
    setTimeout(() => this.session.destroy(), opts.goodbye ? 100 : 0).unref()
    this.log.info('tunnel closed', { peer: this.peer.name, path: this.path, reason })
    this.emit('closed', reason)
  }

  snapshot(): TunnelSnapshot {
    return {
      peer: this.peer.name,
      id: this.peer.id,
      path: this.path,
      remote: formatEndpoint(this.remote),
      rttMs: this.rttMs,
      bytesIn: this.mux.bytesIn,
      bytesOut: this.mux.bytesOut,
      since: new Date(this.since).toISOString(),
      streams: this.mux.size,
      transport: this.transport
    }
  }
}
