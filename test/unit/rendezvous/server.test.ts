// natd-rendezvous (src/rendezvous/server.ts) over real loopback sockets, driven the way
// an agent (or an attacker) would: raw node:dgram / node:net sockets and the codecs.
//
//   test sockets (127.0.0.1:ephemeral) ──UDP──▶ server :port   (rendezvous + STUN)
//                                      ──UDP──▶ server :port+1 (STUN only)
//                                      ──TCP──▶ server :port   (control connections)
import { execFile } from 'node:child_process'
import dgram from 'node:dgram'
import fs from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterEach, describe, expect, it, vi } from 'vitest'
import type { Endpoint } from '../../../src/protocol/endpoint.js'
import { generateKeyPair, networkSecretKey, peerId, randomBytes, secretProof } from '../../../src/protocol/identity.js'
import { silentLogger } from '../../../src/protocol/log.js'
import { decode, encode, FEATURE_LOOKUP, frame, opened, type Message } from '../../../src/protocol/rendezvous.js'
import { decodeStun, encodeBindingRequest, isStun, STUN_MAGIC_COOKIE } from '../../../src/protocol/stun.js'
import { CONTROL_LOST_GRACE_MS } from '../../../src/rendezvous/registry.js'
import { encodeBindingRequestWith } from '../../../src/protocol/stun-request.js'
import { EXPIRY_SWEEP_MS, RendezvousServer, TCP_AUTH_TIMEOUT_MS, type RendezvousInit } from '../../../src/rendezvous/server.js'
import { FakeClock, prng, randBuf, randInt } from '../helpers.js'
import { ackOf, HOST, registerFrame, registerTcp, sockets, TcpPeer, WAIT_MS } from './fake-agent.js'
import { startOnFreePort } from './start-server.js'

const SILENCE_MS = 300
const STUNCLIENT = '/usr/bin/turnutils_stunclient'
const NATDISCOVERY = '/usr/bin/turnutils_natdiscovery'
/** Debian's stun-client package: an RFC 3489 client (no magic cookie). */
const STUN_RFC3489 = '/usr/bin/stun'

/** A stock client's stdout and stderr; rejects on a non-zero exit or after 20 s (a client waiting for an answer). */
function run(file: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { timeout: 20_000 }, (err, stdout, stderr) => {
      // Debian's stun exits with its NAT-type bits; only a kill (timeout) or a spawn error is a failure.
      if (err && (err.killed || err.signal || typeof err.code === 'string')) reject(new Error(`${file} ${args.join(' ')}: ${err.message}\n${stdout}\n${stderr}`))
      else resolve(`${stdout}\n${stderr}`)
    })
  })
}
const SERVER_KEY = generateKeyPair()

// --- server lifecycle ---------------------------------------------------------

interface Started {
  server: RendezvousServer
  port: number
  alt: number
}

const running: RendezvousServer[] = []

afterEach(async () => {
  for (const s of sockets.splice(0)) s.close()
  for (const s of running.splice(0)) await s.stop()
})

/** With `time`, the server's clock and timers are fake (its sweep runs when the test moves time on). */
async function startServer(extra: Partial<RendezvousInit> = {}, time?: FakeClock): Promise<Started> {
  const { server, port } = await startOnFreePort(
    (port) =>
      new RendezvousServer(
        { host: HOST, port, altPort: port + 1, peerTimeoutMs: 30_000, heartbeatMs: 20_000, ...extra },
        { log: silentLogger, keyPair: SERVER_KEY, ...(time ? { clock: time, timers: time } : {}) }
      )
  )
  running.push(server)
  return { server, port, alt: port + 1 }
}

// --- a UDP agent ----------------------------------------------------------------

interface Datagram {
  msg: Buffer
  from: Endpoint
}

class UdpPeer {
  private readonly inbox: Datagram[] = []
  private waiter: ((d: Datagram) => void) | null = null

  private constructor(
    readonly sock: dgram.Socket,
    private readonly host: string
  ) {
    sock.on('message', (msg, rinfo) => {
      const d = { msg, from: { host: rinfo.address, port: rinfo.port } }
      if (this.waiter) this.waiter(d)
      else this.inbox.push(d)
    })
  }

