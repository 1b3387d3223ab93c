/**
 * The mux's frames into a secret-stream session without its stream layer (issue 18).
 *
 * secret-stream's write() puts each message through a streamx Writable (queue, map,
 * update loop), copies it into a fresh buffer unless it came from alloc(), encrypts that
 * in place and writes it to the raw stream. The mux's frames are already built where they
 * are kept for replay (replay-buffer.ts), so here a frame is sealed straight from there
 * into the wire buffer (sodium's push takes separate input and output: no copy) and
 * written to the raw stream (the TCP socket or the UDX stream) — the same bytes on the
 * wire as secret-stream's own _write:
 *
 *   length u24 LE | tag u8 | ciphertext | MAC[16]        (length = message + ABYTES)
 *
 * Order: a frame may only bypass secret-stream when nothing waits in its queue (what
 * waits there goes to the raw stream first); otherwise it is queued behind with write().
 *
 * Over TCP, frames are sealed one after the other into one wire buffer (a batch) and
 * written together at the end of the callback that sealed them (a microtask), or at once
 * when the next frame would not fit: a forwarded socket's 256 KiB read (daemon/pipe.ts)
 * becomes four DATA frames and one write() to the kernel, not four (each write is a
 * syscall, a libuv request and a Writable round; the sender's socket writes were 16% of
 * its time). Nothing else may write to the session meanwhile: everything after the
 * writer's first frame goes through it (the mux owns the session; keep.ts writes only
 * before the mux attaches, and those wait in secret-stream's queue, which we flush
 * behind). write() says false while the socket's 'drain' is due, so the mux stops; what
 * a batch holds beyond that is at most BATCH_BYTES. A batch buffer the kernel took whole
 * in the write call (nothing left in the socket's queue) is used again for the next one
 * (the garbage collector was 14-17% of an agent's time with a buffer per frame). While
 * the socket queues, a batch under half full is written as a copy of its size (flush()),
 * so a queued write's buffer is at most twice its bytes, and at most one batch buffer
 * (the one written when the queue was empty) is queued beyond that.
 *
 * Uses secret-stream's internals (`_encrypt`, `_rawStream`, `_writableState`), declared
 * in types/secret-stream.d.ts for the exact version pinned in package.json; a session
 * without them (another version, a test double) gets plain write().
 */
import net from 'node:net'
import type SecretStream from '@hyperswarm/secret-stream'
import type { RawStream, SecretStreamInternals } from '@hyperswarm/secret-stream'

/** secret-stream's length prefix. */
const LENGTH_BYTES = 3
/** crypto_secretstream_xchacha20poly1305_ABYTES: tag byte + MAC. */
const ABYTES = 17
/** secret-stream's largest message (its length is a u24). */
const MAX_MESSAGE_BYTES = 0xffffff - ABYTES
/** A wire buffer for frames this big or bigger is one of our own (smaller ones come from Node's shared pool). */
const OWN_WIRE_MIN_BYTES = 4096
/**
 * A batch begun by a small frame (an ACK, a WINDOW, a PONG) gets this much from Node's
 * pool: room for the few control frames of one callback (~30 bytes each sealed), so a
 * receiver's ACK and WINDOW for the same read go in one write, not one each (bob wrote
 * 8.7 small frames per MiB forwarded, each a syscall and a TCP segment through the path).
 */
const SMALL_BATCH_BYTES = 256
/** A full DATA frame (64 KiB + its 5-byte header), sealed and framed. */
const FULL_FRAME_WIRE_BYTES = LENGTH_BYTES + 64 * 1024 + 5 + ABYTES
/**
 * Over TCP, a batch's wire buffer: four full DATA frames (a forwarded socket's read,
 * daemon/pipe.ts READ_BYTES) and room for the small frames between them (ACK, WINDOW).
 */
export const BATCH_BYTES = 4 * FULL_FRAME_WIRE_BYTES + 1024

/** What the mux writes frames to: a session, or this writer over one. */
export interface FrameWriter {
  /** Sends `frame` (not changed, not kept); false: wait for onceDrain() before more. */
  write(frame: Uint8Array): boolean
  /** Calls `fn` once the stream the last write went to can take more. */
  onceDrain(fn: () => void): void
}

/** A writer that seals frames itself, or null when `session` is not a secret-stream it knows. */
export function sealedWriter(session: unknown): FrameWriter | null {
  const s = session as Partial<SecretStreamInternals> | null
  if (!s || typeof s !== 'object' || !s._writableState || !s._rawStream || !('_encrypt' in s)) return null
  return new SealedWriter(session as SecretStream & SecretStreamInternals)
}

class SealedWriter implements FrameWriter {
  /** Over TCP: the batch being sealed (frames at [0, filled)), not yet written. */
  private batch: Buffer | null = null
  private filled = 0
  /** A batch buffer free to use again (the kernel took the last write whole). */
  private spare: Buffer | null = null
  /** A microtask will write the batch. */
  private flushQueued = false
  /** Where the last write went: its 'drain' is the one to wait for. */
  private last: RawStream | SecretStream

