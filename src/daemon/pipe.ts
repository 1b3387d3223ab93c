import type net from 'node:net'
import type { Duplex } from 'node:stream'
import { systemClock, type TimerClock } from '../protocol/clock.js'
import { MAX_DATA_BYTES } from '../protocol/mux.js'
import { MuxChannel } from '../tunnel/mux-channel.js'
import { HeldSends } from '../tunnel/held-sends.js'
import { deferToBatchEnd, keptInBatch, released } from '../tunnel/delivery-lease.js'
import { canReadInto, readInto } from '../tunnel/socket-onread.js'
import { ChunkStage, SMALL_CHUNK_BYTES } from './chunk-stage.js'

/**
 * The local socket's reads land here and are copied into frames before the read callback
 * returns (what cannot be sent then is copied aside): so one buffer serves every joined
 * socket of the process (reads run one at a time), where Node allocates 64 KiB per read.
 */
let sharedReadBuffer: Buffer | null = null
/**
 * A read's most: four DATA frames, which the session writer seals into one write to the
 * tunnel's socket (tunnel/session-writer.ts BATCH_BYTES): one read and one write syscall
 * per 256 KiB instead of four of each. The rest of a read the channel could not take is copied
 * aside (HeldSends), so a joined connection holds < READ_BYTES of its own.
 */
export const READ_BYTES = 4 * MAX_DATA_BYTES
/**
 * The peer's data queued in the local socket before we stop granting the peer credit
 * (the channel's Readable side held 1 MiB, the same). The channel's window (4 MiB) bounds
 * what the peer can send past it.
 */
export const LOCAL_QUEUE_BYTES = 1024 * 1024

/**
 * Joins a local TCP connection and a mux channel both ways with half-close: the end of
 * one side ends the other side's writing (a FIN stays a FIN). A channel that dies with an
 * error (its tunnel closed, the peer reset it or refused it) resets the TCP connection: the
 * application sees ECONNRESET, never a clean EOF it would take for the end of the data. A
 * TCP connection that fails destroys the channel, which resets it at the peer.
 * (stream.pipeline would tear both down at the first end, which breaks half-closed protocols.)
 */
export function join(sock: net.Socket, ch: Duplex, onDone?: () => void, clock: Pick<TimerClock, 'setTimeout'> = systemClock): void {
  let done = false
  const finish = (err?: Error, fromChannel = false): void => {
    if (done) return
    done = true
    if (err) {
      if (fromChannel) reset(sock)
      else sock.destroy()
      ch.destroy()
    }
    onDone?.()
  }
  if (!(ch instanceof MuxChannel && joinDirect(sock, ch))) {
    sock.pipe(ch)
    ch.pipe(sock)
  }
  sock.on('error', (err) => finish(err))
  ch.on('error', (err) => finish(err, true))
  let closed = 0
  const onClose = (): void => {
    if (++closed === 2) finish()
    else {
      // One side is gone for good: give the other a moment to flush, then end it.
      clock.setTimeout(() => {
        sock.destroy()
        ch.destroy()
      }, 30_000).unref()
    }
  }
  sock.on('close', onClose)
  ch.on('close', onClose)
}

/** Closes a local TCP connection with a RST (an error the application can tell from the end of the data). */
export function reset(sock: net.Socket): void {
  if (sock.destroyed) return
  sock.on('error', () => undefined) // resetAndDestroy reports a socket closed meanwhile as an error
  sock.resetAndDestroy()
}

/**
 * The socket and a mux channel without stream layers between them (issue 18): the kernel
 * reads the socket into a shared buffer and the channel copies each read into DATA frames
 * at once (MuxChannel.sendSome); the peer's data is written to the socket as it arrives
 * (MuxChannel.deliverTo). Backpressure as with pipe(): reading stops while the channel
 * has no credit or the session is congested (sendSome() takes less than a read, or canSend
 * is false after it), and the peer's credit is held while the socket queues
 * LOCAL_QUEUE_BYTES or more. The end of the socket's data ends the channel after its last
 * byte, the peer's FIN ends the socket's writing. False (nothing changed): the socket
 * cannot read into our buffer (Node's internals are not there) or the channel already
 * delivered data to its Readable side; then join() pipes.
 */
