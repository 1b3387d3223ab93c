/**
 * One channel of the multiplexer (mux.ts): a Duplex with credit-based flow control. A
 * sender may have at most the receiver's window in flight, and the receiver grants more
 * only as its consumer reads, so one slow connection never stalls the others or grows
 * memory without bound. The Mux routes the peer's frames to the channel's on…() handlers
 * and carries the frames the channel sends.
 */
import { Duplex } from 'node:stream'
import { isErrorCode, NatdError } from '../protocol/errors.js'
import { MAX_DATA_BYTES, MUX } from '../protocol/mux.js'
import { consumerThrew } from './consumer-guard.js'
import type { Mux } from './mux.js'
import { windowUpdateBytes } from './window-budget.js'

/** The most a channel's receive window grows to (window-budget.ts: it starts smaller, under a budget per tunnel). */
export { CHANNEL_WINDOW_BYTES } from './window-budget.js'
/**
 * We grant window updates in chunks of at least this (a quarter of a full window: the peer
 * always holds ≥ 3 MiB of credit; a smaller window, a quarter of it), to keep WINDOW frames rare: each is a small write of
 * its own to the tunnel's socket unless an ACK goes in the same callback
 * (session-writer.ts), and at 256 KiB a forward's receiver wrote ~4 WINDOWs per MiB
 * beside its 4 ACKs, each a syscall and a segment through the path (issue 18).
 */
export const WINDOW_UPDATE_MIN_BYTES = 1024 * 1024

/** DATA header: type u8, channel u32 (protocol/mux.ts). */
const DATA_HEADER_BYTES = 5

/**
 * Where a joined local socket takes the peer's data (daemon/pipe.ts), in place of the
 * channel's Readable side: `data` returns false while its queue is full (the channel then
 * holds the peer's credit until release()), `end` comes with the peer's FIN.
 */
export interface ChannelSink {
  data(buf: Buffer): boolean
  end(): void
}

export class MuxChannel extends Duplex {
  private credit = 0
  private sink: ChannelSink | null = null
  /** A write waiting for credit: `resume` continues it, `cb` fails it if the channel dies first. */
  private pendingWrite: { resume: () => void; cb: (err?: Error | null) => void } | null = null
  /** Received and not yet granted back (held by the consumer, or about to be granted). */
  private unacked = 0
  /**
   * Our receive window: what the peer may have sent and we not yet granted back (its
   * credit + unacked). Taken from the tunnel's budget (window-budget.ts), given back when
   * the channel ends or reads nothing more (windowFreed).
   */
  private window: number
  private windowFreed = false
  private heldCredit = false
  private finSent = false
  private finReceived = false
  /** The consumer reads nothing more (discardInput()): the peer's data is dropped as it comes. */
  private discarding = false
  private isOpen = false
  readonly opened: Promise<void>
  private resolveOpen!: () => void
  private rejectOpen!: (e: Error) => void
  bytesIn = 0
  bytesOut = 0

  constructor(
    private readonly mux: Mux,
    readonly id: number,
    readonly port: number
  ) {
    super({ allowHalfOpen: true, highWaterMark: 1024 * 1024 })
    this.window = mux.windows.open()
    this.once('end', () => this.freeWindow()) // the peer's FIN was read: it can send nothing more
    this.opened = new Promise((resolve, reject) => {
      this.resolveOpen = resolve
      this.rejectOpen = reject
    })
    this.opened.catch(() => undefined)
    // A channel dies with its tunnel at any moment; that must never take the daemon down
    // with an unhandled 'error'. Users of the channel add their own listeners.
    this.on('error', () => undefined)
  }

  /**
   * Every event of the channel goes out here, also those a stream emits on a later tick
   * ('data' once flowing, 'end', 'close', 'drain'), outside the mux's delivery: a listener
   * that throws ends this channel, logged (consumerThrew, consumer-guard.ts), where its
   * exception was uncaught and ended natd. The event's other listeners still run (review 6):
   * a 'close' whose first listener threw skipped join's onClose and onDone, and connection
   * counts leaked. 'error' keeps EventEmitter's own rules (errorMonitor, thrown when unheard).
   */
  override emit(event: string | symbol, ...args: unknown[]): boolean {
    const listeners = event === 'error' ? [] : this.rawListeners(event)
    if (listeners.length === 0) {
      try {
        return super.emit(event, ...args)
      } catch (err) {
        consumerThrew(this.mux.log, this, err)
        return true
      }
    }
    for (const listener of listeners) {
      try {
        Reflect.apply(listener, this, args) // a once() wrapper removes itself, as in EventEmitter.emit
      } catch (err) {
        consumerThrew(this.mux.log, this, err)
      }
    }
    return true
  }

  /** The window we grant the peer now (in our OPEN or OPEN_OK, then grown by WINDOW frames). */
  get receiveWindow(): number {
    return this.window
  }

  /** @internal the peer accepted, granting `window` bytes. */
  onOpened(window: number): void {
    this.isOpen = true
    this.resolveOpen()
    this.onWindow(window) // also releases a write made before the peer accepted
  }

