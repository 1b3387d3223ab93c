/**
 * The rendezvous server's TCP connections, from accept to close: per-source and global
 * limits on who may connect, the absolute deadline to authenticate, the clear CHALLENGE,
 * then either SECURE (a control connection: a Noise session with the server's key, its
 * messages metered, each with a deadline, requests held while the agent does not read)
 * or RELAY (a relay connection, handed to the relay once bound). What the messages mean
 * is control.ts's (TcpHandler); this file owns the sockets and what they may cost.
 */
import type net from 'node:net'
import type SecretStream from '@hyperswarm/secret-stream'
import type { Endpoint } from '../protocol/endpoint.js'
import { NatdError, ProtocolError, toNatdError } from '../protocol/errors.js'
import { randomBytes, type KeyPair } from '../protocol/identity.js'
import type { Clock, Logger } from '../protocol/log.js'
import { decode, encode, frame, FrameSplitter, MAX_TCP_FRAME_BYTES, NONCE_BYTES, type Message, type OutgoingMessage } from '../protocol/rendezvous.js'
import { secureSocket } from '../tunnel/secure-socket.js'
import { Counter, DEFAULT_SERVER_LIMITS, RateLimiter, sourceOf, type ServerLimits } from './limits.js'
import { NoiseMeter } from './noise-meter.js'
import type { RefusalLog } from '../common/refusal-log.js'
import type { RegRef } from './registry.js'
import type { Relay } from './relay.js'
import type { Timer, Timers } from './timers.js'

/**
 * A TCP connection must finish its Noise handshake and register (or bind a relay)
 * within this long from its accept, or it is closed: an absolute deadline, not an idle
 * timer, so a client trickling a byte at a time cannot hold it open (--auth-timeout;
 * limits.ts's authTimeoutMs).
 */
export const TCP_AUTH_TIMEOUT_MS = DEFAULT_SERVER_LIMITS.authTimeoutMs
/**
 * Largest frame in the clear (before SECURE or RELAY): SECURE is empty and RELAY 85
 * bytes; 1 KiB still lets a version-1 REGISTER (< 1 KiB) reach its clear refusal.
 */
export const MAX_CLEAR_FRAME_BYTES = 1024
/** Largest Noise message from an agent: its largest message, a REGISTER, is < 1 KiB (noise-meter.ts). */
export const MAX_AGENT_MESSAGE_BYTES = 16 * 1024
/** Largest frame on a bound relay connection: agents send RELAY_DATA of ≤ 64 KiB (relay-client.ts). */
export const MAX_RELAY_FRAME_BYTES = 128 * 1024
/**
 * An agent that does not read its answers: past this many unsent bytes the server
 * stops reading its requests until they drain (a PEERS answer is ≤ MAX_TCP_FRAME_BYTES)…
 */
export const REQUEST_BACKLOG_BYTES = 64 * 1024
/** …and past this many (peer events pile up too) it closes the connection. */
export const MAX_SEND_BACKLOG_BYTES = MAX_TCP_FRAME_BYTES + 256 * 1024
/**
 * The server also stops reading an agent's requests while this many are in the works
 * (answered after an await: with several instances LIST, LOOKUP, INTRODUCE and REGISTER
 * ask Redis first), so a burst costs this many Redis rounds at a time, not one per
 * request (review 9 #2: 5,000 LISTs had 5,000 in flight and timed out the instance's
 * Redis). Later ones wait unread, never refused: an honest agent has one or two out.
 */
export const MAX_REQUESTS_IN_FLIGHT = 4
/** How often a connection held by REQUEST_BACKLOG_BYTES checks whether it may read on. */
export const BACKLOG_POLL_MS = 50
/** A connection we end (after an error) is destroyed this long after if the peer never closes its side. */
export const END_LINGER_MS = 2_000
/** TCP keepalive on an authenticated connection (control or relay): a dead host is noticed without traffic. */
export const TCP_KEEPALIVE_MS = 10_000
export interface TcpConn {
  socket: net.Socket
  remote: Endpoint
  /** What per-source limits count it against (limits.ts sourceOf). */
  source: string
  /** Counted among the unauthenticated connections (until it registers or binds a relay). */
  unauth: boolean
  /** After SECURE: the Noise messages' sizes and starts (noise-meter.ts). */
  meter: NoiseMeter | null
  /** Closes the connection unless the message under way ends in time (messageTimeoutMs). */
  messageTimer: Timer | null
  messageTimerFor: number | null
  nonce: Buffer
  /** The registration this connection controls, once it has registered. */
  reg: RegRef | null
  splitter: FrameSplitter
  /** After SECURE: the Noise session every later message travels in. */
  session: SecretStream | null
  /** The connection sent RELAY: from now on it carries relayed frames only. */
  relay: boolean
  /** Closes the connection unless it authenticated in time (TCP_AUTH_TIMEOUT_MS). */
  authTimer: Timer | null
  /** Its requests in the works (started(), finished()). */
  inFlight: number
  /** Its requests are not read (holdRequests); backlogPoll checks the backlog again. */
  held: boolean
  backlogPoll: Timer | null
}