function joinDirect(sock: net.Socket, ch: MuxChannel): boolean {
  if (!canReadInto(sock) || ch.writableLength > 0 || ch.writableEnded || ch.readableFlowing) return false
  // Bytes the socket read before we joined (Node's read-ahead) are sent first.
  const early: Buffer[] = []
  for (let chunk = sock.read() as Buffer | null; chunk !== null; chunk = sock.read() as Buffer | null) early.push(chunk)
  const held = new HeldSends(ch)
  for (const chunk of early) held.push(chunk)
  const ended = sock.readableEnded || (sock as unknown as { _readableState: { ended: boolean } })._readableState.ended
  sharedReadBuffer ??= Buffer.allocUnsafeSlow(READ_BYTES)
  let eof = ended
  let draining = false
  const out = new SocketGather(sock)
  const toSocket = (buf: Buffer): boolean => {
    if (sock.destroyed) return true // join() is tearing both down
    // Taken whole or copied: the session reader may read into the frame's memory again.
    if (out.write(buf)) released()
    // The socket's queue alone (the staged bytes are < GATHER_BYTES more): past the bound
    // it is above its highWaterMark, so its 'drain' comes. No more than the channel's window
    // (window-budget.ts), so a channel the tunnel's budget keeps small queues as little, but
    // never under the highWaterMark (below it no 'drain' would come).
    if (sock.writableLength < Math.max(sock.writableHighWaterMark, Math.min(LOCAL_QUEUE_BYTES, ch.receiveWindow))) return true
    if (!draining) {
      draining = true
      sock.once('drain', () => {
        draining = false
        ch.release()
      })
    }
    return false
  }
  const endSocket = (): void => {
    out.flush()
    sock.end()
  }
  if (!ch.deliverTo({ data: toSocket, end: endSocket })) {
    for (const b of early.reverse()) sock.unshift(b)
    return false
  }
  const later = (): void =>
    held.later((err) => {
      if (!err) step()
    })
  /** Sends what is held, then ends the channel or reads on. */
  const step = (): void => {
    if (!held.flush()) return later()
    if (eof) {
      ch.end()
      return
    }
    if (!ch.canSend) return later()
    if (!sock.destroyed) sock._read(0) // reads again if they were stopped (no-op while reading)
  }
  const onRead = (n: number, buf: Buffer): boolean => {
    const data = buf.subarray(0, n)
    const sent = ch.sendSome(data)
    if (sent < n) held.pushCopy(data.subarray(sent)) // the shared buffer is the next read's
    if (!held.empty || !ch.canSend) {
      later()
      return false // stop reading until the channel can send
    }
    return true
  }
  if (!eof) {
    readInto(sock, sharedReadBuffer, onRead, null)
    sock.on('end', () => {
      eof = true
      if (held.empty && !held.isWaiting) ch.end()
    })
  }
  step()
  return true
}

/**
 * Writes to a socket, gathering small writes while it has writes queued: a payload under
 * SMALL_CHUNK_BYTES is then copied into a staging buffer (chunk-stage.ts: a peer sending
 * 1-byte DATA frames to a connection that stopped reading could otherwise queue a write
 * per byte over LOCAL_QUEUE_BYTES and the window, ~5 million), written when it is full,
 * before a larger payload, at flush(), or when the last write issued completes. A socket
 * that keeps up gets each payload at once, as before; one that stalls holds about one
 * queued write per SMALL_CHUNK_BYTES, not one per payload.
 *
 * A socket that keeps up, given payloads during the session reader's batch (the frames
 * of one read of the tunnel, delivery-lease.ts), gets them at the batch's end in one
 * writev (corked), not one write each: the payloads stay views into the read's memory
 * until then, and the batch's end says whether the kernel took them whole.
 */
export class SocketGather {
  private readonly stage = new ChunkStage((b) => this.writeOut(b))
  /** Writes issued; a write's callback flushes the stage only if it was the last one. */
  private writes = 0
  /** Payloads put off to the end of the reader's batch, in order. */
  private deferred: Buffer[] = []

  constructor(private readonly sock: Pick<net.Socket, 'write' | 'writableLength' | 'destroyed' | 'cork' | 'uncork'>) {}

  /**
   * Writes `buf` (at once, at the batch's end, or staged); true when nothing refers to its
   * memory any more (for a deferred one: until the batch's end, which says otherwise): it
   * was copied into the stage, or the kernel took it whole in the write call.
   */
  write(buf: Buffer): boolean {
    // Nothing staged and nothing queued: at once, or with the batch. (Staged bytes imply a write in flight whose callback will flush them.)
    if (this.deferred.length > 0 || (this.stage.staged === 0 && this.sock.writableLength === 0 && deferToBatchEnd(this.writeDeferred))) {
      this.deferred.push(buf)
      return true
    }
    if (this.stage.staged === 0 && this.sock.writableLength === 0) {
      this.writeOut(buf)
      return this.sock.writableLength === 0
    }
    this.stage.push(buf) // a small one is copied; a large one is written (queued) as it is
    return buf.length < SMALL_CHUNK_BYTES
  }

  /**
   * Gives the deferred and staged bytes to the socket (before its end()). The peer's FIN
   * calls this during the reader's batch: the deferred payloads, views into the read's
   * memory, are written now and the batch's end finds none left, so when the socket
   * queued them the batch must hear it here (else the reader reads into that memory
   * again while the socket still refers to it: the application would get other bytes).
   */
  flush(): void {
    if (!this.writeDeferred()) keptInBatch()
    this.stage.seal()
  }

  /** Writes the deferred payloads, corked into one writev; true when the kernel took them whole. */
  private readonly writeDeferred = (): boolean => {
    const bufs = this.deferred
    if (bufs.length === 0) return true
    this.deferred = []
    if (this.sock.destroyed) return true
    this.sock.cork()
    for (const b of bufs) this.writeOut(b)
    this.sock.uncork()
    return this.sock.writableLength === 0
  }

  private writeOut(buf: Buffer): void {
    if (this.sock.destroyed) return
    const n = ++this.writes
    this.sock.write(buf, () => {
      if (n === this.writes) this.flush()
    })
  }
}
