// Two Mux instances joined by an in-memory message pipe (./pipe.ts), for the mux's tests
// (mux.test.ts, consumer-guard.test.ts) and the abuse tests that drive a peer's end by
// hand. A opened the tunnel (odd channel ids), B did not (even ids); both are closed, and
// the pipe destroyed, after each test (muxPairs) or by the caller's cleanups (muxPair).
//
//   Mux A (opener: odd ids) ── pipe.a ═══ frames ═══ pipe.b ── Mux B (even ids)
import { afterEach } from 'vitest'
import { silentLogger, type Logger } from '../../../src/protocol/log.js'
import { Mux } from '../../../src/tunnel/mux.js'
import { messagePipe, type MessagePipe } from './pipe.js'

export interface MuxPair {
  pipe: MessagePipe
  a: Mux
  b: Mux
}

/** The logger of each side; silent when not given. */
export interface MuxPairLogs {
  a?: Logger
  b?: Logger
}

function makePair(logs: MuxPairLogs): MuxPair {
  const pipe = messagePipe()
  return { pipe, a: new Mux(pipe.a, true, logs.a ?? silentLogger), b: new Mux(pipe.b, false, logs.b ?? silentLogger) }
}

function closePair(p: MuxPair): void {
  p.a.close('test over')
  p.b.close('test over')
  p.pipe.a.destroy()
  p.pipe.b.destroy()
}

/**
 * Makes pairs for one test file: call it at the file's top level (it registers the
 * afterEach that closes every pair made during a test).
 */
export function muxPairs(): (logs?: MuxPairLogs) => MuxPair {
  const made: MuxPair[] = []
  afterEach(() => {
    for (const p of made.splice(0)) closePair(p)
  })
  return (logs = {}) => {
    const p = makePair(logs)
    made.push(p)
    return p
  }
}

/** One pair, made inside a test or a helper it calls: closing it is pushed to `cleanups`. */
export function muxPair(cleanups: Array<() => void>, logs: MuxPairLogs = {}): MuxPair {
  const p = makePair(logs)
  cleanups.push(() => closePair(p))
  return p
}
