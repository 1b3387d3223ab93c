/**
 * NAT behaviour discovery (RFC 5780 §4.3, §4.4, in RFC 4787's terms) from the agent's
 * own tunnel socket, so what it measures is the mapping peers punch to.
 *
 * The rendezvous server answers STUN Binding requests on its main address S = ip:port.
 * Started with --alt-host it also listens on altIp:port, ip:altPort and altIp:altPort,
 * says so in OTHER-ADDRESS, and answers a CHANGE-REQUEST from the other socket. Then:
 *
 *   test I    → ip:port                      mapped M1, learns OTHER-ADDRESS
 *   filter II → ip:port, change ip+port      answered from altIp:altPort?  yes: endpoint-independent filtering
 *   filter III→ ip:port, change port         answered from ip:altPort?     yes: address-dependent, else address-and-port-dependent
 *   map II    → altIp:port                   M2 == M1: endpoint-independent mapping
 *   map III   → altIp:altPort (M2 != M1)     M3 == M2: address-dependent, else address-and-port-dependent
 *
 * The filtering tests run before the mapping tests, and map III only when the mapping
 * already differs per address: the NAT must not have seen us send to the sockets a
 * filtering answer comes from, or it lets the answer in through that hole. (The agent's
 * start-up check and the tests below send to altIp:port at most; on a NAT that filters
 * by address only, a probe to altIp in the last minutes can make it look
 * endpoint-independent. Linux conntrack filters by address and port, so it cannot.)
 *
 * Without OTHER-ADDRESS (a server without --alt-host) there are no filtering tests and
 * the mapping test compares ip:port with ip:port+1 (the server's --alt-port): a NAT
 * that maps per address only would pass as endpoint-independent.
 *
 * The verdict the agent tells the server and punches by: no NAT = 'none',
 * endpoint-independent mapping = 'easy', any other mapping = 'hard' (birthday punching).
 *
 * The hop check (hop-check.ts) runs here too: Binding requests to S with a limited TTL,
 * whose answers say how many routers away the server is.
 *
 * Classification is pure (classify*); the probe runner gets its send function injected.
 */
import { sameEndpoint, type Endpoint } from '../protocol/endpoint.js'
import { randomBytes } from '../protocol/identity.js'
import { monotonicClock, type Timer, type TimerClock } from '../protocol/clock.js'
import type { NatVerdict } from '../protocol/rendezvous.js'
import { decodeStun, encodeBindingRequest, type FilteringBehaviour, type MappingBehaviour } from '../protocol/stun.js'
import { classifyHops, HOP_PROBE_COPIES, HOP_PROBE_TTLS, HOP_SETTLE_MIN_MS, type HopVerdict } from './hop-check.js'

/** One STUN round trip may take this long; two tries per probe. A filtering probe that
 *  gets no answer (the NAT dropped it, as it should) costs both: 1.4 s. */
export const NAT_CHECK_TIMEOUT_MS = 700
export const NAT_CHECK_TRIES = 2

// Defined in protocol/stun.ts (the local API's netcheck result names them too).
export type { FilteringBehaviour, MappingBehaviour } from '../protocol/stun.js'

export interface MappingSamples {
  local: Endpoint[]
  /** Mapped endpoint seen by the server's main port, then by its alternate port (null: no answer). */
  primary: Endpoint | null
  alternate: Endpoint | null
}

/** The legacy two-port verdict (no OTHER-ADDRESS): same mapping from both ports = easy. */
export function classifyMapping(s: MappingSamples): NatVerdict {
  if (!s.primary) return 'unknown'
  if (s.local.some((l) => l.host === s.primary!.host)) return 'none'
  if (!s.alternate) return 'unknown'
  return sameEndpoint(s.primary, s.alternate) ? 'easy' : 'hard'
}

/** What the probes saw; null = no answer (or test not run). */
export interface NetcheckSamples {
  /** Our host's addresses (at the tunnel port). */
  local: Endpoint[]
  /** Test I: mapped endpoint seen by ip:port. */
  primary: Endpoint | null
  /** OTHER-ADDRESS from test I: the server's altIp:altPort (null: no RFC 5780 support). */
  otherAddress: Endpoint | null
  /** Mapping test II: seen by altIp:port. */
  otherIp: Endpoint | null
  /** Mapping test III: seen by altIp:altPort (run only when test II differed). */
  otherIpAndPort: Endpoint | null
  /** Legacy port-only test without OTHER-ADDRESS: seen by ip:port+1. */
  otherPort: Endpoint | null
  /** Filtering tests: did an answer from the other address and port / the other port get in? null = not run. */
  filterChangeIpAndPort: boolean | null
  filterChangePort: boolean | null
}