/** What the connections' messages mean (control.ts). */
export interface TcpHandler {
  /** A message inside a control session (throw a NatdError to answer with it and end the connection). */
  onMessage(conn: TcpConn, msg: Message): void
  /** A RELAY in the clear: bind it (throw a NatdError to refuse). */
  bindRelay(conn: TcpConn, msg: Extract<Message, { type: 'relay' }>): void
  /** The connection is gone. */
  onClose(conn: TcpConn): void
}

export interface TcpGateComponents {
  limits: ServerLimits
  clock: Clock
  timers: Timers
  log: Logger
  keyPair: KeyPair
  refusals: RefusalLog
  relay: Relay | null
}

export class TcpGate {
  readonly conns = new Set<TcpConn>()
  private readonly unauthBySource = new Counter()
  private readonly connsBySource = new Counter()
  private readonly sessionRate: RateLimiter
  private readonly relayRate: RateLimiter
  private h: TcpHandler | null = null

  constructor(private readonly c: TcpGateComponents) {
    this.sessionRate = new RateLimiter(c.limits.sessionsPerMinute, c.clock)
    this.relayRate = new RateLimiter(c.limits.relaysPerMinute, c.clock)
  }

  /**
   * Who the connections' messages go to, set once before the server listens (apart from
   * the constructor because the handler's parts send through this gate).
   */
  handleWith(h: TcpHandler): void {
    this.h = h
  }

  private get handler(): TcpHandler {
    if (!this.h) throw new Error('TcpGate: a connection before handleWith()')
    return this.h
  }

  /** Connections, unauthenticated ones, and the bytes held for strangers in partial frames and Noise messages. */
  stats(): { conns: number; unauth: number; heldBytes: number } {
    let held = 0
    for (const c of this.conns) held += c.splitter.pendingBytes + (c.meter?.heldBytes ?? 0)
    return { conns: this.conns.size, unauth: this.unauthBySource.total, heldBytes: held }
  }

  /** Forgets rate-limit buckets that filled up again (the server's sweep). */
  sweep(): void {
    this.sessionRate.sweep()
    this.relayRate.sweep()
  }

  closeAll(): void {
    for (const c of this.conns) c.socket.destroy()
  }

  /**
   * A new connection: CHALLENGE in the clear, then the agent says SECURE (a control
   * connection: Noise from here on) or RELAY (one end of a relayed tunnel).
   */
  /** The TCP server's connection handler. */
  onConnection(socket: net.Socket): void {
    const remote = { host: normalizeHost(socket.remoteAddress ?? ''), port: socket.remotePort ?? 0 }
    const source = sourceOf(remote.host)
    socket.on('error', () => undefined)
    const full = this.connectionRefusal(source)
    if (full) {
      // Nothing held for it: an ERROR (a legitimate agent logs why and backs off), then gone.
      this.c.refusals.refused('connection refused', remote, 'RATE_LIMITED', full)
      socket.end(frame(encode({ type: 'error', reqId: 0, code: 'RATE_LIMITED', message: full })))
      this.c.timers.setTimeout(() => socket.destroy(), END_LINGER_MS).unref()
      return
    }
    const conn: TcpConn = {
      socket,
      remote,
      source,
      unauth: true,
      meter: null,
      messageTimer: null,
      messageTimerFor: null,
      nonce: randomBytes(NONCE_BYTES),
      reg: null,
      splitter: new FrameSplitter(MAX_CLEAR_FRAME_BYTES),
      session: null,
      relay: false,
      authTimer: null,
      inFlight: 0,
      held: false,
      backlogPoll: null
    }
    this.conns.add(conn)
    this.unauthBySource.add(source)
    this.connsBySource.add(source)
    socket.setNoDelay(true)
    // Absolute from the accept: covers the clear part, a stalled Noise handshake, and a session that never registers.
    conn.authTimer = this.c.timers.setTimeout(() => this.onAuthExpired(conn), this.c.limits.authTimeoutMs).unref()
    const onData = (chunk: Buffer): void => {
      try {
        if (conn.relay && this.c.relay?.relaying(socket)) {
          // Paired: bytes pass through as they come (what the splitter held of a frame first).
          if (conn.splitter.pendingBytes > 0) this.c.relay.onBytes(socket, conn.splitter.rest(), MAX_RELAY_FRAME_BYTES)
          this.c.relay.onBytes(socket, chunk, MAX_RELAY_FRAME_BYTES)
          return
        }
        conn.splitter.add(chunk)
        for (let f = conn.splitter.next(); f; f = conn.splitter.next()) {
          if (conn.relay) {
            this.c.relay?.onFrame(socket, f)
            continue
          }
          const msg = decode(f)
          if (msg.type === 'secure') {
            if (!this.sessionRate.take(conn.source)) {
              throw new NatdError('RATE_LIMITED', `${this.c.limits.sessionsPerMinute} sessions a minute from one address; try again shortly`)
            }
            socket.off('data', onData)
            return this.secure(conn)
          }
          if (msg.type !== 'relay') throw new ProtocolError('UNAUTHORIZED', `${msg.type} outside a secure session (this server speaks protocol 2: upgrade natd)`)
          this.bindRelay(conn, msg)
        }
        if (conn.relay) this.c.relay?.held(socket, conn.splitter.pendingBytes)
      } catch (err) {
        this.onBadFrame(conn, err)
      }
    }
    socket.on('data', onData)
    socket.on('close', () => this.onClose(conn))
    socket.write(frame(encode({ type: 'challenge', nonce: conn.nonce, serverTime: this.c.clock.now() })))
  }

