// The abuse suite, rendezvous server side (issue "Abuse resistance"): the attacks of the
// issue's table against a RendezvousServer started in this process, driven over
// loopback with raw sockets and the codecs, as an attacker would. Each row asserts its
// bound and records its figure (record.ts) beside the "before".
//
//   attacker sockets (127.0.0.x:ephemeral) ──TCP/UDP──▶ RendezvousServer 127.0.0.1:port
//
// Memory is measured two ways: the server's own count of what it holds for strangers
// (stats().heldBytes: partial frames and Noise messages, early relay frames), which is
// what the bounds are about, and the process RSS (this process holds the attackers'
// sockets too, so RSS is the looser figure).
import { once } from 'node:events'
import dgram from 'node:dgram'
import net from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterEach, describe, expect, it, vi } from 'vitest'
import type SecretStream from '@hyperswarm/secret-stream'
import { generateKeyPair, randomBytes, sign, type KeyPair } from '../../src/protocol/identity.js'
import { silentLogger, type Logger } from '../../src/protocol/log.js'
import { decode, encode, encodeRegister, encodeRegisterUnsigned, encodeRelay, frame, FrameSplitter, relaySigned, type Message } from '../../src/protocol/rendezvous.js'
import { DEFAULT_SERVER_LIMITS, type ServerLimits } from '../../src/rendezvous/limits.js'
import { RELAY_EARLY_MAX_BYTES } from '../../src/rendezvous/relay.js'
import { MAX_AGENT_MESSAGE_BYTES, MAX_CLEAR_FRAME_BYTES, RendezvousServer } from '../../src/rendezvous/server.js'
import { secureSocket } from '../../src/tunnel/secure-socket.js'
import { startOnFreePort } from '../unit/rendezvous/start-server.js'
import { recordAbuse } from './record.js'

const HOST = '127.0.0.1'
const SERVER_KEY = generateKeyPair()
const MiB = 1024 * 1024
const running: RendezvousServer[] = []
const open: net.Socket[] = []

afterEach(async () => {
  vi.useRealTimers()
  for (const s of open.splice(0)) s.destroy()
  for (const s of running.splice(0)) await s.stop()
})

function rssMb(): number {
  ;(globalThis as { gc?: () => void }).gc?.()
  return Math.round(process.memoryUsage().rss / MiB)
}

async function startServer(limits: Partial<ServerLimits> = {}, log: Logger = silentLogger): Promise<{ server: RendezvousServer; port: number }> {
  const started = await startOnFreePort(
    (port) =>
      new RendezvousServer(
        { host: HOST, port, altPort: 0, peerTimeoutMs: 60_000, heartbeatMs: 20_000, relay: { maxBytes: 1024 ** 3, maxSeconds: 3600, rate: 8 * MiB, maxTunnels: 100 }, limits },
        { log, keyPair: SERVER_KEY }
      )
  )
  running.push(started.server)
  return started
}

/** A TCP connection from `localAddress` that reads framed messages (in the clear, or inside its session). */
class Conn {
  readonly inbox: Message[] = []
  readonly splitter = new FrameSplitter()
  session: SecretStream | null = null
  readonly closed: Promise<void>
  private readonly onData = (c: Buffer): void => {
    this.splitter.add(c)
    for (let f = this.splitter.next(); f; f = this.splitter.next()) this.inbox.push(decode(f))
  }

  constructor(readonly socket: net.Socket) {
    socket.on('data', this.onData)
    socket.on('error', () => undefined)
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()))
    open.push(socket)
  }

  static async connect(port: number, localAddress = HOST): Promise<Conn> {
    const socket = net.connect({ host: HOST, port, localAddress })
    await once(socket, 'connect')
    return new Conn(socket)
  }

  async next(pred: (m: Message) => boolean, timeoutMs = 3_000): Promise<Message> {
    const until = Date.now() + timeoutMs
    for (;;) {
      const i = this.inbox.findIndex(pred)
      if (i >= 0) return this.inbox.splice(i, 1)[0]!
      if (Date.now() > until || this.socket.destroyed) throw new Error(`no such message; got ${this.inbox.map((m) => m.type).join(',')}`)
      await sleep(5)
    }
  }

  async secure(kp: KeyPair): Promise<Extract<Message, { type: 'challenge' }>> {
    const ch = (await this.next((m) => m.type === 'challenge')) as Extract<Message, { type: 'challenge' }>
    this.socket.off('data', this.onData)
    this.socket.write(frame(encode({ type: 'secure' })))
    this.session = secureSocket(true, this.socket, this.splitter.rest(), kp)
    this.session.on('data', (f: Buffer) => this.inbox.push(decode(f)))
    await this.session.opened
    return ch
  }

  closedWithin(ms: number): Promise<boolean> {
    return Promise.race([this.closed.then(() => true), sleep(ms).then(() => false)])
  }
}