  constructor(private readonly session: SecretStream & SecretStreamInternals) {
    this.last = session
  }

  write(frame: Uint8Array): boolean {
    const s = this.session
    const raw = s._rawStream
    const encrypt = s._encrypt
    // Not yet open, something queued ahead of us, or too big: secret-stream's own path (after our batch).
    if (!encrypt || !raw || s._writableState.buffered > 0 || frame.length > MAX_MESSAGE_BYTES) {
      this.flush()
      this.last = s
      return s.write(frame as Buffer)
    }
    this.last = raw
    if (raw instanceof net.Socket) return this.batched(raw, encrypt, frame)
    // Over UDX the buffer stays with the stream until the peer acknowledges it: one per frame, no bigger.
    const size = LENGTH_BYTES + frame.length + ABYTES
    const wire = wireBuffer(size)
    seal(encrypt, frame, wire)
    s.rawBytesWritten += size
    return raw.write(wire)
  }

  onceDrain(fn: () => void): void {
    this.last.once('drain', fn)
  }

  /** Seals `frame` into the batch (written by the microtask, or now when it is full). */
  private batched(raw: net.Socket, encrypt: NonNullable<SecretStreamInternals['_encrypt']>, frame: Uint8Array): boolean {
    const size = LENGTH_BYTES + frame.length + ABYTES
    if (this.batch && this.batch.length - this.filled < size) this.makeRoom(size)
    if (!this.batch) {
      // A small frame without a spare gets a small buffer (Node's pool): a PONG or an ACK
      // must not hold a batch buffer in a socket that queues (MAX_PONGS_UNDRAINED of them
      // would be 256 MiB). Small frames after it join it; a larger one moves them to a batch buffer.
      const spare = this.spare && this.spare.length >= size ? this.spare : null
      this.batch = spare ?? (size >= OWN_WIRE_MIN_BYTES ? Buffer.allocUnsafeSlow(Math.max(BATCH_BYTES, size)) : Buffer.allocUnsafe(Math.max(SMALL_BATCH_BYTES, size)))
      this.spare = null
      this.filled = 0
    }
    seal(encrypt, frame, this.batch.subarray(this.filled, this.filled + size))
    this.filled += size
    this.session.rawBytesWritten += size
    if (!this.flushQueued) {
      this.flushQueued = true
      queueMicrotask(this.flushLater)
    }
    return !raw.writableNeedDrain
  }

  /**
   * The batch cannot take `size` more bytes: one begun by small frames moves them to a
   * batch buffer (the spare, or a new one) when everything fits there, so the frames of
   * one callback still go in one write (a PING probe and the DATA behind it); else the
   * batch is written now and the frame starts the next.
   */
  private makeRoom(size: number): void {
    const small = this.batch!
    if (small.length >= OWN_WIRE_MIN_BYTES || this.filled + size > BATCH_BYTES) return this.flush()
    const big = this.spare ?? Buffer.allocUnsafeSlow(BATCH_BYTES)
    small.copy(big, 0, 0, this.filled)
    this.batch = big
    this.spare = null
  }

  private readonly flushLater = (): void => {
    this.flushQueued = false
    this.flush()
  }

  /**
   * Writes the batch to the socket (dropped if the socket is gone: so is the session).
   * To a socket that already queues (the peer reads slowly), a batch less than half full
   * goes as a copy of its size and its buffer stays ours: else every callback's few frames
   * would keep a whole BATCH_BYTES buffer queued (sixteen 4 KiB frames held 4.2 MiB).
   */
  private flush(): void {
    const batch = this.batch
    if (!batch) return
    this.batch = null
    const raw = this.session._rawStream
    if (!(raw instanceof net.Socket) || raw.destroyed || raw.writableEnded) return
    const own = batch.length >= BATCH_BYTES
    if (own && raw.writableLength > 0 && this.filled * 2 < batch.length) {
      const copy = wireBuffer(this.filled)
      batch.copy(copy, 0, 0, this.filled)
      raw.write(copy)
      this.spare = batch
      return
    }
    raw.write(batch.subarray(0, this.filled))
    // Taken whole by the kernel in this call: libuv holds no reference, the buffer is free.
    if (raw.writableLength === 0 && own) this.spare = batch
  }
}

/** A buffer of `size` for the wire: our own from OWN_WIRE_MIN_BYTES, else from Node's shared pool. */
function wireBuffer(size: number): Buffer {
  return size >= OWN_WIRE_MIN_BYTES ? Buffer.allocUnsafeSlow(size) : Buffer.allocUnsafe(size)
}

/** Frames `message` for the wire into `wire` (LENGTH_BYTES + message + ABYTES): the length, then the sealed message. */
function seal(encrypt: NonNullable<SecretStreamInternals['_encrypt']>, message: Uint8Array, wire: Buffer): void {
  const len = message.length + ABYTES
  wire[0] = len & 0xff
  wire[1] = (len >>> 8) & 0xff
  wire[2] = len >>> 16
  encrypt.next(message, wire.subarray(LENGTH_BYTES))
}
