/**
 * The receiver's end of a file's bytes (issue 18): the channel hands the peer's DATA
 * straight here (MuxChannel.deliverTo), with no stream layer between the tunnel and the
 * disk. Each chunk is hashed as it comes (sha256, incrementally) and copied into the
 * body's own write buffers (copy-queue.ts), so the DATA frame, a view into the session
 * reader's slab, is free when data() returns (delivery-lease.ts: the slab is read into
 * again instead of a fresh one being allocated). The queue goes to the disk in one
 * writev() at a time, in order, so the partial on disk is always a prefix of what was
 * sent (a SIGKILL loses only what was queued; the next attempt resumes at the partial's
 * size). Bytes past the body are the END frame, parsed here.
 *
 * Early flushes: every SYNC_EVERY_BYTES written, an fdatasync() runs in the thread pool
 * beside the writes, so the disk writes the file back while the rest arrives and the
 * receiver's fsync before DONE (file-receiver.ts) has at most that much left: that fsync
 * took 90-145 ms for 128 MiB here, 10-15% of a transfer, all after the last byte. These
 * are not what makes the file durable (the fsync before DONE is), but their errors count:
 * Linux reports a writeback error to one fsync of a descriptor, so one ignored here could
 * let the last fsync succeed over lost bytes. A failed early flush fails the body.
 *
 * Backpressure: while WRITE_QUEUE_BYTES or more wait for the disk, data() says false and
 * the channel holds the peer's credit; when a write brings the queue below it, the
 * channel's release() grants it. Memory per transfer: the queue (< WRITE_QUEUE_BYTES +
 * one frame, in WRITE_BUFFER_BYTES buffers) plus what the peer may still send on its
 * window (CHANNEL_WINDOW_BYTES), as a forwarded connection's (daemon/pipe.ts). A sender
 * of 1-byte DATA frames costs no more: every byte is copied into the same few buffers.
 */
import type { Hash } from 'node:crypto'
import fs from 'node:fs'
import { NatdError } from '../protocol/errors.js'
import { decodeTransfer, transferFrameLength } from '../protocol/transfer.js'
import type { ChannelSink } from '../tunnel/mux-channel.js'
import { released } from '../tunnel/delivery-lease.js'
import { CopyQueue } from './copy-queue.js'

/** Bytes queued for the disk before the peer gets no more credit (a forward's local queue is the same). */
export const WRITE_QUEUE_BYTES = 1024 * 1024
/** Buffers per writev() (Linux's IOV_MAX is 1024). */
export const MAX_IOVECS = 1024
/** Bytes written between early flushes (fdatasync beside the writes, see above). */
export const SYNC_EVERY_BYTES = 16 * 1024 * 1024
/** Bytes after the body that may stand before the END frame is whole: the END frame is 38. */
export const MAX_TAIL_BYTES = 1024

/** The one disk call the body makes, injectable for tests (short writes, ENOSPC). */
export type WritevFn = (fd: number, bufs: Buffer[], cb: (err: NodeJS.ErrnoException | null, written: number) => void) => void

const nodeWritev: WritevFn = (fd, bufs, cb) => fs.writev(fd, bufs, (err, written) => cb(err, written))

/** The early flush, injectable for tests (EIO). */
export type SyncFn = (fd: number, cb: (err: NodeJS.ErrnoException | null) => void) => void

export interface FileBodyOptions {
  /** The partial, opened for appending. The body never closes it: settled() says when no write uses it. */
  fd: number
  /** Body bytes to take (size − offset); what follows is the END frame. */
  bytes: number
  /** The hash of what the partial held, carried on over the body. */
  hash: Hash
  /** The queue went below WRITE_QUEUE_BYTES after data() said false: grant the peer's credit (MuxChannel.release). */
  onDrain(): void
  /** Body bytes arrived (n of them). */
  onBytes(n: number): void
  /**
   * A write or early flush in flight when the body failed another way, failed too: result
   * rejected with the first error already, so this one is said here or nowhere (a failed
   * flush means the disk lost written bytes, which no later fsync of the partial reports).
   */
  onLateError?(err: NodeJS.ErrnoException, during: 'write' | 'flush'): void
  writev?: WritevFn
  fdatasync?: SyncFn
}

/**
 * A ChannelSink for one file's bytes. `result` resolves with the sha256 the sender put in
 * END once every body byte is on its way to the disk and END came, and rejects on a write
 * error (ENOSPC…), bytes that are no END frame, the peer's FIN before the end, or fail().
 */
export class FileBody implements ChannelSink {
  readonly result: Promise<Buffer>
  /** Body bytes still expected. */
  private left: number
  /** The bytes waiting for the disk or being written, copied out of the frames. */
  private readonly queue = new CopyQueue()
  private writing = false
  /** An early flush is running. */
  private syncing = false
  /** Bytes written since the last early flush started. */
  private unsynced = 0
  private full = false
  private tail: Buffer = Buffer.alloc(0)
  private sha: Buffer | null = null
  private failed: Error | null = null
  private resolve!: (sha: Buffer) => void
  private reject!: (err: Error) => void
  private settledWaiters: Array<() => void> = []
  private readonly writev: WritevFn
  private readonly fdatasync: SyncFn
  /** Bytes written to the partial so far (by this body). */
  written = 0
  /**
   * An early flush failed (first or late): the disk may have lost bytes the partial seems
   * to hold (the page cache still reads them back), so the partial is no base for a resume.
   */
  flushFailed = false