  /** Why a new connection from `source` is refused at once, or null. */
  private connectionRefusal(source: string): string | null {
    const L = this.c.limits
    if (this.unauthBySource.get(source) >= L.maxUnauthPerSource) return `${L.maxUnauthPerSource} connections from this address are still unauthenticated`
    if (this.unauthBySource.total >= L.maxUnauth) return 'the server holds its maximum of unauthenticated connections'
    if (this.connsBySource.get(source) >= L.maxConnsPerSource) return `${L.maxConnsPerSource} connections from this address at once`
    return null
  }

  private onAuthExpired(conn: TcpConn): void {
    conn.authTimer = null
    this.c.refusals.refused('connection timed out', conn.remote, 'TIMEOUT', `did not register or bind a relay within ${this.c.limits.authTimeoutMs} ms`)
    conn.socket.destroy()
  }

  /** SECURE: the rest of the connection is a Noise session in which the server proves its key. */
  private secure(conn: TcpConn): void {
    const { socket } = conn
    const meter = new NoiseMeter(MAX_AGENT_MESSAGE_BYTES)
    conn.meter = meter
    const inspect = (chunk: Buffer): boolean => {
      try {
        meter.feed(chunk, this.c.clock.now())
      } catch (err) {
        this.c.refusals.refused('bad session message', conn.remote, 'BAD_REQUEST', (err as Error).message)
        socket.destroy() // inside the session the server cannot say why in the clear
        return false
      }
      this.armMessageTimer(conn)
      return true
    }
    const session = secureSocket(false, socket, conn.splitter.rest(), this.c.keyPair, inspect)
    conn.session = session
    session.on('close', () => socket.destroy())
    session.on('data', (f: Buffer) => {
      try {
        this.handler.onMessage(conn, decode(f))
      } catch (err) {
        this.onBadFrame(conn, err)
      }
      if (socket.destroyed || conn.held) return
      if (conn.inFlight >= MAX_REQUESTS_IN_FLIGHT || unsentBytes(conn) > REQUEST_BACKLOG_BYTES) this.holdRequests(conn, session)
    })
  }

  /** A message under way must end by its deadline (absolute, from its first byte); the unauthenticated deadline runs besides. */
  private armMessageTimer(conn: TcpConn): void {
    const started = conn.meter?.startedAt ?? null
    if (started === conn.messageTimerFor) return
    this.c.timers.clear(conn.messageTimer)
    conn.messageTimer = null
    conn.messageTimerFor = started
    if (started === null) return
    conn.messageTimer = this.c.timers.setTimeout(() => this.onMessageExpired(conn), Math.max(1, started + this.c.limits.messageTimeoutMs - this.c.clock.now())).unref()
  }

  private onMessageExpired(conn: TcpConn): void {
    conn.messageTimer = null
    this.c.refusals.refused('message timed out', conn.remote, 'TIMEOUT', `a message did not end within ${this.c.limits.messageTimeoutMs} ms of its start`)
    conn.socket.destroy()
  }

  /** A request of `conn` is in the works (control.ts), until finished(): its answer was written. */
  started(conn: TcpConn): void {
    conn.inFlight++
  }

  finished(conn: TcpConn): void {
    conn.inFlight--
    this.readOn(conn)
  }

  /** Stops reading an agent's requests until what it was sent drains (it may not read) and fewer are in the works. */
  private holdRequests(conn: TcpConn, session: SecretStream): void {
    conn.held = true
    session.pause()
    this.readOn(conn)
  }

