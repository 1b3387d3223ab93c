// The agent's TCP control connection (src/daemon/control-connection.ts) against a scripted
// server on loopback: registration from our fixed port, replies matched to requests by
// reqId (out of order too), the server's own messages emitted, errors and a closed
// connection rejecting what waits, and the fallback to an ephemeral port when ours is taken.
import net from 'node:net'
import { afterEach, describe, expect, it } from 'vitest'
import { ControlConnection } from '../../../src/daemon/control-connection.js'
import { silentLogger } from '../../../src/protocol/log.js'
import { decode, encode, encodeRegister, encodeRegisterUnsigned, frame, FrameSplitter, type Message, type OutgoingMessage, type PeerRecord } from '../../../src/protocol/rendezvous.js'
import { freePort, seq } from '../helpers.js'

const PEER: PeerRecord = { publicKey: seq(1, 32), name: 'bob', online: true, lastSeenAgoMs: 0, nat: 'easy', udp: { host: '198.51.100.2', port: 4000 }, tcp: null, lan: [] }

/** A server that sends a challenge, answers REGISTER with `onRegister` (an ack by default), and hands every later message to `on`. */
async function scriptedServer(
  on: (msg: Message, reply: (m: OutgoingMessage) => void, sock: net.Socket) => void,
  onRegister: (reply: (m: OutgoingMessage) => void) => void = (reply) => reply({ type: 'register-ack', token: seq(2, 16), observed: { host: '127.0.0.1', port: 1 }, heartbeatMs: 20_000, peerTimeoutMs: 60_000 })
): Promise<{ port: number; close: () => void }> {
  const socks = new Set<net.Socket>()
  const server = net.createServer((sock) => {
    socks.add(sock)
    const reply = (m: OutgoingMessage): void => void sock.write(frame(encode(m)))
    const splitter = new FrameSplitter()
    reply({ type: 'challenge', nonce: seq(9, 32), serverTime: 1 })
    sock.on('data', (chunk) => {
      for (const f of splitter.push(chunk)) {
        const msg = decode(f)
        if (msg.type === 'register') onRegister(reply)
        else on(msg, reply, sock)
      }
    })
    sock.on('error', () => undefined)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    port: (server.address() as net.AddressInfo).port,
    close: () => {
      for (const s of socks) s.destroy()
      server.close()
    }
  }
}

/** A REGISTER for the challenge (the scripted server checks no signature). */
const signed = (nonce: Uint8Array, time: number): Buffer =>
  encodeRegister(encodeRegisterUnsigned({ nonce, time, publicKey: seq(3, 32), name: 'alice', tcpPort: 0, nat: 'easy', lan: [], proof: new Uint8Array(0) }), Buffer.alloc(64))

let cleanup: Array<() => void> = []
afterEach(() => {
  for (const c of cleanup) c()
  cleanup = []
})

describe('control connection', () => {
  it('registers from our fixed port, matches replies to requests out of order, and emits what the server says on its own', async () => {
    const held: Array<{ msg: Message; reply: (m: OutgoingMessage) => void }> = []
    const server = await scriptedServer((msg, reply) => {
      held.push({ msg, reply })
      if (held.length === 2) {
        // Answer the second request first, then the first; then speak on our own.
        const [a, b] = held as [(typeof held)[0], (typeof held)[0]]
        b.reply({ type: 'introduction', reqId: (b.msg as { reqId: number }).reqId, introId: seq(5, 16), initiator: true, via: 'udp', peer: PEER })
        a.reply({ type: 'peers', reqId: (a.msg as { reqId: number }).reqId, peers: [PEER] })
        a.reply({ type: 'peer-event', event: 'up', peer: PEER })
      }
    })
    cleanup.push(server.close)
    const local = await freePort()
    const c = await ControlConnection.connect({ host: '127.0.0.1', port: server.port }, local, silentLogger)
    cleanup.push(() => c.close())
    expect(c.localPort).toBe(local)
    expect(await c.register(signed)).toEqual({ host: '127.0.0.1', port: 1 })
    const own: Message[] = []
    c.on('message', (m) => own.push(m))
    const [peers, intro] = await Promise.all([c.request({ type: 'list', reqId: 0 }), c.request({ type: 'introduce', reqId: 0, target: 'bob', via: 'udp' })])
    expect(peers).toMatchObject({ type: 'peers', peers: [expect.objectContaining({ name: 'bob' })] })
    expect(intro).toMatchObject({ type: 'introduction', initiator: true, via: 'udp' })
    await new Promise((r) => setTimeout(r, 20))
    expect(own).toEqual([expect.objectContaining({ type: 'peer-event', event: 'up' })])
  })

  it("the server's error rejects its request; a closed connection rejects what waits and emits close", async () => {
    const server = await scriptedServer((msg, reply, sock) => {
      if (msg.type === 'introduce') return reply({ type: 'error', reqId: msg.reqId, code: 'PEER_UNKNOWN', message: 'no agent named carol' })
      if (msg.type === 'list') sock.destroy()
    })
    cleanup.push(server.close)
    const c = await ControlConnection.connect({ host: '127.0.0.1', port: server.port }, 0, silentLogger)
    await c.register(signed)
    await expect(c.request({ type: 'introduce', reqId: 0, target: 'carol', via: 'auto' })).rejects.toMatchObject({ code: 'PEER_UNKNOWN', message: 'no agent named carol' })
    const closed = new Promise<void>((resolve) => c.once('close', resolve))
    await expect(c.request({ type: 'list', reqId: 0 })).rejects.toMatchObject({ code: 'SERVER_UNREACHABLE' })
    await closed
    expect(c.localPort).toBe(0)
    await expect(c.request({ type: 'list', reqId: 0 })).rejects.toMatchObject({ code: 'SERVER_UNREACHABLE' })
  })

  it('an error during registration rejects with its code', async () => {
    const server = await scriptedServer(
      () => undefined,
      (reply) => reply({ type: 'error', reqId: 0, code: 'NAME_TAKEN', message: 'alice is held by another key' })
    )
    cleanup.push(server.close)
    const c = await ControlConnection.connect({ host: '127.0.0.1', port: server.port }, 0, silentLogger)
    cleanup.push(() => c.close())
    await expect(c.register(signed)).rejects.toMatchObject({ code: 'NAME_TAKEN' })
  })

  it('falls back to an ephemeral port when ours is taken', async () => {
    const server = await scriptedServer(() => undefined)
    cleanup.push(server.close)
    const taken = net.createServer()
    await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve))
    cleanup.push(() => taken.close())
    const port = (taken.address() as net.AddressInfo).port
    const c = await ControlConnection.connect({ host: '127.0.0.1', port: server.port }, port, silentLogger)
    cleanup.push(() => c.close())
    expect(c.localPort).not.toBe(port)
    expect(c.localPort).toBeGreaterThan(0)
  })
})