  constructor(private readonly o: FileBodyOptions) {
    this.left = o.bytes
    this.writev = o.writev ?? nodeWritev
    this.fdatasync = o.fdatasync ?? fs.fdatasync
    this.result = new Promise((resolve, reject) => {
      this.resolve = resolve
      this.reject = reject
    })
    this.result.catch(() => undefined) // awaited by the receiver; a failure surfaces there
    this.maybeDone()
  }

  /** Takes one chunk of the peer's data; keeps no reference to `buf` (body bytes are copied, the tail too). */
  data(buf: Buffer): boolean {
    released()
    if (this.failed) return true // torn down: take and drop, the channel is being reset
    if (this.left > 0) {
      const body = buf.length <= this.left ? buf : buf.subarray(0, this.left)
      this.left -= body.length
      this.o.hash.update(body)
      this.queue.push(body)
      this.o.onBytes(body.length)
      this.flush()
      buf = buf.subarray(body.length)
    }
    if (buf.length > 0) this.onTail(buf)
    this.maybeDone()
    if (this.queue.queued < WRITE_QUEUE_BYTES) return true
    this.full = true
    return false
  }

  /** The peer's FIN: before its END, the transfer is cut off. */
  end(): void {
    if (this.sha === null) this.fail(new NatdError('TUNNEL_CLOSED', `the sender ended the file ${this.left > 0 ? `with ${this.left} bytes missing` : 'without its sha256'}`))
  }

  /** Stops taking bytes (the channel closed, a stall): result rejects with `err` unless it settled already. */
  fail(err: Error): void {
    if (this.failed) return
    this.failed = err
    this.queue.clear()
    this.reject(err)
    this.maybeSettled()
  }

  /** Resolves once no write or flush is in flight (after result settled, the fd may be closed then). */
  settled(): Promise<void> {
    if (!this.writing && !this.syncing) return Promise.resolve()
    return new Promise((resolve) => this.settledWaiters.push(resolve))
  }

  private onTail(buf: Buffer): void {
    if (this.sha !== null) return this.fail(new NatdError('BAD_REQUEST', 'the sender sent bytes after the file\'s sha256'))
    this.tail = this.tail.length ? Buffer.concat([this.tail, buf]) : Buffer.from(buf)
    let n: number | null
    try {
      n = transferFrameLength(this.tail)
      if (n === null || this.tail.length < n) {
        if (this.tail.length > MAX_TAIL_BYTES) throw new NatdError('BAD_REQUEST', `expected the file's sha256 after its bytes, got ${this.tail.length} bytes of something else`)
        return
      }
      const f = decodeTransfer(this.tail.subarray(0, n))
      if (f.type !== 'end') throw new NatdError('BAD_REQUEST', `expected the file's sha256 after its bytes, got ${f.type}`)
      if (this.tail.length > n) throw new NatdError('BAD_REQUEST', 'the sender sent bytes after the file\'s sha256')
      this.sha = Buffer.from(f.sha256)
    } catch (err) {
      this.fail(err as Error)
    }
  }

  /** Writes the queue, one writev() at a time (a short write continues with the rest). */
  private flush(): void {
    if (this.writing || this.queue.queued === 0 || this.failed) return
    this.writing = true
    this.writev(this.o.fd, this.queue.pending(MAX_IOVECS), (err, written) => {
      this.writing = false
      if (this.failed) {
        if (err) this.o.onLateError?.(err, 'write')
        return this.maybeSettled()
      }
      if (err) {
        this.fail(err)
        return
      }
      this.queue.written(written)
      this.written += written
      this.unsynced += written
      this.syncEarly()
      if (this.full && this.queue.queued < WRITE_QUEUE_BYTES) {
        this.full = false
        this.o.onDrain()
      }
      this.flush()
      this.maybeDone()
      this.maybeSettled()
    })
  }

  /** Starts an early flush once SYNC_EVERY_BYTES were written since the last (one at a time, beside the writes). */
  private syncEarly(): void {
    if (this.syncing || this.unsynced < SYNC_EVERY_BYTES || this.failed) return
    this.syncing = true
    this.unsynced = 0
    this.fdatasync(this.o.fd, (err) => {
      this.syncing = false
      if (err) this.flushFailed = true
      if (err && this.failed) this.o.onLateError?.(err, 'flush')
      else if (err) this.fail(err)
      this.maybeDone()
      this.maybeSettled()
    })
  }

  private maybeDone(): void {
    if (this.failed || this.left > 0 || this.sha === null || this.writing || this.syncing || this.queue.queued > 0) return
    this.resolve(this.sha)
  }

  private maybeSettled(): void {
    if (this.writing || this.syncing) return
    for (const w of this.settledWaiters.splice(0)) w()
  }
}
