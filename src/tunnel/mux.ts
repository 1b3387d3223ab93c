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
import { PEER_REFUSAL_LOG, RefusalLog } from '../common/refusal-log.js'
import { systemClock, type TimerClock } from '../protocol/clock.js'
import { NatdError, toNatdError } from '../protocol/errors.js'
import type { Logger } from '../protocol/log.js'
import { decodeMux, encodeMux, isSequenced, MUX, type MuxFrame } from '../protocol/mux.js'
import { AckPacer } from './ack-pacer.js'
import { InflightCap, isProbeSeq } from './inflight-cap.js'
import { consumerFailed, guarded, toChannel } from './consumer-guard.js'
import { MuxChannel } from './mux-channel.js'
import { openRequest, toChannelFrame, type OpenRequest } from './mux-delivery.js'
import { ReplayBuffer } from './replay-buffer.js'
import { SendTurns } from './send-turns.js'
import { SessionReads } from './session-reads.js'
import { sealedWriter, type FrameWriter } from './session-writer.js'
import { WindowBudget } from './window-budget.js'

/** Most channels open at once per tunnel (each one is a forwarded connection). */
export const MAX_CHANNELS = 4096
/**
 * Unacknowledged bytes a tunnel keeps for replay (tunnel/resume.ts) before its channels
 * wait: 4 full channel windows (CHANNEL_WINDOW_BYTES), ~130 ms of a 128 MB/s path. The ceiling
 * of the in-flight limit (inflight-cap.ts), where channel data stops (backpressure, as for
 * a full session); on a LAN the limit is far below it.
 */
export const REPLAY_MAX_BYTES = 16 * 1024 * 1024
/**
 * Control frames (WINDOW, OPEN_OK, RESET, FIN) do not wait for the bound above; a peer
 * that stops acknowledging while making us answer could grow the buffer past it. At this
 * much the tunnel is broken and closes (a peer that acknowledges never comes near it).
 */
export const REPLAY_HARD_MAX_BYTES = 2 * REPLAY_MAX_BYTES
/**
 * PINGs answered while the session waits for a drain (the peer is not reading what we
 * write): past this many, until it drains, a PING gets no PONG. Each PONG would wait in
 * the session's queue, so a peer that sends PINGs and never reads grew it by what it
 * sent, without limit (test/abuse/mux.test.ts). An honest peer pings about once a second.
 */
export const MAX_PONGS_UNDRAINED = 1_024

/**
 * The session: a message-preserving duplex (secret-stream). write() may hold `buf` until
 * it is sent but must not change it (frames live in the replay buffer: a secret-stream
 * is written through tunnel/session-writer.ts, which seals out of place, or through its
 * write(), which copies).
 */
export interface MessageStream {
  write(buf: Buffer): boolean
  once(event: 'drain', fn: () => void): unknown
  on(event: 'data', fn: (buf: Buffer) => void): unknown
  destroyed: boolean
}

export type { OpenRequest } from './mux-delivery.js'

interface MuxEvents {
  open: [req: OpenRequest]
  pong: [seq: number]
  goodbye: [reason: string]
  frame: []
  /** The peer's SWITCH arrived: it will send nothing more on the old session. */
  switched: [old: MessageStream]
  /**
   * The tunnel cannot go on: the peer broke the protocol (acks for frames never sent:
   * BAD_REQUEST), or a consumer of its frames failed here (INTERNAL: not the peer's fault).
   */
  broken: [reason: string, code: 'BAD_REQUEST' | 'INTERNAL']
}

export class Mux extends EventEmitter<MuxEvents> {
  private readonly channels = new Map<number, MuxChannel>()
  private nextId: number
  /** Channels waiting for the session (or the in-flight limit) take turns. */
  private readonly turns = new SendTurns(() => this.congested)
  /**
   * The session's last write() returned false and its 'drain' has not come yet. Tracked
   * from write()'s result because secret-stream is a streamx stream, which has no
   * writableNeedDrain (reading that property gave undefined: channels never waited).
   */
  private needDrain = false
  private closed = false
  bytesIn = 0
  bytesOut = 0
  /** Sequenced frames sent and not acknowledged (a resumed session sends them again). */
  private readonly replay = new ReplayBuffer()
  /** How much of the replay buffer may be in flight before channel data waits (inflight-cap.ts). */
  private readonly inflight: InflightCap
  /** When we acknowledge the peer's sequenced frames. */
  private readonly acks: AckPacer
  /** @internal what the channels' receive windows may hold in all (window-budget.ts). */
  readonly windows = new WindowBudget()
  /** Frames we cannot decode: the peer sends them as fast as its tunnel carries them, so they are counted, not logged each (review 9 #3). */
  private readonly refusals: RefusalLog
  /** PONGs sent since the session last had no drain pending (MAX_PONGS_UNDRAINED). */
  private pongsUndrained = 0

