/**
 * The relay broker (src/rendezvous/relay.ts) with fake sockets and a fake clock:
 * pairing, forwarding as-is, limits ending both sides with RELAY_END RELAY_LIMIT, and
 * no connection left open when the peer never comes.
 */
import { EventEmitter } from 'node:events'
import type net from 'node:net'
import { describe, expect, it } from 'vitest'
import { NatdError } from '../../../src/protocol/errors.js'
import { silentLogger } from '../../../src/protocol/log.js'
import { decode, encode, FrameSplitter } from '../../../src/protocol/rendezvous.js'
import { Relay, RELAY_BIND_TIMEOUT_MS, type RelayLimits } from '../../../src/rendezvous/relay.js'

class FakeSocket extends EventEmitter {
  written: Buffer[] = []
  ended = false
  destroyed = false
  timeoutMs: number | null = null
  onTimeout: (() => void) | null = null
  paused = false
  write(b: Buffer): boolean {
    this.written.push(Buffer.from(b))
    return true
  }
  end(b?: Buffer): void {
    if (b) this.written.push(Buffer.from(b))
    this.ended = true
  }
  destroy(): void {
    this.destroyed = true
    this.emit('close')
  }
  setTimeout(ms: number, cb?: () => void): void {
    this.timeoutMs = ms
    if (cb) this.onTimeout = cb
  }
  pause(): void {
    this.paused = true
  }
  resume(): void {
    this.paused = false
  }
  cork(): void {}
  uncork(): void {}
  /** The messages written to this socket, decoded. */
  messages(): ReturnType<typeof decode>[] {
    const s = new FrameSplitter()
    return s.push(Buffer.concat(this.written)).map((f) => decode(f))
  }
}

const INTRO = Buffer.alloc(16, 7)
const LIMITS: RelayLimits = { maxBytes: 1000, maxSeconds: 60, rate: 1e9, maxTunnels: 1 }

function setup(limits = LIMITS): { relay: Relay; clock: { t: number; now(): number } } {
  const clock = { t: 1_000_000, now: () => clock.t }
  return { relay: new Relay(limits, clock, silentLogger), clock }
}

const asNet = (s: FakeSocket): net.Socket => s as unknown as net.Socket
const data = (n: number): Buffer => encode({ type: 'relay-data', data: Buffer.alloc(n, 1) })

describe('Relay', () => {
  it('pairs the two sides of an introduction, says RELAY_OK to both, and clears their bind timeouts', () => {
    const { relay } = setup()
    relay.allow(INTRO, 'alice', 'bob')
    const a = new FakeSocket()
    const b = new FakeSocket()
    relay.bind({ type: 'relay', introId: INTRO, initiator: true }, asNet(a))
    expect(a.timeoutMs).toBeGreaterThan(0)
    expect(a.timeoutMs).toBeLessThanOrEqual(RELAY_BIND_TIMEOUT_MS)
    relay.bind({ type: 'relay', introId: INTRO, initiator: false }, asNet(b))
    expect(a.messages()).toEqual([{ type: 'relay-ok' }])
    expect(b.messages()).toEqual([{ type: 'relay-ok' }])
    expect([a.timeoutMs, b.timeoutMs]).toEqual([0, 0])
    expect(relay.tunnels).toBe(1)
  })

  it('forwards RELAY_DATA as it is, including frames sent before the peer joined, and nothing else', () => {
    const { relay } = setup()
    relay.allow(INTRO, 'alice', 'bob')
    const a = new FakeSocket()
    const b = new FakeSocket()
    relay.bind({ type: 'relay', introId: INTRO, initiator: true }, asNet(a))
    relay.onFrame(asNet(a), data(5)) // the Noise handshake starts before bob binds
    relay.bind({ type: 'relay', introId: INTRO, initiator: false }, asNet(b))
    relay.onFrame(asNet(b), data(3))
    relay.onFrame(asNet(b), encode({ type: 'ping', seq: 1 })) // not data: dropped
    expect(b.messages().slice(1)).toEqual([{ type: 'relay-data', data: Buffer.alloc(5, 1) }])
    expect(a.messages().slice(1)).toEqual([{ type: 'relay-data', data: Buffer.alloc(3, 1) }])
  })

  it('ends both sides with RELAY_END RELAY_LIMIT past the byte limit', () => {
    const { relay } = setup()
    relay.allow(INTRO, 'alice', 'bob')
    const a = new FakeSocket()
    const b = new FakeSocket()
    relay.bind({ type: 'relay', introId: INTRO, initiator: true }, asNet(a))
    relay.bind({ type: 'relay', introId: INTRO, initiator: false }, asNet(b))
    relay.onFrame(asNet(a), data(600))
    relay.onFrame(asNet(a), data(600))
    for (const s of [a, b]) {
      expect(s.ended).toBe(true)
      expect(s.messages().at(-1)).toMatchObject({ type: 'relay-end', code: 'RELAY_LIMIT' })
    }
    expect(relay.tunnels).toBe(0)
  })

  it('refuses more tunnels than --relay-max-tunnels, unknown or expired introductions, and a side bound twice', () => {
    const { relay, clock } = setup()
    relay.allow(INTRO, 'alice', 'bob')
    relay.bind({ type: 'relay', introId: INTRO, initiator: true }, asNet(new FakeSocket()))
    const twice = (): void => relay.bind({ type: 'relay', introId: INTRO, initiator: true }, asNet(new FakeSocket()))
    expect(twice).toThrow(NatdError)
    relay.bind({ type: 'relay', introId: INTRO, initiator: false }, asNet(new FakeSocket()))
    const other = Buffer.alloc(16, 9)
    relay.allow(other, 'carol', 'dave')
    expect(() => relay.bind({ type: 'relay', introId: other, initiator: true }, asNet(new FakeSocket()))).toThrow(expect.objectContaining({ code: 'RELAY_LIMIT' }))
    expect(() => relay.bind({ type: 'relay', introId: Buffer.alloc(16, 1), initiator: true }, asNet(new FakeSocket()))).toThrow(expect.objectContaining({ code: 'PEER_UNKNOWN' }))
    const late = Buffer.alloc(16, 3)
    relay.allow(late, 'erin', 'frank')
    clock.t += RELAY_BIND_TIMEOUT_MS + 1
    expect(() => relay.bind({ type: 'relay', introId: late, initiator: true }, asNet(new FakeSocket()))).toThrow(expect.objectContaining({ code: 'PEER_UNKNOWN' }))
  })

  it('forgets expired permissions on prune() (the server sweep), without waiting for another introduction', () => {
    const { relay, clock } = setup()
    for (let i = 0; i < 100; i++) relay.allow(Buffer.alloc(16, 100 + i), 'alice', 'bob')
    clock.t += RELAY_BIND_TIMEOUT_MS / 2
    relay.allow(INTRO, 'carol', 'dave')
    relay.prune()
    expect(relay.permits).toBe(101)
    clock.t += RELAY_BIND_TIMEOUT_MS / 2 + 1
    relay.prune()
    expect(relay.permits).toBe(1) // carol's, granted later, still stands
    relay.bind({ type: 'relay', introId: INTRO, initiator: true }, asNet(new FakeSocket()))
  })

  it('closes a bound connection whose peer never comes, when its bind timeout fires', () => {
    const { relay } = setup()
    relay.allow(INTRO, 'alice', 'bob')
    const a = new FakeSocket()
    relay.bind({ type: 'relay', introId: INTRO, initiator: true }, asNet(a))
    a.onTimeout?.()
    expect(a.destroyed).toBe(true)
  })
})
