/**
 * The sender's end of a file's bytes (issue 18): the caller's data connection
 * (ipc/file-stream.ts) is read into one buffer of ours and each read is copied into DATA
 * frames at once (MuxChannel.sendSome), as a forwarded socket is (daemon/pipe.ts): no
 * Readable, no pipeline, no channel Writable, no 64 KiB buffer allocated per read. After
 * the body come the caller's 32-byte sha256, which go out in END.
 *
 * Reads are FEED_READ_BYTES, as a forwarded socket's (pipe.ts READ_BYTES): the four DATA
 * frames of one read go to the tunnel's TCP socket in one write (session-writer.ts
 * batches the frames of one callback), where 64 KiB reads made one write per frame.
 *
 * Backpressure: reading stops while the channel has no credit or the session is
 * congested; a read the channel could not take whole has its rest copied aside (< one
 * read) and sent first when whenSendable() fires. Memory per transfer: that rest
 * and the digest; the read buffer is shared by every transfer of the agent (each read is
 * copied out before the callback returns, and reads run one at a time).
 */
import net from 'node:net'
import type { Duplex } from 'node:stream'
import { NatdError } from '../protocol/errors.js'
import { MAX_DATA_BYTES } from '../protocol/mux.js'
import { encodeTransfer } from '../protocol/transfer.js'
import type { MuxChannel } from '../tunnel/mux-channel.js'
import { HeldSends } from '../tunnel/held-sends.js'
import { canReadInto, readInto } from '../tunnel/socket-onread.js'
import { SHA256_BYTES } from '../ipc/file-stream.js'

/** natd's read size on the caller's data connection: four full DATA frames (see above). */
export const FEED_READ_BYTES = 4 * MAX_DATA_BYTES

let sharedReadBuffer: Buffer | null = null

export interface FeedOptions {
  /** The caller's data connection, after OFFSET went out on it. */
  source: Duplex
  channel: MuxChannel
  /** Body bytes the caller streams (size − offset), then SHA256_BYTES of digest. */
  bytes: number
  /** n more body bytes left for the peer. */
  onSent(n: number): void
}

/**
 * Sends `bytes` body bytes from the caller to the channel, then END with the caller's
 * digest. Resolves with the digest once END left; rejects with FILE_UNREADABLE when the
 * caller's connection ends or fails first (or sends more than it announced), with the
 * channel's error when the channel dies first.
 */
export function feedChannel(o: FeedOptions): Promise<Buffer> {
  const { source, channel: ch } = o
  return new Promise<Buffer>((resolve, reject) => {
    let left = o.bytes
    const digest = Buffer.alloc(SHA256_BYTES)
    let digestHave = 0
    /** Body bytes (and, last, the END frame) read but not yet taken by the channel: copies. */
    let heldBody = 0 // of which body bytes (they come before the END frame)
    const held = new HeldSends(ch, (n) => {
      const body = Math.min(n, heldBody)
      if (body > 0) {
        heldBody -= body
        o.onSent(body)
      }
    })
    let endQueued = false
    let finished = false
    let restart: () => void = () => undefined
    let stopReading: () => void = () => undefined

    const finish = (err: Error | null): void => {
      if (finished) return
      finished = true
      stopReading()
      source.off('end', onEnd)
      source.off('close', onEnd)
      source.off('error', onError)
      ch.off('close', onChannelClose)
      ch.off('error', onChannelError)
      if (err) reject(err)
      else resolve(digest)
    }
    const gone = (why: string, cause?: unknown): NatdError =>
      new NatdError('FILE_UNREADABLE', `the caller stopped streaming the file (${why}: it changed, could not be read, or natctl went away)`, cause === undefined ? {} : { cause })
    const onEnd = (): void => {
      if (!endQueued) finish(gone(left > 0 ? `${left} bytes missing` : 'no sha256 after the bytes'))
    }
    const onError = (err: Error): void => finish(gone('its connection failed', err))
    const onChannelClose = (): void => finish(new NatdError('TUNNEL_CLOSED', 'the file channel closed while the file was sent'))
    const onChannelError = (err: Error): void => finish(err)

    const later = (): void =>
      held.later((err) => {
        if (err) finish(err)
        else step()
      })
    const step = (): void => {
      if (finished) return
      if (!held.flush()) return later()
      if (endQueued) return finish(null)
      if (!ch.canSend) return later()
      restart()
    }
    /** Takes one read of the caller's bytes (buf is reused after this returns). False: stop reading. */
    const onRead = (n: number, buf: Buffer): boolean => {
      if (finished) return false
      let data = buf.subarray(0, n)
      if (left > 0) {
        const body = data.length <= left ? data : data.subarray(0, left)
        left -= body.length
        const sent = held.empty ? ch.sendSome(body) : 0
        if (sent > 0) o.onSent(sent)
        if (sent < body.length) {
          held.pushCopy(body.subarray(sent))
          heldBody += body.length - sent
        }
        data = data.subarray(body.length)
      }
      if (data.length > 0) {
        if (digestHave + data.length > SHA256_BYTES) {
          finish(new NatdError('BAD_REQUEST', 'the caller sent more bytes than the file and its sha256'))
          return false
        }
        data.copy(digest, digestHave)
        digestHave += data.length
      }
      if (left === 0 && digestHave === SHA256_BYTES) {
        endQueued = true
        held.push(encodeTransfer({ type: 'end', sha256: digest }))
        step()
        return false
      }
      if (!held.empty || !ch.canSend) {
        later()
        return false
      }
      return true
    }

    source.on('end', onEnd)
    source.on('close', onEnd)
    source.on('error', onError)
    ch.on('close', onChannelClose)
    ch.on('error', onChannelError)
    if (source.destroyed) return finish(gone('its connection closed'))
    // Bytes the connection read before us (none in practice: natctl waits for OFFSET).
    const early: Buffer[] = []
    for (let c = source.read() as Buffer | null; c !== null; c = source.read() as Buffer | null) early.push(c)
    if (source instanceof net.Socket && canReadInto(source)) {
      sharedReadBuffer ??= Buffer.allocUnsafeSlow(FEED_READ_BYTES)
      readInto(source, sharedReadBuffer, onRead, null)
      restart = () => {
        if (!source.destroyed) source._read(0) // reads again if they were stopped (no-op while reading)
      }
      // Once finished, onRead() says false: Node stops reading; sendFile destroys the connection.
    } else {
      // Not a socket whose reads we can steer (a test double, another Node): 'data' events.
      const onData = (c: Buffer): void => {
        if (!onRead(c.length, c)) source.pause()
      }
      source.on('data', onData)
      restart = () => source.resume()
      stopReading = () => {
        source.off('data', onData)
        source.pause()
      }
    }
    for (const c of early) if (!finished) onRead(c.length, c)
    step()
  })
}
