// NAT behaviour discovery (src/tunnel/nat-check.ts): the pure classification fed with
// samples, then the probe runner against the server's StunResponder through simulated
// NATs of every RFC 4787 kind, under fake timers:
//
//   NatCheck (10.0.0.2:4000) ── SimNat (mapping, filtering) 203.0.113.7 ──┬── 198.51.100.1:3478  main
//                                                                         ├── 198.51.100.1:3479  alt-port
//                                                                         ├── 198.51.100.2:3478  alt-ip
//                                                                         └── 198.51.100.2:3479  alt-both
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { formatEndpoint, sameEndpoint, type Endpoint } from '../../../src/protocol/endpoint.js'
import { monotonicClock } from '../../../src/protocol/clock.js'
import { decodeStun, encodeBindingRequest } from '../../../src/protocol/stun.js'
import { StunResponder } from '../../../src/rendezvous/stun-responder.js'
import {
  classifyFiltering,
  classifyMapping,
  classifyMappingBehaviour,
  emptySamples,
  NatCheck,
  natVerdictOf,
  type MappingBehaviour,
  type FilteringBehaviour,
  type NetcheckSamples
} from '../../../src/tunnel/nat-check.js'

const LOCAL: Endpoint = { host: '10.0.0.2', port: 4000 }
const PUBLIC_IP = '203.0.113.7'
const SERVER: Endpoint = { host: '198.51.100.1', port: 3478 }
const ALT_PORT = 3479
const ALT_HOST = '198.51.100.2'
const ep = (host: string, port: number): Endpoint => ({ host, port })
const M1 = ep(PUBLIC_IP, 4000)
const M2 = ep(PUBLIC_IP, 5000)
const M3 = ep(PUBLIC_IP, 6000)

const samples = (s: Partial<NetcheckSamples>): NetcheckSamples => ({ ...emptySamples([LOCAL]), ...s })
const OTHER = ep(ALT_HOST, ALT_PORT)

describe('classification (pure)', () => {
  it.each<[string, Partial<NetcheckSamples>, MappingBehaviour]>([
    ['no answer', {}, 'unknown'],
    ['our own address: no NAT', { primary: ep('10.0.0.2', 4000), otherAddress: OTHER }, 'none'],
    ['same mapping from the other address', { primary: M1, otherAddress: OTHER, otherIp: M1 }, 'endpoint-independent'],
    ['new mapping per address, same per port', { primary: M1, otherAddress: OTHER, otherIp: M2, otherIpAndPort: M2 }, 'address-dependent'],
    ['new mapping per address and port', { primary: M1, otherAddress: OTHER, otherIp: M2, otherIpAndPort: M3 }, 'address-and-port-dependent'],
    ['other address did not answer', { primary: M1, otherAddress: OTHER }, 'unknown'],
    ['no OTHER-ADDRESS, same mapping from the other port', { primary: M1, otherPort: M1 }, 'endpoint-independent'],
    ['no OTHER-ADDRESS, new mapping for the other port', { primary: M1, otherPort: M2 }, 'address-and-port-dependent'],
    ['no OTHER-ADDRESS, other port silent', { primary: M1 }, 'unknown']
  ])('mapping: %s', (_, s, want) => {
    expect(classifyMappingBehaviour(samples(s))).toBe(want)
  })

  it.each<[string, Partial<NetcheckSamples>, FilteringBehaviour]>([
    ['answer from the other address and port got in', { primary: M1, otherAddress: OTHER, filterChangeIpAndPort: true, filterChangePort: true }, 'endpoint-independent'],
    ['only the answer from the other port got in', { primary: M1, otherAddress: OTHER, filterChangeIpAndPort: false, filterChangePort: true }, 'address-dependent'],
    ['neither got in', { primary: M1, otherAddress: OTHER, filterChangeIpAndPort: false, filterChangePort: false }, 'address-and-port-dependent'],
    ['server without a second address', { primary: M1, filterChangeIpAndPort: null }, 'unknown'],
    ['no answer at all', {}, 'unknown']
  ])('filtering: %s', (_, s, want) => {
    expect(classifyFiltering(samples(s))).toBe(want)
  })

  it('the punching verdict: no NAT none, endpoint-independent easy, any other mapping hard', () => {
    expect(natVerdictOf('none')).toBe('none')
    expect(natVerdictOf('endpoint-independent')).toBe('easy')
    expect(natVerdictOf('address-dependent')).toBe('hard')
    expect(natVerdictOf('address-and-port-dependent')).toBe('hard')
    expect(natVerdictOf('unknown')).toBe('unknown')
  })

  it('the legacy two-port verdict', () => {
    expect(classifyMapping({ local: [LOCAL], primary: M1, alternate: M1 })).toBe('easy')
    expect(classifyMapping({ local: [LOCAL], primary: M1, alternate: M2 })).toBe('hard')
    expect(classifyMapping({ local: [LOCAL], primary: ep('10.0.0.2', 4000), alternate: null })).toBe('none')
    expect(classifyMapping({ local: [LOCAL], primary: M1, alternate: null })).toBe('unknown')
  })
})

