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
 * Over TCP, a wire buffer the kernel took whole in the write call (nothing left in the
 * socket's queue) is used again for the next frame: one 64 KiB allocation less per frame
 * (the garbage collector was 14-17% of an agent's time).
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
  /** A wire buffer free to use again (TCP only: see above). */
  private spare: Buffer | null = null
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
    const own = this.spare && this.spare.length >= size ? this.spare : size >= OWN_WIRE_MIN_BYTES ? Buffer.allocUnsafeSlow(tcp ? Math.max(size, OWN_WIRE_BYTES) : size) : null
    this.spare = null
    const wire = own ? own.subarray(0, size) : Buffer.allocUnsafe(size)
    wire[0] = len & 0xff
    wire[1] = (len >>> 8) & 0xff
    wire[2] = len >>> 16
    encrypt.next(frame, wire.subarray(LENGTH_BYTES))
    s.rawBytesWritten += size
    this.last = raw
    const ok = raw.write(wire)
    // Taken whole by the kernel in this call: libuv holds no reference, the buffer is free.
    if (own && tcp && raw.writableLength === 0) this.spare = own
    return ok
  }

  onceDrain(fn: () => void): void {
    this.last.once('drain', fn)
  }
}
