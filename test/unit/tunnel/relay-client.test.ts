// tunnel/relay-client.ts against a small loopback TCP server playing the relay's side of
// the protocol (src/rendezvous/relay.ts): CHALLENGE, then the agent's signed RELAY, then
// RELAY_OK and RELAY_DATA frames. What the agent must make of a relay that pairs it, errs,
// closes, answers garbage or an oversized frame, stays silent, or is given up on.
import net from 'node:net'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { NatdError, ProtocolError } from '../../../src/protocol/errors.js'
import { generateKeyPair, verify } from '../../../src/protocol/identity.js'
import { decode, encode, frame, FrameSplitter, MAX_TCP_FRAME_BYTES, MSG, NONCE_BYTES, RELAY_DATA_HEADER, relaySigned, type Message } from '../../../src/protocol/rendezvous.js'
import { connectRelay, RELAY_CHUNK_BYTES, type RelayStream } from '../../../src/tunnel/relay-client.js'
import { FakeClock } from '../helpers.js'
import { until } from './pipe.js'

const KEYS = generateKeyPair()
const INTRO_ID = Buffer.alloc(16, 7)
const TIMEOUT_MS = 5_000

function relayData(payload: Buffer): Buffer {
  return frame(Buffer.concat([RELAY_DATA_HEADER, payload]))
}

/** One relay connection as the fake server sees it: the frames it got, and the socket. */
interface Conn {
  socket: net.Socket
  frames: Buffer[]
  /** RELAY_DATA payloads received, joined. */
  data(): Buffer
  closed: Promise<void>
}

