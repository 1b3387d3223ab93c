/**
 * The agent's TCP control connection to the rendezvous server: opened from our fixed
 * local port (the one TCP punching reuses), then a Noise session (secret-stream, XX)
 * in which the server proves the key we pinned, registered over, then carrying requests
 * whose replies are matched by reqId and the server's own messages (peer events,
 * introductions, pongs, errors without a request), which it emits.
 *
 *   server → CHALLENGE (clear)   agent → SECURE, Noise handshake   [key checked]
 *   agent  → REGISTER            server → REGISTER_ACK (token, heartbeat key)   (inside)
 */
import type SecretStream from '@hyperswarm/secret-stream'
import { EventEmitter } from 'node:events'
import net from 'node:net'
import { formatEndpoint, type Endpoint } from '../protocol/endpoint.js'
import { isErrorCode, NatdError, ProtocolError } from '../protocol/errors.js'
import { peerId, timingSafeEqual, type KeyPair } from '../protocol/identity.js'
import { systemClock, type Timer, type TimerClock } from '../protocol/clock.js'
import type { Logger } from '../protocol/log.js'
import { decode, encode, FEATURE_LOOKUP, frame, FrameSplitter, type Message, type OutgoingMessage } from '../protocol/rendezvous.js'
import { secureSocket } from '../tunnel/secure-socket.js'

/** TCP connect + register must finish within this. */
export const TCP_REGISTER_TIMEOUT_MS = 5_000
/**
 * The TCP connect, and then the server's challenge (sent as it accepts), may each take
 * this long while a tunnel migrates (its new path needs us registered;
 * rendezvous-client.ts urgent). A challenge that does not come within a round trip of
 * the connect was lost with a path that changed under it (bench/roaming.ts, 100 ms RTT,
 * alice's new address: connected, no challenge, 5 s waited out, a 7.3 s stall). Linux resends a lost SYN 1 s after the first,
 * then 2 s and 4 s later: a connect begun while the link was dark waits seconds after it
 * is back (bench/roaming.ts: a 5 s connect deadline run out, then a 1 s backoff, a 3.2 s
 * stall after a 10 s outage), while a new connect sends its SYN at once. This covers the
 * first resend and one round trip at 300 ms RTT; the client then tries again within
 * URGENT_BACKOFF_CAP_MS in reconnect-policy.ts (at most one connect a second, to our own server).
 */
export const URGENT_CONNECT_TIMEOUT_MS = 1_500
/** send() resolves once its message was flushed, or after this (a stuck socket must not hold a caller such as stop()). */
export const SEND_FLUSH_WAIT_MS = 300
/** A TCP request (LIST, LOOKUP, INTRODUCE) gives up after this. */
export const TCP_REQUEST_TIMEOUT_MS = 10_000

interface Pending {
  resolve: (v: Message) => void
  reject: (e: Error) => void
  timer: Timer
}

/** What the registration told us. */
export interface Registered {
  observed: Endpoint | null
  token: Uint8Array
  udpKey: Uint8Array
  heartbeatMs: number
  /** The server's IPv6 socket (--host6), null when it has none. */
  server6: Endpoint | null
  /** The server answers LOOKUP (an older one would end the connection on it: use LIST). */
  lookup: boolean
}

/** The server key we expect: pinned (from `--server …#KEY` or first use), or null to learn it. */
export interface ServerKeyCheck {
  expected: Uint8Array | null
  /** How to say to re-pin, in the SERVER_KEY_MISMATCH message. */
  howToRepin: string
}

interface ControlEvents {
  /** A message that answers no request of ours. */
  message: [msg: Message]
  close: []
}

export class ControlConnection extends EventEmitter<ControlEvents> {
  private readonly waiters = new Map<number, Pending>()
  private nextReqId = 1
  /** Registration reads the first replies itself; later ones are requests' or the server's own. */
  private first: ((m: Message) => void) | null = null
  /** The server's clock minus ours when it sent its challenge (REGISTER carries server time). */
  private readonly serverClockOffset: number

  private constructor(
    private readonly sock: net.Socket,
    private readonly session: SecretStream,
    private readonly server: Endpoint,
    private readonly nonce: Uint8Array,
    serverTime: number,
    log: Logger,
    /** Wall time: REGISTER carries the server's time, read off ours plus the offset. */
    private readonly clock: TimerClock
  ) {
    super()
    this.serverClockOffset = serverTime - clock.now()
    session.on('data', (f: Buffer) => {
      try {
        this.onMessage(decode(f))
      } catch (err) {
        log.warn('bad frame from server', { err: (err as Error).message })
        sock.destroy()
      }
    })
    session.on('error', (err: Error) => log.debug('control session error', { err: err.message }))
    session.once('close', () => sock.destroy())
    sock.once('close', () => {
      session.destroy()
      for (const w of this.waiters.values()) {
        this.clock.clear(w.timer)
        w.reject(new NatdError('SERVER_UNREACHABLE', 'control connection closed'))
      }
      this.waiters.clear()
      this.emit('close')
    })
  }

