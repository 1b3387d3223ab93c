/**
 * The relay broker (src/rendezvous/relay.ts) with fake sockets and a fake clock:
 * pairing, forwarding as-is, limits ending both sides with RELAY_END RELAY_LIMIT, no
 * connection left open when the peer never comes, and only the agent introduced on a
 * side (its RELAY signed over its connection's challenge) may bind that side.
 */
import type net from 'node:net'
import { describe, expect, it } from 'vitest'
import { NatdError, ProtocolError } from '../../../src/protocol/errors.js'
import { silentLogger } from '../../../src/protocol/log.js'
import { generateKeyPair, sign, type KeyPair } from '../../../src/protocol/identity.js'
import { decode, encode, encodeRelay, frame, type Message, relaySigned } from '../../../src/protocol/rendezvous.js'
import { FakeClock, prng, randInt } from '../helpers.js'
import { Relay, RELAY_BIND_TIMEOUT_MS, RELAY_EARLY_MAX_BYTES, RELAY_EARLY_PAUSE_BYTES, type RelayLimits } from '../../../src/rendezvous/relay.js'
import { END_LINGER_MS } from '../../../src/rendezvous/tcp-gate.js'
import { FakeSocket } from './fake-socket.js'


const INTRO = Buffer.alloc(16, 7)
const ALICE = generateKeyPair() // introduced as the initiator
const BOB = generateKeyPair() // introduced as the responder
const MALLORY = generateKeyPair()
const KEYS: [Buffer, Buffer] = [ALICE.publicKey, BOB.publicKey]
const NAMES: [string, string] = ['alice', 'bob']

let nonces = 0
/** A fresh challenge nonce, as each connection gets. */
const nextNonce = (): Buffer => Buffer.alloc(32, ++nonces)

/** The RELAY `signer` sends for `introId`'s side, signed over `nonce`, as the server decodes it. */
function relayMsg(signer: KeyPair, nonce: Buffer, initiator: boolean, introId: Buffer = INTRO): Extract<Message, { type: 'relay' }> {
  const m = decode(encodeRelay(introId, initiator, sign(relaySigned(nonce, introId, initiator), signer.secretKey)))
  if (m.type !== 'relay') throw new Error(`decoded ${m.type}`)
  return m
}

const LIMITS: RelayLimits = { maxBytes: 1000, maxSeconds: 60, rate: 1e9, maxTunnels: 1 }

function setup(limits = LIMITS): { relay: Relay; clock: { t: number; now(): number } } {
  const clock = { t: 1_000_000, now: () => clock.t }
  return { relay: new Relay(limits, clock, silentLogger), clock }
}

/** A relay whose clock and timers are fake time: its deadlines run when the test moves time on. */
function setupTimed(limits = LIMITS): { relay: Relay; time: FakeClock; a: FakeSocket; b: FakeSocket } {
  const time = new FakeClock()
  const relay = new Relay(limits, time, silentLogger, time)
  relay.allow(INTRO, NAMES, KEYS)
  const a = new FakeSocket()
  const b = new FakeSocket()
  bindAs(relay, a, true)
  bindAs(relay, b, false)
  return { relay, time, a, b }
}

const asNet = (s: FakeSocket): net.Socket => s as unknown as net.Socket
/** `socket` binds its side of `introId` as the agent introduced there (alice the initiator, bob the responder). */
function bindAs(relay: Relay, socket: FakeSocket, initiator: boolean, introId: Buffer = INTRO): void {
  const nonce = nextNonce()
  relay.bind(relayMsg(initiator ? ALICE : BOB, nonce, initiator, introId), nonce, asNet(socket))
}
const data = (n: number): Buffer => encode({ type: 'relay-data', data: Buffer.alloc(n, 1) })

