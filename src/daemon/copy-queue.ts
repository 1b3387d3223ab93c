/**
 * A file's bytes between the tunnel and the disk, copied into a few large buffers of the
 * receiver's own (issue 18). The session reader reads the tunnel into slabs and hands
 * DATA frames over as views into them; a slab none of whose views is kept is read into
 * again (tunnel/delivery-lease.ts). A file's queue used to keep those views until the
 * disk took them, so every slab stayed pinned and the reader allocated a fresh 256 KiB
 * one per read: the garbage collector was 15% of the receiving agent's busy time in a
 * profile of one forward and one cp of the same bytes, and the agent's CPU per MiB during
 * the cp fell by a fifth to a third once the frames were copied. Copied here, the frame
 * is free when data() returns; the copy costs a memcpy, the collector far more.
 *
 *   buffers:  [ written | queued (being written, or next) | free ]  … one per WRITE_BUFFER_BYTES
 *
 * Bytes are appended after the last buffer's `filled` mark; a write takes views of
 * [written, filled) of each buffer and, once it completes, written() moves the marks on.
 * A write in flight only reads bytes before the marks it was given, so appending after
 * them meanwhile is safe. A buffer written to its end goes to the spares and is filled
 * again: a fresh buffer costs a page fault per 4 KiB page on its first fill (measured with
 * `perf`: 2% of the receiving agent's time while spares were capped at four). Spares are
 * buffers the queue once held, so the memory per transfer is the queue's peak (bounded by
 * the receiver's WRITE_QUEUE_BYTES and the channel's window) until the transfer ends.
 */

/** Bytes per buffer: four full DATA frames, so one writev() takes a few large pieces. */
export const WRITE_BUFFER_BYTES = 256 * 1024

interface Slot {
  buf: Buffer
  /** Bytes copied in. */
  filled: number
  /** Bytes of them the disk took. */
  written: number
}

export class CopyQueue {
  private readonly slots: Slot[] = []
  private readonly spare: Buffer[] = []
  /** Bytes copied in and not yet written (a write in flight included). */
  queued = 0

  /** Copies `data` after what is queued (`data` is the caller's again when this returns). */
  push(data: Buffer): void {
    for (let at = 0; at < data.length; ) {
      let last = this.slots[this.slots.length - 1]
      if (last === undefined || last.filled === last.buf.length) {
        last = { buf: this.spare.pop() ?? Buffer.allocUnsafeSlow(WRITE_BUFFER_BYTES), filled: 0, written: 0 }
        this.slots.push(last)
      }
      const n = data.copy(last.buf, last.filled, at)
      last.filled += n
      at += n
    }
    this.queued += data.length
  }

  /** Views of the bytes not yet written, in order, at most `maxViews` of them; they stay queued until written() says. */
  pending(maxViews: number): Buffer[] {
    const out: Buffer[] = []
    for (const s of this.slots) {
      if (out.length === maxViews) break
      if (s.filled > s.written) out.push(s.buf.subarray(s.written, s.filled))
    }
    return out
  }

  /** The disk took the first `n` bytes of what pending() gave (a short write: fewer than all). */
  written(n: number): void {
    this.queued -= n
    while (n > 0) {
      const s = this.slots[0]!
      const k = Math.min(n, s.filled - s.written)
      s.written += k
      n -= k
      if (s.written < s.buf.length) break // the last buffer, still being filled
      this.slots.shift()
      this.spare.push(s.buf)
    }
  }

  /** Forgets every queued byte (the sink failed). A write in flight keeps its views; no buffer of it is reused. */
  clear(): void {
    this.slots.length = 0
    this.spare.length = 0
    this.queued = 0
  }
}
