// natd-rendezvous (src/rendezvous/server.ts) over real loopback sockets, driven the way
// an agent (or an attacker) would: raw node:dgram / node:net sockets and the codecs.
//
//   test sockets (127.0.0.1:ephemeral) ──UDP──▶ server :port   (rendezvous + STUN)
//                                      ──UDP──▶ server :port+1 (STUN only)
//                                      ──TCP──▶ server :port   (control connections)
import { execFile } from 'node:child_process'
import dgram from 'node:dgram'
import fs from 'node:fs'
import net from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterEach, describe, expect, it, vi } from 'vitest'
import type { Endpoint } from '../../../src/protocol/endpoint.js'
import { generateKeyPair, networkSecretKey, peerId, randomBytes, secretProof, sign, type KeyPair } from '../../../src/protocol/identity.js'
import { silentLogger } from '../../../src/protocol/log.js'
import {
  decode,
  encode,
  encodeRegister,
  encodeRegisterUnsigned,
  frame,
  FrameSplitter,
  type Message,
  type OutgoingMessage
} from '../../../src/protocol/rendezvous.js'
import { decodeStun, encodeBindingRequest, isStun, STUN_MAGIC_COOKIE } from '../../../src/protocol/stun.js'
import { RendezvousServer, type RendezvousInit } from '../../../src/rendezvous/server.js'
import { prng, randBuf, randInt } from '../helpers.js'

const HOST = '127.0.0.1'
const WAIT_MS = 2_000
const SILENCE_MS = 300
const STUNCLIENT = '/usr/bin/turnutils_stunclient'
const SERVER_KEY = generateKeyPair()

// --- server lifecycle ---------------------------------------------------------

interface Started {
  server: RendezvousServer
  port: number
  alt: number
}

const running: RendezvousServer[] = []
const sockets: { close(): void }[] = []

afterEach(async () => {
  for (const s of sockets.splice(0)) s.close()
  for (const s of running.splice(0)) await s.stop()
})

/** UDP and TCP share `port`, so port 0 cannot be used: try random ports until one is free. */
async function startServer(extra: Partial<RendezvousInit> = {}): Promise<Started> {
  let lastErr: unknown
  for (let attempt = 0; attempt < 20; attempt++) {
    const port = randInt(Math.random, 20_000, 59_999)
    const server = new RendezvousServer(
      { host: HOST, port, altPort: port + 1, peerTimeoutMs: 30_000, heartbeatMs: 20_000, ...extra },
      { log: silentLogger, keyPair: SERVER_KEY }
    )
    try {
      await server.start()
      running.push(server)
      return { server, port, alt: port + 1 }
    } catch (err) {
      lastErr = err
      await server.stop().catch(() => undefined)
      if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw err
    }
  }
  throw lastErr
}

// --- a UDP agent ----------------------------------------------------------------

interface Datagram {
  msg: Buffer
  from: Endpoint
}

class UdpPeer {
  private readonly inbox: Datagram[] = []
  private waiter: ((d: Datagram) => void) | null = null

  private constructor(readonly sock: dgram.Socket) {
    sock.on('message', (msg, rinfo) => {
      const d = { msg, from: { host: rinfo.address, port: rinfo.port } }
      if (this.waiter) this.waiter(d)
      else this.inbox.push(d)
    })
  }

  static async open(): Promise<UdpPeer> {
    const sock = dgram.createSocket('udp4')
    await new Promise<void>((resolve) => sock.bind(0, HOST, () => resolve()))
    const peer = new UdpPeer(sock)
    sockets.push(peer)
    return peer
  }

  get endpoint(): Endpoint {
    return { host: HOST, port: this.sock.address().port }
  }

  send(buf: Uint8Array, port: number): void {
    this.sock.send(buf, port, HOST)
  }

