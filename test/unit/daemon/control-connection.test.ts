// The agent's TCP control connection (src/daemon/control-connection.ts) against a scripted
// protocol-2 server on loopback: a clear CHALLENGE, then SECURE and a Noise XX session
// (src/tunnel/secure-socket.ts, as natd-rendezvous runs it, with the server's own key
// pair) carrying REGISTER and the control traffic. Tested: registration from our fixed
// port, replies matched to requests by reqId (out of order too), the server's own
// messages emitted, errors and a closed connection rejecting what waits, the fallback to
// an ephemeral port when ours is taken, a server with another key than the pinned one
// refused before anything of ours is sent inside, a version-1 server refused with
// BAD_VERSION, and no deadline timer left behind once the handshake, the registration and
// a send are done.
import net from 'node:net'
import { afterEach, describe, expect, it } from 'vitest'
import { ControlConnection, type ServerKeyCheck } from '../../../src/daemon/control-connection.js'
import { NatdError } from '../../../src/protocol/errors.js'
import { generateKeyPair, peerId, type KeyPair } from '../../../src/protocol/identity.js'
import { silentLogger } from '../../../src/protocol/log.js'
import { decode, encode, encodeRegister, encodeRegisterUnsigned, frame, FrameSplitter, type Message, type OutgoingMessage, type PeerRecord } from '../../../src/protocol/rendezvous.js'
import { secureSocket } from '../../../src/tunnel/secure-socket.js'
import { FakeClock, freePort, hex, seq } from '../helpers.js'

const PEER: PeerRecord = { publicKey: seq(1, 32), name: 'bob', online: true, lastSeenAgoMs: 0, nat: 'easy', udp: { host: '198.51.100.2', port: 4000 }, tcp: null, lan: [] }
const CHALLENGE_NONCE = seq(9, 32)
const UDP_KEY = seq(0x20, 32)
const TOKEN = seq(2, 16)

type Reply = (m: OutgoingMessage) => void

interface ScriptOptions {
  /** The server's key pair (a fresh one by default). */
  keyPair?: KeyPair
  /** What the server sends first, already framed (a v2 CHALLENGE by default). */
  hello?: Buffer
  /** Answers REGISTER (an ack by default). */
  onRegister?: (reply: Reply, msg: Extract<Message, { type: 'register' }>) => void
}

interface Scripted {
  port: number
  keyPair: KeyPair
  /** Every message the server read, clear ones and those inside the session, in order. */
  received: Message[]
  /** Resolves when the server's side of the (first) connection closes. */
  closed: Promise<void>
  close: () => void
}

/**
 * A protocol-2 server: CHALLENGE in the clear, SECURE, then Noise as the responder;
 * REGISTER is answered by `onRegister`, every later message is handed to `on`.
 */
