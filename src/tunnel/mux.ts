/**
 * Many channels (forwarded TCP connections, later messages and files) over one
 * encrypted session. Frames are in protocol/mux.ts. Each channel (mux-channel.ts) is a
 * Duplex with credit-based flow control: a sender may have at most the receiver's window
 * in flight, and the receiver grants more only as its consumer reads, so one slow
 * connection never stalls the others or grows memory without bound.
 *
 * Why not HTTP/2 or one session per connection: HTTP/2 over a secret-stream measured
 * 53 MB/s against 65 MB/s for the bare session (ARCHITECTURE.md), and a session per
 * connection costs a Noise handshake per connection and cannot run over a single TCP
 * or relayed path.
 */
import { EventEmitter } from 'node:events'
import { NatdError } from '../protocol/errors.js'
import type { Logger } from '../protocol/log.js'
import { decodeMux, encodeMux, type MuxFrame } from '../protocol/mux.js'
import { CHANNEL_WINDOW_BYTES, MuxChannel } from './mux-channel.js'

/** Most channels open at once per tunnel (each one is a forwarded connection). */
export const MAX_CHANNELS = 4096

/** The session: a message-preserving duplex (secret-stream). */
export interface MessageStream {
  write(buf: Buffer): boolean
  /**
   * secret-stream's zero-copy send: a plaintext buffer that lies inside the buffer the
   * message will be encrypted in; writing it next skips secret-stream's own allocation
   * and copy (bench/crypto-micro.ts: ~25% of the cost of push at 64 KiB).
   */
  alloc?(len: number): Buffer
  once(event: 'drain', fn: () => void): unknown
  on(event: 'data', fn: (buf: Buffer) => void): unknown
  destroyed: boolean
}

export interface OpenRequest {
  channel: MuxChannel
  port: number
  /** '' for a TCP port (forwards), else an agent service name ('msg', 'file', …). */
  service: string
  accept(): void
  reject(code: string, message: string): void
}

interface MuxEvents {
  open: [req: OpenRequest]
  pong: [seq: number]
  goodbye: [reason: string]
  frame: []
  /** The peer's SWITCH arrived: it will send nothing more on the old session. */
  switched: [old: MessageStream]
}

export class Mux extends EventEmitter<MuxEvents> {
  private readonly channels = new Map<number, MuxChannel>()
  private nextId: number
  private drainWaiters: Array<(err?: Error | null) => void> = []
  /**
   * The session's last write() returned false and its 'drain' has not come yet. Tracked
   * from write()'s result because secret-stream is a streamx stream, which has no
   * writableNeedDrain (reading that property gave undefined: channels never waited).
   */
  private needDrain = false
  private closed = false
  bytesIn = 0
  bytesOut = 0

  /** Where we write; on a path upgrade the next session. */
  private session: MessageStream
  /** Where we read: the old session until the peer's SWITCH, then the next; null in between. */
  private reading: MessageStream | null
  /** The next session, attached but not yet read (its frames wait in `early`). */
  private next: MessageStream | null = null
  private early: Buffer[] = []
  /** The peer's SWITCH came before we attached the next session. */
  private peerSwitched = false

  constructor(
    session: MessageStream,
    opener: boolean,
    private readonly log: Logger
  ) {
    super()
    this.session = session
    this.reading = session
    this.nextId = opener ? 1 : 2
    session.on('data', (buf) => this.onSessionData(session, buf))
  }

  /**
   * Moves the tunnel to another session without losing or reordering a frame: our
   * SWITCH is the last frame we write on the old session; the peer's frames on the new
   * one wait until its SWITCH arrives on the old. Channels and their windows carry over.
   */
  switchTo(next: MessageStream): void {
    if (this.closed) return
    this.send({ type: 'switch', channel: 0 })
    const waiters = this.drainWaiters.splice(0)
    this.session = next
    this.needDrain = false
    for (const w of waiters) this.whenWritable(w)
    if (this.peerSwitched) this.reading = next
    else this.next = next
    next.on('data', (buf) => this.onSessionData(next, buf))
  }

  private onSessionData(from: MessageStream, buf: Buffer): void {
    if (from === this.reading) this.onMessage(buf)
    else if (from === this.next) this.early.push(buf)
  }

  private onSwitch(): void {
    const old = this.reading
    if (this.next) {
      this.reading = this.next
      this.next = null
      for (const b of this.early.splice(0)) this.onMessage(b)
    } else {
      this.peerSwitched = true
      this.reading = null
    }
    if (old) this.emit('switched', old)
  }

  get size(): number {
    return this.channels.size
  }