  /** The next datagram, or null after `timeoutMs` of silence. */
  recv(timeoutMs = WAIT_MS): Promise<Datagram | null> {
    const queued = this.inbox.shift()
    if (queued) return Promise.resolve(queued)
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waiter = null
        resolve(null)
      }, timeoutMs)
      this.waiter = (d) => {
        clearTimeout(timer)
        this.waiter = null
        resolve(d)
      }
    })
  }

  /** Sends a rendezvous frame and returns the decoded answer (throws on silence). */
  async request(msg: Uint8Array, port: number): Promise<Message> {
    this.send(msg, port)
    const d = await this.recv()
    if (!d) throw new Error('no answer from the server')
    return decode(d.msg)
  }

  close(): void {
    this.sock.close()
  }
}

// --- a TCP agent ----------------------------------------------------------------

class TcpPeer {
  private readonly inbox: Message[] = []
  private waiter: (() => void) | null = null
  readonly closed: Promise<void>
  private readonly splitter = new FrameSplitter()

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (chunk) => {
      for (const f of this.splitter.push(chunk)) this.inbox.push(decode(f))
      this.waiter?.()
    })
    socket.on('error', () => undefined)
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()))
    void this.closed.then(() => this.waiter?.())
  }

  static async connect(port: number): Promise<TcpPeer> {
    const socket = net.connect({ host: HOST, port })
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve)
      socket.once('error', reject)
    })
    const peer = new TcpPeer(socket)
    sockets.push(peer)
    return peer
  }

  get endpoint(): Endpoint {
    return { host: HOST, port: this.socket.localPort! }
  }

  send(msg: OutgoingMessage | Buffer): void {
    this.socket.write(frame(Buffer.isBuffer(msg) ? msg : encode(msg)))
  }

  /** The first message (received or to come) that matches; others stay queued. */
  async waitFor(pred: (m: Message) => boolean = () => true, timeoutMs = WAIT_MS): Promise<Message> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const i = this.inbox.findIndex(pred)
      if (i >= 0) return this.inbox.splice(i, 1)[0]!
      const left = deadline - Date.now()
      if (left <= 0 || this.socket.destroyed) throw new Error(`no matching message; queued: ${this.inbox.map((m) => m.type).join(', ') || 'none'}`)
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left)
        this.waiter = () => {
          clearTimeout(timer)
          resolve()
        }
      })
      this.waiter = null
    }
  }

  /** Resolves true if the server closes the connection within `timeoutMs`. */
  async closedWithin(timeoutMs = WAIT_MS): Promise<boolean> {
    return Promise.race([this.closed.then(() => true), sleep(timeoutMs).then(() => false)])
  }

  close(): void {
    this.socket.destroy()
  }
}

// --- registration helpers -------------------------------------------------------

interface RegisterOpts {
  proof?: Uint8Array
  tamperSignature?: boolean
}

function registerFrame(kp: KeyPair, challenge: Message, name: string, opts: RegisterOpts = {}): Buffer {
  if (challenge.type !== 'challenge') throw new Error(`expected a challenge, got ${challenge.type}`)
  const unsigned = encodeRegisterUnsigned({
    nonce: challenge.nonce,
    time: challenge.serverTime,
    publicKey: kp.publicKey,
    name,
    tcpPort: 0,
    nat: 'easy',
    lan: [{ host: '192.168.1.20', port: 41641 }],
    proof: opts.proof ?? Buffer.alloc(0)
  })
  const sig = sign(unsigned, kp.secretKey)
  if (opts.tamperSignature) sig[10]! ^= 0x01
  return encodeRegister(unsigned, sig)
}

async function challengeUdp(peer: UdpPeer, port: number): Promise<Message> {
  const m = await peer.request(encode({ type: 'hello' }), port)
  expect(m.type).toBe('challenge')
  return m
}

/** HELLO, CHALLENGE, REGISTER over UDP; returns the server's answer to the REGISTER. */
async function registerUdp(peer: UdpPeer, port: number, kp: KeyPair, name: string, opts: RegisterOpts = {}): Promise<Message> {
  const challenge = await challengeUdp(peer, port)
  return peer.request(registerFrame(kp, challenge, name, opts), port)
}

