// Two Mux instances joined by an in-memory message pipe (./pipe.ts), for the mux's tests
// (mux.test.ts, consumer-guard.test.ts). A opened the tunnel (odd channel ids), B did not
// (even ids); both are closed, and the pipe destroyed, after each test.
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

/**
 * Makes pairs for one test file: call it at the file's top level (it registers the
 * afterEach that closes every pair made during a test).
 */
export function muxPairs(): (logs?: MuxPairLogs) => MuxPair {
  const made: MuxPair[] = []
  afterEach(() => {
    for (const p of made.splice(0)) {
      p.a.close('test over')
      p.b.close('test over')
      p.pipe.a.destroy()
      p.pipe.b.destroy()
    }
  })
  return (logs = {}) => {
    const pipe = messagePipe()
    const p = { pipe, a: new Mux(pipe.a, true, logs.a ?? silentLogger), b: new Mux(pipe.b, false, logs.b ?? silentLogger) }
    made.push(p)
    return p
  }
}
