/**
 * Bytes read from a local source that a channel could not take at once (no credit, the
 * session congested), copied aside and sent first when it can: the one queue of the
 * direct paths (daemon/pipe.ts for forwarded sockets, daemon/file-feed.ts for `natctl cp`).
 * It holds at most what one read left over, plus what its owner pushes on purpose.
 */
import { MAX_DATA_BYTES } from '../protocol/mux.js'
import type { MuxChannel } from './mux-channel.js'

/**
 * The size of a spill buffer: the most one read leaves over (pipe.ts READ_BYTES and
 * file-feed.ts FEED_READ_BYTES, four DATA frames).
 */
export const SPILL_BYTES = 4 * MAX_DATA_BYTES
/**
 * A rest of a read at least this large is copied into a spill buffer used again, not
 * into a new one (issue 18): a bulk forward's reads stop at the in-flight limit about one
 * time in five, and a fresh 64–256 KiB buffer per rest was a new mapping of memory (page
 * faults, then the garbage collector's work to unmap it): Buffer.from() was 5% of the
 * sending agent's time and its collections 7%. Smaller rests take Node's pool or malloc.
 * A rest in a spill buffer holds SPILL_BYTES, at most 4× its size.
 */
export const SPILL_MIN_BYTES = MAX_DATA_BYTES
/** Spill buffers kept free for the next rest (process-wide; 1 MiB when all are free). */
export const SPILL_FREE_MAX = 4

const freeSpills: Buffer[] = []

/** @internal the free spill buffers (tests). */
export function freeSpillCount(): number {
  return freeSpills.length
}

interface Held {
  buf: Buffer
  /** The spill buffer `buf` lies in, returned to the free list once `buf` is sent. */
  spill: Buffer | null
}

export class HeldSends {
  private readonly held: Held[] = []
  private waiting = false

  constructor(
    private readonly ch: MuxChannel,
    /** Called with the bytes of each send (held bytes only; the caller counts its own sendSome()s). */
    private readonly onSent: (n: number) => void = () => undefined
  ) {}

  get empty(): boolean {
    return this.held.length === 0
  }

  /** A later() call waits for the channel. */
  get isWaiting(): boolean {
    return this.waiting
  }

  /** Keeps `buf` (the caller's: copy it first if its memory is reused, or use pushCopy()) to send after what is held. */
  push(buf: Buffer): void {
    this.held.push({ buf, spill: null })
  }

  /** Keeps a copy of `bytes` (memory the caller reuses once this returns) to send after what is held. */
  pushCopy(bytes: Buffer): void {
    if (bytes.length < SPILL_MIN_BYTES || bytes.length > SPILL_BYTES) return this.push(Buffer.from(bytes))
    const spill = freeSpills.pop() ?? Buffer.allocUnsafeSlow(SPILL_BYTES)
    bytes.copy(spill)
    this.held.push({ buf: spill.subarray(0, bytes.length), spill })
  }

  /** Sends what is held; true when nothing is left. */
  flush(): boolean {
    while (this.held.length > 0) {
      const h = this.held[0]!
      const n = this.ch.sendSome(h.buf)
      if (n > 0) this.onSent(n)
      if (n < h.buf.length) {
        h.buf = h.buf.subarray(n)
        return false
      }
      this.held.shift()
      // sendSome() copied the bytes into frames: the spill buffer is free.
      if (h.spill && freeSpills.length < SPILL_FREE_MAX) freeSpills.push(h.spill)
    }
    return true
  }

  /** Calls `then` once the channel can send, or with the error if it dies first; once, however often asked meanwhile. */
  later(then: (err?: Error | null) => void): void {
    if (this.waiting) return
    this.waiting = true
    this.ch.whenSendable((err) => {
      this.waiting = false
      then(err)
    })
  }
}