// --- the runner through simulated NATs ---------------------------------------------

type Kind = 'endpoint-independent' | 'address-dependent' | 'address-and-port-dependent'

/**
 * One NAT in front of LOCAL. Mapping: which destinations share a public port. Filtering:
 * an inbound packet gets in only if the host has sent to its source (address, or
 * address and port) from that public port, or always (endpoint-independent).
 */
class SimNat {
  private readonly ports = new Map<string, number>()
  private readonly holes = new Set<string>()
  private nextPort = 40_000
  sentTo: Endpoint[] = []

  constructor(
    private readonly mapping: Kind | 'none',
    private readonly filtering: Kind,
    private readonly server: SimServer,
    private readonly deliver: (buf: Uint8Array, from: Endpoint) => void
  ) {}

  private publicPort(to: Endpoint): number {
    if (this.mapping === 'none') return LOCAL.port
    const key = this.mapping === 'endpoint-independent' ? '*' : this.mapping === 'address-dependent' ? to.host : formatEndpoint(to)
    let port = this.ports.get(key)
    if (port === undefined) {
      port = this.mapping === 'endpoint-independent' ? LOCAL.port : this.nextPort++
      this.ports.set(key, port)
    }
    return port
  }

  out(buf: Uint8Array, to: Endpoint): void {
    this.sentTo.push(to)
    const port = this.publicPort(to)
    this.holes.add(`${port} ${to.host}`)
    this.holes.add(`${port} ${formatEndpoint(to)}`)
    const from = ep(this.mapping === 'none' ? LOCAL.host : PUBLIC_IP, port)
    queueMicrotask(() => this.server.receive(buf, to, from, this))
  }

  in(buf: Uint8Array, from: Endpoint, to: Endpoint): void {
    const open =
      this.mapping === 'none' ||
      this.filtering === 'endpoint-independent' ||
      this.holes.has(`${to.port} ${this.filtering === 'address-dependent' ? from.host : formatEndpoint(from)}`)
    if (open) queueMicrotask(() => this.deliver(buf, from))
  }
}

class SimServer {
  readonly responder: StunResponder
  constructor(altHost: string | null) {
    this.responder = new StunResponder({ host: SERVER.host, port: SERVER.port, altPort: ALT_PORT, altHost })
  }

  receive(buf: Uint8Array, at: Endpoint, from: Endpoint, nat: SimNat): void {
    const slot = this.responder.slots().find((s) => sameEndpoint(this.responder.address(s), at))
    if (!slot) return // nothing listens there
    const answer = this.responder.respond(buf, slot, from)
    if (answer) nat.in(answer.bytes, this.responder.address(answer.via), from)
  }
}

function rig(mapping: Kind | 'none', filtering: Kind, altHost: string | null = ALT_HOST): { check: NatCheck; nat: SimNat } {
  const server = new SimServer(altHost)
  // eslint-disable-next-line prefer-const
  let check: NatCheck
  const nat = new SimNat(mapping, filtering, server, (buf, from) => check.onStun(buf, from))
  check = new NatCheck((buf, to) => nat.out(buf, to))
  return { check, nat }
}