async function registerTcp(port: number, kp: KeyPair, name: string, opts: RegisterOpts = {}): Promise<{ peer: TcpPeer; reply: Message }> {
  const peer = await TcpPeer.connect(port)
  const challenge = await peer.waitFor()
  peer.send(registerFrame(kp, challenge, name, opts))
  return { peer, reply: await peer.waitFor() }
}

function tokenOf(m: Message): Uint8Array {
  if (m.type !== 'register-ack') throw new Error(`expected register-ack, got ${JSON.stringify(m)}`)
  return m.token
}

// --- tests ---------------------------------------------------------------------

describe('RendezvousServer over UDP', () => {
  it('answers HELLO with a CHALLENGE no larger than the HELLO', async () => {
    const { port } = await startServer()
    const peer = await UdpPeer.open()
    const hello = encode({ type: 'hello' })
    peer.send(hello, port)
    const d = await peer.recv()
    expect(d).not.toBeNull()
    expect(d!.from).toEqual({ host: HOST, port })
    const m = decode(d!.msg)
    expect(m.type).toBe('challenge')
    expect(d!.msg.length).toBeLessThanOrEqual(hello.length)
    if (m.type === 'challenge') expect(Math.abs(m.serverTime - Date.now())).toBeLessThan(5_000)
  })

  it('accepts a signed REGISTER; the ack reports the address the server saw', async () => {
    const { server, port } = await startServer()
    const peer = await UdpPeer.open()
    const kp = generateKeyPair()
    const ack = await registerUdp(peer, port, kp, 'alice')
    expect(ack).toMatchObject({ type: 'register-ack', observed: peer.endpoint, heartbeatMs: 20_000, peerTimeoutMs: 30_000 })
    expect(tokenOf(ack)).toHaveLength(16)
    expect(server.registry.find('alice')).toMatchObject({ id: peerId(kp.publicKey), online: true, udp: peer.endpoint })
  })

  it('refuses a REGISTER with a bad signature (UNAUTHORIZED) and registers nothing', async () => {
    const { server, port } = await startServer()
    const peer = await UdpPeer.open()
    const reply = await registerUdp(peer, port, generateKeyPair(), 'mallory', { tamperSignature: true })
    expect(reply).toMatchObject({ type: 'error', code: 'UNAUTHORIZED' })
    expect(server.registry.find('mallory')).toBeUndefined()
    expect(server.registry.size).toBe(0)
    // The name is still free for an honest key.
    expect((await registerUdp(peer, port, generateKeyPair(), 'mallory')).type).toBe('register-ack')
  })

  it('refuses a REGISTER replayed from another address (the nonce is bound to the source)', async () => {
    const { server, port } = await startServer()
    const a = await UdpPeer.open()
    const b = await UdpPeer.open()
    const challenge = await challengeUdp(a, port)
    const reply = await b.request(registerFrame(generateKeyPair(), challenge, 'replay'), port)
    expect(reply).toMatchObject({ type: 'error', code: 'UNAUTHORIZED' })
    expect(server.registry.find('replay')).toBeUndefined()
  })

  it('refuses a bad name with BAD_REQUEST', async () => {
    const { server, port } = await startServer()
    const peer = await UdpPeer.open()
    expect(await registerUdp(peer, port, generateKeyPair(), 'Not A Name')).toMatchObject({ type: 'error', code: 'BAD_REQUEST' })
    expect(server.registry.size).toBe(0)
  })

  it('gives NAME_TAKEN to another key asking for a name in use', async () => {
    const { server, port } = await startServer()
    const a = await UdpPeer.open()
    const b = await UdpPeer.open()
    const alice = generateKeyPair()
    expect((await registerUdp(a, port, alice, 'alice')).type).toBe('register-ack')
    expect(await registerUdp(b, port, generateKeyPair(), 'alice')).toMatchObject({ type: 'error', code: 'NAME_TAKEN' })
    expect(server.registry.find('alice')?.id).toBe(peerId(alice.publicKey))
    // The holder itself may register again and keeps its token.
    const first = await registerUdp(a, port, alice, 'alice')
    expect(Buffer.from(tokenOf(first)).equals(Buffer.from(server.registry.find('alice')!.token))).toBe(true)
  })

  it('keeps a name bound to its holder once it has gone offline: another key still gets NAME_TAKEN, with how to free it', async () => {
    const { server, port } = await startServer()
    const a = await UdpPeer.open()
    const b = await UdpPeer.open()
    const alice = generateKeyPair()
    expect((await registerUdp(a, port, alice, 'alice')).type).toBe('register-ack')
    expect(server.registry.drop(server.registry.lookup('alice')!)).toBe(true) // as after BYE or a timeout
    expect(await registerUdp(b, port, generateKeyPair(), 'alice')).toMatchObject({ type: 'error', code: 'NAME_TAKEN' })
    const refused = (await registerTcp(port, generateKeyPair(), 'alice')).reply // over TCP the message is not cut to the request's size
    expect(refused).toMatchObject({ type: 'error', code: 'NAME_TAKEN' })
    expect(refused.type === 'error' && refused.message).toContain('natd-rendezvous names rm alice')
    expect((await registerUdp(a, port, alice, 'alice')).type).toBe('register-ack') // the holder comes back to it
  })

  it('acks heartbeats: ok from the registered socket, moved from another port, unknown for a random token', async () => {
    const { port } = await startServer()
    const a = await UdpPeer.open()
    const token = tokenOf(await registerUdp(a, port, generateKeyPair(), 'alice'))
    const heartbeat = (seq: number, t: Uint8Array = token): Buffer => encode({ type: 'heartbeat', token: t, seq })

    expect(await a.request(heartbeat(1), port)).toEqual({ type: 'heartbeat-ack', seq: 1, status: 'ok', observed: a.endpoint })

    const other = await UdpPeer.open()
    expect(await other.request(heartbeat(2), port)).toEqual({ type: 'heartbeat-ack', seq: 2, status: 'moved', observed: other.endpoint })

    expect(await a.request(heartbeat(3, randomBytes(16)), port)).toEqual({ type: 'heartbeat-ack', seq: 3, status: 'unknown', observed: a.endpoint })
  })

  it('with a network secret: refuses a REGISTER without proof or with a wrong proof, accepts the right one', async () => {
    const secret = Buffer.from('correct horse battery staple')
    const { server, port } = await startServer({ secret })
    const peer = await UdpPeer.open()
    const kp = generateKeyPair()

    expect(await registerUdp(peer, port, kp, 'alice')).toMatchObject({ type: 'error', code: 'UNAUTHORIZED' })
    expect(server.registry.size).toBe(0)

    let challenge = await challengeUdp(peer, port)
    if (challenge.type !== 'challenge') throw new Error('no challenge')
    const wrong = secretProof(networkSecretKey(Buffer.from('guess')), challenge.nonce, kp.publicKey)
    expect(await peer.request(registerFrame(kp, challenge, 'alice', { proof: wrong }), port)).toMatchObject({ type: 'error', code: 'UNAUTHORIZED' })
    expect(server.registry.size).toBe(0)

    challenge = await challengeUdp(peer, port)
    if (challenge.type !== 'challenge') throw new Error('no challenge')
    const proof = secretProof(networkSecretKey(secret), challenge.nonce, kp.publicKey)
    expect((await peer.request(registerFrame(kp, challenge, 'alice', { proof }), port)).type).toBe('register-ack')
    expect(server.registry.find('alice')?.online).toBe(true)
  })

  it('ignores rendezvous frames on the alt port (STUN only there)', async () => {
    const { alt } = await startServer()
    const peer = await UdpPeer.open()
    peer.send(encode({ type: 'hello' }), alt)
    expect(await peer.recv(SILENCE_MS)).toBeNull()
  })
})