async function scriptedServer(on: (msg: Message, reply: Reply, sock: net.Socket) => void, opts: ScriptOptions = {}): Promise<Scripted> {
  const keyPair = opts.keyPair ?? generateKeyPair()
  const onRegister = opts.onRegister ?? ((reply) => reply({ type: 'register-ack', token: TOKEN, udpKey: UDP_KEY, observed: { host: '127.0.0.1', port: 1 }, heartbeatMs: 20_000, peerTimeoutMs: 60_000 }))
  const received: Message[] = []
  const socks = new Set<net.Socket>()
  let firstClosed: () => void = () => undefined
  const closed = new Promise<void>((resolve) => (firstClosed = resolve))
  const server = net.createServer((sock) => {
    socks.add(sock)
    sock.on('error', () => undefined)
    sock.once('close', firstClosed)
    const splitter = new FrameSplitter()
    const onClear = (chunk: Buffer): void => {
      splitter.add(chunk)
      for (let f = splitter.next(); f; f = splitter.next()) {
        const msg = decode(f)
        received.push(msg)
        if (msg.type !== 'secure') continue
        sock.off('data', onClear)
        // As natd-rendezvous does: the agent's first Noise message often shares SECURE's chunk.
        const session = secureSocket(false, sock, splitter.rest(), keyPair)
        const reply: Reply = (m) => void session.write(encode(m))
        session.on('data', (b: Buffer) => {
          const m = decode(b)
          received.push(m)
          if (m.type === 'register') onRegister(reply, m)
          else on(m, reply, sock)
        })
        return
      }
    }
    sock.on('data', onClear)
    sock.write(opts.hello ?? frame(encode({ type: 'challenge', nonce: CHALLENGE_NONCE, serverTime: 1 })))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    port: (server.address() as net.AddressInfo).port,
    keyPair,
    received,
    closed,
    close: () => {
      for (const s of socks) s.destroy()
      server.close()
    }
  }
}

const AGENT = generateKeyPair()

/** A REGISTER for the challenge (the scripted server checks no signature). */
const signed = (nonce: Uint8Array, time: number): Buffer =>
  encodeRegister(encodeRegisterUnsigned({ nonce, time, publicKey: AGENT.publicKey, name: 'alice', tcpPort: 0, nat: 'easy', lan: [], proof: new Uint8Array(0) }), Buffer.alloc(64))

const HOW_TO_REPIN = 'run natctl server --forget-key'
const learn: ServerKeyCheck = { expected: null, howToRepin: HOW_TO_REPIN }
const pinned = (key: Uint8Array): ServerKeyCheck => ({ expected: key, howToRepin: HOW_TO_REPIN })

let cleanup: Array<() => void> = []
afterEach(() => {
  for (const c of cleanup) c()
  cleanup = []
})

async function rejection(p: Promise<unknown>): Promise<NatdError> {
  const err = await p.then(
    () => null,
    (e: unknown) => e
  )
  expect(err).toBeInstanceOf(NatdError)
  return err as NatdError
}

describe('control connection', () => {
  it('registers from our fixed port inside the session, over the challenge it was given', async () => {
    const server = await scriptedServer(() => undefined)
    cleanup.push(server.close)
    const local = await freePort()
    const c = await ControlConnection.connect({ host: '127.0.0.1', port: server.port }, local, AGENT, pinned(server.keyPair.publicKey), silentLogger)
    cleanup.push(() => c.close())
    expect(c.localPort).toBe(local)
    expect(Buffer.from(c.serverKey)).toEqual(server.keyPair.publicKey)
    const reg = await c.register(signed)
    expect({ ...reg, token: Buffer.from(reg.token), udpKey: Buffer.from(reg.udpKey) }).toEqual({ observed: { host: '127.0.0.1', port: 1 }, token: TOKEN, udpKey: UDP_KEY, heartbeatMs: 20_000, server6: null, lookup: false })
    expect(server.received.map((m) => m.type)).toEqual(['secure', 'register'])
    const register = server.received[1] as Extract<Message, { type: 'register' }>
    expect(Buffer.from(register.nonce)).toEqual(CHALLENGE_NONCE)
    expect(Buffer.from(register.publicKey)).toEqual(AGENT.publicKey)
    // The REGISTER carries the server's clock (serverTime 1 in the challenge), not ours.
    expect(register.time).toBeGreaterThanOrEqual(1)
    expect(register.time).toBeLessThan(60_000)
  })

  it('matches replies to requests out of order, and emits what the server says on its own', async () => {
    const held: Array<{ msg: Message; reply: Reply }> = []
    const server = await scriptedServer((msg, reply) => {
      held.push({ msg, reply })
      if (held.length === 2) {
        // Answer the second request first, then the first; then speak on our own.
        const [a, b] = held as [(typeof held)[0], (typeof held)[0]]
        b.reply({ type: 'introduction', reqId: (b.msg as { reqId: number }).reqId, introId: seq(5, 16), punchKey: seq(6, 32), initiator: true, via: 'udp', peer: PEER })
        a.reply({ type: 'peers', reqId: (a.msg as { reqId: number }).reqId, peers: [PEER] })
        a.reply({ type: 'peer-event', event: 'up', peer: PEER })
        a.reply({ type: 'pong', seq: 77 })
      }
    })
    cleanup.push(server.close)
    const c = await ControlConnection.connect({ host: '127.0.0.1', port: server.port }, 0, AGENT, learn, silentLogger)
    cleanup.push(() => c.close())
    await c.register(signed)
    const own: Message[] = []
    c.on('message', (m) => own.push(m))
    const [peers, intro] = await Promise.all([c.request({ type: 'list', reqId: 0 }), c.request({ type: 'introduce', reqId: 0, target: 'bob', via: 'udp' })])
    expect(peers).toMatchObject({ type: 'peers', peers: [expect.objectContaining({ name: 'bob' })] })
    expect(intro).toMatchObject({ type: 'introduction', initiator: true, via: 'udp' })
    expect(Buffer.from((intro as Extract<Message, { type: 'introduction' }>).punchKey)).toEqual(seq(6, 32))
    await expect.poll(() => own.length).toBe(2)
    expect(own).toEqual([expect.objectContaining({ type: 'peer-event', event: 'up' }), { type: 'pong', seq: 77 }])
  })

  it("the server's error rejects its request; a closed connection rejects what waits and emits close", async () => {
    const server = await scriptedServer((msg, reply, sock) => {
      if (msg.type === 'introduce') return reply({ type: 'error', reqId: msg.reqId, code: 'PEER_UNKNOWN', message: 'no agent named carol' })
      if (msg.type === 'list') sock.destroy()
    })
    cleanup.push(server.close)
    const c = await ControlConnection.connect({ host: '127.0.0.1', port: server.port }, 0, AGENT, learn, silentLogger)
    await c.register(signed)
    await expect(c.request({ type: 'introduce', reqId: 0, target: 'carol', via: 'auto' })).rejects.toMatchObject({ code: 'PEER_UNKNOWN', message: 'no agent named carol' })
    const closed = new Promise<void>((resolve) => c.once('close', resolve))
    await expect(c.request({ type: 'list', reqId: 0 })).rejects.toMatchObject({ code: 'SERVER_UNREACHABLE' })
    await closed
    expect(c.localPort).toBe(0)
    await expect(c.request({ type: 'list', reqId: 0 })).rejects.toMatchObject({ code: 'SERVER_UNREACHABLE' })
  })

  it('an error during registration rejects with its code and message', async () => {
    const server = await scriptedServer(() => undefined, {
      onRegister: (reply) => reply({ type: 'error', reqId: 0, code: 'NAME_TAKEN', message: 'alice is held by another key' })
    })
    cleanup.push(server.close)
    const c = await ControlConnection.connect({ host: '127.0.0.1', port: server.port }, 0, AGENT, learn, silentLogger)
    cleanup.push(() => c.close())
    await expect(c.register(signed)).rejects.toMatchObject({ code: 'NAME_TAKEN', message: 'alice is held by another key' })
  })

  it('falls back to an ephemeral port when ours is taken', async () => {
    const server = await scriptedServer(() => undefined)
    cleanup.push(server.close)
    const taken = net.createServer()
    await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve))
    cleanup.push(() => taken.close())
    const port = (taken.address() as net.AddressInfo).port
    const c = await ControlConnection.connect({ host: '127.0.0.1', port: server.port }, port, AGENT, learn, silentLogger)
    cleanup.push(() => c.close())
    expect(c.localPort).not.toBe(port)
    expect(c.localPort).toBeGreaterThan(0)
    await expect(c.register(signed)).resolves.toMatchObject({ heartbeatMs: 20_000 })
  })

  it('a server presenting another key than the pinned one is refused with SERVER_KEY_MISMATCH before REGISTER is sent', async () => {
    const server = await scriptedServer(() => undefined)
    cleanup.push(server.close)
    const pinnedKey = generateKeyPair().publicKey
    let registerCalled = false
    const err = await rejection(
      ControlConnection.connect({ host: '127.0.0.1', port: server.port }, 0, AGENT, pinned(pinnedKey), silentLogger).then(async (c) => {
        registerCalled = true // not reached: connect must refuse
        await c.register(signed)
      })
    )
    expect(registerCalled).toBe(false)
    expect(err.code).toBe('SERVER_KEY_MISMATCH')
    // The message names both keys and says how to re-pin.
    expect(err.message).toContain(peerId(server.keyPair.publicKey))
    expect(err.message).toContain(peerId(pinnedKey))
    expect(err.message).toContain(HOW_TO_REPIN)
    await server.closed // the agent hung up
    expect(server.received.map((m) => m.type)).toEqual(['secure'])
  })

  it('with no key pinned, accepts the server and exposes the key it proved', async () => {
    const server = await scriptedServer(() => undefined)
    cleanup.push(server.close)
    const c = await ControlConnection.connect({ host: '127.0.0.1', port: server.port }, 0, AGENT, learn, silentLogger)
    cleanup.push(() => c.close())
    expect(Buffer.from(c.serverKey)).toEqual(server.keyPair.publicKey)
    await expect(c.register(signed)).resolves.toMatchObject({ observed: { host: '127.0.0.1', port: 1 } })
  })

  it('a version-1 server (its CHALLENGE says version 1) is refused with BAD_VERSION, and nothing is sent to it', async () => {
    const v1Challenge = frame(hex('4e 44 01 02 | 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f | 000000000001'))
    const server = await scriptedServer(() => undefined, { hello: v1Challenge })
    cleanup.push(server.close)
    const err = await rejection(ControlConnection.connect({ host: '127.0.0.1', port: server.port }, 0, AGENT, learn, silentLogger))
    expect(err.code).toBe('BAD_VERSION')
    expect(err.message).toMatch(/another protocol version.*upgraded together/)
    await server.closed
    expect(server.received).toEqual([])
  })

  it('leaves no timer behind: the handshake, registration and send deadlines are cleared once they are met', async () => {
    const server = await scriptedServer(() => undefined)
    cleanup.push(server.close)
    const clock = new FakeClock()
    const c = await ControlConnection.connect({ host: '127.0.0.1', port: server.port }, 0, AGENT, learn, silentLogger, clock)
    cleanup.push(() => c.close())
    expect(clock.pending).toBe(0)
    await c.register(signed)
    expect(clock.pending).toBe(0)
    await c.send({ type: 'ping', seq: 1 })
    expect(clock.pending).toBe(0)
    // A registration the server leaves unanswered still fails at its deadline.
    const never = await scriptedServer(() => undefined, { onRegister: () => undefined })
    cleanup.push(never.close)
    const d = await ControlConnection.connect({ host: '127.0.0.1', port: never.port }, 0, AGENT, learn, silentLogger, clock)
    cleanup.push(() => d.close())
    const pending = d.register(signed)
    await expect.poll(() => clock.pending).toBe(1)
    clock.advance(5_000)
    await expect(pending).rejects.toMatchObject({ code: 'SERVER_UNREACHABLE', message: expect.stringMatching(/no registration answer/) })
    expect(clock.pending).toBe(0)
  })

  it("a server's ERROR instead of a challenge rejects with its code", async () => {
    const server = await scriptedServer(() => undefined, { hello: frame(encode({ type: 'error', reqId: 0, code: 'UNAUTHORIZED', message: 'too many connections from 127.0.0.1' })) })
    cleanup.push(server.close)
    const err = await rejection(ControlConnection.connect({ host: '127.0.0.1', port: server.port }, 0, AGENT, learn, silentLogger))
    expect(err.code).toBe('UNAUTHORIZED')
    expect(err.message).toBe('too many connections from 127.0.0.1')
  })
})
