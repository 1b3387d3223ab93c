// A rendezvous agent driven by hand over loopback TCP (raw net sockets and the codecs),
// for the server's tests: framed and in the clear until secure(), one Noise message per
// frame after. Shared by server.test.ts and cluster.test.ts.
import net from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import type SecretStream from '@hyperswarm/secret-stream'
import { expect } from 'vitest'
import type { Endpoint } from '../../../src/protocol/endpoint.js'
import { sign, type KeyPair } from '../../../src/protocol/identity.js'
import { decode, encode, encodeRegister, encodeRegisterUnsigned, frame, FrameSplitter, type Message, type OutgoingMessage } from '../../../src/protocol/rendezvous.js'
import { secureSocket } from '../../../src/tunnel/secure-socket.js'

export const HOST = '127.0.0.1'
export const WAIT_MS = 2_000

/** Everything opened here; the test closes them after each case. */
export const sockets: { close(): void }[] = []

/**
 * A TCP connection as an agent (or an attacker) drives it: framed and in the clear until
 * secure(), one Noise message per frame after.
 */
export class TcpPeer {
  private readonly inbox: Message[] = []
  private waiter: (() => void) | null = null
  readonly closed: Promise<void>
  private readonly splitter = new FrameSplitter()
  private readonly onData = (chunk: Buffer): void => {
    this.splitter.add(chunk)
    for (let f = this.splitter.next(); f; f = this.splitter.next()) this.deliver(f)
  }
  session: SecretStream | null = null
  challenge: Extract<Message, { type: 'challenge' }> | null = null

  private constructor(readonly socket: net.Socket) {
    socket.on('data', this.onData)
    socket.on('error', () => undefined)
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()))
    void this.closed.then(() => this.waiter?.())
  }

  private deliver(f: Buffer): void {
    this.inbox.push(decode(f))
    this.waiter?.()
  }

  static async connect(port: number, host = HOST): Promise<TcpPeer> {
    const socket = net.connect({ host, port })
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve)
      socket.once('error', reject)
    })
    const peer = new TcpPeer(socket)
    sockets.push(peer)
    return peer
  }

  /** Reads the CHALLENGE, says SECURE and runs Noise with `kp`; resolves with the server's proven key. */
  async secure(kp: KeyPair): Promise<Buffer> {
    const challenge = await this.waitFor((m) => m.type === 'challenge')
    if (challenge.type !== 'challenge') throw new Error('unreachable')
    this.challenge = challenge
    this.socket.off('data', this.onData)
    this.socket.write(frame(encode({ type: 'secure' })))
    const session = secureSocket(true, this.socket, this.splitter.rest(), kp)
    session.on('data', (f: Buffer) => this.deliver(f))
    this.session = session
    expect(await session.opened).toBe(true)
    return session.remotePublicKey!
  }

  get endpoint(): Endpoint {
    return { host: HOST, port: this.socket.localPort! }
  }

  send(msg: OutgoingMessage | Buffer): void {
    const bytes = Buffer.isBuffer(msg) ? msg : encode(msg)
    if (this.session) this.session.write(bytes)
    else this.socket.write(frame(bytes))
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
    this.session?.destroy()
    this.socket.destroy()
  }
}

// --- registration helpers -------------------------------------------------------

export interface RegisterOpts {
  proof?: Uint8Array
  tamperSignature?: boolean
  /** Sign with this key pair instead of the session's (an agent claiming another's key). */
  signer?: KeyPair
  lan?: Endpoint[]
}

export function registerFrame(kp: KeyPair, challenge: Message, name: string, opts: RegisterOpts = {}): Buffer {
  if (challenge.type !== 'challenge') throw new Error(`expected a challenge, got ${challenge.type}`)
  const signer = opts.signer ?? kp
  const unsigned = encodeRegisterUnsigned({
    nonce: challenge.nonce,
    time: challenge.serverTime,
    publicKey: signer.publicKey,
    name,
    tcpPort: 0,
    nat: 'easy',
    lan: opts.lan ?? [{ host: '192.168.1.20', port: 41641 }],
    proof: opts.proof ?? Buffer.alloc(0)
  })
  const sig = sign(unsigned, signer.secretKey)
  if (opts.tamperSignature) sig[10]! ^= 0x01
  return encodeRegister(unsigned, sig)
}

/** CHALLENGE, SECURE, Noise, REGISTER: an agent's registration; returns the connection and the server's answer. */
export async function registerTcp(port: number, kp: KeyPair, name: string, opts: RegisterOpts = {}): Promise<{ peer: TcpPeer; reply: Message }> {
  const peer = await TcpPeer.connect(port)
  await peer.secure(kp)
  peer.send(registerFrame(kp, peer.challenge!, name, opts))
  return { peer, reply: await peer.waitFor((m) => m.type === 'register-ack' || m.type === 'error') }
}

export function ackOf(m: Message): Extract<Message, { type: 'register-ack' }> {
  if (m.type !== 'register-ack') throw new Error(`expected register-ack, got ${JSON.stringify(m)}`)
  return m
}

