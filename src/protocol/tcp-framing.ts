/**
 * The TCP framing of the rendezvous protocol (rendezvous.ts): each message on a control or
 * relay connection is prefixed by its length, until the connection turns secure.
 *
 *    0       1       2       3       4
 *   +-------+-------+-------+-------+-----------------
 *   |     length u32 (big-endian)   | frame[length]
 *   +-------+-------+-------+-------+-----------------
 */
import { ProtocolError } from './errors.js'

/** Largest frame on the TCP control connection; a larger length prefix closes it. */
export const MAX_TCP_FRAME_BYTES = 1024 * 1024

/**
 * Splits a TCP byte stream into frames (u32 big-endian length, then the frame).
 * Throws ProtocolError when a length exceeds MAX_TCP_FRAME_BYTES: the caller closes.
 *
 * Each byte is copied about once, however small the reads: a frame that spans reads grows
 * in a buffer of our own whose capacity doubles (up to the largest frame), and frames inside
 * one read are views of it. (Concatenating the partial frame with each
 * read copied a 64 KiB relay frame arriving in 1448-byte segments ~24 times over: the
 * relay's largest cost.)
 */
export class FrameSplitter {
  private pending: Buffer = Buffer.alloc(0)
  /** Where a partial frame grows; `pending` ends at `ownEnd` in it while it is in use. Frames handed out keep their bytes: only the space past `ownEnd` is written. */
  private own: Buffer | null = null
  private ownEnd = 0

  /** `maxBytes`: a larger length prefix throws (a reader may lower it as a connection's role becomes known). */
  constructor(public maxBytes: number = MAX_TCP_FRAME_BYTES) {}

  /** Bytes held: a partial frame, or frames not yet taken. */
  get pendingBytes(): number {
    return this.pending.length
  }

  push(chunk: Buffer): Buffer[] {
    this.add(chunk)
    const frames: Buffer[] = []
    for (let f = this.next(); f; f = this.next()) frames.push(f)
    return frames
  }

  /** Buffers a chunk without splitting it (then next() one frame at a time). */
  add(chunk: Buffer): void {
    if (chunk.length === 0) return
    if (this.pending.length === 0) {
      this.pending = chunk // frames inside one read are views of it: no copy
      return
    }
    const need = this.pending.length + chunk.length
    const own = this.own
    if (own && this.pending.buffer === own.buffer && this.pending.byteOffset + this.pending.length === this.ownEnd && this.ownEnd + chunk.length <= own.length) {
      chunk.copy(own, this.ownEnd)
      this.ownEnd += chunk.length
      this.pending = own.subarray(this.ownEnd - need, this.ownEnd)
      return
    }
    // Room to double, but never past the largest frame (no frame needs more, and a stranger's
    // partial frame holds at most about what it sent). allocUnsafeSlow: an ArrayBuffer of its
    // own (not the shared pool), so `buffer ===` above identifies it.
    const grown = Buffer.allocUnsafeSlow(Math.max(need, Math.min(2 * need, this.maxBytes + 4)))
    this.pending.copy(grown, 0)
    chunk.copy(grown, this.pending.length)
    this.own = grown
    this.ownEnd = need
    this.pending = grown.subarray(0, need)
  }

  /** The next whole frame, or null until more bytes arrive. */
  next(): Buffer | null {
    if (this.pending.length < 4) return null
    const len = this.pending.readUInt32BE(0)
    if (len > this.maxBytes) throw new ProtocolError('BAD_REQUEST', `frame of ${len} bytes exceeds ${this.maxBytes}`)
    if (this.pending.length < 4 + len) return null
    const f = this.pending.subarray(4, 4 + len)
    this.pending = this.pending.subarray(4 + len)
    if (this.pending.length === 0) this.own = null // the next read starts afresh; handed-out frames keep theirs
    return f
  }

  /** The bytes after the last frame taken (the start of what follows the framing, e.g. Noise). */
  rest(): Buffer {
    const r = this.pending
    this.pending = Buffer.alloc(0)
    this.own = null
    return r
  }
}

/** Prefixes a message with its u32 length, for a connection that is not (yet) secure. */
export function frame(msg: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(4 + msg.length)
  out.writeUInt32BE(msg.length, 0)
  out.set(msg, 4)
  return out
}