  /** @internal */
  onData(data: Uint8Array): void {
    if (this.finReceived) return
    // Received and not yet granted back is what the peer's credit allows: our window (in
    // OPEN or OPEN_OK, grown by our WINDOWs). A peer past it ignores flow control, and its bytes
    // would queue in the consumer without bound (64 MiB into a stalled one: test/abuse/mux.test.ts).
    if (this.unacked + data.length > this.window) {
      this.destroy(new NatdError('BAD_REQUEST', `the peer sent past the ${this.window}-byte window it was granted`))
      return
    }
    this.bytesIn += data.length
    this.mux.bytesIn += data.length
    this.unacked += data.length
    if (this.discarding) return
    if (this.sink) {
      if (this.sink.data(Buffer.from(data.buffer, data.byteOffset, data.length))) this.grant()
      else this.heldCredit = true
      return
    }
    if (this.push(Buffer.from(data.buffer, data.byteOffset, data.length))) this.grant()
    else this.heldCredit = true
  }

  /** @internal */
  onWindow(increment: number): void {
    this.credit += increment
    const p = this.pendingWrite
    if (p && this.credit > 0) {
      this.pendingWrite = null
      p.resume()
    }
  }

  /** @internal */
  onFin(): void {
    this.finReceived = true
    this.sink?.end()
    this.push(null)
    if (this.discarding) this.read() // nobody reads: the end is emitted all the same ('close' follows once our side ended)
    this.maybeDone()
  }

  /** @internal the peer reset the channel. */
  onReset(code: string, message: string): void {
    const err = new NatdError(isErrorCode(code) ? code : 'TUNNEL_CLOSED', message)
    this.rejectOpen(err)
    // Refused before it opened: `opened` carries the error; no 'error' event nobody listens to.
    this.destroy(this.isOpen ? err : undefined)
  }

  /**
   * The consumer took what was received: grant it back, and the window's growth
   * (window-budget.ts: doubled per grant up to 4 MiB, while the tunnel's budget has room).
   */
  private grant(): void {
    if (this.unacked < windowUpdateBytes(this.window, WINDOW_UPDATE_MIN_BYTES) || this.destroyed || this.discarding || this.windowFreed) return
    const grown = this.mux.windows.grow(this.window, this.unacked)
    this.mux.send({ type: 'window', channel: this.id, increment: this.unacked + grown - this.window })
    this.window = grown
    this.unacked = 0
  }

  /** The channel holds nothing more of the peer's: its window goes back to the tunnel's budget (once). */
  private freeWindow(): void {
    if (this.windowFreed) return
    this.windowFreed = true
    this.mux.windows.close(this.window)
  }

  /**
   * The consumer of the Readable side wants more: grant the credit held for it. Not once
   * a sink takes the data (deliverTo): only the sink knows its queue drained (release()),
   * and a read() of the Readable side (deliverTo draining it, resume()) says nothing about
   * it. Else a full socket queue could be granted one more window on top (~1 MiB + 4 MiB
   * per connection, not the window plus LOCAL_QUEUE_BYTES).
   */
  override _read(): void {
    if (!this.sink && !this.discarding) this.release()
  }

  /**
   * The peer's data goes to `sink` from now on, not through the Readable side (one stream
   * layer less per frame on the receiving agent, issue 18); what the Readable side holds
   * goes to it first. The Readable side still ends with the peer's FIN (so 'end' and
   * 'close' come as before). False (nothing changes) once that side was read to its end.
   */
  deliverTo(sink: ChannelSink): boolean {
    if (this.destroyed || this.readableEnded || this.readableFlowing || this.discarding) return false
    this.sink = sink // first: the read()s below call _read(), which must grant nothing now
    let full = false
    for (let c = this.read() as Buffer | null; c !== null; c = this.read() as Buffer | null) {
      if (!sink.data(c)) full = true
    }
    if (full) this.heldCredit = true
    else this.release() // the sink took all the Readable side held: the credit held for it is due
    if (this.finReceived) sink.end()
    this.resume() // nothing more is pushed but the end: flowing, so that 'end' is emitted
    return true
  }

  /**
   * We will read nothing more from this channel (a message channel after its one frame, a
   * file we refused): what its Readable side holds is freed now, and the peer's DATA from
   * now on is dropped as it comes, still counted against its window (past it the channel
   * resets, as ever) and never granted back. So the peer can make us take in at most the
   * rest of its window (decrypted, then dropped: as for DATA on a channel we no longer
   * have), and we hold none of it. Credit is not returned, not even for what was held: a
   * peer that goes on sending must stop at its window, and an honest one sends nothing
   * after our answer. The channel stays open for what we still write (the answer, our
   * FIN); the peer's FIN still ends it ('end', then 'close' once our side ended too).
   * Before (review 7), the bytes a message or a refused offer's sender pushed after its
   * frame stayed in the Readable side, up to the 4 MiB window per channel.
   */
  discardInput(): void {
    if (this.discarding || this.destroyed) return
    this.discarding = true
    this.sink = null
    this.heldCredit = false
    this.freeWindow() // what the peer sends from now on is dropped, not held
    // read() with no size in paused mode takes the whole buffer at once; the last, null, ends the side if the FIN came.
    while (this.read() !== null) continue
  }