describe('connectRelay', () => {
  let server: net.Server
  let port: number
  let clock: FakeClock
  let conns: Conn[]
  /** What the fake relay does on each connection (after recording it). */
  let behave: (c: Conn) => void
  /** What it does with each frame it reads. */
  let onFrame: (c: Conn, f: Buffer) => void
  const streams: RelayStream[] = []

  /** The relay's reply to a RELAY that is signed over this connection's nonce by our key: RELAY_OK. */
  function pairing(after: (c: Conn) => void = () => undefined): void {
    const nonce = Buffer.alloc(NONCE_BYTES, 3)
    behave = (c) => void c.socket.write(frame(encode({ type: 'challenge', nonce, serverTime: 1 })))
    onFrame = (c, f) => {
      const m = decode(f)
      if (m.type !== 'relay') return
      const good = verify(relaySigned(nonce, m.introId, m.initiator), m.signature, KEYS.publicKey) && Buffer.from(m.introId).equals(INTRO_ID) && m.initiator
      if (!good) return void c.socket.write(frame(encode({ type: 'error', reqId: 0, code: 'UNAUTHORIZED', message: 'bad signature' })))
      c.socket.write(frame(encode({ type: 'relay-ok' })))
      after(c)
    }
  }

  function connect(signal = new AbortController().signal): Promise<RelayStream> {
    return connectRelay({ host: '127.0.0.1', port }, INTRO_ID, true, KEYS, TIMEOUT_MS, signal, clock).then((s) => {
      streams.push(s)
      s.on('error', () => undefined)
      return s
    })
  }

  beforeEach(async () => {
    clock = new FakeClock()
    conns = []
    behave = () => undefined
    onFrame = () => undefined
    server = net.createServer((socket) => {
      const splitter = new FrameSplitter()
      const c: Conn = {
        socket,
        frames: [],
        data: () => Buffer.concat(c.frames.filter((f) => f[3] === MSG.RELAY_DATA).map((f) => f.subarray(4))),
        closed: new Promise((r) => socket.once('close', () => r()))
      }
      conns.push(c)
      socket.on('error', () => undefined)
      socket.on('data', (chunk: Buffer) => {
        for (const f of splitter.push(chunk)) {
          c.frames.push(Buffer.from(f))
          onFrame(c, f)
        }
      })
      behave(c)
    })
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
    port = (server.address() as net.AddressInfo).port
  })

  afterEach(async () => {
    for (const s of streams.splice(0)) s.destroy()
    for (const c of conns) c.socket.destroy()
    await new Promise((r) => server.close(r))
  })

  it('answers the challenge with a RELAY signed by our key, then carries bytes both ways as RELAY_DATA', async () => {
    pairing()
    const stream = await connect()
    expect(clock.pending).toBe(0) // the pairing deadline was cleared
    const m = decode(conns[0]!.frames[0]!) as Extract<Message, { type: 'relay' }>
    expect(m).toMatchObject({ type: 'relay', initiator: true })

    const big = Buffer.alloc(RELAY_CHUNK_BYTES * 2 + 10, 0xab)
    stream.write(big)
    await until(() => conns[0]!.data().length === big.length, 'the data at the relay')
    expect(conns[0]!.data().equals(big)).toBe(true)
    // chunked: no RELAY_DATA frame carries more than RELAY_CHUNK_BYTES
    const sizes = conns[0]!.frames.slice(1).map((f) => f.length - RELAY_DATA_HEADER.length)
    expect(sizes).toEqual([RELAY_CHUNK_BYTES, RELAY_CHUNK_BYTES, 10])

    const got: Buffer[] = []
    stream.on('data', (d: Buffer) => got.push(d))
    conns[0]!.socket.write(relayData(Buffer.from('from the peer')))
    await until(() => Buffer.concat(got).toString() === 'from the peer', 'the data from the peer')
  })

  it('keeps RELAY_DATA that arrives in the same read as RELAY_OK', async () => {
    pairing((c) => c.socket.write(relayData(Buffer.from('early'))))
    // relay-ok and the data go out in one write here, so the client sees them in one read
    onFrame = ((inner) => (c: Conn, f: Buffer) => {
      c.socket.cork()
      inner(c, f)
      c.socket.uncork()
    })(onFrame)
    const stream = await connect()
    const got: Buffer[] = []
    stream.on('data', (d: Buffer) => got.push(d))
    await until(() => Buffer.concat(got).toString() === 'early', 'the early data')
  })

  it('a RELAY_END after pairing ends the stream with its code (RELAY_LIMIT)', async () => {
    pairing()
    const stream = await connect()
    const err = new Promise<Error>((r) => stream.once('error', r))
    conns[0]!.socket.write(frame(encode({ type: 'relay-end', code: 'RELAY_LIMIT', message: 'relayed tunnel reached its byte limit' })))
    expect(await err).toMatchObject({ code: 'RELAY_LIMIT', message: expect.stringMatching(/byte limit/) })
  })

  it('an error frame before pairing rejects with its code; a code we do not know becomes PUNCH_FAILED', async () => {
    behave = (c) => void c.socket.write(frame(encode({ type: 'error', reqId: 0, code: 'PEER_UNKNOWN', message: 'no such introduction' })))
    await expect(connect()).rejects.toMatchObject({ code: 'PEER_UNKNOWN', message: 'relay: no such introduction' })
    behave = (c) => void c.socket.write(frame(encode({ type: 'error', reqId: 0, code: 'SOMETHING_NEW', message: 'later version' })))
    await expect(connect()).rejects.toMatchObject({ code: 'PUNCH_FAILED' })
    await conns[1]!.closed // we closed it
  })

  it('a relay that refuses our signature (UNAUTHORIZED) is not taken for a pairing', async () => {
    pairing()
    const other = generateKeyPair()
    await expect(connectRelay({ host: '127.0.0.1', port }, INTRO_ID, true, other, TIMEOUT_MS, new AbortController().signal, clock)).rejects.toMatchObject({ code: 'UNAUTHORIZED' })
  })

  it('a relay that closes without pairing: PUNCH_FAILED', async () => {
    behave = (c) => void c.socket.end()
    await expect(connect()).rejects.toMatchObject({ code: 'PUNCH_FAILED', message: 'the relay closed the connection' })
  })

  it('a relay that cannot be reached: PUNCH_FAILED with the socket error kept as cause', async () => {
    await new Promise((r) => server.close(r))
    const err = await connect().catch((e: unknown) => e)
    expect(err).toBeInstanceOf(NatdError)
    expect(err).toMatchObject({ code: 'PUNCH_FAILED', message: expect.stringMatching(/ECONNREFUSED/) })
    expect((err as NatdError).cause).toMatchObject({ code: 'ECONNREFUSED' })
    server = net.createServer() // for afterEach
    server.listen(0, '127.0.0.1')
  })

  it('an oversized frame length: PUNCH_FAILED with the ProtocolError as cause, connection closed', async () => {
    behave = (c) => {
      const len = Buffer.alloc(4)
      len.writeUInt32BE(MAX_TCP_FRAME_BYTES + 1)
      c.socket.write(len)
    }
    const err = await connect().catch((e: unknown) => e)
    expect(err).toMatchObject({ code: 'PUNCH_FAILED', message: expect.stringMatching(/exceeds/) })
    expect((err as NatdError).cause).toBeInstanceOf(ProtocolError)
    await conns[0]!.closed
  })

  it('a frame that does not decode: PUNCH_FAILED with the ProtocolError as cause', async () => {
    behave = (c) => void c.socket.write(frame(Buffer.from('HTTP/1.1 400 Bad Request')))
    const err = await connect().catch((e: unknown) => e)
    expect(err).toMatchObject({ code: 'PUNCH_FAILED' })
    expect((err as NatdError).cause).toBeInstanceOf(ProtocolError)
  })

  it('a relay that never pairs us: PUNCH_TIMEOUT at the deadline, not before, connection closed', async () => {
    pairing()
    onFrame = () => undefined // the peer never comes
    let settled: unknown = null
    const p = connect().then(
      () => (settled = 'paired'),
      (e: unknown) => (settled = e)
    )
    await until(() => conns[0]?.frames.length === 1, 'our RELAY')
    clock.advance(TIMEOUT_MS - 1)
    await new Promise((r) => setTimeout(r, 20))
    expect(settled).toBe(null)
    clock.advance(1)
    await p
    expect(settled).toMatchObject({ code: 'PUNCH_TIMEOUT' })
    await conns[0]!.closed
  })

  it('abort: ABORTED at once (also for a signal already aborted), timer cleared, connection closed', async () => {
    pairing()
    onFrame = () => undefined
    const ac = new AbortController()
    const p = connect(ac.signal)
    await until(() => conns[0]?.frames.length === 1, 'our RELAY')
    ac.abort()
    await expect(p).rejects.toMatchObject({ code: 'ABORTED' })
    expect(clock.pending).toBe(0)
    await conns[0]!.closed

    await expect(connect(AbortSignal.abort())).rejects.toMatchObject({ code: 'ABORTED' })
    expect(clock.pending).toBe(0)
  })
})
