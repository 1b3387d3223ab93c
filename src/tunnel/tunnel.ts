/**
 * One open tunnel to a peer: an authenticated session (secret-stream, Noise) over a
 * punched path, the channel multiplexer on top, and the keepalive that both keeps the
 * NAT mappings open and notices a dead path. A path that goes away does not end the
 * tunnel: it migrates, and a new session resumes it (tunnel/resume.ts).
 *
 *   up ──(path gone | session closed)──▶ migrating ──(resume(session) | old path heard again)──▶ up
 *   up ──(upgrade(session) | resume(session))──▶ up on another path
 *   up | migrating ──(GOODBYE | close() | migrating giveUpMs)──▶ closed{reason}
 *
 * Every state carries the tunnel's path, the peer's address on it and the transport, and
 * every move (path changes included) goes through transition(), which refuses the moves
 * above does not draw (canTransition) and logs each move once.
 *
 * "Gone" versus "lossy": a path is gone when nothing at all arrives on it — no frame, no
 * ACK, no pong — for WAITING_SILENT_MS while we wait for an answer (unacknowledged frames
 * or a ping), or for deadMs in any case. A path that still delivers anything, however
 * slowly (heavy loss), is lossy, not gone. Every frame counts, data included, so pongs
 * and ACKs stuck behind bulk data on a TCP path (head-of-line blocking) do not make it
 * look dead: the data in front of them arrives.
 */
import { EventEmitter } from 'node:events'
import type { Duplex } from 'node:stream'
import { formatEndpoint, type Endpoint } from '../protocol/endpoint.js'
import { formatDuration } from '../protocol/duration.js'
import { NatdError } from '../protocol/errors.js'
import type { TimerClock, Timer } from '../protocol/clock.js'
import type { Logger } from '../protocol/log.js'
import type { PathKind, Transport, TunnelSnapshot } from '../protocol/tunnel-snapshot.js'
import { Mux, type MessageStream } from './mux.js'
import { PathSilence } from './path-silence.js'
import { goodbyeCode } from './resume.js'
import { TunnelPings } from './tunnel-pings.js'
import { canTransition, logMove, movesWithMapping, type MoveCause, type TunnelEvents, type TunnelPeer, type TunnelRoute, type TunnelState } from './tunnel-state.js'
import { GOODBYE_LINGER_MS, LIVENESS_CHECK_MS, MIGRATE_GIVE_UP_MS, MIGRATING_PING_MS, OLD_SESSION_LINGER_MS, type TunnelTiming } from './tunnel-timing.js'

// The silence limits live with their decisions in path-silence.ts; re-exported here.
export { SUSPECT_SILENT_MS, WAITING_SILENT_MS } from './path-silence.js'
// Its timing (what it is given, its own periods and lingers) is tunnel-timing.ts; re-exported here.
export { GOODBYE_LINGER_MS, LIVENESS_CHECK_MS, MIGRATE_GIVE_UP_MS, MIGRATING_PING_MS, OLD_SESSION_LINGER_MS, type TunnelTiming } from './tunnel-timing.js'

// Defined in protocol/ (the local API returns the snapshot too); re-exported for src/tunnel.
export type { PathKind, TunnelSnapshot } from '../protocol/tunnel-snapshot.js'
// The state model lives in tunnel-state.ts; re-exported for the tunnel's importers.
export { canTransition, movesWithMapping, type TunnelPeer, type TunnelRoute, type TunnelState } from './tunnel-state.js'

export class Tunnel extends EventEmitter<TunnelEvents> {
  readonly mux: Mux
  private current: TunnelState
  private readonly since: number
  private readonly silence: PathSilence
  /** A frame of the peer's came (so the responder made its tunnel on the session we chose). */
  private answered = false
  private readonly pings: TunnelPings
  private readonly keepalive: Timer
  private readonly liveness: Timer
  /**
   * The peer's public endpoints as the introduction behind the current session gave them
   * (tunnel/manager.ts sets it): the server showing others means the peer's mapping moved.
   */
  peerEndpoints: { udp: Endpoint | null; tcp: Endpoint | null } | null = null
  /** The last migration came from silence (lossy or gone), not a closed session or a changed mapping. */
  migratedBySilence = false
  /** The error code the tunnel closed with (RELAY_LIMIT, TUNNEL_CLOSED, …); null while open or closed without one. */
  closedWith: string | null = null

