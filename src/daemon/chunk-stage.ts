/**
 * Small chunks of the peer's data gathered into larger buffers before they are queued
 * (issue 18), for a forwarded connection's socket (pipe.ts, SocketGather). A file's
 * partial copies every chunk instead (file-body.ts, copy-queue.ts): its queue waits for
 * the disk, so views would keep the session reader's slabs pinned.
 *
 * Why: a queued write costs a Buffer (and, for a socket, a request object) whatever its
 * size, and it keeps the DATA frame it views alive. A peer sending 1-byte DATA frames to
 * a sink that stopped taking them could queue one per byte over the sink's bound and the
 * channel's window (~5 million objects, ~0.5 GB). Staged, the queue holds about two
 * Buffers per SMALL_CHUNK_BYTES, and its memory is close to the bytes it counts.
 *
 * A chunk under SMALL_CHUNK_BYTES is copied into the stage (a STAGE_BYTES buffer), after
 * what it holds; a larger one is emitted as it is, after the staged bytes. seal() emits
 * the staged bytes; the free space after them stays the stage (the next small chunks go
 * there, no new buffer until it is full).
 */

/** Chunks under this are copied into the stage (memory per queued Buffer, see above). */
export const SMALL_CHUNK_BYTES = 16 * 1024
/** The stage's size (a full DATA frame's payload). */
export const STAGE_BYTES = 64 * 1024

export class ChunkStage {
  /** Where small chunks are gathered: `staged` bytes at its start, then free space. */
  private stage: Buffer | null = null
  private count = 0

  /** `emit` gets each buffer to queue, in order; it may keep it (a staged buffer is never written again). */
  constructor(private readonly emit: (buf: Buffer) => void) {}

  /** Bytes copied in and not yet emitted. */
  get staged(): number {
    return this.count
  }

  /** Queues `buf` after what came before: copied into the stage when small, else emitted as it is (the staged bytes first). */
  push(buf: Buffer): void {
    if (buf.length >= SMALL_CHUNK_BYTES) {
      this.seal()
      this.emit(buf)
      return
    }
    if (this.stage === null || this.stage.length - this.count < buf.length) {
      this.seal()
      this.stage = Buffer.allocUnsafe(STAGE_BYTES)
    }
    buf.copy(this.stage, this.count)
    this.count += buf.length
  }

  /** Emits the staged bytes, if any. */
  seal(): void {
    if (this.stage === null || this.count === 0) return
    const b = this.stage.subarray(0, this.count)
    this.stage = this.stage.subarray(this.count)
    this.count = 0
    this.emit(b)
  }

  /** Forgets the staged bytes (the sink failed). */
  clear(): void {
    this.stage = null
    this.count = 0
  }
}
