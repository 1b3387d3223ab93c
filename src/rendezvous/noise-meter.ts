/**
 * Watches the raw bytes of a Noise session (secret-stream) before the session reads
 * them, and enforces the server's limits on each message:
 *
 *   +---------------------+---------------------------+
 *   | length u24 LE       | message (handshake or box)|   secret-stream framing
 *   +---------------------+---------------------------+
 *
 * secret-stream accepts messages up to 16 MiB and allocates a message's whole length
 * as soon as its 3-byte prefix arrives, so a stranger's 3 bytes would cost 16 MiB. The
 * meter throws on a length over `maxBytes` before the session sees it, and says when
 * a message is incomplete (since when), so the server can give each message a deadline.
 */
import { ProtocolError } from '../protocol/errors.js'

export class NoiseMeter {
  /** Bytes of the length prefix read so far (0-3), and its value. */
  private headerBytes = 0
  private len = 0
  /** Bytes of the current message still to come; 0 = between messages. */
  private missing = 0
  /** When the current incomplete message started (its first prefix byte); null between messages. */
  startedAt: number | null = null

  constructor(private readonly maxBytes: number) {}

  /** Accounts one chunk read at `now`; throws ProtocolError on a message over the limit. */
  feed(chunk: Uint8Array, now: number): void {
    let i = 0
    while (i < chunk.length) {
      if (this.missing > 0) {
        const take = Math.min(this.missing, chunk.length - i)
        this.missing -= take
        i += take
        if (this.missing === 0) this.startedAt = null
        continue
      }
      if (this.headerBytes === 0) this.startedAt ??= now
      this.len |= chunk[i++]! << (8 * this.headerBytes)
      if (++this.headerBytes < 3) continue
      const len = this.len
      this.headerBytes = 0
      this.len = 0
      if (len > this.maxBytes) throw new ProtocolError('BAD_REQUEST', `session message of ${len} bytes exceeds ${this.maxBytes}`)
      this.missing = len
      this.current = len
      if (len === 0) this.startedAt = null
    }
  }

  /** Length of the last message whose prefix was read. */
  private current = 0

  /** What the session holds for the incomplete message (it allocates the whole length at its prefix). */
  get heldBytes(): number {
    return this.partial ? this.current + this.headerBytes : 0
  }

  /** True while a message has started and not ended. */
  get partial(): boolean {
    return this.startedAt !== null
  }
}
