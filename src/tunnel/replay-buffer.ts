/**
 * The frames a tunnel sent that the peer has not acknowledged yet, in order, so a
 * resumed session (tunnel/resume.ts) can send again what the old one lost. Frames are
 * numbered implicitly (protocol/mux.ts): the first frame held is number `base`, the
 * next `base + 1`, and so on; the peer's ACK and RESUME carry how many it received in
 * all, mod 2^32.
 *
 * Frames live in slabs of SLAB_BYTES (one allocation per slab, not per frame: the data
 * plane's hot path, issue #18). A DATA frame is built where it will be kept: reserve()
 * hands out the slab's free space, the channel fills it, push() of that very buffer keeps
 * it without a copy, and the session seals it into a wire buffer of its own (the session
 * must never change what it is given: tunnel/session-writer.ts encrypts out of place).
 * Other frames are copied in. Slabs whose frames were all acknowledged are used again:
 * fresh memory cost a page fault per 4 KiB, and made the mux alone 2-3× slower
 * (measured: 100-155 MB/s against 280-570 without the replay buffer); reused, on a par.
 * trim() gives the memory back once the buffer is empty (an idle tunnel).
 */

/** Bytes per slab; a frame (at most 64 KiB + 5) never spans two. */
export const SLAB_BYTES = 1024 * 1024

export class ReplayBuffer {
  private frames: Buffer[] = []
  private head = 0
  private slab: Buffer = Buffer.alloc(0)
  private slabUsed = 0
  /** Full slabs, oldest first, each with the number of the frame after its last one. */
  private sealed: Array<{ slab: Buffer; end: number }> = []
  /** Slabs free to use again. */
  private spare: Buffer[] = []
  /** Number of the first frame held (frames sent in all before it were acknowledged). */
  private base = 0
  /** Bytes held. */
  bytes = 0

  /** Frames held. */
  get length(): number {
    return this.frames.length - this.head
  }

  /** Frames sent in all (the number the next frame gets). */
  get sent(): number {
    return this.base + this.length
  }

  /**
   * Free space for a frame of `len` bytes, to be filled and then passed to push() before
   * any other reserve() or push() (then it is kept without a copy). Reserving again, or
   * never pushing, is harmless: the space stays free.
   */
  reserve(len: number): Buffer {
    if (this.slabUsed + len > this.slab.length) {
      if (this.slab.length > 0) this.sealed.push({ slab: this.slab, end: this.sent })
      const reuse = this.spare.length > 0 && len <= SLAB_BYTES
      this.slab = reuse ? this.spare.pop()! : Buffer.allocUnsafeSlow(Math.max(SLAB_BYTES, len))
      this.slabUsed = 0
    }
    return this.slab.subarray(this.slabUsed, this.slabUsed + len)
  }

  /** Keeps `frame` (the next sequenced frame sent): as it is if it fills the last reserve(), else a copy. */
  push(frame: Uint8Array): void {
    const inPlace = frame.buffer === this.slab.buffer && frame.byteOffset === this.slab.byteOffset + this.slabUsed && this.slabUsed + frame.length <= this.slab.length
    const kept = inPlace ? (frame as Buffer) : this.reserve(frame.length)
    if (!inPlace) kept.set(frame)
    this.slabUsed += frame.length
    this.frames.push(kept)
    this.bytes += frame.length
  }

  /**
   * The peer has received `received` (mod 2^32) frames in all: forgets those. False when
   * the number is not one we could have been told (more than we sent, or fewer than it
   * acknowledged before): a broken or hostile peer.
   */
  ack(received: number): boolean {
    const n = (received - this.base) >>> 0 // frames newly acknowledged
    if (n > this.length) return false
    for (let i = 0; i < n; i++) {
      this.bytes -= this.frames[this.head]!.length
      this.head++
    }
    this.base += n
    // A slab whose frames are all acknowledged holds nothing we may send again. (Our copy
    // was only ever written to a session on a resume, and the peer acknowledges a frame
    // only after it arrived, so the session has long encrypted it into its own buffer.)
    while (this.sealed.length > 0 && this.sealed[0]!.end - this.base <= 0) {
      const { slab } = this.sealed.shift()!
      if (slab.length === SLAB_BYTES) this.spare.push(slab)
    }
    // Compact now and then, not on every ack: shifting is O(n).
    if (this.head > 1024 && this.head * 2 > this.frames.length) {
      this.frames = this.frames.slice(this.head)
      this.head = 0
    }
    if (this.length === 0) {
      this.frames = []
      this.head = 0
    }
    return true
  }

  /** Gives back the memory of an empty buffer (an idle tunnel keeps none). */
  trim(): void {
    if (this.length > 0) return
    this.spare = []
    this.sealed = []
    this.slab = Buffer.alloc(0)
    this.slabUsed = 0
  }

  /** Every frame held, oldest first (call after ack(received) to resend what the peer lacks). */
  *pending(): Generator<Buffer> {
    for (let i = this.head; i < this.frames.length; i++) yield this.frames[i]!
  }
}