  static async open(host = HOST): Promise<UdpPeer> {
    const sock = dgram.createSocket(host.includes(':') ? 'udp6' : 'udp4')
    await new Promise<void>((resolve) => sock.bind(0, host, () => resolve()))
    const peer = new UdpPeer(sock, host)
    sockets.push(peer)
    return peer
  }

  get endpoint(): Endpoint {
    return { host: this.host, port: this.sock.address().port }
  }

  send(buf: Uint8Array, port: number): void {
    this.sock.send(buf, port, this.host)
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

/** A sealed heartbeat from `udp` and the decoded answer, or null when the server stays silent. */
async function heartbeat(udp: UdpPeer, port: number, ack: Extract<Message, { type: 'register-ack' }>, seq: number, key: Uint8Array = ack.udpKey): Promise<Message | null> {
  udp.send(encode({ type: 'heartbeat', token: ack.token, seq, key }), port)
  const d = await udp.recv(SILENCE_MS)
  return d ? decode(d.msg) : null
}

// --- tests ---------------------------------------------------------------------

describe('RendezvousServer over UDP', () => {
  it('answers nothing but STUN and sealed heartbeats: a version-1 HELLO, junk and an unknown token get silence', async () => {
    const { port } = await startServer()
    const peer = await UdpPeer.open()
    peer.send(Buffer.concat([Buffer.from('4e440101', 'hex'), Buffer.alloc(92)]), port) // version 1's HELLO
    peer.send(encode({ type: 'heartbeat', token: randomBytes(16), seq: 1, key: randomBytes(32) }), port)
    peer.send(encode({ type: 'bye' }), port)
    expect(await peer.recv(SILENCE_MS)).toBeNull()
    // Positive control: a STUN request on the same socket is answered.
    peer.send(encodeBindingRequest(randomBytes(12)), port)
    expect(await peer.recv()).not.toBeNull()
  })

  it('--host6: REGISTER_ACK names the IPv6 socket; a sealed heartbeat there is answered from it and leaves the IPv4 endpoint; STUN is answered there too', async () => {
    const { server, port } = await startServer({ host6: '::1' })
    const { reply } = await registerTcp(port, generateKeyPair(), 'alice')
    const ack = ackOf(reply)
    expect(ack.server6).toEqual({ host: '::1', port: expect.any(Number) as number })
    const udp = await UdpPeer.open()
    expect(await heartbeat(udp, port, ack, 1)).toMatchObject({ status: 'moved', observed: udp.endpoint })
    const udp6 = await UdpPeer.open('::1')
    expect(await heartbeat(udp6, ack.server6!.port, ack, 2)).toMatchObject({ type: 'heartbeat-ack', seq: 2, observed: udp6.endpoint })
    expect(server.registry.find('alice')!.udp).toEqual(udp.endpoint) // the IPv4 endpoint stays
    // ::1 is no global address: never an IPv6 candidate (protocol/ipv6.ts; registry.test.ts has a global one)
    expect(server.registry.peer(server.registry.find('alice')!.ref)!.lan.filter((e) => e.host.includes(':'))).toEqual([])
    udp6.send(encodeBindingRequest(randomBytes(12)), ack.server6!.port)
    expect((await udp6.recv())?.from).toEqual(ack.server6)
    // A server without --host6 names none
    const other = await startServer()
    expect(ackOf((await registerTcp(other.port, generateKeyPair(), 'bob')).reply).server6).toBeUndefined()
  })

  it('learns the agent\'s UDP endpoint from its first sealed heartbeat: moved, then ok; the ack is sealed and no larger', async () => {
    const { server, port } = await startServer()
    const kp = generateKeyPair()
    const { reply } = await registerTcp(port, kp, 'alice')
    const ack = ackOf(reply)
    expect(ack.udpKey).toHaveLength(32)
    expect(server.registry.find('alice')!.udp).toBeNull()
    const udp = await UdpPeer.open()
    udp.send(encode({ type: 'heartbeat', token: ack.token, seq: 1, key: ack.udpKey }), port)
    const d = await udp.recv()
    expect(d!.msg.length).toBeLessThanOrEqual(encode({ type: 'heartbeat', token: ack.token, seq: 1, key: ack.udpKey }).length)
    const first = decode(d!.msg)
    expect(first).toMatchObject({ type: 'heartbeat-ack', seq: 1, status: 'moved', observed: udp.endpoint })
    expect(opened(first as Extract<Message, { type: 'heartbeat-ack' }>, ack.udpKey)).toBe(true)
    expect(server.registry.find('alice')!.udp).toEqual(udp.endpoint)
    expect(await heartbeat(udp, port, ack, 2)).toMatchObject({ status: 'ok', seq: 2 })
    // A NAT that gives the agent a new port: the next sealed heartbeat moves it.
    const moved = await UdpPeer.open()
    expect(await heartbeat(moved, port, ack, 3)).toMatchObject({ status: 'moved', observed: moved.endpoint })
    expect(server.registry.find('alice')!.udp).toEqual(moved.endpoint)
  })

  it('drops a forged heartbeat (wrong key) and a replayed one (old sequence number), even from another address', async () => {
    const { server, port } = await startServer()
    const { reply } = await registerTcp(port, generateKeyPair(), 'alice')
    const ack = ackOf(reply)
    const udp = await UdpPeer.open()
    expect(await heartbeat(udp, port, ack, 5)).toMatchObject({ status: 'moved' })
    const attacker = await UdpPeer.open()
    expect(await heartbeat(attacker, port, ack, 6, randomBytes(32))).toBeNull() // the token is seen on the wire; the key never is
    attacker.send(encode({ type: 'heartbeat', token: ack.token, seq: 5, key: ack.udpKey }), port) // a captured heartbeat, replayed
    expect(await attacker.recv(SILENCE_MS)).toBeNull()
    expect(server.registry.find('alice')!.udp).toEqual(udp.endpoint)
    expect(await heartbeat(udp, port, ack, 7)).toMatchObject({ status: 'ok' }) // positive control
  })

  it('a new session gives a new heartbeat key: the last session\'s key no longer works', async () => {
    const { port } = await startServer()
    const kp = generateKeyPair()
    const first = ackOf((await registerTcp(port, kp, 'alice')).reply)
    const udp = await UdpPeer.open()
    expect(await heartbeat(udp, port, first, 1)).not.toBeNull()
    const second = ackOf((await registerTcp(port, kp, 'alice')).reply)
    expect(Buffer.from(second.udpKey).equals(Buffer.from(first.udpKey))).toBe(false)
    expect(await heartbeat(udp, port, first, 2)).toBeNull()
    expect(await heartbeat(udp, port, second, 1)).toMatchObject({ status: 'ok' })
  })

  it('ignores rendezvous frames on the alt port (STUN only there)', async () => {
    const { alt, port } = await startServer()
    const ack = ackOf((await registerTcp(port, generateKeyPair(), 'alice')).reply)
    const peer = await UdpPeer.open()
    expect(await heartbeat(peer, alt, ack, 1)).toBeNull()
    expect(await heartbeat(peer, port, ack, 2)).not.toBeNull()
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

describe('RendezvousServer STUN as stock clients expect it (issue 17)', () => {
  const ALT_HOST = '127.0.0.2' // the second RFC 5780 address: any 127/8 address is on loopback

  it('RESPONSE-PORT: the answer goes to the source IP at that port, from the socket asked', async () => {
    const { port } = await startServer({ altHost: ALT_HOST })
    const asker = await UdpPeer.open()
    const catcher = await UdpPeer.open()
    const txid = randomBytes(12)
    asker.send(encodeBindingRequestWith(txid, { responsePort: catcher.endpoint.port }), port)
    const d = await catcher.recv()
    expect(d, 'answer at RESPONSE-PORT').not.toBeNull()
    expect(d!.from).toEqual({ host: HOST, port })
    const m = decodeStun(d!.msg)
    expect(Buffer.from(m.transactionId).equals(txid)).toBe(true)
    expect(m.mapped).toEqual(asker.endpoint) // still the asker's own endpoint
    expect(await asker.recv(SILENCE_MS)).toBeNull()
  })

  it('an RFC 3489 request (no magic cookie) gets MAPPED-ADDRESS with its 128-bit ID; RFC 8489 errors and FINGERPRINTs on the wire', async () => {
    const { port } = await startServer({ altHost: ALT_HOST })
    const peer = await UdpPeer.open()
    const id = randomBytes(16)
    id.writeUInt32BE(0x01020304, 0)
    peer.send(Buffer.concat([Buffer.from([0, 1, 0, 0]), id]), port)
    const classic = await peer.recv()
    expect(classic, 'RFC 3489 answer').not.toBeNull()
    expect(classic!.msg.subarray(4, 20).equals(id)).toBe(true)
    expect(classic!.msg.readUInt16BE(20)).toBe(0x0001) // MAPPED-ADDRESS
    expect(classic!.msg.readUInt16BE(26)).toBe(peer.endpoint.port)
    expect(classic!.msg.length).toBe(56)

    peer.send(encodeBindingRequestWith(randomBytes(12), { extra: [{ type: 0x0abc, value: Buffer.alloc(4) }] }), port)
    const err = await peer.recv()
    expect(err && err.msg.readUInt16BE(0)).toBe(0x0111)
    expect(err!.msg.subarray(24, 28).toString('hex')).toBe('00000414') // 420

    const signed = encodeBindingRequestWith(randomBytes(12), { fingerprint: true })
    peer.send(signed, port)
    const fp = await peer.recv()
    expect(fp && fp.msg.readUInt16BE(fp.msg.length - 8)).toBe(0x8028)
    expect(decodeStun(fp!.msg).mapped).toEqual(peer.endpoint)
    signed[signed.length - 1]! ^= 0xff
    peer.send(signed, port)
    expect(await peer.recv(SILENCE_MS), 'a bad FINGERPRINT is dropped').toBeNull()
  })

  const needs = (tool: string, ctx: { skip: (note: string) => never }): void => {
    if (!fs.existsSync(tool)) ctx.skip(`${tool} is not installed (Debian packages coturn, stun-client)`)
  }

  it('turnutils_stunclient (coturn): all three requests, the second with RESPONSE-PORT, the third with PADDING', async (ctx) => {
    needs(STUNCLIENT, ctx)
    const { port } = await startServer({ altHost: ALT_HOST })
    const out = await run(STUNCLIENT, ['-p', String(port), HOST])
    // Before RESPONSE-PORT was honoured the client waited for ever for its second answer.
    expect(out).toContain('RFC 5780 response 3')
    const origins = [...out.matchAll(/Response origin: : ([\d.:]+)/g)].map((m) => m[1])
    expect(origins).toContain(`${ALT_HOST}:${port + 1}`) // the change-IP-and-port answers
  }, 30_000)

  it("Debian's stun (RFC 3489, vovida 0.97): every test answered from the socket it asked for", async (ctx) => {
    needs(STUN_RFC3489, ctx)
    const { port } = await startServer({ altHost: ALT_HOST })
    const out = await run(STUN_RFC3489, [`${HOST}:${port}`, '-v'])
    // Test I (plain), II (change IP), III (change port), I(2) (to CHANGED-ADDRESS): all answered on loopback.
    expect(out).toMatch(/SourceAddress = 127\.0\.0\.2:\d+/)
    for (const t of ['test I = 1', 'test II = 1', 'test III = 1', 'test I(2) = 1']) expect(out).toContain(t)
    expect(out).toContain('Primary: Open')
  }, 30_000)

  it('turnutils_natdiscovery -t (coturn): the mapping-lifetime probe answered at RESPONSE-PORT', async (ctx) => {
    needs(NATDISCOVERY, ctx)
    const { port } = await startServer({ altHost: ALT_HOST })
    const out = await run(NATDISCOVERY, ['-t', '-T', '1', '-p', String(port), HOST])
    expect(out).toContain('RFC 5780 response 2')
    expect(out).not.toContain('timeout')
  }, 30_000)
})

describe('RendezvousServer over TCP', () => {
  it('sends a CHALLENGE in the clear, proves its key in Noise, then acks a signed REGISTER with the observed address', async () => {
    const { server, port } = await startServer()
    const peer = await TcpPeer.connect(port)
    const kp = generateKeyPair()
    expect(Buffer.from(await peer.secure(kp)).equals(SERVER_KEY.publicKey)).toBe(true)
    peer.send(registerFrame(kp, peer.challenge!, 'alice'))
    expect(await peer.waitFor()).toMatchObject({ type: 'register-ack', observed: peer.endpoint, heartbeatMs: 20_000, peerTimeoutMs: 30_000 })
    expect(server.registry.find('alice')).toMatchObject({ id: peerId(kp.publicKey), online: true, tcp: peer.endpoint })
    peer.send({ type: 'ping', seq: 99 })
    expect(await peer.waitFor()).toEqual({ type: 'pong', seq: 99 })
  })

  it('refuses a REGISTER in the clear (no session): UNAUTHORIZED, nothing registered', async () => {
    const { server, port } = await startServer()
    const peer = await TcpPeer.connect(port)
    const challenge = await peer.waitFor((m) => m.type === 'challenge')
    peer.send(registerFrame(generateKeyPair(), challenge, 'alice'))
    expect(await peer.waitFor()).toMatchObject({ type: 'error', code: 'UNAUTHORIZED' })
    expect(await peer.closedWithin()).toBe(true)
    expect(server.registry.size).toBe(0)
  })

  it('refuses a bad signature, and a REGISTER for a key other than the session\'s (UNAUTHORIZED); registers nothing', async () => {
    const { server, port } = await startServer()
    const tampered = await registerTcp(port, generateKeyPair(), 'mallory', { tamperSignature: true })
    expect(tampered.reply).toMatchObject({ type: 'error', code: 'UNAUTHORIZED' })
    expect(await tampered.peer.closedWithin()).toBe(true)
    const victim = generateKeyPair()
    // Mallory runs the handshake with her key and sends a REGISTER the victim signed (say, captured).
    const borrowed = await registerTcp(port, generateKeyPair(), 'victim', { signer: victim })
    expect(borrowed.reply).toMatchObject({ type: 'error', code: 'UNAUTHORIZED' })
    expect(server.registry.size).toBe(0)
    expect(ackOf((await registerTcp(port, victim, 'victim')).reply).token).toHaveLength(16) // positive control
  })

  it('refuses a REGISTER whose nonce is another connection\'s challenge', async () => {
    const { server, port } = await startServer()
    const other = await TcpPeer.connect(port)
    const foreign = await other.waitFor((m) => m.type === 'challenge')
    const peer = await TcpPeer.connect(port)
    const kp = generateKeyPair()
    await peer.secure(kp)
    peer.send(registerFrame(kp, foreign, 'replay'))
    expect(await peer.waitFor()).toMatchObject({ type: 'error', code: 'UNAUTHORIZED' })
    expect(server.registry.find('replay')).toBeUndefined()
  })

  it('refuses a bad name with BAD_REQUEST', async () => {
    const { server, port } = await startServer()
    expect((await registerTcp(port, generateKeyPair(), 'Not A Name')).reply).toMatchObject({ type: 'error', code: 'BAD_REQUEST' })
    expect(server.registry.size).toBe(0)
  })

  it('keeps only private LAN candidates from a REGISTER (a stranger\'s public address is never offered to peers)', async () => {
    const { server, port } = await startServer()
    const lan = [{ host: '10.9.9.9', port: 22 }, { host: '198.51.100.7', port: 22 }, { host: '100.64.1.2', port: 41641 }, { host: '8.8.8.8', port: 53 }]
    ackOf((await registerTcp(port, generateKeyPair(), 'alice', { lan })).reply)
    expect(server.registry.find('alice')!.lan).toEqual([{ host: '10.9.9.9', port: 22 }, { host: '100.64.1.2', port: 41641 }])
  })

  it('keeps a port mapped at the agent\'s own address (its gateway\'s mapping), first, and no other public address', async () => {
    const { server, port } = await startServer()
    // registerTcp connects from 127.0.0.1: that is "the address the server sees it at" here.
    const lan = [{ host: '10.9.9.9', port: 22 }, { host: '198.51.100.7', port: 41641 }, { host: '127.0.0.1', port: 41641 }, { host: '127.0.0.1', port: 41642 }, { host: '127.0.0.1', port: 41643 }]
    ackOf((await registerTcp(port, generateKeyPair(), 'alice', { lan })).reply)
    expect(server.registry.find('alice')!.lan).toEqual([{ host: '127.0.0.1', port: 41641 }, { host: '127.0.0.1', port: 41642 }, { host: '10.9.9.9', port: 22 }])
  })

  it('gives NAME_TAKEN to another key asking for a name in use; the holder may register again', async () => {
    const { server, port } = await startServer()
    const alice = generateKeyPair()
    ackOf((await registerTcp(port, alice, 'alice')).reply)
    expect((await registerTcp(port, generateKeyPair(), 'alice')).reply).toMatchObject({ type: 'error', code: 'NAME_TAKEN' })
    expect(server.registry.find('alice')?.id).toBe(peerId(alice.publicKey))
    ackOf((await registerTcp(port, alice, 'alice')).reply)
  })

  it('keeps a name bound to its holder once it has gone offline: another key still gets NAME_TAKEN, with how to free it', async () => {
    const { server, port } = await startServer()
    const alice = generateKeyPair()
    const first = await registerTcp(port, alice, 'alice')
    ackOf(first.reply)
    first.peer.send({ type: 'bye' })
    expect(await first.peer.closedWithin()).toBe(true)
    expect(server.registry.find('alice')?.online).toBe(false)
    const refused = (await registerTcp(port, generateKeyPair(), 'alice')).reply
    expect(refused).toMatchObject({ type: 'error', code: 'NAME_TAKEN' })
    expect(refused.type === 'error' && refused.message).toContain('natd-rendezvous names rm alice')
    ackOf((await registerTcp(port, alice, 'alice')).reply) // the holder comes back to it
  })

  it('RELEASE: only the holder\'s key frees its name (then another key may take it); a stranger gets UNAUTHORIZED', async () => {
    const { server, port } = await startServer()
    const alice = generateKeyPair()
    const live = await registerTcp(port, alice, 'alice')
    ackOf(live.reply)
    const stranger = await TcpPeer.connect(port)
    await stranger.secure(generateKeyPair())
    stranger.send({ type: 'release', reqId: 3, name: 'alice' })
    expect(await stranger.waitFor()).toMatchObject({ type: 'error', reqId: 3, code: 'UNAUTHORIZED' })
    expect(server.registry.find('alice')?.online).toBe(true)
    const owner = await TcpPeer.connect(port)
    await owner.secure(alice)
    owner.send({ type: 'release', reqId: 4, name: 'alice' })
    expect(await owner.waitFor()).toEqual({ type: 'ok', reqId: 4 })
    expect(await live.peer.closedWithin()).toBe(true) // its live session ends: it no longer holds the name
    ackOf((await registerTcp(port, generateKeyPair(), 'alice')).reply)
  })

  it('refuses any request before REGISTER with UNAUTHORIZED and closes', async () => {
    const { port } = await startServer()
    const peer = await TcpPeer.connect(port)
    await peer.secure(generateKeyPair())
    peer.send({ type: 'list', reqId: 1 })
    expect(await peer.waitFor()).toMatchObject({ type: 'error', code: 'UNAUTHORIZED' })
    expect(await peer.closedWithin()).toBe(true)
  })

  it('closes a connection that has not registered 10 s after it opened, however slowly it trickles bytes', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] })
    try {
      const { port } = await startServer()
      const peer = await TcpPeer.connect(port)
      await peer.waitFor((m) => m.type === 'challenge')
      peer.socket.write(Buffer.from([0, 0])) // half a length prefix, then nothing
      vi.advanceTimersByTime(TCP_AUTH_TIMEOUT_MS - 100)
      expect(await peer.closedWithin(100)).toBe(false)
      vi.advanceTimersByTime(200)
      expect(await peer.closedWithin()).toBe(true)
    } finally {
      vi.useRealTimers()
    }
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

  it('LOOKUP answers the one record LIST would show for a key (online, then offline), never the asker\'s own nor an unknown key; REGISTER_ACK says it is understood', async () => {
    const { port } = await startServer()
    const aliceKp = generateKeyPair()
    const bobKp = generateKeyPair()
    const alice = await registerTcp(port, aliceKp, 'alice')
    expect(alice.reply).toMatchObject({ type: 'register-ack', features: FEATURE_LOOKUP })
    const bob = await registerTcp(port, bobKp, 'bob')
    await alice.peer.waitFor((m) => m.type === 'peer-event' && m.event === 'up')
    const lookup = async (reqId: number, publicKey: Uint8Array): Promise<Message> => {
      alice.peer.send({ type: 'lookup', reqId, publicKey })
      return alice.peer.waitFor((m) => m.type === 'peers' && m.reqId === reqId)
    }
    const bobNow = await lookup(5, bobKp.publicKey)
    expect(bobNow).toMatchObject({ type: 'peers', reqId: 5, peers: [{ name: 'bob', online: true, tcp: bob.peer.endpoint, lan: [{ host: '192.168.1.20', port: 41641 }] }] })
    alice.peer.send({ type: 'list', reqId: 6 })
    const list = await alice.peer.waitFor((m) => m.type === 'peers' && m.reqId === 6)
    if (list.type !== 'peers' || bobNow.type !== 'peers') throw new Error('unreachable')
    expect({ ...bobNow.peers[0], lastSeenAgoMs: 0 }).toEqual({ ...list.peers[0], lastSeenAgoMs: 0 })
    expect(await lookup(7, aliceKp.publicKey)).toEqual({ type: 'peers', reqId: 7, peers: [] })
    expect(await lookup(8, generateKeyPair().publicKey)).toEqual({ type: 'peers', reqId: 8, peers: [] })
    bob.peer.send({ type: 'bye' })
    await alice.peer.waitFor((m) => m.type === 'peer-event' && m.event === 'down')
    expect(await lookup(9, bobKp.publicKey)).toMatchObject({ type: 'peers', reqId: 9, peers: [{ name: 'bob', online: false }] })
  })

  it('an agent whose host ends its control connection without BYE (its process killed) goes "down" after the grace, unless it registers again first; a reset waits for the peer timeout', async () => {
    const clock = new FakeClock(Date.now()) // the sweep too: it runs when the test moves time on
    const { port } = await startServer({}, clock)
    const bobKp = generateKeyPair()
    const alice = await registerTcp(port, generateKeyPair(), 'alice')
    const bob = await registerTcp(port, bobKp, 'bob')
    await alice.peer.waitFor((m) => m.type === 'peer-event' && m.event === 'up')
    const list = async (reqId: number): Promise<Message> => {
      alice.peer.send({ type: 'list', reqId })
      return alice.peer.waitFor((m) => m.type === 'peers' && m.reqId === reqId)
    }
    // A down event from the sweeps comes before the answer to a LIST sent after them (one ordered session).
    const noDownYet = async (reqId: number): Promise<boolean> => {
      await list(reqId)
      try {
        await alice.peer.waitFor((m) => m.type === 'peer-event' && m.event === 'down', 0)
        return false
      } catch {
        return true
      }
    }

    // The connection drops and bob comes back within the grace: never "down".
    bob.peer.close()
    await sleep(100)
    expect(await list(1)).toMatchObject({ peers: [{ name: 'bob', online: true, tcp: null }] })
    const again = await registerTcp(port, bobKp, 'bob')
    expect(again.reply.type).toBe('register-ack')
    clock.advance(CONTROL_LOST_GRACE_MS + EXPIRY_SWEEP_MS) // the sweeps past the grace run now
    expect(await noDownYet(10)).toBe(true)

    // Reset (a NAT that lost the mapping answers RST; the agent lives on and reconnects at
    // its next ping): heartbeats decide, not the grace.
    again.peer.socket.resetAndDestroy()
    await sleep(100)
    clock.advance(CONTROL_LOST_GRACE_MS + EXPIRY_SWEEP_MS)
    expect(await noDownYet(11)).toBe(true)
    const back = await registerTcp(port, bobKp, 'bob')
    expect(back.reply.type).toBe('register-ack')

    // Killed for good (its kernel ends the connection with a FIN): "down" at the first sweep past the grace, and LIST agrees.
    back.peer.close()
    await sleep(100)
    clock.advance(CONTROL_LOST_GRACE_MS + EXPIRY_SWEEP_MS)
    const down = await alice.peer.waitFor((m) => m.type === 'peer-event')
    expect(down).toMatchObject({ event: 'down', peer: { name: 'bob', online: false } })
    expect(await list(2)).toMatchObject({ peers: [{ name: 'bob', online: false }] })
  })

  it('drops an agent silent past --peer-timeout at the first sweep after it, and tells its peers (fake time: no waiting)', async () => {
    const time = new FakeClock()
    const { server, port } = await startServer({ peerTimeoutMs: 30_000 }, time)
    const alice = await registerTcp(port, generateKeyPair(), 'alice')
    const bob = await registerTcp(port, generateKeyPair(), 'bob')
    ackOf(alice.reply)
    ackOf(bob.reply)
    time.advance(20_000)
    alice.peer.send({ type: 'ping', seq: 1 }) // alice is seen at +20 s; bob stays silent
    await alice.peer.waitFor((m) => m.type === 'pong')
    time.advance(10_999) // bob silent 30,999 ms: past the timeout, but the next sweep is at +31 s
    expect(server.registry.find('bob')?.online).toBe(true)
    time.advance(1)
    expect(server.registry.find('bob')?.online).toBe(false)
    expect(server.registry.find('alice')?.online).toBe(true)
    expect(await alice.peer.waitFor((m) => m.type === 'peer-event' && m.event === 'down')).toMatchObject({ peer: { name: 'bob', online: false } })
    expect(await bob.peer.closedWithin()).toBe(true)
  })

  it('introduces both sides at once with the same introduction ID and punch key, inside their sessions', async () => {
    const { port } = await startServer()
    const alice = await registerTcp(port, generateKeyPair(), 'alice')
    const bob = await registerTcp(port, generateKeyPair(), 'bob')
    alice.peer.send({ type: 'introduce', reqId: 5, target: 'bob', via: 'udp' })
    const mine = await alice.peer.waitFor((m) => m.type === 'introduction')
    const theirs = await bob.peer.waitFor((m) => m.type === 'introduction')
    if (mine.type !== 'introduction' || theirs.type !== 'introduction') throw new Error('unreachable')
    expect(mine).toMatchObject({ reqId: 5, initiator: true, via: 'udp', peer: { name: 'bob' } })
    expect(theirs).toMatchObject({ reqId: 0, initiator: false, via: 'udp', peer: { name: 'alice' } })
    expect(Buffer.from(mine.introId).equals(Buffer.from(theirs.introId))).toBe(true)
    expect(Buffer.from(mine.punchKey).equals(Buffer.from(theirs.punchKey))).toBe(true)
    expect(mine.punchKey).toHaveLength(32)
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
    await peer.secure(kp)
    const challenge = peer.challenge!
    peer.send(registerFrame(kp, challenge, 'alice', { proof: secretProof(networkSecretKey(secret), challenge.nonce, kp.publicKey) }))
    expect((await peer.waitFor()).type).toBe('register-ack')
    expect(server.registry.find('alice')?.online).toBe(true)
  })

  it('a frame with invalid UTF-8 in a string gets ERROR BAD_REQUEST before the close', async () => {
    const { port } = await startServer()
    const peer = await TcpPeer.connect(port)
    await peer.waitFor((m) => m.type === 'challenge')
    peer.socket.write(frame(Buffer.from('4e440207' + '00000000' + '01ff' + '00', 'hex'))) // ERROR, code = 0xff
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
    const hb = encode({ type: 'heartbeat', token: randomBytes(16), seq: 1, key: randomBytes(32) })
    for (let i = 0; i < 3_000; i++) {
      let b: Buffer
      const kind = i % 4
      if (kind === 0) {
        b = randBuf(rand, randInt(rand, 0, 1_400))
      } else if (kind === 1) {
        b = randBuf(rand, randInt(rand, 4, 300))
        b[0] = 0x4e
        b[1] = 0x44
        b[2] = rand() < 0.9 ? 0x02 : randInt(rand, 0, 255)
        b[3] = randInt(rand, 0, 23)
      } else if (kind === 2) {
        b = randBuf(rand, randInt(rand, 20, 200))
        b[0]! &= 0x3f
        b.writeUInt32BE(STUN_MAGIC_COOKIE, 4)
      } else {
        b = Buffer.from(hb.subarray(0, randInt(rand, 0, hb.length)))
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
            body[2] = 0x02
            body[3] = randInt(rand, 0, 23)
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

    // Still answering: a STUN request, a full registration and its first heartbeat.
    const fresh = await UdpPeer.open()
    fresh.send(encodeBindingRequest(randomBytes(12)), alt)
    const stun = await fresh.recv()
    expect(stun && decodeStun(stun.msg).mapped).toEqual(fresh.endpoint)
    const ack = ackOf((await registerTcp(port, generateKeyPair(), 'survivor')).reply)
    expect(await heartbeat(fresh, port, ack, 1)).toMatchObject({ type: 'heartbeat-ack', status: 'moved', observed: fresh.endpoint })
  })
})