  /** Resumes a held connection once it may read (else waits: the backlog is polled, a request's end calls again). */
  private readOn(conn: TcpConn): void {
    if (!conn.held || conn.socket.destroyed || conn.inFlight >= MAX_REQUESTS_IN_FLIGHT) return
    if (unsentBytes(conn) > REQUEST_BACKLOG_BYTES) {
      conn.backlogPoll ??= this.c.timers.setTimeout(() => this.onBacklogPollExpired(conn), BACKLOG_POLL_MS).unref()
      return
    }
    conn.held = false
    conn.session?.resume()
  }

  private onBacklogPollExpired(conn: TcpConn): void {
    conn.backlogPoll = null
    this.readOn(conn)
  }

  private onBadFrame(conn: TcpConn, err: unknown): void {
    if (err instanceof NatdError) {
      this.send(conn, { type: 'error', reqId: 0, code: err.code, message: err.message })
      this.c.refusals.refused('bad tcp frame', conn.remote, err.code, err.message)
      this.end(conn)
    } else {
      this.c.log.error('tcp handler failed', { err: (err as Error).stack })
      conn.socket.destroy()
    }
  }

  /** Ends a connection after what was sent to it (inside its session, if any); destroys it if it lingers. */
  end(conn: TcpConn): void {
    if (conn.session) conn.session.end()
    else conn.socket.end()
    this.c.timers.setTimeout(() => conn.socket.destroy(), END_LINGER_MS).unref()
  }

  private onClose(conn: TcpConn): void {
    this.c.timers.clear(conn.authTimer)
    this.c.timers.clear(conn.messageTimer)
    this.c.timers.clear(conn.backlogPoll)
    conn.session?.destroy()
    if (!this.conns.delete(conn)) return
    if (conn.unauth) this.unauthBySource.remove(conn.source)
    this.connsBySource.remove(conn.source)
    this.handler.onClose(conn)
  }

  /** The connection registered or bound a relay: the unauthenticated deadline and count no longer apply. */
  authenticated(conn: TcpConn): void {
    this.c.timers.clear(conn.authTimer)
    conn.authTimer = null
    if (conn.unauth) this.unauthBySource.remove(conn.source)
    conn.unauth = false
  }

  /** Sends inside the session once there is one (the clear CHALLENGE and pre-session errors go framed). */
  send(conn: TcpConn, msg: OutgoingMessage): void {
    if (conn.socket.destroyed) return
    if (conn.session) this.writeSession(conn, encode(msg))
    else conn.socket.write(frame(encode(msg)))
  }

  /** Writes inside the session; an agent that lets MAX_SEND_BACKLOG_BYTES pile up unread is closed. */
  writeSession(conn: TcpConn, bytes: Buffer): void {
    if (!conn.session || conn.socket.destroyed) return
    conn.session.write(bytes)
    if (unsentBytes(conn) > MAX_SEND_BACKLOG_BYTES) {
      this.c.refusals.refused('slow reader closed', conn.remote, 'TIMEOUT', `more than ${MAX_SEND_BACKLOG_BYTES} bytes unread`)
      conn.socket.destroy()
    }
  }

  /** RELAY: the server binds it (the signature, the permit); from then on the relay has the connection's frames. */
  private bindRelay(conn: TcpConn, msg: Extract<Message, { type: 'relay' }>): void {
    try {
      if (!this.relayRate.take(conn.source)) throw new NatdError('RATE_LIMITED', `${this.c.limits.relaysPerMinute} relay binds a minute from one address; try again shortly`)
      this.handler.bindRelay(conn, msg)
      this.authenticated(conn) // the relay sets its own deadlines (bind, then limits)
      conn.relay = true
      conn.splitter.maxBytes = MAX_RELAY_FRAME_BYTES
      conn.socket.setKeepAlive(true, TCP_KEEPALIVE_MS)
    } catch (err) {
      const e = toNatdError(err)
      this.c.refusals.refused('relay refused', conn.remote, e.code, e.message)
      this.send(conn, { type: 'error', reqId: 0, code: e.code, message: e.message })
      conn.socket.end()
    }
  }
}

/** Bytes written to a control connection and not yet handed to the kernel (the socket, the session's queues). */
function unsentBytes(conn: TcpConn): number {
  // secret-stream is a streamx Duplex: its queue is `_writableState.buffered`, its raw stream our PrefixedSocket.
  const s = conn.session as unknown as { rawStream?: { writableLength?: number }; _writableState?: { buffered?: number } } | null
  return conn.socket.writableLength + (s?.rawStream?.writableLength ?? 0) + (s?._writableState?.buffered ?? 0)
}

function normalizeHost(host: string): string {
  return host.startsWith('::ffff:') ? host.slice(7) : host
}