  /** Where we write; on a path upgrade the next session; null once detached for a resume. */
  private session: MessageStream | null
  /** Where we read (the old session until the peer's SWITCH on a path upgrade). */
  private readonly reads: SessionReads
  /** How frames reach each session (sealed by us when it is a secret-stream; else its write()). */
  private readonly writers = new WeakMap<MessageStream, FrameWriter>()

  constructor(
    session: MessageStream,
    opener: boolean,
    /** @internal its channels log a consumer that threw with it (consumer-guard.ts). */
    readonly log: Logger,
    /** Schedules the delayed ACK and times the in-flight limit's probes (tunnel.ts passes the tunnel's clock). */
    private readonly clock: Pick<TimerClock, 'setTimeout' | 'clear' | 'hrNow'> = systemClock
  ) {
    super()
    this.inflight = new InflightCap(clock, REPLAY_MAX_BYTES)
    this.refusals = new RefusalLog(log, PEER_REFUSAL_LOG, clock)
    this.acks = new AckPacer(
      clock,
      () => this.needDrain && this.session !== null,
      (received) => this.send({ type: 'ack', channel: 0, received })
    )
    this.session = session
    this.nextId = opener ? 1 : 2
    // A listener that throws (ours or the daemon's, on a frame's event) ends this tunnel, not natd.
    this.reads = new SessionReads(session, (buf) =>
      guarded(
        this.log,
        'tunnel',
        () => this.onMessage(buf),
        () => this.emit('broken', consumerFailed().message, 'INTERNAL')
      )
    )
  }

  /**
   * Moves the tunnel to another session without losing or reordering a frame: our
   * SWITCH is the last frame we write on the old session; the peer's frames on the new
   * one wait until its SWITCH arrives on the old. Channels and their windows carry over.
   */
  switchTo(next: MessageStream): void {
    if (this.closed || !this.session) return
    this.send({ type: 'switch', channel: 0 })
    const waiters = this.turns.takeAll()
    this.session = next
    this.needDrain = false
    this.inflight.reset()
    this.acks.sendOwed() // on the new session: the count is cumulative
    for (const w of waiters) this.whenWritable(w)
    this.reads.attach(next)
  }

  /** Our SWITCH went out and the peer's has not come yet: another switchTo() must wait for 'switched'. */
  get switchPending(): boolean {
    return this.reads.switchPending
  }

  private onSwitch(): void {
    const old = this.reads.onSwitch()
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
    this.send({ type: 'open', channel: id, port, window: ch.receiveWindow, service })
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
    this.acks.stop()
    const err = new NatdError('TUNNEL_CLOSED', reason)
    for (const ch of [...this.channels.values()]) ch.destroy(err)
    this.channels.clear()
    for (const w of this.turns.takeAll()) w(err)
  }

  /** @internal */
  send(f: MuxFrame): void {
    this.sendRaw(encodeMux(f))
  }

  /**
   * @internal Sequenced frames (channel ≠ 0) are kept for replay first (without a copy
   * when built in allocFrame()); with no session (detached for a resume) that is all.
   */
  sendRaw(buf: Buffer): void {
    if (this.closed) return
    const sequenced = isSequenced(buf)
    const before = this.replay.bytes
    if (sequenced) {
      this.replay.push(buf)
      this.turns.spent(buf.length)
      if (this.replay.bytes > REPLAY_HARD_MAX_BYTES) {
        this.emit('broken', `the peer left ${this.replay.bytes} bytes unacknowledged (more than ${REPLAY_HARD_MAX_BYTES})`, 'BAD_REQUEST')
        return
      }
    }
    const session = this.session
    if (!session || session.destroyed) return
    // Channel data after an idle moment: a PING in front measures the round trip without our queue.
    const probe = sequenced && buf[0] === MUX.DATA ? this.inflight.probeSeqToSend(before) : null
    if (probe !== null) this.writeTo(session, encodeMux({ type: 'ping', channel: 0, seq: probe }))
    this.writeTo(session, buf)
  }

  private writerFor(session: MessageStream): FrameWriter {
    let w = this.writers.get(session)
    if (!w) {
      w = sealedWriter(session) ?? { write: (buf) => session.write(buf as Buffer), onceDrain: (fn) => void session.once('drain', fn) }
      this.writers.set(session, w)
    }
    return w
  }

  private writeTo(session: MessageStream, buf: Buffer): void {
    const w = this.writerFor(session)
    if (w.write(buf) || this.needDrain) return
    this.needDrain = true
    // Listened for at once, not when a channel next wants to send: a drain that came
    // before anyone listened would otherwise be missed and stall every channel.
    w.onceDrain(() => {
      if (session !== this.session) return // switched away: the new session's state counts
      this.needDrain = false
      this.acks.sendOwed()
      // The peer reads again: its PINGs count afresh. Under a saturated send needDrain is
      // set again before the next PING comes, so onPing alone would never reset the count.
      this.pongsUndrained = 0
      this.turns.wake()
    })
  }