describe('Relay', () => {
  it('pairs the two sides of an introduction, says RELAY_OK to both, and clears their bind timeouts', () => {
    const { relay } = setup()
    relay.allow(INTRO, NAMES, KEYS)
    const a = new FakeSocket()
    const b = new FakeSocket()
    bindAs(relay, a, true)
    expect(a.timeoutMs).toBeGreaterThan(0)
    expect(a.timeoutMs).toBeLessThanOrEqual(RELAY_BIND_TIMEOUT_MS)
    bindAs(relay, b, false)
    expect(a.messages()).toEqual([{ type: 'relay-ok' }])
    expect(b.messages()).toEqual([{ type: 'relay-ok' }])
    expect([a.timeoutMs, b.timeoutMs]).toEqual([0, 0])
    expect(relay.tunnels).toBe(1)
  })

  it('forwards RELAY_DATA as it is, including frames sent before the peer joined, and nothing else', () => {
    const { relay } = setup()
    relay.allow(INTRO, NAMES, KEYS)
    const a = new FakeSocket()
    const b = new FakeSocket()
    bindAs(relay, a, true)
    relay.onFrame(asNet(a), data(5)) // the Noise handshake starts before bob binds
    bindAs(relay, b, false)
    relay.onFrame(asNet(b), data(3))
    relay.onFrame(asNet(b), encode({ type: 'ping', seq: 1 })) // not data: dropped
    expect(b.messages().slice(1)).toEqual([{ type: 'relay-data', data: Buffer.alloc(5, 1) }])
    expect(a.messages().slice(1)).toEqual([{ type: 'relay-data', data: Buffer.alloc(3, 1) }])
  })

  it('once paired, passes RELAY_DATA on from raw reads cut anywhere, as slices of the reads, and drops other frames', () => {
    const frames = [data(300), encode({ type: 'ping', seq: 1 }), Buffer.alloc(0), Buffer.from([1, 2]), data(0), data(70)]
    const stream = Buffer.concat(frames.map((f) => frame(f)))
    const want = Buffer.concat([data(300), data(0), data(70)].map((f) => frame(f)))
    const rand = prng(5)
    for (let round = 0; round < 40; round++) {
      const { relay } = setup({ ...LIMITS, maxBytes: 1e6 })
      relay.allow(INTRO, NAMES, KEYS)
      const a = new FakeSocket()
      const b = new FakeSocket()
      bindAs(relay, a, true)
      bindAs(relay, b, false)
      expect(relay.relaying(asNet(a))).toBe(true)
      b.written = [] // RELAY_OK
      const reads: Buffer[] = []
      for (let i = 0; i < stream.length; ) {
        const n = round === 0 ? 1 : randInt(rand, 1, 120)
        const r = Buffer.allocUnsafeSlow(Math.min(n, stream.length - i)) // an ArrayBuffer of its own, so views of it are recognisable
        stream.copy(r, 0, i, i + r.length)
        reads.push(r)
        i += n
      }
      const raw: Buffer[] = []
      const write = b.write.bind(b)
      b.write = (x: Buffer): boolean => (raw.push(x), write(x))
      for (const r of reads) relay.onBytes(asNet(a), r, 1024)
      expect(Buffer.concat(b.written).toString('hex')).toBe(want.toString('hex'))
      // Bodies go on as views of the reads (only the 8-byte headers are copied).
      const copied = raw.filter((x) => !reads.some((r) => r.buffer === x.buffer)).reduce((n, x) => n + x.length, 0)
      expect(copied).toBe(8 * 3)
    }
  })

  it('a paired side sending a frame longer than the limit is a ProtocolError (the gate closes it)', () => {
    const { relay } = setup()
    relay.allow(INTRO, NAMES, KEYS)
    const a = new FakeSocket()
    bindAs(relay, a, true)
    bindAs(relay, new FakeSocket(), false)
    const big = Buffer.alloc(4)
    big.writeUInt32BE(1025)
    expect(() => relay.onBytes(asNet(a), big, 1024)).toThrow(ProtocolError)
  })

  it('ends both sides with RELAY_END RELAY_LIMIT past the byte limit', () => {
    const { relay } = setup()
    relay.allow(INTRO, NAMES, KEYS)
    const a = new FakeSocket()
    const b = new FakeSocket()
    bindAs(relay, a, true)
    bindAs(relay, b, false)
    relay.onFrame(asNet(a), data(600))
    relay.onFrame(asNet(a), data(600))
    for (const s of [a, b]) {
      expect(s.ended).toBe(true)
      expect(s.messages().at(-1)).toMatchObject({ type: 'relay-end', code: 'RELAY_LIMIT' })
    }
    expect(relay.tunnels).toBe(0)
  })

  it('a side in the middle of a passed frame when the limit ends the tunnel gets the rest of that frame, then its RELAY_END (never inside the frame)', () => {
    const { relay } = setup({ ...LIMITS, maxBytes: 1000 })
    relay.allow(INTRO, NAMES, KEYS)
    const a = new FakeSocket()
    const b = new FakeSocket()
    bindAs(relay, a, true)
    bindAs(relay, b, false)
    const half = frame(data(300))
    relay.onBytes(asNet(a), half.subarray(0, 100), 1024) // b now holds a frame's first 100 bytes
    relay.onBytes(asNet(b), Buffer.concat([frame(data(600)), frame(data(600))]), 1024) // over the limit: the tunnel ends
    expect(a.ended).toBe(true)
    expect(a.messages().at(-1)).toMatchObject({ type: 'relay-end', code: 'RELAY_LIMIT' })
    expect(b.ended).toBe(false) // its RELAY_END waits for the frame's end
    relay.onBytes(asNet(a), Buffer.concat([half.subarray(100), frame(data(50))]), 1024) // the rest, and a frame that is not passed
    expect(b.ended).toBe(true)
    const got = b.messages()
    expect(got.at(-1)).toMatchObject({ type: 'relay-end', code: 'RELAY_LIMIT' })
    expect(got.filter((m) => m.type !== 'relay-ok').length).toBe(2) // the whole frame, then RELAY_END
  })

  it('ends both sides with RELAY_END RELAY_LIMIT when --relay-max-seconds pass, and destroys them if they linger (fake time)', () => {
    const { relay, time, a, b } = setupTimed()
    time.advance(LIMITS.maxSeconds * 1000 - 1)
    expect([a.ended, b.ended, relay.tunnels]).toEqual([false, false, 1])
    time.advance(1)
    for (const s of [a, b]) {
      expect(s.ended).toBe(true)
      expect(s.messages().at(-1)).toMatchObject({ type: 'relay-end', code: 'RELAY_LIMIT', message: expect.stringContaining(`${LIMITS.maxSeconds} s`) })
    }
    expect(relay.tunnels).toBe(0)
    time.advance(END_LINGER_MS - 1)
    expect([a.destroyed, b.destroyed]).toEqual([false, false])
    time.advance(1)
    expect([a.destroyed, b.destroyed]).toEqual([true, true])
    expect(time.pending).toBe(0) // nothing left pending
  })

  it('a side over --relay-rate stops being read until its one-second window ends, then reads on (fake time)', () => {
    const frameBytes = data(30).length
    const { relay, time, a, b } = setupTimed({ ...LIMITS, maxBytes: 1e9, rate: 2 * frameBytes + 1 })
    time.advance(300) // the window started at the pairing
    relay.onFrame(asNet(a), data(30))
    relay.onFrame(asNet(a), data(30))
    expect(a.paused).toBe(false) // within the rate
    relay.onFrame(asNet(a), data(30))
    expect(a.paused).toBe(true)
    expect(b.paused).toBe(false) // per direction
    expect(b.messages().filter((m) => m.type === 'relay-data')).toHaveLength(3) // what was read is delivered
    time.advance(699)
    expect(a.paused).toBe(true)
    time.advance(1) // the window's end: 1 s after the pairing
    expect(a.paused).toBe(false)
  })

  it('refuses more tunnels than --relay-max-tunnels, unknown or expired introductions, and a side bound twice', () => {
    const { relay, clock } = setup()
    relay.allow(INTRO, NAMES, KEYS)
    bindAs(relay, new FakeSocket(), true)
    const twice = (): void => bindAs(relay, new FakeSocket(), true)
    expect(twice).toThrow(NatdError)
    expect(twice).toThrow(expect.objectContaining({ code: 'BAD_REQUEST' }))
    bindAs(relay, new FakeSocket(), false)
    const other = Buffer.alloc(16, 9)
    relay.allow(other, ['carol', 'dave'], [ALICE.publicKey, BOB.publicKey])
    expect(() => bindAs(relay, new FakeSocket(), true, other)).toThrow(expect.objectContaining({ code: 'RELAY_LIMIT' }))
    expect(() => bindAs(relay, new FakeSocket(), true, Buffer.alloc(16, 1))).toThrow(expect.objectContaining({ code: 'PEER_UNKNOWN' }))
    const late = Buffer.alloc(16, 3)
    relay.allow(late, ['erin', 'frank'], KEYS)
    clock.t += RELAY_BIND_TIMEOUT_MS + 1
    expect(() => bindAs(relay, new FakeSocket(), true, late)).toThrow(expect.objectContaining({ code: 'PEER_UNKNOWN' }))
  })

  it('forgets expired permissions on prune() (the server sweep), without waiting for another introduction', () => {
    const { relay, clock } = setup({ ...LIMITS, maxPermitsPerKey: 1000 })
    for (let i = 0; i < 100; i++) relay.allow(Buffer.alloc(16, 100 + i), NAMES, KEYS)
    clock.t += RELAY_BIND_TIMEOUT_MS / 2
    relay.allow(INTRO, ['carol', 'dave'], KEYS)
    relay.prune()
    expect(relay.permits).toBe(101)
    clock.t += RELAY_BIND_TIMEOUT_MS / 2 + 1
    relay.prune()
    expect(relay.permits).toBe(1) // carol's, granted later, still stands
    bindAs(relay, new FakeSocket(), true)
  })

  it('closes a bound connection whose peer never comes, when its bind timeout fires', () => {
    const { relay } = setup()
    relay.allow(INTRO, NAMES, KEYS)
    const a = new FakeSocket()
    bindAs(relay, a, true)
    a.onTimeout?.()
    expect(a.destroyed).toBe(true)
  })

  it('closes a bound side whose peer never comes when its permission expires, however it trickles (absolute, on prune)', () => {
    const { relay, clock } = setup()
    relay.allow(INTRO, NAMES, KEYS)
    const a = new FakeSocket()
    bindAs(relay, a, true)
    for (let t = 0; t < RELAY_BIND_TIMEOUT_MS; t += 5_000) {
      clock.t += 5_000
      relay.onFrame(asNet(a), data(1)) // a byte every 5 s would reset an idle timer
      relay.prune()
      expect(a.destroyed).toBe(false)
    }
    clock.t += 1
    relay.prune()
    expect(a.destroyed).toBe(true)
    expect(relay.earlyBytes).toBe(0)
    expect(relay.permits).toBe(0)
  })

  it('holds at most RELAY_EARLY_MAX_BYTES per side before the pairing: stops reading the socket, reads on after, delivers all in order', () => {
    const { relay } = setup({ ...LIMITS, maxBytes: 1e9 })
    relay.allow(INTRO, NAMES, KEYS)
    const a = new FakeSocket()
    bindAs(relay, a, true)
    let sent = 0
    // The server calls held() after each read; a paused socket delivers nothing more.
    while (!a.paused) {
      relay.onFrame(asNet(a), data(60_000))
      sent++
      relay.held(asNet(a), 0)
    }
    expect(relay.earlyBytes).toBeGreaterThanOrEqual(RELAY_EARLY_PAUSE_BYTES)
    expect(relay.earlyBytes).toBeLessThanOrEqual(RELAY_EARLY_MAX_BYTES)
    // A partial frame counts too.
    const c = new FakeSocket()
    relay.allow(Buffer.alloc(16, 42), NAMES, KEYS)
    bindAs(relay, c, true, Buffer.alloc(16, 42))
    relay.held(asNet(c), RELAY_EARLY_PAUSE_BYTES)
    expect(c.paused).toBe(true)
    const b = new FakeSocket()
    bindAs(relay, b, false)
    expect(a.paused).toBe(false)
    expect(relay.earlyBytes).toBe(0)
    const got = b.messages().slice(1)
    expect(got).toHaveLength(sent)
    expect(got.every((m) => m.type === 'relay-data' && m.data.length === 60_000)).toBe(true)
  })

  it('holds at most maxEarlyTotalBytes for all unpaired sides together: past it every one stops being read, and a newcomer at its bind; pairing reads on', () => {
    const { relay } = setup({ ...LIMITS, maxBytes: 1e9, maxTunnels: 100, maxEarlyTotalBytes: 300_000 })
    // Ten introductions, their initiators sending 60 KB each before any responder binds (under the per-side bound).
    const ids = Array.from({ length: 10 }, (_, i) => Buffer.alloc(16, 100 + i))
    const sides = ids.map((id) => {
      relay.allow(id, NAMES, KEYS)
      const s = new FakeSocket()
      bindAs(relay, s, true, id)
      return s
    })
    for (const s of sides) {
      if (s.paused) continue
      relay.onFrame(asNet(s), data(60_000))
      relay.held(asNet(s), 0)
    }
    expect(relay.earlyBytes).toBeGreaterThanOrEqual(300_000)
    expect(relay.earlyBytes).toBeLessThanOrEqual(300_000 + 60_100)
    expect(sides.every((s) => s.paused)).toBe(true)
    // A side that binds now is paused at once.
    relay.allow(Buffer.alloc(16, 200), NAMES, KEYS)
    const late = new FakeSocket()
    bindAs(relay, late, true, Buffer.alloc(16, 200))
    expect(late.paused).toBe(true)
    // Its peer binds: the pair starts, is read on, and its early bytes leave the total.
    const before = relay.earlyBytes
    const peer = new FakeSocket()
    bindAs(relay, peer, false, ids[0])
    expect(sides[0]!.paused).toBe(false)
    expect(relay.earlyBytes).toBeLessThan(before)
    expect(peer.messages().slice(1)).toHaveLength(1)
  })

  it('lets one key hold at most maxPermitsPerKey unused permissions (RELAY_LIMIT); a used or expired one frees its place', () => {
    const { relay, clock } = setup({ ...LIMITS, maxPermitsPerKey: 3 })
    for (let i = 0; i < 3; i++) relay.allow(Buffer.alloc(16, 50 + i), NAMES, KEYS)
    expect(() => relay.allow(Buffer.alloc(16, 60), NAMES, KEYS)).toThrow(expect.objectContaining({ code: 'RELAY_LIMIT' }))
    relay.allow(Buffer.alloc(16, 61), NAMES, [BOB.publicKey, ALICE.publicKey]) // bob asking: his own count
    bindAs(relay, new FakeSocket(), true, Buffer.alloc(16, 50))
    bindAs(relay, new FakeSocket(), false, Buffer.alloc(16, 50))
    relay.allow(Buffer.alloc(16, 62), NAMES, KEYS) // the used one freed a place
    expect(() => relay.allow(Buffer.alloc(16, 63), NAMES, KEYS)).toThrow(expect.objectContaining({ code: 'RELAY_LIMIT' }))
    clock.t += RELAY_BIND_TIMEOUT_MS + 1
    relay.allow(Buffer.alloc(16, 64), NAMES, KEYS) // expired ones too (allow prunes first)
  })

  describe('only the agent introduced on a side binds it', () => {
    // Each way a RELAY can be wrong, made on a connection whose challenge nonce is `nonce`.
    const wrong: Array<[string, (nonce: Buffer) => Extract<Message, { type: 'relay' }>]> = [
      ['signed by a third key', (nonce) => relayMsg(MALLORY, nonce, true)],
      ['signed by the agent of the other side', (nonce) => relayMsg(BOB, nonce, true)],
      ["signed over another connection's nonce (a replayed RELAY)", () => relayMsg(ALICE, Buffer.alloc(32, 0xee), true)],
      ['signed for the other side', (nonce) => ({ ...relayMsg(ALICE, nonce, false), initiator: true })],
      ['signed for another introduction', (nonce) => ({ ...relayMsg(ALICE, nonce, true, Buffer.alloc(16, 8)), introId: INTRO })],
      ['with a zero signature', (nonce) => ({ ...relayMsg(ALICE, nonce, true), signature: Buffer.alloc(64) })]
    ]

    for (const [label, make] of wrong) {
      it(`a RELAY ${label} is refused UNAUTHORIZED and does not take the side; the right agent then binds`, () => {
        const { relay } = setup()
        relay.allow(INTRO, NAMES, KEYS)
        const intruder = new FakeSocket()
        const nonce = nextNonce()
        let err: unknown
        try {
          relay.bind(make(nonce), nonce, asNet(intruder))
        } catch (e) {
          err = e
        }
        expect(err).toBeInstanceOf(NatdError)
        expect(err).toMatchObject({ code: 'UNAUTHORIZED', message: 'the initiator side of this introduction must be bound by the agent introduced there' })
        expect(intruder.timeoutMs).toBeNull() // not bound: no bind timer set on it
        expect(relay.permits).toBe(1)
        // The real agents bind both sides; the intruder's frames go nowhere.
        const a = new FakeSocket()
        const b = new FakeSocket()
        bindAs(relay, a, true)
        relay.onFrame(asNet(intruder), data(9))
        bindAs(relay, b, false)
        expect(relay.tunnels).toBe(1)
        expect(a.messages()).toEqual([{ type: 'relay-ok' }])
        expect(b.messages()).toEqual([{ type: 'relay-ok' }])
        expect(intruder.written).toEqual([])
        relay.onFrame(asNet(a), data(2))
        expect(b.messages().slice(1)).toEqual([{ type: 'relay-data', data: Buffer.alloc(2, 1) }])
      })
    }

    it('the responder side checks the responder key: alice cannot bind it, bob can', () => {
      const { relay } = setup()
      relay.allow(INTRO, NAMES, KEYS)
      const nonce = nextNonce()
      expect(() => relay.bind(relayMsg(ALICE, nonce, false), nonce, asNet(new FakeSocket()))).toThrow(
        expect.objectContaining({ code: 'UNAUTHORIZED', message: 'the responder side of this introduction must be bound by the agent introduced there' })
      )
      bindAs(relay, new FakeSocket(), false)
      expect(() => bindAs(relay, new FakeSocket(), false)).toThrow(expect.objectContaining({ code: 'BAD_REQUEST' })) // now taken
    })

    it('an unknown introduction is PEER_UNKNOWN whoever signs it (the server says nothing about keys)', () => {
      const { relay } = setup()
      const nonce = nextNonce()
      expect(() => relay.bind(relayMsg(MALLORY, nonce, true), nonce, asNet(new FakeSocket()))).toThrow(expect.objectContaining({ code: 'PEER_UNKNOWN' }))
    })
  })
})