/** Samples before any test has answered. */
export function emptySamples(local: Endpoint[]): NetcheckSamples {
  return { local, primary: null, otherAddress: null, otherIp: null, otherIpAndPort: null, otherPort: null, filterChangeIpAndPort: null, filterChangePort: null }
}

export function classifyMappingBehaviour(s: NetcheckSamples): MappingBehaviour {
  const m1 = s.primary
  if (!m1) return 'unknown'
  if (s.local.some((l) => l.host === m1.host)) return 'none'
  if (s.otherAddress) {
    if (!s.otherIp) return 'unknown'
    if (sameEndpoint(s.otherIp, m1)) return 'endpoint-independent'
    if (!s.otherIpAndPort) return 'unknown'
    return sameEndpoint(s.otherIpAndPort, s.otherIp) ? 'address-dependent' : 'address-and-port-dependent'
  }
  // Port-only comparison: a mapping that changes with the port changes per address and port.
  if (!s.otherPort) return 'unknown'
  return sameEndpoint(s.otherPort, m1) ? 'endpoint-independent' : 'address-and-port-dependent'
}

export function classifyFiltering(s: NetcheckSamples): FilteringBehaviour {
  if (!s.primary || !s.otherAddress || s.filterChangeIpAndPort === null) return 'unknown'
  if (s.filterChangeIpAndPort) return 'endpoint-independent'
  if (s.filterChangePort === null) return 'unknown'
  return s.filterChangePort ? 'address-dependent' : 'address-and-port-dependent'
}

/** The punching verdict: no NAT = none, endpoint-independent mapping = easy, else hard. */
export function natVerdictOf(mapping: MappingBehaviour): NatVerdict {
  switch (mapping) {
    case 'none':
      return 'none'
    case 'endpoint-independent':
      return 'easy'
    case 'address-dependent':
    case 'address-and-port-dependent':
      return 'hard'
    case 'unknown':
      return 'unknown'
  }
}

export interface NetcheckReport {
  samples: NetcheckSamples
  mapping: MappingBehaviour
  filtering: FilteringBehaviour
  verdict: NatVerdict
  /** Test I's round trip in ms (null: no answer). */
  rttMs: number | null
}

/** One Binding answer: what the server saw and where it says it answered from. */
export interface StunAnswer {
  mapped: Endpoint | null
  responseOrigin: Endpoint | null
  otherAddress: Endpoint | null
  /** Where the answer came from (the datagram's source). */
  from: Endpoint
}

export class NatCheck {
  private readonly waiting = new Map<string, (answer: StunAnswer) => void>()

  constructor(
    /** Sends from the tunnel socket; `ttl` limits the IP TTL (the hop check), default the system's. */
    private readonly send: (buf: Uint8Array, to: Endpoint, ttl?: number) => void,
    private readonly clock: TimerClock = monotonicClock
  ) {}

  /** A STUN message arrived on the tunnel socket (from anywhere: change answers come from the server's other sockets). */
  onStun(buf: Uint8Array, from: Endpoint = { host: '', port: 0 }): void {
    try {
      const msg = decodeStun(buf)
      if (msg.method !== 'binding-success') return
      const key = Buffer.from(msg.transactionId).toString('hex')
      this.waiting.get(key)?.({ mapped: msg.mapped, responseOrigin: msg.responseOrigin, otherAddress: msg.otherAddress, from })
    } catch {
      // not ours or malformed: ignore
    }
  }

  /** One Binding request to `to` (with CHANGE-REQUEST flags), up to NAT_CHECK_TRIES times; null when nothing answers. */
  async probe(to: Endpoint, change?: { ip?: boolean; port?: boolean }): Promise<StunAnswer | null> {
    for (let i = 0; i < NAT_CHECK_TRIES; i++) {
      const txid = randomBytes(12)
      const key = txid.toString('hex')
      let timer: Timer | undefined
      const answer = new Promise<StunAnswer | null>((resolve) => {
        timer = this.clock.setTimeout(() => resolve(null), NAT_CHECK_TIMEOUT_MS)
        this.waiting.set(key, resolve)
      })
      this.send(encodeBindingRequest(txid, change), to)
      const a = await answer
      this.clock.clear(timer)
      this.waiting.delete(key)
      if (a) return a
    }
    return null
  }

