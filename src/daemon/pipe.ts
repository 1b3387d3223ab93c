import type { Duplex } from 'node:stream'

/**
 * Joins two byte streams both ways with half-close: the end of one side ends the other
 * side's writing, and an error on either destroys both. (stream.pipeline would tear
 * both down at the first end, which breaks half-closed protocols.)
 */
export function join(a: Duplex, b: Duplex, onDone?: () => void): void {
  let done = false
  const finish = (err?: Error): void => {
    if (done) return
    done = true
    if (err) {
      a.destroy()
      b.destroy()
    }
    onDone?.()
  }
  a.pipe(b)
  b.pipe(a)
  a.on('error', finish)
  b.on('error', finish)
  let closed = 0
  const onClose = (): void => {
    if (++closed === 2) finish()
    else {
      // One side is gone for good: give the other a moment to flush, then end it.
      setTimeout(() => {
        a.destroy()
        b.destroy()
      }, 30_000).unref()
    }
  }
  a.on('close', onClose)
  b.on('close', onClose)
}