  /** The last round trip a ping measured, null before the first. */
  get lastRttMs(): number | null {
    return this.pings.lastRttMs
  }
  private lastMigratingPing = 0
  /** The tunnel's id for resumes: the id of the introduction that opened it. */
  readonly id: Uint8Array

  constructor(
    readonly peer: TunnelPeer,
    path: PathKind,
    remote: Endpoint,
    transport: Transport,
    /** Tie-breaker when both sides open at once: both keep the tunnel with the smaller key. */
    readonly introKey: string,
    readonly opener: boolean,
    private session: (Duplex & MessageStream) | null,
    private readonly timing: TunnelTiming,
    private readonly clock: TimerClock,
    private readonly log: Logger
  ) {
    super()
    this.current = { kind: 'up', path, remote, transport }
    this.id = Buffer.from(introKey, 'hex')
    this.since = clock.now()
    this.silence = new PathSilence(this.since)
    this.pings = new TunnelPings(clock)
    this.mux = new Mux(session!, opener, log, clock)
    session!.resume() // the responder paused it while it waited for the initiator's choice
    this.mux.on('frame', () => this.onHeard())
    this.mux.on('pong', (seq) => void this.pings.onPong(seq))
    this.mux.on('goodbye', (reason) => this.close(`peer closed the tunnel (${reason})`, { goodbye: false, code: goodbyeCode(reason) }))
    this.mux.on('broken', (reason, code) => this.close(reason, { goodbye: true, code }))
    this.watch(session!)
    this.keepalive = clock.setInterval(() => this.onKeepaliveExpired(), timing.keepaliveMs)
    this.liveness = clock.setInterval(() => this.onLivenessCheck(), Math.min(LIVENESS_CHECK_MS, timing.keepaliveMs))
  }

  get state(): TunnelState {
    return this.current
  }

  get path(): PathKind {
    return this.current.path
  }

  get remote(): Endpoint {
    return this.current.remote
  }

  get transport(): Transport {
    return this.current.transport
  }

  /**
   * The one place the state changes: refuses a move canTransition() does not allow
   * (false, nothing changes) and logs each move once. Callers emit the events.
   */
  private transition(next: TunnelState, cause: MoveCause = {}): boolean {
    const from = this.current
    if (!canTransition(from.kind, next.kind)) {
      this.log.debug('tunnel move refused', { peer: this.peer.name, from: from.kind, to: next.kind })
      return false
    }
    this.current = next
    logMove(this.log, { peer: this.peer.name, opener: this.opener, now: this.clock.now() }, from, next, cause)
    return true
  }

  private onHeard(): void {
    if (!this.answered) {
      this.answered = true
      this.emit('answered')
    }
    const lossyMs = this.silence.heard(this.clock.now())
    if (lossyMs !== null && this.current.kind === 'up') this.emit('lossy', lossyMs)
    // The old path came back (a short outage, the same mappings) before a new one was found.
    if (this.current.kind === 'migrating' && this.session && !this.session.destroyed) this.backUp('old path', this.route)
  }

  /** Up again after migrating, on `route` (the old path, or a new session's). */
  private backUp(how: 'old path' | 'new session', route: TunnelRoute): void {
    const was = this.current
    if (was.kind !== 'migrating') return
    if (!this.transition({ kind: 'up', ...route }, { how })) return
    this.silence.stopWaiting()
    this.emit('resumed', this.clock.now() - was.since)
  }

  /** The path is gone: keep the channels, wait for a new session (or the old path). */
  private migrate(reason: string, bySilence = false): void {
    const was = this.current
    if (was.kind !== 'up') return
    this.migratedBySilence = bySilence
    // The silence ends in a migration: the path was gone, not lossy. A count left here made
    // the first frame on the resumed session report 'lossy', and three roaming events in
    // LOSSY_WINDOW_MS moved a healthy new direct-tcp path to UDP (lossy-path.ts).
    this.silence.forgetSuspicion()
    this.transition({ kind: 'migrating', since: this.clock.now(), reason, path: was.path, remote: was.remote, transport: was.transport })
    this.emit('migrating', reason)
  }

  /**
   * Our own side of the path changed (a new NAT mapping or local address, seen by the
   * server: daemon/path-check.ts): a direct path is gone, migrate now instead of waiting
   * for the silence. A path that still works is heard again at once and used (backUp).
   */
  pathChanged(reason: string): void {
    if (this.current.kind === 'up' && movesWithMapping(this.current)) this.migrate(reason)
  }

