import type net from 'node:net'
import type { Duplex } from 'node:stream'
import { systemClock, type TimerClock } from '../protocol/clock.js'

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
  sock.pipe(ch)
  ch.pipe(sock)
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