describe('NatCheck.netcheck through simulated NATs', () => {
  beforeEach(() => vi.useFakeTimers())
  afterEach(() => vi.useRealTimers())

  const run = async <T>(p: Promise<T>): Promise<T> => {
    await vi.runAllTimersAsync()
    return p
  }

  it.each<[Kind | 'none', Kind, MappingBehaviour, FilteringBehaviour, string]>([
    ['endpoint-independent', 'address-and-port-dependent', 'endpoint-independent', 'address-and-port-dependent', 'easy'], // Linux MASQUERADE
    ['endpoint-independent', 'address-dependent', 'endpoint-independent', 'address-dependent', 'easy'],
    ['endpoint-independent', 'endpoint-independent', 'endpoint-independent', 'endpoint-independent', 'easy'], // full cone
    ['address-dependent', 'address-dependent', 'address-dependent', 'address-dependent', 'hard'],
    ['address-and-port-dependent', 'address-and-port-dependent', 'address-and-port-dependent', 'address-and-port-dependent', 'hard'], // --random-fully
    ['none', 'endpoint-independent', 'none', 'endpoint-independent', 'none']
  ])('mapping %s, filtering %s', async (mapping, filtering, wantMapping, wantFiltering, wantVerdict) => {
    const { check } = rig(mapping, filtering)
    const r = await run(check.netcheck(SERVER, ALT_PORT, [LOCAL]))
    expect({ mapping: r.mapping, filtering: r.filtering, verdict: r.verdict }).toEqual({ mapping: wantMapping, filtering: wantFiltering, verdict: wantVerdict })
    expect(r.samples.otherAddress).toEqual(OTHER)
  })

  it('a netcheck right after the start-up verdict still measures address-and-port filtering (no probe opened the answer paths)', async () => {
    const { check, nat } = rig('endpoint-independent', 'address-and-port-dependent')
    expect((await run(check.verdict(SERVER, ALT_PORT, [LOCAL]))).verdict).toBe('easy')
    expect(nat.sentTo.map(formatEndpoint)).not.toContain(formatEndpoint(OTHER))
    const r = await run(check.netcheck(SERVER, ALT_PORT, [LOCAL]))
    expect(r.filtering).toBe('address-and-port-dependent')
    // and again: a second netcheck sends to altIp:altPort only when the mapping is not endpoint-independent
    expect((await run(check.netcheck(SERVER, ALT_PORT, [LOCAL]))).filtering).toBe('address-and-port-dependent')
  })

  it('a server without --alt-host: no OTHER-ADDRESS, mapping by port only, filtering unknown', async () => {
    const { check } = rig('address-and-port-dependent', 'address-and-port-dependent', null)
    const r = await run(check.netcheck(SERVER, ALT_PORT, [LOCAL]))
    expect(r.samples.otherAddress).toBeNull()
    expect({ mapping: r.mapping, filtering: r.filtering, verdict: r.verdict }).toEqual({ mapping: 'address-and-port-dependent', filtering: 'unknown', verdict: 'hard' })
  })

  it('measures the RTT on the clock it is given (the one Clock type)', async () => {
    const server = new SimServer(ALT_HOST)
    let t = 1_000
    // eslint-disable-next-line prefer-const
    let check: NatCheck
    const nat = new SimNat('endpoint-independent', 'endpoint-independent', server, (buf, from) => {
      t += 42.5 // the answer comes 42.5 ms later on this clock
      check.onStun(buf, from)
    })
    check = new NatCheck((buf, to) => nat.out(buf, to), { ...monotonicClock, now: () => t })
    const r = await run(check.netcheck(SERVER, ALT_PORT, [LOCAL]))
    expect(r.rttMs).toBe(42.5)
  })

  it('no server: everything unknown, after the probe timeouts', async () => {
    const check = new NatCheck(() => undefined)
    const r = await run(check.netcheck(SERVER, ALT_PORT, [LOCAL]))
    expect({ mapping: r.mapping, filtering: r.filtering, verdict: r.verdict, rttMs: r.rttMs }).toEqual({ mapping: 'unknown', filtering: 'unknown', verdict: 'unknown', rttMs: null })
  })
})

describe('StunResponder', () => {
  const responder = new StunResponder({ host: SERVER.host, port: SERVER.port, altPort: ALT_PORT, altHost: ALT_HOST })

  it('refuses an alternate host beside a wildcard main host', () => {
    expect(() => new StunResponder({ host: '0.0.0.0', port: 3478, altPort: 3479, altHost: ALT_HOST })).toThrow(/specific main host/)
  })

  it('answers 56 bytes at most with --alt-host (2.8× a 20-byte request), 32 without', () => {
    const req = encodeBindingRequest(new Uint8Array(12))
    expect(req.length).toBe(20)
    expect(responder.respond(req, 'main', M1)!.bytes.length).toBe(56)
    const plain = new StunResponder({ host: SERVER.host, port: SERVER.port, altPort: ALT_PORT, altHost: null })
    expect(plain.respond(req, 'main', M1)!.bytes.length).toBe(32)
  })

  it('answers a CHANGE-REQUEST from the named socket, and ignores a change it cannot make', () => {
    const txid = new Uint8Array(12)
    expect(responder.respond(encodeBindingRequest(txid, { ip: true, port: true }), 'main', M1)!.via).toBe('alt-both')
    expect(responder.respond(encodeBindingRequest(txid, { port: true }), 'main', M1)!.via).toBe('alt-port')
    expect(responder.respond(encodeBindingRequest(txid, { ip: true }), 'alt-both', M1)!.via).toBe('alt-port')
    const m = decodeStun(responder.respond(encodeBindingRequest(txid), 'main', M1)!.bytes)
    expect({ origin: m.responseOrigin, other: m.otherAddress }).toEqual({ origin: SERVER, other: OTHER })
    const plain = new StunResponder({ host: SERVER.host, port: SERVER.port, altPort: ALT_PORT, altHost: null })
    const a = plain.respond(encodeBindingRequest(txid, { ip: true, port: true }), 'main', M1)!
    expect(a.via).toBe('main')
    expect(decodeStun(a.bytes).otherAddress).toBeNull()
    expect(plain.respond(encodeBindingRequest(txid, { port: true }), 'main', M1)!.via).toBe('alt-port')
  })
})
