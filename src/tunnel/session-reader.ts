/**
 * The peer's messages out of a secret-stream session without its stream layer (issue 18),
 * the receiving half of session-writer.ts.
 *
 * secret-stream parses its framing on the raw stream's reads, opens each message in place
 * and push()es it into a streamx Readable: a queue, a 16 KiB high-water mark that a 64 KiB
 * frame always crosses (so the raw stream is paused and resumed per message), and 'data'
 * emitted on the next tick. Once the session is set up, this reader takes the raw stream's
 * 'data' over: the same framing, parsed here, each message opened in place with the
 * session's own secretstream state and handed to the mux at once:
 *
 *   length u24 LE | tag u8 | ciphertext | MAC[16]        (length = message + ABYTES)
 *
 * A message that lies whole in one read is opened where it lies (no copy); one split
 * across reads is gathered in a buffer of its own length (one copy), as secret-stream does.
 * Over TCP the socket then reads straight into slabs of ours (readIntoSlabs): no buffer per
 * read, and a split message continues where its first part lies. A slab whose delivered
 * messages were all released by their consumers (delivery-lease.ts) is read into again
 * from its start, instead of a new one.
 *
 * Rejections are secret-stream's: a message shorter than ABYTES destroys the session with
 * "Invalid message received", one that fails to open with sodium's error. Added: a length
 * above MAX_MESSAGE_BYTES destroys it before anything is gathered (secret-stream would
 * allocate up to 16 MiB for any length the peer announces, before authenticating a byte).
 *
 * Taking over is safe only between messages secret-stream has fully delivered: when the
 * session is set up (the peer's stream header arrived), its read queue is empty and the
 * raw stream's 'data' goes to secret-stream's parser alone. A partial message it holds is
 * adopted with its parse state. Until then (and for good with another secret-stream
 * version or a test double) messages come as 'data' events, and every message is tried.
 * Uses secret-stream 6.9.2 internals (types/secret-stream.d.ts).
 */
import net from 'node:net'
import type { SecretStreamReadInternals } from '@hyperswarm/secret-stream'
import { deliverBatch, deliverOrKeep } from './delivery-lease.js'
import { canReadInto, readInto } from './socket-onread.js'

/** secret-stream's length prefix. */
const LENGTH_BYTES = 3
/** crypto_secretstream_xchacha20poly1305_ABYTES: tag byte + MAC. */
const ABYTES = 17
/**
 * The longest message we gather. natd's largest is a DATA frame (64 KiB + its 5-byte
 * header, protocol/mux.ts) + ABYTES; 4× that leaves room to grow MAX_DATA_BYTES, and bounds
 * what an unauthenticated length makes us allocate per session (secret-stream: 16 MiB).
 */
export const MAX_MESSAGE_BYTES = 256 * 1024
/**
 * Over TCP, the kernel reads into slabs this big: four DATA frames, so a frame is moved to
 * a new slab (its part so far copied) about once per four, one allocation per ~256 KiB.
 */
const SLAB_BYTES = 256 * 1024
/**
 * A delivered message keeps its slab alive while a channel queues it. Smaller ones are
 * copied out, so what the peer can make us hold is at most SLAB_BYTES / this = 8× the
 * bytes queued (a message secret-stream delivered pinned its whole read buffer, up to
 * 64 KiB for a message of a few bytes). Full DATA frames (64 KiB) are not copied.
 */
const COPY_BELOW_BYTES = 32 * 1024
/** A read offered less room than this goes to a new slab instead (fewer, larger reads). */
const MIN_READ_BYTES = 64 * 1024
/** The name Function.prototype.bind gives secret-stream's raw 'data' listener. */
const RAW_LISTENER_NAME = 'bound _onrawdata'

/** What readMessages() reads: a session's 'data' (one message each). */
export interface MessageSource {
  on(event: 'data', fn: (buf: Buffer) => void): unknown
}

type Session = SecretStreamReadInternals & { destroy(err?: Error): void }

/**
 * Calls `onMessage` with each message of `session`, in order (each buffer is the
 * caller's to keep). A secret-stream is parsed here as soon as it can be (see above).
 */
export function readMessages(session: MessageSource, onMessage: (buf: Buffer) => void): void {
  session.on('data', onMessage)
  const s = session as unknown as Partial<Session>
  if (!s || typeof s !== 'object' || !('_decrypt' in s) || !('_setup' in s) || !s._readableState?.queue) return
  let tried = false
  const tryTakeOver = (): void => {
    if (!tried) tried = takeOver(s as Session, onMessage) !== 'later'
  }
  session.on('data', tryTakeOver)
  tryTakeOver()
}