  /**
   * The peer moved the tunnel to a session we could not follow (a late path we had to
   * drop, manager.ts): our mux reads nothing any more, so migrate now rather than wait
   * for the silence.
   */
  leftBehind(reason: string): void {
    this.migrate(reason)
  }

  private get route(): TunnelRoute {
    return { path: this.current.path, remote: this.current.remote, transport: this.current.transport }
  }

  get isMigrating(): boolean {
    return this.current.kind === 'migrating'
  }

  /**
   * Stops using the current session for good, before a resume on another (resume.ts):
   * returns how many sequenced frames we received (our RESUME says so).
   */
  detach(): number {
    const old = this.session
    this.session = null
    const received = this.mux.detach()
    old?.destroy()
    return received
  }

  /**
   * A resume on a new session failed after detach(): a tunnel still up (a voluntary move,
   * recovery.ts moveToUdp) has no session now and migrates at once, so its opener looks
   * for a path again instead of waiting for the silence detector.
   */
  resumeFailed(reason: string): void {
    if (this.session === null) this.migrate(reason)
  }

  /**
   * Continues on `next` after detach(): `peerReceived` is what the peer's RESUME says it
   * received; what it lacks is sent again. False (the tunnel closes) when that count is
   * impossible.
   */
  resume(next: Duplex & MessageStream, peerReceived: number, path: PathKind, remote: Endpoint, transport: Transport): boolean {
    if (this.current.kind === 'closed') {
      next.destroy()
      return false
    }
    this.session = next
    this.watch(next)
    if (!this.mux.resumeOn(next, peerReceived)) {
      this.close('the peer resumed with a count of frames we never sent', { goodbye: true, code: 'BAD_REQUEST' })
      return false
    }
    next.resume() // paused while the first frame was read
    const from = this.path
    this.silence.touched(this.clock.now())
    this.silence.stopWaiting()
    if (this.current.kind === 'migrating') this.backUp('new session', { path, remote, transport })
    else this.transition({ kind: 'up', path, remote, transport }, { how: 'new session' })
    if (from !== path) this.emit('path', from, path)
    return true
  }

  /** The tunnel lives and dies with its current session (not with one it moved away from). */
  private watch(session: Duplex & MessageStream): void {
    // A session that ends for any other reason (reset, timeout, a path that closed) is a
    // lost path: the tunnel migrates.
    // A session that dies with a reason (the relay's RELAY_LIMIT) closes the tunnel with it.
    let sessionError: NatdError | null = null
    session.on('error', (err: Error) => {
      this.log.debug('session error', { err: err.message })
      if (err instanceof NatdError) sessionError = err
    })
    session.on('close', () => {
      if (session !== this.session) return
      if (sessionError) this.close(`${sessionError.message} (${sessionError.code})`, { goodbye: false, code: sessionError.code })
      else this.migrate('session closed')
    })
  }

  /**
   * Moves the tunnel to a better path (relay -> direct) while it carries traffic: the
   * mux switches sessions without losing a frame; the old session goes once the peer
   * has switched too.
   */
  upgrade(next: Duplex & MessageStream, path: PathKind, remote: Endpoint, transport: Transport): boolean {
    const old = this.session
    if (this.current.kind !== 'up' || !old || this.mux.switchPending) {
      next.destroy()
      return false
    }
    const from = this.path
    this.session = next
    this.watch(next)
    this.mux.switchTo(next)
    const linger = (): void => void this.clock.setTimeout(() => old.destroy(), OLD_SESSION_LINGER_MS).unref()
    // The peer may have switched first (its SWITCH came before ours went): then we are done at once.
    if (this.mux.switchPending) this.mux.once('switched', linger)
    else linger()
    next.resume() // the responder paused it while it waited for the initiator's choice
    this.transition({ kind: 'up', path, remote, transport }, { how: 'upgrade' })
    this.silence.touched(this.clock.now())
    this.emit('path', from, path)
    return true
  }

  /**
   * Resolves once the peer sent us a frame (it answers our "this one" ping), or the tunnel
   * closed: before that, the responder may not have made its tunnel of the path we chose,
   * and a late path's first frame could reach it first (late-switch.ts).
   */
  heardFromPeer(): Promise<void> {
    if (this.answered || this.current.kind === 'closed') return Promise.resolve()
    return this.untilClosedOr((done) => {
      this.once('answered', done)
      return () => this.off('answered', done)
    })
  }