  /**
   * How far the server is (hop-check.ts): Binding requests to `server` with each of
   * HOP_PROBE_TTLS, HOP_PROBE_COPIES times, and one with the default TTL, all at once.
   * Ends NAT_CHECK_TIMEOUT_MS after sending, or once the lowest TTL probed answered, or
   * as long after the first answer as that answer took (later, lower-TTL answers may
   * still come), whichever is first. Never rejects.
   */
  async hops(server: Endpoint): Promise<HopVerdict> {
    const answered: Array<number | null> = []
    const started = this.clock.now()
    const keys: string[] = []
    await new Promise<void>((resolve) => {
      let timer = this.clock.setTimeout(() => resolve(), NAT_CHECK_TIMEOUT_MS)
      let settling = false
      const onAnswer = (ttl: number | null): void => {
        answered.push(ttl)
        if (ttl === HOP_PROBE_TTLS[0]) {
          this.clock.clear(timer)
          return resolve()
        }
        if (settling) return
        settling = true
        const elapsed = this.clock.now() - started
        const left = NAT_CHECK_TIMEOUT_MS - elapsed
        this.clock.clear(timer)
        timer = this.clock.setTimeout(() => resolve(), Math.max(0, Math.min(left, Math.max(elapsed, HOP_SETTLE_MIN_MS))))
      }
      const probes: Array<number | null> = [...HOP_PROBE_TTLS.flatMap((t) => Array<number>(HOP_PROBE_COPIES).fill(t)), null]
      for (const ttl of probes) {
        const txid = randomBytes(12)
        const key = txid.toString('hex')
        keys.push(key)
        this.waiting.set(key, () => onAnswer(ttl))
        this.send(encodeBindingRequest(txid), server, ttl ?? undefined)
      }
    })
    for (const key of keys) this.waiting.delete(key)
    return classifyHops({ answered })
  }

  /** Asks `to` which endpoint it sees us at; null when it does not answer. */
  async mapped(to: Endpoint): Promise<Endpoint | null> {
    return (await this.probe(to))?.mapped ?? null
  }

  /**
   * The mapping verdict only (start-up and refresh): test I, then altIp:port when the
   * server names an OTHER-ADDRESS, else ip:altPort. Never sends to a socket a filtering
   * answer comes from, so a netcheck right after it still measures filtering.
   */
  async verdict(server: Endpoint, altPort: number, local: Endpoint[]): Promise<{ verdict: NatVerdict; samples: MappingSamples }> {
    const first = await this.probe(server)
    const primary = first?.mapped ?? null
    let alternate: Endpoint | null = null
    if (first?.otherAddress) alternate = await this.mapped({ host: first.otherAddress.host, port: server.port })
    else if (primary && altPort) alternate = await this.mapped({ host: server.host, port: altPort })
    const samples = { local, primary, alternate }
    return { verdict: classifyMapping(samples), samples }
  }

  /** The full RFC 5780 run (see the top of this file). Never rejects. */
  async netcheck(server: Endpoint, altPort: number, local: Endpoint[]): Promise<NetcheckReport> {
    const s = emptySamples(local)
    const started = this.clock.now()
    const first = await this.probe(server)
    const rttMs = first ? Math.round((this.clock.now() - started) * 100) / 100 : null
    if (first) {
      s.primary = first.mapped
      s.otherAddress = first.otherAddress
      const other = first.otherAddress
      if (other) {
        // An answer counts only if it really came from the other socket (a server that
        // ignored the change would answer from ip:port, which our mapping always admits).
        const [both, port] = await Promise.all([this.probe(server, { ip: true, port: true }), this.probe(server, { port: true })])
        s.filterChangeIpAndPort = !!both && both.from.host === other.host && both.from.port === other.port
        s.filterChangePort = !!port && port.from.host === server.host && port.from.port === other.port
        s.otherIp = await this.mapped({ host: other.host, port: server.port })
        if (s.otherIp && s.primary && !sameEndpoint(s.otherIp, s.primary)) s.otherIpAndPort = await this.mapped(other)
      } else if (altPort) {
        s.otherPort = await this.mapped({ host: server.host, port: altPort })
      }
    }
    const mapping = classifyMappingBehaviour(s)
    return { samples: s, mapping, filtering: classifyFiltering(s), verdict: natVerdictOf(mapping), rttMs }
  }
}