/** The reader, 'later' (not set up yet, or messages queued), or null (not a secret-stream this knows: never). */
function takeOver(s: Session, onMessage: (buf: Buffer) => void): SessionReader | 'later' | null {
  if (s.destroying) return null
  if (!s._decrypt || s._setup || s._readableState.queue.length > 0) return 'later'
  const raw = s._rawStream
  if (!raw || typeof raw.listeners !== 'function' || s._utp) return null
  const listeners = raw.listeners('data')
  const theirs = listeners.filter((fn) => fn.name === RAW_LISTENER_NAME)
  if (theirs.length !== 1 || listeners.length !== 1) return null
  const reader = new SessionReader(s, onMessage)
  if (!reader.adopt()) return null
  raw.removeListener('data', theirs[0]!)
  raw.on('data', reader.onData)
  // secret-stream pauses the raw stream when its queue passes the high-water mark and
  // resumes it when that drains; from now on nothing queues there.
  raw.resume?.()
  if (raw instanceof net.Socket) queueMicrotask(() => reader.readIntoSlabs(raw))
  return reader
}

/** secret-stream's framing on the raw stream's reads (exported for tests). */
export class SessionReader {
  /** Over TCP: the buffer the kernel reads into (see readIntoSlabs), the next message's body from `pos`, read up to `end`. */
  private slab: Buffer | null = null
  private pos = 0
  private end = 0
  /** A message delivered from the slab may still be referenced: the slab is not read into again. */
  private pinned = false
  /** A socket to read into slabs once Node's read-ahead queue is empty. */
  private slabsFor: net.Socket | null = null
  /** Length bytes read of the next message (LENGTH_BYTES: reading its body). */
  private lengthSeen = 0
  /** The message's length (what is read of it, while lengthSeen < LENGTH_BYTES). */
  private length = 0
  /** A message split across reads, gathered here, and how much of it has come. */
  private message: Buffer | null = null
  private filled = 0

  constructor(
    private readonly s: Session,
    private readonly onMessage: (buf: Buffer) => void
  ) {}

  /** Takes over secret-stream's parse state (it may hold part of a message); false: one this cannot read. */
  adopt(): boolean {
    const s = this.s
    if (s._state === 0) {
      const seen = s._tmp === 1 ? 0 : s._tmp === 0x100 ? 1 : s._tmp === 0x10000 ? 2 : -1
      if (seen < 0) return false
      this.lengthSeen = seen
      this.length = s._len
      return true
    }
    if (s._state !== 1 || s._len > MAX_MESSAGE_BYTES) return false
    this.lengthSeen = LENGTH_BYTES
    this.length = s._len
    this.filled = s._tmp
    // secret-stream gathers a split message in a buffer of its own, of the message's length.
    if (s._message) this.message = s._message.length === s._len ? Buffer.from(s._message.buffer, s._message.byteOffset, s._len) : null
    return this.message !== null || s._tmp === 0
  }

  readonly onData = (data: Buffer): void => {
    this.parse(data)
    const sock = this.slabsFor
    if (sock && sock.readableLength === 0) {
      this.slabsFor = null
      queueMicrotask(() => this.readIntoSlabs(sock))
    }
  }

  /** Reads the little-endian length prefix from buf[off…end), as far as it goes; returns the new offset. */
  private readLength(buf: Buffer, off: number, end: number): number {
    while (this.lengthSeen < LENGTH_BYTES && off < end) this.length |= buf[off++]! << (8 * this.lengthSeen++)
    return off
  }

  /** A whole length prefix read: false (the session failed) when it is below a MAC or above the bound. */
  private lengthOk(): boolean {
    if (this.length < ABYTES) this.fail(new Error('Invalid message received'))
    else if (this.length > MAX_MESSAGE_BYTES) this.fail(new Error(`Message of ${this.length} bytes is larger than ${MAX_MESSAGE_BYTES}`))
    else return true
    return false
  }

  private parse(data: Buffer): void {
    const s = this.s
    s._timeoutTimer?.refresh()
    const end = data.length
    let off = 0
    while (off < end && !s.destroying) {
      if (this.lengthSeen < LENGTH_BYTES) {
        off = this.readLength(data, off, end)
        if (this.lengthSeen < LENGTH_BYTES || !this.lengthOk()) return
        if (off === end) return
      }
      const missing = this.length - this.filled
      if (!this.message && missing <= end - off) {
        // Whole in this read: opened where it lies.
        this.open(data.subarray(off, off + missing))
        off += missing
        continue
      }
      this.message ??= Buffer.allocUnsafe(this.length)
      const n = Math.min(missing, end - off)
      this.message.set(data.subarray(off, off + n), this.filled)
      this.filled += n
      off += n
      if (this.filled === this.length) this.open(this.message)
    }
  }