describe('RendezvousServer STUN', () => {
  it('answers a Binding request on the main and the alt port, from that port, with our address', async () => {
    const { port, alt } = await startServer()
    const peer = await UdpPeer.open()
    for (const to of [port, alt]) {
      const txid = randomBytes(12)
      peer.send(encodeBindingRequest(txid), to)
      const d = await peer.recv()
      expect(d, `port ${to}`).not.toBeNull()
      expect(d!.from).toEqual({ host: HOST, port: to })
      expect(isStun(d!.msg)).toBe(true)
      const m = decodeStun(d!.msg)
      expect(m.method).toBe('binding-success')
      expect(Buffer.from(m.transactionId).equals(txid)).toBe(true)
      expect(m.mapped).toEqual(peer.endpoint)
      expect(d!.msg.length).toBeLessThanOrEqual(32)
    }
  })

  it('does not answer STUN responses (no reflection loops)', async () => {
    const { port } = await startServer()
    const peer = await UdpPeer.open()
    const fake = Buffer.from(encodeBindingRequest(randomBytes(12)))
    fake.writeUInt16BE(0x0101, 0)
    peer.send(fake, port)
    expect(await peer.recv(SILENCE_MS)).toBeNull()
  })

  it('the stock STUN client turnutils_stunclient (coturn) reads its own address', async (ctx) => {
    if (!fs.existsSync(STUNCLIENT)) ctx.skip(`${STUNCLIENT} is not installed (Debian package coturn); skipping the interop check`)
    const { port } = await startServer()
    // Record where the server sends its STUN answers: on loopback that is the client's own
    // socket. The spy calls through to the real send.
    const send = vi.spyOn(dgram.Socket.prototype, 'send')
    let out: string
    let answeredTo: unknown[]
    try {
      out = await new Promise<string>((resolve, reject) => {
        execFile(STUNCLIENT, ['-p', String(port), HOST], { timeout: 10_000 }, (err, stdout, stderr) =>
          err ? reject(new Error(`${err.message}\n${stdout}\n${stderr}`)) : resolve(`${stdout}\n${stderr}`)
        )
      })
      answeredTo = send.mock.calls.filter((c) => c[0] instanceof Uint8Array && isStun(c[0])).map((c) => c[1])
    } finally {
      send.mockRestore()
    }
    const m = /reflexive addr: ([\d.]+):(\d+)/.exec(out)
    expect(m, out).not.toBeNull()
    expect(m![1]).toBe(HOST)
    expect(answeredTo.length).toBeGreaterThan(0)
    expect(Number(m![2])).toBe(answeredTo[0])
  })
})

