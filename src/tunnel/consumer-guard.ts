/**
 * The code a peer's frame runs, kept from ending natd when it throws. A channel's consumer
 * (a 'data' listener, a joined socket's or a file's sink, whoever takes an OPEN) and the
 * tunnel's own listeners run synchronously inside the mux's delivery, which runs in the
 * session's read callback: an exception there unwound into the socket's read, where
 * nothing catches it, and ended natd with every tunnel (an uncaught exception). A throw is
 * a bug in natd; it costs the channel (or the tunnel) it happened on, logged at error.
 */
import { NatdError } from '../protocol/errors.js'
import type { Logger } from '../protocol/log.js'
import type { MuxChannel } from './mux-channel.js'

/**
 * What a failed consumer's channel (or tunnel) is ended with. Its text goes to the peer
 * (RESET, GOODBYE), so it says nothing of the exception (a path, a file name): that is
 * in our log.
 */
export function consumerFailed(): NatdError {
  return new NatdError('INTERNAL', "natd failed taking the channel's data (see its log)")
}

/**
 * Runs `deliver`; when it throws, logs the error and calls `contain` (end the channel, refuse
 * the OPEN, end the tunnel). A `contain` that throws too is logged, never rethrown.
 */
export function guarded(log: Logger, where: string, deliver: () => void, contain: (err: unknown) => void): void {
  try {
    deliver()
  } catch (err) {
    log.error('a consumer of the peer\'s frames failed', { where, err: (err as Error)?.message ?? String(err), stack: (err as Error)?.stack })
    try {
      contain(err)
    } catch (again) {
      log.error('ending what a failed consumer left failed too', { where, err: (again as Error)?.message ?? String(again) })
    }
  }
}

/**
 * Runs a channel's consumer (its 'data' listener or sink runs inside push()): one that
 * throws resets that channel, logged; the tunnel and natd go on.
 */
export function toChannel(log: Logger, ch: MuxChannel, deliver: () => void, refuse?: () => void): void {
  guarded(log, `channel ${ch.id}`, deliver, () => {
    refuse?.()
    ch.destroy(consumerFailed())
  })
}

/** A listener of `ch` threw on an event the stream emitted on a later tick (MuxChannel.emit): as above. */
export function consumerThrew(log: Logger, ch: MuxChannel, err: unknown): void {
  toChannel(log, ch, () => {
    throw err
  })
}