  /**
   * Over TCP, reads go straight into slabs of our own (net.Socket's `onread`, switched on
   * once the socket's read queue is empty): the kernel writes each byte once, next to the
   * part of its message already read, and the message is opened where it lies. No buffer
   * per read, no copy of a message split across reads unless it would run past the slab's
   * end (then its part so far moves to the slab's start, or to a new slab). A delivered
   * message of COPY_BELOW_BYTES or more keeps its slab alive until the mux's consumer is
   * done with it; when every such message of a slab was released as it was delivered
   * (delivery-lease.ts), the slab itself is read into again.
   * Without Node's internals (another version) reads stay 'data' events.
   */
  readIntoSlabs(sock: net.Socket): void {
    this.slabsFor = null
    if (!canReadInto(sock) || this.s.destroying) return
    // Bytes Node read ahead (the session was paused) come first, as 'data': try again after them.
    if (sock.readableLength > 0) {
      this.slabsFor = sock
      return
    }
    // A message half gathered from 'data' moves to the slab's start; its rest follows it there.
    const partial = this.message ? this.message.subarray(0, this.filled) : null
    this.slab = Buffer.allocUnsafeSlow(Math.max(SLAB_BYTES, (partial ? this.length : 0) + MIN_READ_BYTES))
    this.pinned = false
    this.pos = 0
    this.end = 0
    if (partial) {
      this.slab.set(partial)
      this.end = partial.length
    }
    this.message = null
    this.filled = 0
    readInto(
      sock,
      this.slab.subarray(this.end),
      (n) => this.onSlabRead(n),
      () => this.slab!.subarray(this.end)
    )
    sock.resume()
  }

  /** The kernel put `n` bytes at slab[end…]. */
  private onSlabRead(n: number): void {
    const s = this.s
    s._timeoutTimer?.refresh()
    const slab = this.slab!
    this.end += n
    // One batch per read: the local sockets' writes of its frames are made together at its end (delivery-lease.ts).
    if (!deliverBatch(() => this.openWhole(slab))) this.pinned = true
    if (s.destroying) return
    // Room for the rest of the message being read and a useful read after it; else the
    // part read so far moves to the start of this slab (nothing delivered from it is
    // referenced any more) or of a new one.
    const body = this.lengthSeen === LENGTH_BYTES ? this.length : 0
    if (slab.length - this.end < MIN_READ_BYTES || this.pos + body > slab.length) {
      const have = this.end - this.pos
      const size = Math.max(SLAB_BYTES, body + MIN_READ_BYTES)
      const next = !this.pinned && slab.length >= size ? slab : Buffer.allocUnsafeSlow(size)
      slab.copy(next, 0, this.pos, this.end) // within one buffer: a move to its start (memmove)
      this.slab = next
      this.pinned = false
      this.pos = 0
      this.end = have
    }
  }

  /** Opens and delivers the whole messages in slab[pos…end). */
  private openWhole(slab: Buffer): void {
    while (this.pos < this.end && !this.s.destroying) {
      if (this.lengthSeen < LENGTH_BYTES) {
        this.pos = this.readLength(slab, this.pos, this.end)
        if (this.lengthSeen < LENGTH_BYTES || !this.lengthOk()) return
      }
      if (this.end - this.pos < this.length) return
      const at = this.pos
      this.pos += this.length
      this.open(slab.subarray(at, this.pos), true)
    }
  }

  /** Opens one whole message in place and delivers it (secret-stream's _incoming, without the queue). */
  private open(message: Buffer, inSlab = false): void {
    const s = this.s
    this.lengthSeen = 0
    this.length = 0
    this.message = null
    this.filled = 0
    s.rawBytesRead += message.length
    const plain = message.subarray(1, message.length - ABYTES + 1)
    try {
      s._decrypt!.next(message, plain)
    } catch (err) {
      return this.fail(err as Error)
    }
    if (plain.length === 0 && s._filterZeroByteMessages) return
    if (!inSlab) return this.onMessage(plain)
    if (plain.length < COPY_BELOW_BYTES) return this.onMessage(Buffer.from(plain))
    deliverOrKeep(() => this.onMessage(plain), () => (this.pinned = true))
  }

  private fail(err: Error): void {
    this.s.destroy(err)
  }
}
