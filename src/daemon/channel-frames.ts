/**
 * Reads the control frames of protocol/transfer.ts from a mux channel (a byte stream):
 * one async iterator over the channel, a small buffer for what arrived past a frame's end.
 * A file's bytes do not come through here: the receiver detaches and takes them straight
 * from the channel (file-body.ts).
 */
import type { Duplex } from 'node:stream'
import { systemClock, type TimerClock } from '../protocol/clock.js'
import { isErrorCode, NatdError } from '../protocol/errors.js'
import { decodeTransfer, transferFrameLength, type TransferFrame } from '../protocol/transfer.js'
import type { MigrationDeadline } from '../tunnel/migration-deadline.js'
import type { MuxChannel } from '../tunnel/mux-channel.js'

export class ChannelReader {
  private buf: Buffer = Buffer.alloc(0)
  private readonly it: AsyncIterator<Buffer>

  constructor(readonly channel: Duplex) {
    // destroyOnReturn false: the end of our reading must not tear down the writing side.
    this.it = channel.iterator({ destroyOnReturn: false })[Symbol.asyncIterator]()
  }

  private async more(what: string): Promise<Buffer> {
    let r: IteratorResult<Buffer>
    try {
      r = await this.it.next()
    } catch (err) {
      throw err instanceof NatdError ? err : new NatdError('TUNNEL_CLOSED', `the channel closed while waiting for ${what}`, { cause: err })
    }
    if (r.done) throw new NatdError('TUNNEL_CLOSED', `the peer closed the channel before ${what}`)
    return r.value
  }

  /** The next frame; throws ProtocolError on garbage, TUNNEL_CLOSED when the channel ends first. */
  async frame(what = 'a reply'): Promise<TransferFrame> {
    for (;;) {
      const n = transferFrameLength(this.buf)
      if (n !== null && this.buf.length >= n) {
        const f = decodeTransfer(this.buf.subarray(0, n))
        this.buf = this.buf.subarray(n)
        return f
      }
      const chunk = await this.more(what)
      this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk
    }
  }

  /**
   * Stops reading the channel (its data goes elsewhere from now on: MuxChannel.deliverTo)
   * and returns what arrived past the last frame read.
   */
  async detach(): Promise<Buffer> {
    const rest = this.buf
    this.buf = Buffer.alloc(0)
    // Also frees the iterator's last chunk (all the channel held when it was read), which it keeps until returned.
    await this.it.return?.()
    return rest
  }
}

/**
 * Ends `channel` with our last frame (an answer, a refusal) and reads nothing more from it
 * (MuxChannel.discardInput: what the peer sends after is dropped, not held). The channel
 * is reset `lingerMs` later if the peer has not ended its side by then: the frame leaves
 * first, in order, but a reset right behind it could end the peer's channel before its
 * reader took the frame.
 */
export function endWith(channel: MuxChannel, frame: Buffer, lingerMs: number, clock: TimerClock = systemClock): void {
  channel.discardInput()
  if (channel.destroyed || channel.writableEnded) return
  channel.end(frame)
  const timer = clock.setTimeout(() => channel.destroy(), lingerMs).unref()
  channel.once('close', () => clock.clear(timer))
}

/**
 * Rejects with TIMEOUT after `by` ms (and destroys the channel, which ends any read on it).
 * With a MigrationDeadline, when it expires: time while its tunnel migrates does not
 * count (tunnel/migration-deadline.ts), and every phase of one operation (open, then the
 * answer) shares its time and its migration budget, so the operation ends at most its
 * timeout + MIGRATION_PAUSE_MAX_MS after it started, however often the tunnel migrates.
 */
export async function withDeadline<T>(p: Promise<T>, by: number | MigrationDeadline, channel: Duplex, what: string, clock: TimerClock = systemClock): Promise<T> {
  let stop: () => void = () => undefined
  const timeout = new Promise<never>((_, reject) => {
    const ms = typeof by === 'number' ? by : by.ms
    const expire = (): void => {
      const err = new NatdError('TIMEOUT', `${what} did not come within ${ms} ms`)
      channel.destroy(err)
      reject(err)
    }
    if (typeof by === 'number') {
      const timer = clock.setTimeout(expire, by)
      stop = () => clock.clear(timer)
    } else {
      stop = by.onExpiry(expire)
    }
  })
  try {
    return await Promise.race([p, timeout])
  } finally {
    stop()
  }
}

/**
 * Destroys `channel` when `signal` aborts (its caller went away), which ends any read or
 * write on it; returns the function that stops watching.
 */
export function destroyOnAbort(channel: Duplex, signal: AbortSignal | undefined, what: string): () => void {
  if (!signal) return () => undefined
  const onAbort = (): void => void channel.destroy(new NatdError('ABORTED', `${what} was cancelled by its caller`))
  if (signal.aborted) onAbort()
  else signal.addEventListener('abort', onAbort, { once: true })
  return () => signal.removeEventListener('abort', onAbort)
}

/** The error a peer's REFUSE frame stands for (an unknown code becomes INTERNAL). */
export function refusal(code: string, message: string): NatdError {
  return new NatdError(isErrorCode(code) ? code : 'INTERNAL', message)
}
