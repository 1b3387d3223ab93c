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
 * Over TCP, wire buffers are used again: one the kernel took whole in the write call
 * (nothing left in the socket's queue) serves the next frame at once, and one that waited
 * in the socket's queue goes back to a small pool when its write completes (the socket
 * calls back in write order). One 64 KiB allocation less per frame even when the tunnel's
 * socket is full, which is the usual state of a bulk transfer: fresh 64 KiB buffers made
 * the garbage collector 13-17% of the sending agent's time (old-space collections that
 * V8 starts for the external memory).
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
/** A wire buffer for frames this big or bigger is one of our own (smaller ones come from Node's shared pool)… */
const OWN_WIRE_MIN_BYTES = 4096
/** … and holds a full DATA frame (64 KiB + its 5-byte header, sealed), so it can serve the next one. */
const OWN_WIRE_BYTES = LENGTH_BYTES + 64 * 1024 + 5 + ABYTES
/**
 * Wire buffers kept for use again once their write completed (TCP). The socket's queue
 * holds about one frame past its 16 KiB high-water mark before the mux waits for 'drain',
 * so a few are in flight at a time; what is kept per tunnel is at most this many (~260 KiB).
 */
export const WIRE_POOL_BUFFERS = 4

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
  /** Wire buffers free to use again (TCP only: see above), at most WIRE_POOL_BUFFERS. */
  private readonly pool: Buffer[] = []
  /**
   * One entry per write of a pooled buffer, oldest first (the socket calls back in write
   * order): the buffer, to go back to the pool when its write calls back, or null when the
   * kernel took it in the write call (it went back then).
   */
  private readonly writes: Array<Buffer | null> = []
  /** A write failed: the socket is done for, no buffer is used again. */
  private failed = false
  /** Where the last write went: its 'drain' is the one to wait for. */
  private last: RawStream | SecretStream

  constructor(private readonly session: SecretStream & SecretStreamInternals) {
    this.last = session
  }

  write(frame: Uint8Array): boolean {
    const s = this.session
    const raw = s._rawStream
    const encrypt = s._encrypt
    // Not yet open, something queued ahead of us, or too big: secret-stream's own path.
    if (!encrypt || !raw || s._writableState.buffered > 0 || frame.length > MAX_MESSAGE_BYTES) {
      this.last = s
      return s.write(frame as Buffer)
    }
    const len = frame.length + ABYTES
    const size = LENGTH_BYTES + len
    // Over UDX the buffer stays with the stream until the peer acknowledges it: no bigger than the frame.
    const tcp = raw instanceof net.Socket
    const own = size < OWN_WIRE_MIN_BYTES ? null : tcp && size <= OWN_WIRE_BYTES && this.pool.length > 0 ? this.pool.pop()! : Buffer.allocUnsafeSlow(tcp ? Math.max(size, OWN_WIRE_BYTES) : size)
    const wire = own ? own.subarray(0, size) : Buffer.allocUnsafe(size)
    wire[0] = len & 0xff
    wire[1] = (len >>> 8) & 0xff
    wire[2] = len >>> 16
    encrypt.next(frame, wire.subarray(LENGTH_BYTES))
    s.rawBytesWritten += size
    this.last = raw
    if (!own || !tcp || own.length !== OWN_WIRE_BYTES) return raw.write(wire)
    const sock = raw as net.Socket
    const ok = sock.write(wire, this.onWritten)
    // Taken whole by the kernel in this call: libuv holds no reference, the buffer is free
    // now. Else it is free when its write calls back.
    const taken = sock.writableLength === 0
    this.writes.push(taken ? null : own)
    if (taken) this.free(own)
    return ok
  }

  private free(b: Buffer): void {
    if (!this.failed && this.pool.length < WIRE_POOL_BUFFERS) this.pool.push(b)
  }

  /** The oldest write of a pooled buffer completed. On an error the socket is done for: nothing is used again. */
  private readonly onWritten = (err?: Error | null): void => {
    const b = this.writes.shift()
    if (err) {
      this.failed = true
      this.pool.length = 0
      this.writes.length = 0
    } else if (b) this.free(b)
  }

  onceDrain(fn: () => void): void {
    this.last.once('drain', fn)
  }
}
