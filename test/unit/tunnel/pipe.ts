// An in-memory, message-preserving session for Mux and Tunnel tests: two object-mode
// Duplex ends, each write delivered whole to the other end on a later turn of the event
// loop (as secret-stream keeps message boundaries). What is delivered is a copy, as
// after a real session's encryption: the sender's buffer is its own again (the mux reuses
// its replay slabs). A tap sees every frame; `up = false` cuts the path (frames are
// dropped, as on a dead UDP path).
import { Duplex } from 'node:stream'
import type { MessageStream } from '../../../src/tunnel/mux.js'

export type Side = 'a' | 'b'
export type SessionEnd = Duplex & MessageStream

export interface MessagePipe {
  a: SessionEnd
  b: SessionEnd
  /** Frames are delivered while true and dropped while false. */
  up: boolean
  /** Sees every frame written, delivered or not. */
  tap: ((from: Side, frame: Buffer) => void) | null
  /** One-way delay of each frame in ms (0: the next turn of the event loop). */
  delayMs: number
}

export function messagePipe(): MessagePipe {
  const pipe: MessagePipe = { up: true, tap: null, delayMs: 0 } as MessagePipe
  const end = (side: Side): SessionEnd =>
    new Duplex({
      objectMode: true,
      read() {},
      write(sent: Buffer, _enc, cb) {
        const chunk = Buffer.from(sent)
        pipe.tap?.(side, chunk)
        if (pipe.up) {
          const other = side === 'a' ? pipe.b : pipe.a
          const deliver = (): void => {
            if (pipe.up && !other.destroyed) other.push(chunk)
          }
          if (pipe.delayMs > 0) setTimeout(deliver, pipe.delayMs)
          else setImmediate(deliver)
        }
        cb()
      }
    })
  pipe.a = end('a')
  pipe.b = end('b')
  return pipe
}

/** Resolves after the pipe has had `turns` turns of the event loop to deliver frames. */
export async function settle(turns = 5): Promise<void> {
  for (let i = 0; i < turns; i++) await new Promise<void>((resolve) => setImmediate(resolve))
}

/** Polls `cond` on every turn of the event loop until it holds; fails after `timeoutMs`. */
export async function until(cond: () => boolean, what: string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise<void>((resolve) => setImmediate(resolve))
  }
}
