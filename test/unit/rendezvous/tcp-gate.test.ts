/**
 * The server's TCP gate (src/rendezvous/tcp-gate.ts) alone, with fake sockets and fake
 * time: the absolute deadline to authenticate, the per-source refusal that holds nothing
 * (an ERROR, then gone after END_LINGER_MS), and a handler that authenticates in time.
 */
import { describe, expect, it } from 'vitest'
import { RefusalLog } from '../../../src/common/refusal-log.js'
import { generateKeyPair } from '../../../src/protocol/identity.js'
import { silentLogger } from '../../../src/protocol/log.js'
import { DEFAULT_SERVER_LIMITS } from '../../../src/rendezvous/limits.js'
import { END_LINGER_MS, TcpGate, type TcpConn, type TcpHandler } from '../../../src/rendezvous/tcp-gate.js'
import { FakeSocket } from './fake-socket.js'
import { FakeClock } from '../helpers.js'


const LIMITS = { ...DEFAULT_SERVER_LIMITS, authTimeoutMs: 5_000, maxUnauthPerSource: 2 }

function setup(): { gate: TcpGate; time: FakeClock; closed: TcpConn[]; connect: (host?: string) => { socket: FakeSocket; conn: TcpConn } } {
  const time = new FakeClock()
  const gate = new TcpGate({ limits: LIMITS, clock: time, timers: time, log: silentLogger, keyPair: generateKeyPair(), refusals: new RefusalLog(silentLogger, { windowMs: 1_000, level: 'info' }), relay: null })
  const closed: TcpConn[] = []
  const handler: TcpHandler = { onMessage: () => undefined, bindRelay: () => undefined, onClose: (c) => closed.push(c) }
  gate.handleWith(handler)
  const connect = (host = '192.0.2.1'): { socket: FakeSocket; conn: TcpConn } => {
    const socket = new FakeSocket(host)
    gate.onConnection(socket.asNet)
    return { socket, conn: [...gate.conns].find((c) => c.socket === socket.asNet)! }
  }
  return { gate, time, closed, connect }
}

describe('TcpGate', () => {
  it('greets with a CHALLENGE carrying the server time, and closes a connection that has not authenticated by authTimeoutMs after its accept', () => {
    const { gate, time, closed, connect } = setup()
    const { socket, conn } = connect()
    expect(socket.messages()).toMatchObject([{ type: 'challenge', serverTime: time.now() }])
    expect(gate.stats()).toMatchObject({ conns: 1, unauth: 1 })
    time.advance(LIMITS.authTimeoutMs - 1)
    expect(socket.destroyed).toBe(false)
    time.advance(1)
    expect(socket.destroyed).toBe(true)
    expect(closed).toEqual([conn])
    expect(gate.stats()).toMatchObject({ conns: 0, unauth: 0 })
  })

  it('a connection the handler authenticates keeps no deadline', () => {
    const { gate, time, connect } = setup()
    const { socket, conn } = connect()
    gate.authenticated(conn)
    expect(gate.stats().unauth).toBe(0)
    time.advance(10 * LIMITS.authTimeoutMs)
    expect(socket.destroyed).toBe(false)
  })

  it('refuses a source past maxUnauthPerSource with RATE_LIMITED, holds nothing for it, and destroys it after END_LINGER_MS; other sources still get in', () => {
    const { gate, time, connect } = setup()
    connect()
    connect()
    const refused = new FakeSocket('192.0.2.1')
    gate.onConnection(refused.asNet)
    expect(refused.ended).toBe(true)
    expect(refused.messages()).toMatchObject([{ type: 'error', code: 'RATE_LIMITED' }])
    expect(gate.stats()).toMatchObject({ conns: 2, unauth: 2 })
    time.advance(END_LINGER_MS - 1)
    expect(refused.destroyed).toBe(false)
    time.advance(1)
    expect(refused.destroyed).toBe(true)
    expect(connect('192.0.2.2').socket.messages()).toMatchObject([{ type: 'challenge' }])
  })
})
