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
import type { PathKind, Transport, TunnelSnapshot } from '../protocol/tunnel-snapshot.js'
import { Mux, type MessageStream } from './mux.js'

// Defined in protocol/ (the local API returns the snapshot too); re-exported for src/tunnel.
export type { PathKind, TunnelSnapshot } from '../protocol/tunnel-snapshot.js'

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

type TunnelState = { kind: 'up' } | { kind: 'closed'; reason: string }

interface TunnelEvents {
  closed: [reason: string]
  /** The tunnel moved to another path (an upgrade from the relay). */
  path: [from: PathKind, to: PathKind]
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
    public path: PathKind,
    public remote: Endpoint,
    public transport: Transport,
    /** Tie-breaker when both sides open at once: both keep the tunnel with the smaller key. */
    readonly introKey: string,
    readonly opener: boolean,
    private session: Duplex & MessageStream,
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
    this.watch(session)
    this.keepalive = setInterval(() => this.onKeepaliveExpired(), timing.keepaliveMs)
  }

  /** The tunnel lives and dies with its current session (not with one it moved away from). */
  private watch(session: Duplex & MessageStream): void {
    // A session that dies with a reason (the relay's RELAY_LIMIT) closes the tunnel with it.
    let sessionError: NatdError | null = null
    session.on('error', (err: Error) => {
      this.log.debug('session error', { err: err.message })
      if (err instanceof NatdError) sessionError = err
    })
    session.on('close', () => {
      if (session !== this.session) return
      this.close(sessionError ? `${sessionError.message} (${sessionError.code})` : 'session closed', { goodbye: false, code: sessionError?.code })
    })
  }

  /**
   * Moves the tunnel to a better path (relay -> direct) while it carries traffic: the
   * mux switches sessions without losing a frame; the old session goes once the peer
   * has switched too.
   */
  upgrade(next: Duplex & MessageStream, path: PathKind, remote: Endpoint, transport: Transport): void {
    if (this.state.kind !== 'up') {
      next.destroy()
      return
    }
    const old = this.session
    const from = this.path
    this.session = next
    this.watch(next)
    this.mux.once('switched', () => setTimeout(() => old.destroy(), 1_000).unref())
    this.mux.switchTo(next)
    next.resume() // the responder paused it while it waited for the initiator's choice
    this.path = path
    this.remote = remote
    this.transport = transport
    this.lastHeard = this.clock.now()
    this.log.info('path upgraded', { peer: this.peer.name, from, to: path, remote: formatEndpoint(remote) })
    this.emit('path', from, path)
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
  close(reason: string, opts: { goodbye: boolean; code?: string | undefined } = { goodbye: true }): void {
    if (this.state.kind === 'closed') return
    if (opts.goodbye) this.mux.goodbye(reason)
    this.state = { kind: 'closed', reason }
    clearInterval(this.keepalive)
    for (const p of this.pings.values()) p.reject(new NatdError('TUNNEL_CLOSED', `tunnel closed: ${reason}`))
    this.pings.clear()
    this.mux.close(reason)
    // Give the goodbye a moment to leave before the session goes.
    setTimeout(() => this.session.destroy(), opts.goodbye ? 100 : 0).unref()
    if (opts.code) this.log.warn(`${opts.code}: tunnel closed`, { peer: this.peer.name, path: this.path, reason, code: opts.code })
    else this.log.info('tunnel closed', { peer: this.peer.name, path: this.path, reason })
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
