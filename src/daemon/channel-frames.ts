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
import { MigrationDeadline, type MigratingTunnel } from '../tunnel/migration-deadline.js'

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
    await this.it.return?.()
    const rest = this.buf
    this.buf = Buffer.alloc(0)
    return rest
  }
}

/**
 * Rejects with TIMEOUT after `ms` (and destroys the channel, which ends any read on it).
 * With `tunnel`, time while it migrates does not count (tunnel/migration-deadline.ts):
 * what waits in its replay buffer goes out once it resumes.
 */
export async function withDeadline<T>(p: Promise<T>, ms: number, channel: Duplex, what: string, clock: TimerClock = systemClock, tunnel?: MigratingTunnel): Promise<T> {
  let stop: () => void = () => undefined
  const timeout = new Promise<never>((_, reject) => {
    const expire = (): void => {
      const err = new NatdError('TIMEOUT', `${what} did not come within ${ms} ms`)
      channel.destroy(err)
      reject(err)
    }
    if (tunnel) {
      const deadline = new MigrationDeadline(clock, ms, tunnel, expire)
      stop = () => deadline.stop()
    } else {
      const timer = clock.setTimeout(expire, ms)
      stop = () => clock.clear(timer)
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