  /**
   * @internal a buffer for one sequenced frame, to be passed to sendRaw() before any
   * other allocFrame() or send(): it lies in the replay buffer, which keeps it without a copy.
   */
  allocFrame(len: number): Buffer {
    return this.replay.reserve(len)
  }

  /**
   * @internal channel data must wait: the session's buffer is full, the bytes in flight
   * are at their limit (inflight-cap.ts; never above the replay bound), or there is no
   * session (a resume is under way).
   */
  get congested(): boolean {
    return this.needDrain || this.replay.bytes >= this.inflight.limit || !this.session || this.session.destroyed
  }

  /** @internal channel data may be sent now (send-turns.ts). */
  get mayPush(): boolean {
    return this.turns.mayPush
  }

  /** @internal calls back once the caller's channel may send (backpressure and turns for every channel). */
  whenWritable(cb: (err?: Error | null) => void): void {
    if (this.closed) return cb(new NatdError('TUNNEL_CLOSED', 'tunnel closed'))
    this.turns.wait(cb)
  }

  /** The in-flight limit and what it was computed from (bench, tests). */
  get inflightLimit(): { bytes: number; rttMs: number | null; bytesPerMs: number } {
    return { bytes: this.inflight.limit, rttMs: this.inflight.rtt, bytesPerMs: this.inflight.rate }
  }

  /** Frees the replay buffer's memory if nothing waits for an ACK (the tunnel's keepalive calls it). */
  trimReplay(): void {
    this.replay.trim()
  }

  /** Bytes and frames kept for replay (the peer has not acknowledged them). */
  get unacknowledged(): { bytes: number; frames: number } {
    return { bytes: this.replay.bytes, frames: this.replay.length }
  }

  /**
   * Stops using the current session, for good, before a resume: returns how many
   * sequenced frames we received in all (the `received` of our RESUME). Frames that
   * arrive on the old session from now on are dropped: the peer sends them again from
   * that count. Channels keep their state; their data waits (congested) until resumeOn().
   */
  detach(): number {
    this.session = null
    this.reads.detach()
    this.needDrain = false
    this.inflight.reset()
    return this.acks.detach() // the RESUME carries the count
  }

  /**
   * Continues on `next` after detach(): forgets what the peer says it received
   * (`peerReceived`, from its RESUME) and sends the rest again, in order, then carries on.
   * False (and nothing sent) when the count is not one we could have been told.
   */
  resumeOn(next: MessageStream, peerReceived: number): boolean {
    if (this.closed || !this.replay.ack(peerReceived)) return false
    this.session = next
    this.needDrain = false
    this.reads.resumeOn(next)
    for (const frame of this.replay.pending()) this.writeTo(next, frame)
    this.turns.wake()
    return true
  }

  private onAck(received: number): void {
    const before = this.replay.bytes
    if (!this.replay.ack(received)) {
      this.emit('broken', 'the peer acknowledged frames never sent', 'BAD_REQUEST')
      return
    }
    this.inflight.onAcked(before - this.replay.bytes)
    this.turns.wake()
  }

  private onPing(seq: number): void {
    if (!this.needDrain) this.pongsUndrained = 0
    else if (++this.pongsUndrained > MAX_PONGS_UNDRAINED) return
    this.send({ type: 'pong', channel: 0, seq })
  }

  /** Our probe's PONG: the round trip it gives may raise the limit, and channels waiting at it may send. */
  private onProbePong(seq: number): void {
    this.inflight.onProbePong(seq)
    this.turns.wake()
  }

  /** @internal */
  forget(id: number): void {
    this.channels.delete(id)
  }

  private onMessage(buf: Buffer): void {
    if (this.closed) return // nothing new starts on a closing tunnel
    if (isSequenced(buf)) this.acks.onSequenced(buf.length, buf.readUInt32BE(1))
    let f: MuxFrame
    try {
      f = decodeMux(buf)
    } catch (err) {
      const e = toNatdError(err, 'BAD_REQUEST')
      this.refusals.refused('mux frame', 'peer', e.code, e.message)
      return
    }
    this.emit('frame')
    if (f.channel === 0) {
      if (f.type === 'ping') this.onPing(f.seq)
      else if (f.type === 'pong' && isProbeSeq(f.seq)) this.onProbePong(f.seq)
      else if (f.type === 'pong') this.emit('pong', f.seq)
      else if (f.type === 'goodbye') this.emit('goodbye', f.reason)
      else if (f.type === 'switch') this.onSwitch()
      else if (f.type === 'ack') this.onAck(f.received)
      return
    }
    if (f.type === 'open') return this.onOpen(f)
    toChannelFrame(this, this.channels.get(f.channel), f)
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
    const req = openRequest(this, ch, f)
    if (this.listenerCount('open') === 0) req.reject('NOT_EXPOSED', 'nothing is exposed')
    else toChannel(this.log, ch, () => this.emit('open', req), () => req.reject('INTERNAL', 'natd failed taking the channel'))
  }
}