async function register(port: number, kp: KeyPair, name: string): Promise<Conn> {
  const c = await Conn.connect(port)
  const ch = await c.secure(kp)
  const unsigned = encodeRegisterUnsigned({ nonce: ch.nonce, time: ch.serverTime, publicKey: kp.publicKey, name, tcpPort: 0, nat: 'hard', lan: [], proof: Buffer.alloc(0) })
  c.session!.write(encodeRegister(unsigned, sign(unsigned, kp.secretKey)))
  expect((await c.next((m) => m.type === 'register-ack' || m.type === 'error')).type).toBe('register-ack')
  return c
}

/** Binds one side of `introId` as `kp` (the agent introduced there). */
async function bindRelay(port: number, kp: KeyPair, introId: Uint8Array, initiator: boolean): Promise<Conn> {
  const c = await Conn.connect(port)
  const ch = (await c.next((m) => m.type === 'challenge')) as Extract<Message, { type: 'challenge' }>
  c.socket.write(frame(encodeRelay(introId, initiator, sign(relaySigned(ch.nonce, introId, initiator), kp.secretKey))))
  return c
}

/** Writes up to `bytes` of 64 KiB RELAY_DATA frames, as far as the connection takes them within `ms`; returns what was taken. */
async function pour(c: Conn, bytes: number, ms: number): Promise<number> {
  const f = frame(encode({ type: 'relay-data', data: Buffer.alloc(64 * 1024, 0xab) }))
  let sent = 0
  const until = Date.now() + ms
  while (sent < bytes && Date.now() < until && !c.socket.destroyed) {
    if (c.socket.write(f)) {
      sent += f.length
      continue
    }
    sent += f.length
    const drained = await Promise.race([once(c.socket, 'drain').then(() => true), sleep(Math.max(1, until - Date.now())).then(() => false)])
    if (!drained) break
  }
  return sent
}

