/**
 * The agent's TCP control connection to the rendezvous server: opened from our fixed
 * local port (the one TCP punching reuses), registered over, then carrying requests whose
 * replies are matched by reqId and the server's own messages (peer events, introductions,
 * pongs, errors without a request), which it emits.
 */
import { EventEmitter } from 'node:events'
import net from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { formatEndpoint, type Endpoint } from '../protocol/endpoint.js'
import { isErrorCode, NatdError } from '../protocol/errors.js'
import type { Logger } from '../protocol/log.js'
import { decode, encode, frame, FrameSplitter, type Message, type OutgoingMessage } from '../protocol/rendezvous.js'

/** TCP connect + register must finish within this. */
export const TCP_REGISTER_TIMEOUT_MS = 5_000
/** A TCP request (LIST, INTRODUCE) gives up after this. */
export const TCP_REQUEST_TIMEOUT_MS = 10_000

interface Pending {
  resolve: (v: Message) => void
  reject: (e: Error) => void
  timer: NodeJS.Timeout
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

  private constructor(
    private readonly sock: net.Socket,
    private readonly server: Endpoint,
    private readonly log: Logger
  ) {
    super()
    const splitter = new FrameSplitter()
    sock.on('data', (chunk) => {
      try {
        for (const f of splitter.push(chunk)) this.onMessage(decode(f))
      } catch (err) {
        log.warn('bad frame from server', { err: (err as Error).message })
        sock.destroy()
      }
    })
    sock.once('close', () => {
      for (const w of this.waiters.values()) {
        clearTimeout(w.timer)
        w.reject(new NatdError('SERVER_UNREACHABLE', 'control connection closed'))
      }
      this.waiters.clear()
      this.emit('close')
    })
  }

  /** Connects from `localPort`; falls back to an ephemeral port (with a warning) when it is busy. */
  static async connect(server: Endpoint, localPort: number, log: Logger): Promise<ControlConnection> {
    try {
      return new ControlConnection(await connectFrom(server, localPort || undefined, log), server, log)
    } catch (err) {
      const code = (err as { errno?: string }).errno
      if (!localPort || (code !== 'EADDRINUSE' && code !== 'EADDRNOTAVAIL')) throw err
      log.warn('control port busy, using an ephemeral port (TCP punching waits for the next reconnect)', { port: localPort, code })
      return new ControlConnection(await connectFrom(server, undefined, log), server, log)
    }
  }

  /** Local port (TCP punching reuses it); 0 once closed. */
  get localPort(): number {
    return this.sock.destroyed ? 0 : (this.sock.localPort ?? 0)
  }

  /**
   * Registers: answers the server's challenge with `signedRegister(nonce, serverTime)` and
   * resolves with the endpoint the server saw.
   */
  async register(signedRegister: (nonce: Uint8Array, serverTime: number) => Buffer): Promise<Endpoint | null> {
    const closed = new Promise<never>((_, reject) => this.once('close', () => reject(new NatdError('SERVER_UNREACHABLE', 'control connection closed'))))
    closed.catch(() => undefined)
    const timeout = sleep(TCP_REGISTER_TIMEOUT_MS, undefined, { ref: false }).then(() => {
      throw new NatdError('SERVER_UNREACHABLE', `no TCP registration answer from ${formatEndpoint(this.server)}`)
    })
    timeout.catch(() => undefined)
    const next = (): Promise<Message> => Promise.race([new Promise<Message>((resolve) => (this.first = resolve)), closed, timeout])
    const challenge = await next()
    if (challenge.type !== 'challenge') throw new NatdError('INTERNAL', `expected a challenge, got ${challenge.type}`)
    this.sock.write(frame(signedRegister(challenge.nonce, challenge.serverTime)))
    const ack = await next()
    if (ack.type === 'error') throw serverError(ack)
    if (ack.type !== 'register-ack') throw new NatdError('INTERNAL', `expected a register ack, got ${ack.type}`)
    return ack.observed
  }

  /** Sends a request and resolves with its reply; rejects with the server's error, TIMEOUT, or SERVER_UNREACHABLE. */
  request(msg: Extract<OutgoingMessage, { reqId: number }>): Promise<Message> {
    if (this.sock.destroyed) return Promise.reject(new NatdError('SERVER_UNREACHABLE', 'control connection closed'))
    const reqId = this.nextReqId++
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.delete(reqId)
        reject(new NatdError('TIMEOUT', `the server did not answer ${msg.type} in ${TCP_REQUEST_TIMEOUT_MS / 1000}s`))
      }, TCP_REQUEST_TIMEOUT_MS)
      this.waiters.set(reqId, { resolve, reject, timer })
      this.sock.write(frame(encode({ ...msg, reqId } as OutgoingMessage)))
    })
  }

  /** Sends a message that has no reply; `sent` resolves once it left (or after 300 ms). */
  send(msg: OutgoingMessage): Promise<void> {
    if (this.sock.destroyed) return Promise.resolve()
    return new Promise<void>((resolve) => {
      this.sock.write(frame(encode(msg)), () => resolve())
      setTimeout(resolve, 300).unref()
    })
  }

  /** Closes with RST rather than FIN: no TIME_WAIT on our fixed port, so the next connect can reuse it. */
  close(): void {
    if (!this.sock.destroyed) this.sock.resetAndDestroy()
  }

  private onMessage(msg: Message): void {
    if (this.first) {
      const f = this.first
      this.first = null
      return f(msg)
    }
    const reqId = 'reqId' in msg ? msg.reqId : 0
    const w = reqId ? this.waiters.get(reqId) : undefined
    if (!w) return void this.emit('message', msg)
    this.waiters.delete(reqId)
    clearTimeout(w.timer)
    if (msg.type === 'error') w.reject(serverError(msg))
    else w.resolve(msg)
  }
}

function connectFrom(server: Endpoint, localPort: number | undefined, log: Logger): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: server.host, port: server.port, ...(localPort ? { localPort } : {}) })
    const timer = setTimeout(() => {
      sock.destroy()
      reject(new NatdError('SERVER_UNREACHABLE', `TCP connect to ${formatEndpoint(server)} timed out`))
    }, TCP_REGISTER_TIMEOUT_MS)
    sock.once('connect', () => {
      clearTimeout(timer)
      sock.setNoDelay(true)
      sock.setKeepAlive(true, 10_000)
      sock.on('error', (err) => log.debug('control connection error', { err: err.message }))
      resolve(sock)
    })
    sock.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer)
      reject(Object.assign(new NatdError('SERVER_UNREACHABLE', `TCP connect to ${formatEndpoint(server)}: ${err.code ?? err.message}`), { errno: err.code }))
    })
  })
}

export function serverError(msg: Extract<Message, { type: 'error' }>): NatdError {
  return new NatdError(isErrorCode(msg.code) ? msg.code : 'INTERNAL', msg.message || msg.code)
}