  /**
   * Connects from `localPort` (falls back to an ephemeral port, with a warning, when it
   * is busy), runs the Noise handshake, and checks the server's key before anything of
   * ours is sent inside: SERVER_KEY_MISMATCH when it is not the one expected.
   */
  static async connect(server: Endpoint, localPort: number, keyPair: KeyPair, serverKey: ServerKeyCheck, log: Logger, clock: TimerClock = systemClock, connectMs = TCP_REGISTER_TIMEOUT_MS): Promise<ControlConnection> {
    let sock: net.Socket
    try {
      sock = await connectFrom(server, localPort || undefined, log, clock, connectMs)
    } catch (err) {
      const code = (err as { errno?: string }).errno
      if (!localPort || (code !== 'EADDRINUSE' && code !== 'EADDRNOTAVAIL')) throw err
      log.warn('control port busy, using an ephemeral port (TCP punching waits for the next reconnect)', { port: localPort, code })
      sock = await connectFrom(server, undefined, log, clock, connectMs)
    }
    try {
      const { challenge, rest } = await readChallenge(sock, server, clock, connectMs)
      sock.write(frame(encode({ type: 'secure' })))
      const session = secureSocket(true, sock, rest, keyPair)
      const opened = await raceDeadline(session.opened, TCP_REGISTER_TIMEOUT_MS, clock, () => false)
      if (!opened || !session.remotePublicKey) throw new NatdError('SERVER_UNREACHABLE', `the encrypted handshake with ${formatEndpoint(server)} did not complete`)
      const got = session.remotePublicKey
      if (serverKey.expected && !timingSafeEqual(got, serverKey.expected)) {
        throw new NatdError(
          'SERVER_KEY_MISMATCH',
          `the server at ${formatEndpoint(server)} presents key ${peerId(got)}, but ${peerId(serverKey.expected)} is pinned: someone may be in the way. If the operator really changed the server's key (natd-rendezvous --print-key shows it), ${serverKey.howToRepin}`
        )
      }
      return new ControlConnection(sock, session, server, challenge.nonce, challenge.serverTime, log, clock)
    } catch (err) {
      sock.resetAndDestroy()
      throw err
    }
  }

  /** The key the server proved in the handshake. */
  get serverKey(): Uint8Array {
    return this.session.remotePublicKey!
  }

  /** Local port (TCP punching reuses it); 0 once closed. */
  get localPort(): number {
    return this.sock.destroyed ? 0 : (this.sock.localPort ?? 0)
  }

  /**
   * Registers (again, on a live connection: the server hands out a new heartbeat key):
   * sends `signedRegister(nonce, serverTime)` and resolves with what the server said.
   */
  async register(signedRegister: (nonce: Uint8Array, serverTime: number) => Buffer): Promise<Registered> {
    let onClose = (): void => undefined
    const closed = new Promise<never>((_, reject) => {
      onClose = () => reject(new NatdError('SERVER_UNREACHABLE', 'control connection closed'))
      this.once('close', onClose)
    })
    const answer = Promise.race([new Promise<Message>((resolve) => (this.first = resolve)), closed])
    this.session.write(signedRegister(this.nonce, this.clock.now() + this.serverClockOffset))
    let ack: Message
    try {
      ack = await raceDeadline(answer, TCP_REGISTER_TIMEOUT_MS, this.clock, () => {
        throw new NatdError('SERVER_UNREACHABLE', `no registration answer from ${formatEndpoint(this.server)}`)
      })
    } finally {
      this.off('close', onClose)
    }
    if (ack.type === 'error') throw serverError(ack)
    if (ack.type !== 'register-ack') throw new NatdError('INTERNAL', `expected a register ack, got ${ack.type}`)
    return { observed: ack.observed, token: ack.token, udpKey: ack.udpKey, heartbeatMs: ack.heartbeatMs, server6: ack.server6 ?? null, lookup: ((ack.features ?? 0) & FEATURE_LOOKUP) !== 0 }
  }

  /** Sends a request and resolves with its reply; rejects with the server's error, TIMEOUT, or SERVER_UNREACHABLE. */
  request(msg: Extract<OutgoingMessage, { reqId: number }>): Promise<Message> {
    if (this.sock.destroyed) return Promise.reject(new NatdError('SERVER_UNREACHABLE', 'control connection closed'))
    const reqId = this.nextReqId++
    return new Promise((resolve, reject) => {
      const timer = this.clock.setTimeout(() => {
        this.waiters.delete(reqId)
        reject(new NatdError('TIMEOUT', `the server did not answer ${msg.type} in ${TCP_REQUEST_TIMEOUT_MS / 1000}s`))
      }, TCP_REQUEST_TIMEOUT_MS)
      this.waiters.set(reqId, { resolve, reject, timer })
      this.session.write(encode({ ...msg, reqId } as OutgoingMessage))
    })
  }