describe('abuse: rendezvous server', () => {
  it('row 1: 20 relay introductions from one registered agent, each side sending 16 MiB before its peer binds', async () => {
    const { server, port } = await startServer()
    const alice = generateKeyPair()
    const bob = generateKeyPair()
    const a = await register(port, alice, 'mallory-a')
    await register(port, bob, 'mallory-b')
    const rss0 = rssMb()
    const intros: Uint8Array[] = []
    for (let i = 0; i < 20; i++) {
      a.session!.write(encode({ type: 'introduce', reqId: i + 1, target: 'mallory-b', via: 'relay' }))
      const intro = await a.next((m) => m.type === 'introduction')
      if (intro.type !== 'introduction') throw new Error('unreachable')
      intros.push(intro.introId)
    }
    // Each introduction: the initiator binds and pours 16 MiB before the responder binds.
    const sides = await Promise.all(intros.map((id) => bindRelay(port, alice, id, true)))
    const poured = await Promise.all(sides.map((c) => pour(c, 16 * MiB, 3_000)))
    await sleep(300)
    const held = server.stats().heldBytes
    const rss1 = rssMb()
    expect(held).toBeLessThanOrEqual(20 * RELAY_EARLY_MAX_BYTES)
    // The 21st-and-later relayed opens from this key: at most 32 unused permissions.
    // And honest use is intact: a responder binding now gets RELAY_OK and the poured bytes, in order.
    const peer = await bindRelay(port, bob, intros[0]!, false)
    await peer.next((m) => m.type === 'relay-ok')
    const until = Date.now() + 10_000
    let got = 0
    while (got < Math.min(poured[0]!, 2 * MiB) && Date.now() < until) {
      got = peer.inbox.filter((m) => m.type === 'relay-data').reduce((n, m) => n + (m.type === 'relay-data' ? m.data.length : 0), 0)
      await sleep(20)
    }
    expect(got).toBeGreaterThanOrEqual(Math.min(poured[0]!, 2 * MiB) * 0.99)
    recordAbuse({ row: 'relay introductions from one registered agent (20, data before the peer binds)', metric: 'server-held bytes before pairing', before: '~16 MiB per introduction', now: Math.round(held / 1024), unit: 'KiB', bound: `≤ 256 KiB per side (${(20 * RELAY_EARLY_MAX_BYTES) / MiB} MiB for 20)` })
    recordAbuse({ row: 'relay introductions from one registered agent (20, data before the peer binds)', metric: 'process RSS (server + attacker sockets)', before: '191 → 518 MB', now: `${rss0} → ${rss1}`, unit: 'MB', bound: 'held bytes above' })
  }, 60_000)

  it('row 2: 200 unauthenticated connections trickling a partial frame are closed at an absolute deadline; a 1 MiB frame never starts', async () => {
    const { server, port } = await startServer({ authTimeoutMs: 1_500 })
    const rss0 = rssMb()
    // From one address: at most 32 are even accepted; the rest get RATE_LIMITED at once.
    const same = await Promise.all(Array.from({ length: 200 }, () => Conn.connect(port)))
    await sleep(300)
    expect(server.stats().unauth).toBeLessThanOrEqual(DEFAULT_SERVER_LIMITS.maxUnauthPerSource)
    for (const c of same) c.socket.destroy()
    await sleep(200)
    // From 200 addresses (127.0.0.2-201): a 1 MiB length prefix is refused at its 4 bytes…
    const big = await Promise.all(Array.from({ length: 200 }, (_, i) => Conn.connect(port, `127.0.0.${i + 2}`)))
    for (const c of big) c.socket.write(Buffer.from([0x00, 0x10, 0x00, 0x00]))
    const bigClosed = (await Promise.all(big.map((c) => c.closedWithin(1_000)))).filter(Boolean).length
    expect(bigClosed).toBe(200)
    // …and a partial frame within the clear limit, trickled a byte every 250 ms, is closed at the deadline.
    const started = Date.now()
    const slow = await Promise.all(Array.from({ length: 200 }, (_, i) => Conn.connect(port, `127.0.0.${i + 2}`)))
    for (const c of slow) c.socket.write(Buffer.from([0x00, 0x00, 0x03, 0x00])) // a 768-byte frame, then a byte at a time
    const trickle = setInterval(() => {
      for (const c of slow) if (!c.socket.destroyed) c.socket.write(Buffer.from([0x4e]))
    }, 250)
    await sleep(700)
    const held = server.stats().heldBytes
    const rss1 = rssMb()
    expect(server.stats().unauth).toBe(200)
    expect(held).toBeLessThanOrEqual(200 * (MAX_CLEAR_FRAME_BYTES + 4))
    const closedAt = await Promise.all(slow.map((c) => c.closed.then(() => Date.now() - started)))
    clearInterval(trickle)
    expect(Math.max(...closedAt)).toBeLessThan(1_500 + 1_000)
    for (let i = 0; i < 50 && server.stats().unauth > 0; i++) await sleep(20) // the server sees the last closes
    expect(server.stats().unauth).toBe(0)
    recordAbuse({ row: 'unauthenticated TCP connections trickling a partial frame (200)', metric: 'closed after', before: 'never closed', now: Math.max(...closedAt), unit: 'ms (deadline 1,500 here; 10,000 by default)', bound: 'absolute deadline from the accept; a 1 MiB prefix closed at once' })
    recordAbuse({ row: 'unauthenticated TCP connections trickling a partial frame (200)', metric: 'server-held bytes', before: 'RSS 87 → 455 MB', now: held, unit: 'bytes', bound: `≤ ${MAX_CLEAR_FRAME_BYTES + 4} B per connection; ≤ 32 per address, ≤ 4,096 in all` })
    recordAbuse({ row: 'unauthenticated TCP connections trickling a partial frame (200)', metric: 'process RSS (server + attacker sockets)', before: '87 → 455 MB', now: `${rss0} → ${rss1}`, unit: 'MB', bound: 'held bytes above' })
  }, 60_000)

  it('row 2, real deadlines: 10 s absolute from the accept through a stalled Noise handshake; 10 s per message once registered (fake timers)', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] })
    const { port } = await startServer()
    // SECURE, then the start of a Noise message (a 10 KiB length), trickled a byte every 5 s.
    const c = await Conn.connect(port)
    await c.next((m) => m.type === 'challenge')
    c.socket.write(frame(encode({ type: 'secure' })))
    c.socket.write(Buffer.from([0x00, 0x28, 0x00]))
    for (let t = 5_000; t < 10_000; t += 5_000) {
      vi.advanceTimersByTime(5_000)
      c.socket.write(Buffer.from([1]))
      expect(await c.closedWithin(50)).toBe(false)
    }
    vi.advanceTimersByTime(5_100)
    expect(await c.closedWithin(1_000)).toBe(true)
    // A message over MAX_AGENT_MESSAGE_BYTES is refused at its 3-byte prefix (secret-stream would take 16 MiB).
    const huge = await Conn.connect(port)
    await huge.next((m) => m.type === 'challenge')
    huge.socket.write(Buffer.concat([frame(encode({ type: 'secure' })), Buffer.from([0xff, 0xff, 0xff])]))
    expect(await huge.closedWithin(1_000)).toBe(true)
    expect(MAX_AGENT_MESSAGE_BYTES).toBeLessThan(0xffffff)
    vi.useRealTimers()
  }, 30_000)

  it('row 2, registered agent: a message started must end within 10 s, however it trickles', async () => {
    const { port } = await startServer({ messageTimeoutMs: 1_000 })
    const c = await register(port, generateKeyPair(), 'slowpoke')
    c.socket.write(Buffer.from([0x00, 0x10, 0x00])) // a 4 KiB Noise message, never finished
    const trickle = setInterval(() => c.socket.write(Buffer.from([1])), 200)
    try {
      expect(await c.closedWithin(3_000)).toBe(true)
    } finally {
      clearInterval(trickle)
    }
  })

  // The refusal log (src/common/refusal-log.ts) logs the first refusal of a kind (what +
  // code) at once and then one count per kind and window: at most one line a second per
  // kind, whatever the rate or the number of sources. This attack can cause at most 5
  // kinds (forged heartbeats, version-1 HELLOs, truncated datagrams; a bad TCP frame, a
  // request before registration).
  it('row 3: 10,000 bad requests from unauthenticated sources log one line a second at most per kind of refusal', async () => {
    let lines = 0
    const perKind = new Map<string, number>()
    const line = (_m: string, f?: unknown): void => {
      lines++
      const { what, code } = (f ?? {}) as { what?: string; code?: string }
      const k = `${what ?? '?'} ${code ?? '?'}`
      perKind.set(k, (perKind.get(k) ?? 0) + 1)
    }
    const counting: Logger = { error: line, warn: line, info: line, debug: line, child: () => counting }
    const { port } = await startServer({}, counting)
    const base = lines
    perKind.clear() // the start-up line
    const started = Date.now()
    const udp = dgram.createSocket('udp4')
    await new Promise<void>((resolve) => udp.bind(0, HOST, () => resolve()))
    try {
      // 9,000 datagrams: forged heartbeats, version-1 HELLOs, truncated frames (spoofable sources).
      for (let i = 0; i < 9_000; i++) {
        const kind = i % 3
        const b = kind === 0 ? encode({ type: 'heartbeat', token: randomBytes(16), seq: i, key: randomBytes(32) }) : kind === 1 ? Buffer.concat([Buffer.from('4e440101', 'hex'), Buffer.alloc(92)]) : Buffer.from('4e4402', 'hex')
        udp.send(b, port, HOST)
        if (i % 500 === 0) await sleep(2)
      }
      // 1,000 TCP connections with a bad frame each, in batches under the per-address cap.
      for (let batch = 0; batch < 50; batch++) {
        await Promise.all(
          Array.from({ length: 20 }, async (_, j) => {
            const c = await Conn.connect(port, `127.0.0.${2 + ((batch * 20 + j) % 200)}`)
            c.socket.write(j % 2 ? frame(encode({ type: 'list', reqId: 1 })) : Buffer.from('ffffffff', 'hex'))
            await c.closedWithin(1_000)
            c.socket.destroy()
          })
        )
      }
      await sleep(1_100) // the last aggregated line
    } finally {
      udp.close()
    }
    const seconds = (Date.now() - started) / 1000
    const logged = lines - base
    expect(perKind.size).toBeLessThanOrEqual(5)
    for (const [kind, n] of perKind) expect(n, kind).toBeLessThanOrEqual(Math.ceil(seconds) + 1)
    recordAbuse({ row: 'bad requests from spoofable / unauthenticated sources (10,000)', metric: 'log lines', before: '10,000', now: logged, unit: 'lines', bound: `≤ 1 a second per kind (+1), ${perKind.size} kinds: ${perKind.size * (Math.ceil(seconds) + 1)} in ${seconds.toFixed(1)} s` })
  }, 60_000)
})