  /** Opens a channel to the peer's TCP `port`, or to its agent `service`; writes wait for `channel.opened`. */
  openChannel(port: number, service = ''): MuxChannel {
    if (this.closed) throw new NatdError('TUNNEL_CLOSED', 'tunnel closed')
    if (this.channels.size >= MAX_CHANNELS) throw new NatdError('INTERNAL', `more than ${MAX_CHANNELS} channels on one tunnel`)
    const id = this.nextId
    this.nextId += 2
    const ch = new MuxChannel(this, id, port)
    this.channels.set(id, ch)
    this.send({ type: 'open', channel: id, port, window: CHANNEL_WINDOW_BYTES, service })
    return ch
  }

  ping(seq: number): void {
    this.send({ type: 'ping', channel: 0, seq })
  }

  goodbye(reason: string): void {
    this.send({ type: 'goodbye', channel: 0, reason })
  }

  /** Ends every channel (the session is gone). */
  close(reason: string): void {
    if (this.closed) return
    this.closed = true
    const err = new NatdError('TUNNEL_CLOSED', reason)
    for (const ch of [...this.channels.values()]) ch.destroy(err)
    this.channels.clear()
    for (const w of this.drainWaiters.splice(0)) w(err)
  }

  /** @internal */
  send(f: MuxFrame): void {
    this.sendRaw(encodeMux(f))
  }

  /** @internal */
  sendRaw(buf: Buffer): void {
    if (this.closed || this.session.destroyed) return
    const session = this.session
    if (session.write(buf) || this.needDrain) return
    this.needDrain = true
    // Listened for at once, not when a channel next wants to send: a drain that came
    // before anyone listened would otherwise be missed and stall every channel.
    session.once('drain', () => {
      if (session !== this.session) return // switched away: the new session's state counts
      this.needDrain = false
      for (const w of this.drainWaiters.splice(0)) w()
    })
  }

  /** @internal a buffer for one frame, to be passed to sendRaw() before any other allocFrame(). */
  allocFrame(len: number): Buffer {
    return this.session.alloc ? this.session.alloc(len) : Buffer.allocUnsafe(len)
  }

  /** @internal the session's buffer is full: wait for its drain before sending data. */
  get congested(): boolean {
    return this.needDrain
  }

  /** @internal calls back once the session can take more (backpressure for every channel). */
  whenWritable(cb: (err?: Error | null) => void): void {
    if (this.closed) return cb(new NatdError('TUNNEL_CLOSED', 'tunnel closed'))
    if (!this.needDrain) return cb()
    this.drainWaiters.push(cb)
  }

  /** @internal */
  forget(id: number): void {
    this.channels.delete(id)
  }

  private onMessage(buf: Buffer): void {
    if (this.closed) return // nothing new starts on a closing tunnel
    let f: MuxFrame
    try {
      f = decodeMux(buf)
    } catch (err) {
      this.log.warn('bad mux frame', { err: (err as Error).message })
      return
    }
    this.emit('frame')
    if (f.channel === 0) {
      if (f.type === 'ping') this.send({ type: 'pong', channel: 0, seq: f.seq })
      else if (f.type === 'pong') this.emit('pong', f.seq)
      else if (f.type === 'goodbye') this.emit('goodbye', f.reason)
      else if (f.type === 'switch') this.onSwitch()
      return
    }
    const ch = this.channels.get(f.channel)
    switch (f.type) {
      case 'open':
        return this.onOpen(f)
      case 'open-ok':
        return ch?.onOpened(f.window)
      case 'data':
        return ch?.onData(f.data)
      case 'window':
        return ch?.onWindow(f.increment)
      case 'fin':
        return ch?.onFin()
      case 'reset':
        if (ch) {
          this.channels.delete(f.channel)
          ch.onReset(f.code, f.message)
        }
        return
      default:
        return
    }
  }

  private onOpen(f: Extract<MuxFrame, { type: 'open' }>): void {
    // The peer's ids have the other parity; anything else is a protocol error.
    if (f.channel % 2 === this.nextId % 2 || this.channels.has(f.channel) || this.channels.size >= MAX_CHANNELS) {
      this.send({ type: 'reset', channel: f.channel, code: 'BAD_REQUEST', message: 'bad or duplicate channel id' })
      return
    }
    const ch = new MuxChannel(this, f.channel, f.port)
    ch.onOpened(f.window)
    this.channels.set(f.channel, ch)
    let answered = false
    const req: OpenRequest = {
      channel: ch,
      port: f.port,
      service: f.service,
      accept: () => {
        if (answered) return
        answered = true
        this.send({ type: 'open-ok', channel: f.channel, window: CHANNEL_WINDOW_BYTES })
      },
      reject: (code, message) => {
        if (answered) return
        answered = true
        this.channels.delete(f.channel)
        this.send({ type: 'reset', channel: f.channel, code, message })
        ch.destroy()
      }
    }
    if (this.listenerCount('open') === 0) req.reject('NOT_EXPOSED', 'nothing is exposed')
    else this.emit('open', req)
  }
}