describe('RendezvousServer over TCP', () => {
  it('sends a CHALLENGE first, then acks a signed REGISTER with the observed address', async () => {
    const { server, port } = await startServer()
    const peer = await TcpPeer.connect(port)
    const challenge = await peer.waitFor()
    expect(challenge.type).toBe('challenge')
    const kp = generateKeyPair()
    peer.send(registerFrame(kp, challenge, 'alice'))
    expect(await peer.waitFor()).toMatchObject({ type: 'register-ack', observed: peer.endpoint })
    expect(server.registry.find('alice')).toMatchObject({ online: true, tcp: peer.endpoint })
    peer.send({ type: 'ping', seq: 99 })
    expect(await peer.waitFor()).toEqual({ type: 'pong', seq: 99 })
  })

  it('refuses a bad signature with UNAUTHORIZED and closes the connection', async () => {
    const { server, port } = await startServer()
    const { peer, reply } = await registerTcp(port, generateKeyPair(), 'mallory', { tamperSignature: true })
    expect(reply).toMatchObject({ type: 'error', code: 'UNAUTHORIZED' })
    expect(await peer.closedWithin()).toBe(true)
    expect(server.registry.size).toBe(0)
  })

  it('refuses any request before REGISTER with UNAUTHORIZED and closes', async () => {
    const { port } = await startServer()
    const peer = await TcpPeer.connect(port)
    await peer.waitFor((m) => m.type === 'challenge')
    peer.send({ type: 'list', reqId: 1 })
    expect(await peer.waitFor()).toMatchObject({ type: 'error', code: 'UNAUTHORIZED' })
    expect(await peer.closedWithin()).toBe(true)
  })

  it('tells a connected agent when another comes up; LIST shows the other and not oneself; BYE tells it "down"', async () => {
    const { port } = await startServer()
    const aliceKp = generateKeyPair()
    const bobKp = generateKeyPair()
    const alice = await registerTcp(port, aliceKp, 'alice')
    expect(alice.reply.type).toBe('register-ack')

    const bob = await registerTcp(port, bobKp, 'bob')
    expect(bob.reply.type).toBe('register-ack')

    const up = await alice.peer.waitFor((m) => m.type === 'peer-event')
    if (up.type !== 'peer-event') throw new Error('unreachable')
    expect(up.event).toBe('up')
    expect(up.peer.name).toBe('bob')
    expect(up.peer.online).toBe(true)
    expect(Buffer.from(up.peer.publicKey).equals(bobKp.publicKey)).toBe(true)
    expect(up.peer.tcp).toEqual(bob.peer.endpoint)

    alice.peer.send({ type: 'list', reqId: 77 })
    const list = await alice.peer.waitFor((m) => m.type === 'peers')
    if (list.type !== 'peers') throw new Error('unreachable')
    expect(list.reqId).toBe(77)
    expect(list.peers.map((p) => p.name)).toEqual(['bob'])
    expect(list.peers[0]).toMatchObject({ online: true, nat: 'easy', lan: [{ host: '192.168.1.20', port: 41641 }] })

    bob.peer.send({ type: 'bye' })
    const down = await alice.peer.waitFor((m) => m.type === 'peer-event')
    expect(down).toMatchObject({ type: 'peer-event', event: 'down', peer: { name: 'bob', online: false } })
    expect(await bob.peer.closedWithin()).toBe(true)

    alice.peer.send({ type: 'list', reqId: 78 })
    const after = await alice.peer.waitFor((m) => m.type === 'peers')
    expect(after).toMatchObject({ type: 'peers', reqId: 78, peers: [{ name: 'bob', online: false }] })
  })

  it('with a network secret: refuses a REGISTER without proof, accepts one with it', async () => {
    const secret = randomBytes(32)
    const { server, port } = await startServer({ secret })
    const kp = generateKeyPair()
    const refused = await registerTcp(port, kp, 'alice')
    expect(refused.reply).toMatchObject({ type: 'error', code: 'UNAUTHORIZED' })
    expect(await refused.peer.closedWithin()).toBe(true)
    expect(server.registry.size).toBe(0)

    const peer = await TcpPeer.connect(port)
    const challenge = await peer.waitFor()
    if (challenge.type !== 'challenge') throw new Error('no challenge')
    peer.send(registerFrame(kp, challenge, 'alice', { proof: secretProof(networkSecretKey(secret), challenge.nonce, kp.publicKey) }))
    expect((await peer.waitFor()).type).toBe('register-ack')
    expect(server.registry.find('alice')?.online).toBe(true)
  })

  // Known bug (reported): Reader.str8 lets TextDecoder's TypeError escape decode(), so the
  // server takes it for an internal failure: it logs at error level and resets the
  // connection without the ERROR frame every other malformed frame gets.
  it('a frame with invalid UTF-8 in a string gets ERROR BAD_REQUEST before the close', async () => {
    const { port } = await startServer()
    const peer = await TcpPeer.connect(port)
    await peer.waitFor((m) => m.type === 'challenge')
    peer.socket.write(frame(Buffer.from('4e440107' + '00000000' + '01ff' + '00', 'hex'))) // ERROR, code = 0xff
    expect(await peer.waitFor()).toMatchObject({ type: 'error', code: 'BAD_REQUEST' })
  })

  it('an oversized length prefix gets an ERROR and the connection closed', async () => {
    const { port } = await startServer()
    const peer = await TcpPeer.connect(port)
    await peer.waitFor((m) => m.type === 'challenge')
    peer.socket.write(Buffer.from('ffffffff00', 'hex'))
    expect(await peer.waitFor()).toMatchObject({ type: 'error', code: 'BAD_REQUEST' })
    expect(await peer.closedWithin()).toBe(true)
  })
})