  /** The sink's queue drained: grants the credit held back while it was full. */
  release(): void {
    if (this.heldCredit) {
      this.heldCredit = false
      this.grant()
    }
  }

  /** Whether sendSome() would send a byte now (credit, the session not congested, no other channel's turn). */
  get canSend(): boolean {
    return !this.destroyed && this.credit > 0 && this.mux.mayPush
  }

  /**
   * Sends what it can of `buf` now, in frames (copied: `buf` is the caller's again when
   * this returns), and says how many bytes; the rest waits for whenSendable(). For a
   * joined local socket (daemon/pipe.ts), past the Writable side: it must not be mixed
   * with write(), and end() comes after the last byte.
   */
  sendSome(buf: Buffer): number {
    let sent = 0
    while (sent < buf.length && this.canSend) {
      const n = Math.min(buf.length - sent, this.credit, MAX_DATA_BYTES)
      const frame = this.dataFrame(n)
      buf.copy(frame, DATA_HEADER_BYTES, sent, sent + n)
      this.sendFrame(frame, n)
      sent += n
    }
    return sent
  }

  /** Calls `fn` once sendSome() can send (credit, session, its turn), or with the error if the channel dies first. */
  whenSendable(fn: (err?: Error | null) => void): void {
    if (this.destroyed) return fn(new NatdError('TUNNEL_CLOSED', 'channel closed'))
    if (this.credit <= 0) {
      this.pendingWrite = { resume: () => this.whenSendable(fn), cb: fn }
      return
    }
    if (!this.mux.mayPush) return this.mux.whenWritable((err) => (err ? fn(err) : this.whenSendable(fn)))
    fn()
  }

  /** A DATA frame for `n` bytes, header filled, in the mux's replay buffer (sendFrame() it next). */
  private dataFrame(n: number): Buffer {
    const frame = this.mux.allocFrame(DATA_HEADER_BYTES + n)
    frame[0] = MUX.DATA
    frame.writeUInt32BE(this.id, 1)
    return frame
  }

  private sendFrame(frame: Buffer, n: number): void {
    this.mux.sendRaw(frame)
    this.credit -= n
    this.bytesOut += n
    this.mux.bytesOut += n
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.sendData([chunk], cb)
  }

  /** Everything buffered while we waited goes out in full frames (the copy into the frame is made anyway). */
  override _writev(chunks: Array<{ chunk: Buffer }>, cb: (err?: Error | null) => void): void {
    this.sendData(chunks.map((c) => c.chunk), cb)
  }

  /**
   * Sends while we have credit and the session is not congested. Waiting for the
   * session's drain (not just for credit) keeps the local queue short: data queued here
   * would use up the window and delay every other channel's frames and the pings.
   * Frames are filled across chunk boundaries, so small reads still make full frames.
   */
  private sendData(chunks: Buffer[], cb: (err?: Error | null) => void): void {
    let index = 0 // chunk being sent
    let offset = 0 // within chunks[index]
    let left = 0
    for (const c of chunks) left += c.length
    const pump = (err?: Error | null): void => {
      if (err) return cb(err)
      while (left > 0) {
        if (this.destroyed) return cb(new NatdError('TUNNEL_CLOSED', 'channel closed'))
        if (this.credit <= 0) {
          this.pendingWrite = { resume: pump, cb }
          return
        }
        if (!this.mux.mayPush) return this.mux.whenWritable(pump)
        const n = Math.min(left, this.credit, MAX_DATA_BYTES)
        const frame = this.dataFrame(n)
        for (let at = DATA_HEADER_BYTES; at < frame.length; ) {
          const c = chunks[index]!
          const take = Math.min(c.length - offset, frame.length - at)
          c.copy(frame, at, offset, offset + take)
          at += take
          offset += take
          if (offset === c.length) {
            index++
            offset = 0
          }
        }
        this.sendFrame(frame, n)
        left -= n
      }
      cb()
    }
    pump()
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.finSent = true
    this.mux.send({ type: 'fin', channel: this.id })
    cb()
    this.maybeDone()
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    if (!(this.finSent && this.finReceived)) this.mux.send({ type: 'reset', channel: this.id, code: 'TUNNEL_CLOSED', message: err?.message ?? 'closed' })
    this.pendingWrite?.cb(err ?? new NatdError('TUNNEL_CLOSED', 'channel closed'))
    this.pendingWrite = null
    this.rejectOpen(err ?? new NatdError('TUNNEL_CLOSED', 'channel closed'))
    this.mux.forget(this.id)
    this.freeWindow()
    cb(err)
  }

  /** Both FINs: the id is free. The window is freed with the stream (_destroy), once the consumer read to the end. */
  private maybeDone(): void {
    if (this.finSent && this.finReceived) this.mux.forget(this.id)
  }
}