  /** Sends a message that has no reply; `sent` resolves once it left (or after 300 ms). */
  send(msg: OutgoingMessage): Promise<void> {
    if (this.sock.destroyed) return Promise.resolve()
    this.session.write(encode(msg))
    return raceDeadline(this.session.flush().then(() => undefined), SEND_FLUSH_WAIT_MS, this.clock, () => undefined)
  }

  /** Closes with RST rather than FIN: no TIME_WAIT on our fixed port, so the next connect can reuse it. */
  close(): void {
    if (!this.sock.destroyed) this.sock.resetAndDestroy()
  }

  private onMessage(msg: Message): void {
    if (this.first && (msg.type === 'register-ack' || (msg.type === 'error' && msg.reqId === 0))) {
      const f = this.first
      this.first = null
      return f(msg)
    }
    const reqId = 'reqId' in msg ? msg.reqId : 0
    const w = reqId ? this.waiters.get(reqId) : undefined
    if (!w) return void this.emit('message', msg)
    this.waiters.delete(reqId)
    this.clock.clear(w.timer)
    if (msg.type === 'error') w.reject(serverError(msg))
    else w.resolve(msg)
  }
}

/**
 * `work`, or `onExpired()` after `ms` if it has not settled by then; the deadline's timer
 * is cleared as soon as either happens (one left behind per attempt would pile up while
 * an agent reconnects, and keep a fake clock's tests from seeing a clean state).
 */
export async function raceDeadline<T, U>(work: Promise<T>, ms: number, clock: TimerClock, onExpired: () => U): Promise<T | U> {
  const deadline = new AbortController()
  try {
    return await Promise.race([work, clock.sleep(ms, deadline.signal).then(() => (deadline.signal.aborted ? (undefined as never) : onExpired()))])
  } finally {
    deadline.abort()
  }
}

/** Reads the server's clear CHALLENGE; a server of another protocol version gets a clear BAD_VERSION. */
function readChallenge(sock: net.Socket, server: Endpoint, clock: TimerClock, ms: number): Promise<{ challenge: Extract<Message, { type: 'challenge' }>; rest: Buffer }> {
  const splitter = new FrameSplitter()
  return new Promise((resolve, reject) => {
    const done = (err: Error | null, v?: { challenge: Extract<Message, { type: 'challenge' }>; rest: Buffer }): void => {
      clock.clear(timer)
      sock.off('data', onData)
      sock.off('close', onClose)
      if (err) reject(err)
      else resolve(v!)
    }
    const timer = clock.setTimeout(() => done(new NatdError('SERVER_UNREACHABLE', `no challenge from ${formatEndpoint(server)}`)), ms)
    const onClose = (): void => done(new NatdError('SERVER_UNREACHABLE', `${formatEndpoint(server)} closed the connection`))
    const onData = (chunk: Buffer): void => {
      try {
        splitter.add(chunk)
        const f = splitter.next()
        if (!f) return
        const m = decode(f)
        if (m.type === 'error') return done(serverError(m))
        if (m.type !== 'challenge') return done(new NatdError('BAD_REQUEST', `expected a challenge from the server, got ${m.type}`))
        done(null, { challenge: m, rest: splitter.rest() })
      } catch (err) {
        if (err instanceof ProtocolError && err.code === 'BAD_VERSION') {
          return done(new NatdError('BAD_VERSION', `the server at ${formatEndpoint(server)} speaks another protocol version: ${err.message}; natd and natd-rendezvous must be upgraded together`))
        }
        done(err as Error)
      }
    }
    sock.on('data', onData)
    sock.on('close', onClose)
  })
}

function connectFrom(server: Endpoint, localPort: number | undefined, log: Logger, clock: TimerClock, connectMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: server.host, port: server.port, ...(localPort ? { localPort } : {}) })
    const timer = clock.setTimeout(() => {
      sock.destroy()
      reject(new NatdError('SERVER_UNREACHABLE', `TCP connect to ${formatEndpoint(server)} timed out`))
    }, connectMs)
    sock.once('connect', () => {
      clock.clear(timer)
      sock.setNoDelay(true)
      sock.setKeepAlive(true, 10_000)
      sock.on('error', (err) => log.debug('control connection error', { err: err.message }))
      resolve(sock)
    })
    sock.once('error', (err: NodeJS.ErrnoException) => {
      clock.clear(timer)
      reject(Object.assign(new NatdError('SERVER_UNREACHABLE', `TCP connect to ${formatEndpoint(server)}: ${err.code ?? err.message}`), { errno: err.code }))
    })
  })
}

export function serverError(msg: Extract<Message, { type: 'error' }>): NatdError {
  return new NatdError(isErrorCode(msg.code) ? msg.code : 'INTERNAL', msg.message || msg.code)
}