  /** Resolves once no switch of ours waits for the peer's (upgrade() refuses a second one meanwhile), or the tunnel closed. */
  switchSettled(): Promise<void> {
    if (!this.mux.switchPending || this.current.kind === 'closed') return Promise.resolve()
    return this.untilClosedOr((done) => {
      this.mux.once('switched', done)
      return () => this.mux.off('switched', done)
    })
  }

  /** Resolves when the event `listen` listens for comes (it returns how to stop listening) or the tunnel closes. */
  private untilClosedOr(listen: (done: () => void) => () => void): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        unlisten()
        this.off('closed', done)
        resolve()
      }
      const unlisten = listen(done)
      this.once('closed', done)
    })
  }

  get isUp(): boolean {
    return this.current.kind === 'up'
  }

  /** Not closed: up or migrating. */
  get isOpen(): boolean {
    return this.current.kind !== 'closed'
  }

  /** How long ago the tunnel came up, in ms. */
  get ageMs(): number {
    return this.clock.now() - this.since
  }

  /** Round trip over the tunnel; rejects TIMEOUT, or ABORTED when `signal` aborts first. */
  ping(timeoutMs: number, signal?: AbortSignal): Promise<number> {
    if (this.current.kind === 'closed') return Promise.reject(new NatdError('TUNNEL_CLOSED', 'tunnel closed'))
    return this.pings.start(this.peer.name, timeoutMs, (seq) => this.mux.ping(seq), signal)
  }

  private onKeepaliveExpired(): void {
    if (this.current.kind === 'migrating') return // onLivenessCheck gives up in time
    this.mux.trimReplay()
    if (this.silence.silentMs(this.clock.now()) > this.timing.deadMs) {
      this.migrate(`path silent for ${formatDuration(this.timing.deadMs)}`, true)
      return
    }
    this.ping(this.timing.deadMs).catch(() => undefined)
  }

  private onLivenessCheck(): void {
    const now = this.clock.now()
    if (this.current.kind === 'migrating') {
      const giveUpMs = this.timing.giveUpMs ?? MIGRATE_GIVE_UP_MS
      if (now - this.current.since > giveUpMs) this.close(`no path for ${formatDuration(giveUpMs)} (${this.current.reason})`, { goodbye: false, code: 'TUNNEL_CLOSED' })
      else if (this.session && now - this.lastMigratingPing >= Math.min(MIGRATING_PING_MS, this.timing.keepaliveMs)) {
        this.lastMigratingPing = now
        this.ping(MIGRATING_PING_MS * 2).catch(() => undefined) // short-lived: one lost while the path was down must not count later
      }
      return
    }
    if (this.current.kind !== 'up') return
    const waiting = this.mux.unacknowledged.frames > 0 || this.pings.size > 0
    const verdict = this.silence.check(now, waiting, this.timing.deadMs)
    if (verdict.suspect) this.emit('suspect')
    if (verdict.goneAfterMs !== null) this.migrate(`no answer for ${formatDuration(verdict.goneAfterMs)}`, true)
  }

  /** Closes the tunnel; with goodbye the peer learns at once instead of after DEAD_MS. */
  close(reason: string, opts: { goodbye: boolean; code?: string | undefined } = { goodbye: true }): void {
    if (this.current.kind === 'closed') return
    if (opts.goodbye) this.mux.goodbye(reason)
    this.closedWith = opts.code ?? null
    this.transition({ kind: 'closed', reason, ...this.route }, { code: opts.code })
    this.clock.clear(this.keepalive)
    this.clock.clear(this.liveness)
    this.pings.rejectAll(new NatdError('TUNNEL_CLOSED', `tunnel closed: ${reason}`))
    this.mux.close(reason)
    // Give the goodbye a moment to leave before the session goes.
    const session = this.session
    if (session) this.clock.setTimeout(() => session.destroy(), opts.goodbye ? GOODBYE_LINGER_MS : 0).unref()
    this.emit('closed', reason)
  }

  snapshot(): TunnelSnapshot {
    return {
      peer: this.peer.name,
      id: this.peer.id,
      path: this.path,
      remote: formatEndpoint(this.remote),
      rttMs: this.pings.lastRttMs,
      bytesIn: this.mux.bytesIn,
      bytesOut: this.mux.bytesOut,
      since: new Date(this.since).toISOString(),
      streams: this.mux.size,
      transport: this.transport,
      state: this.current.kind === 'migrating' ? 'migrating' : 'up'
    }
  }
}