describe('RendezvousServer under junk', () => {
  it('survives 3,000 random datagrams and 300 junk TCP connections, then still serves agents', async () => {
    const { port, alt } = await startServer()
    const rand = prng(0x6a756e6b)
    const junk = await UdpPeer.open()
    const hello = encode({ type: 'hello' })
    for (let i = 0; i < 3_000; i++) {
      let b: Buffer
      const kind = i % 4
      if (kind === 0) {
        b = randBuf(rand, randInt(rand, 0, 1_400))
      } else if (kind === 1) {
        b = randBuf(rand, randInt(rand, 4, 300))
        b[0] = 0x4e
        b[1] = 0x44
        b[2] = rand() < 0.9 ? 0x01 : randInt(rand, 0, 255)
        b[3] = randInt(rand, 0, 17)
      } else if (kind === 2) {
        b = randBuf(rand, randInt(rand, 20, 200))
        b[0]! &= 0x3f
        b.writeUInt32BE(STUN_MAGIC_COOKIE, 4)
      } else {
        b = Buffer.from(hello.subarray(0, randInt(rand, 0, hello.length)))
      }
      junk.send(b, i % 10 === 0 ? alt : port)
      if (i % 200 === 0) await sleep(1) // let the loopback queue drain a little
    }

    // TCP: random bytes, oversized prefixes, garbage frames, requests before REGISTER.
    let oversized = 0
    let oversizedClosed = 0
    for (let batch = 0; batch < 10; batch++) {
      await Promise.all(
        Array.from({ length: 30 }, async (_, j) => {
          const kind = (batch * 30 + j) % 4
          const peer = await TcpPeer.connect(port).catch(() => null)
          if (!peer) return
          let payload: Buffer
          if (kind === 0) payload = randBuf(rand, randInt(rand, 1, 300))
          else if (kind === 1) payload = Buffer.concat([Buffer.from([0xff, randInt(rand, 0, 255), 0, 0]), randBuf(rand, 20)])
          else if (kind === 2) {
            const body = randBuf(rand, randInt(rand, 4, 200))
            body[0] = 0x4e
            body[1] = 0x44
            body[2] = 0x01
            body[3] = randInt(rand, 0, 17)
            payload = frame(body)
          } else payload = frame(encode({ type: 'list', reqId: 1 }))
          peer.socket.write(payload)
          const closed = await peer.closedWithin(kind === 1 ? WAIT_MS : 200)
          if (kind === 1) {
            oversized++
            if (closed) oversizedClosed++
          }
          peer.close()
        })
      )
    }
    expect(oversized).toBeGreaterThan(0)
    expect(oversizedClosed).toBe(oversized)

    // Still answering: a HELLO, a STUN request, and a full registration over both transports.
    const fresh = await UdpPeer.open()
    expect((await fresh.request(hello, port)).type).toBe('challenge')
    fresh.send(encodeBindingRequest(randomBytes(12)), alt)
    const stun = await fresh.recv()
    expect(stun && decodeStun(stun.msg).mapped).toEqual(fresh.endpoint)
    expect((await registerUdp(fresh, port, generateKeyPair(), 'survivor')).type).toBe('register-ack')
    const { reply } = await registerTcp(port, generateKeyPair(), 'survivor-tcp')
    expect(reply.type).toBe('register-ack')
  })
})
