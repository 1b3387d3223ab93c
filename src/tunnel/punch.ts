/**
 * UDP hole punching for one introduction (seed 000/001: both sides send to each other's
 * public endpoint at once; ARCHITECTURE.md "Paths" for what was measured here).
 *
 * Both agents got each other's candidates from the server at the same moment. Each
 * first sends a probe with a low IP TTL to every public candidate: it opens our own
 * NATs' mappings but dies before the peer's NAT, so the peer's NAT never sees an
 * unsolicited packet that would claim the tuple (naive simultaneous probing collided in
 * conntrack 19 times out of 20). The TTL is 2 (one NAT), or one learnt from the server's
 * distance when that is near, so a carrier-grade NAT behind our home NAT maps us too
 * (PunchInit.firstTtl, hop-check.ts). Then both probe every candidate until one answers.
 * Every probe carries the introduction's id, which only the two agents and the server know.
 *
 * The initiator picks the path: the first candidate whose probe was acknowledged, with
 * a short grace period in which a LAN candidate still wins. The responder follows: it
 * accepts the initiator's first stream packet from any endpoint that sent it a valid
 * probe (accept()). A probe from an endpoint we have not probed yet is answered with
 * an ack and a probe of our own (a triggered check, RFC 8445 §7.3.1.4).
 *
 * IPv6 candidates (protocol/ipv6.ts) are punched the same way whatever the strategy: no
 * NAT translates them, only stateful firewalls stand between, and the hop-limit-2 first
 * probe opens ours without reaching the peer's. They go out of the agent's IPv6 socket
 * (index 0 stands for the agent's socket of the candidate's family), never from
 * birthday sockets; the initiator prefers them (V6_GRACE_MS).
 *
 * When one NAT maps per destination ("hard"), the endpoint the server saw is useless to
 * the peer: birthday punching (hyperdht's method; ARCHITECTURE.md measured 10/10,
 * median 0.45 s). The hard side ('birthday' strategy) sends first-TTL probes to the easy
 * side from BIRTHDAY_SOCKETS extra sockets, opening that many mappings without
 * reaching the peer's NAT; the easy side ('spray') probes random ports of the hard
 * side's address at ~SPRAY_RATE_PER_S until one lands on a mapping and is answered.
 *
 * A peer with no NAT at all (verdict 'none', PunchInit.peerOpen) has no mapping for a
 * probe to claim, and its public address is its own: the agent's socket probes it at
 * full TTL from the first probe, under every strategy. For a hard side that is the whole
 * punch: its NAT maps the agent's socket for the peer, the peer learns that mapping from
 * the probe (peer-reflexive) and answers it, so the path is up in about one and a half
 * round trips instead of waiting for the spray to land on a birthday socket (public×hard
 * was 1.35-1.64x hyperdht's open time at 20-100 ms RTT, docs/BENCHMARKS.md). The birthday
 * sockets and the peer's spray still run, for a public host behind a firewall that drops
 * what it did not ask for.
 *
 * A port the peer's gateway mapped (Candidate.mapped: PCP, NAT-PMP, UPnP; issue 17) is
 * probed the same way: full TTL from the agent's socket at once. The gateway forwards it
 * unasked, and the peer's answer leaves through the mapping (or its conntrack entry), so
 * our NAT lets it in; path-plan.ts then plans no search at first. The peer's own first-TTL
 * probes still die past its gateway, which holds the mapping for its port already. A stale
 * or forged mapping never answers: then both sides search together (PunchInit.search).
 */
import { formatEndpoint, isIPv6, sameEndpoint, type Endpoint } from '../protocol/endpoint.js'
import { NatdError } from '../protocol/errors.js'
import { systemRandom, type Random, type Timer, type TimerClock } from '../protocol/clock.js'
import type { Logger } from '../protocol/log.js'
import { encode, opened, type Sealed } from '../protocol/rendezvous.js'
import { FIRST_PROBE_TTL } from './hop-check.js'
import { PROBE_START_DELAY_MS, PROBE_INTERVAL_MS, PROBE_FAST_MS, PROBE_SLOW_INTERVAL_MS, LAN_PROBE_MS, LAN_GRACE_MS, V6_GRACE_MS, MAX_LEARNT_CANDIDATES, BIRTHDAY_REFRESH_MS, BIRTHDAY_BATCH, SPRAY_RATE_PER_S, SPRAY_TICK_MS, SPRAY_MAX_PROBES, MAPPED_PUNCH_MS } from './punch-timing.js'

/** First probe TTL by default: past our NAT (hop 1) but not the peer's (hop 3 or more); hop-check.ts learns another. */
export { FIRST_PROBE_TTL } from './hop-check.js'
export * from './punch-timing.js'

export type PunchStrategy = 'normal' | 'birthday' | 'spray'

export type CandidateKind = 'lan' | 'public'

export interface Candidate {
  endpoint: Endpoint
  kind: CandidateKind
  /** Local socket that talks to it: 0 = the agent's socket, 1.. = birthday sockets. */
  socket?: number
  /**
   * A port the peer's gateway mapped for it (PCP, NAT-PMP, UPnP): it takes what comes
   * unasked, so, like a peer without NAT, the agent's socket probes it at full TTL from
   * the first probe, under every strategy.
   */
  mapped?: boolean
}

export interface PunchInit {
  introId: Uint8Array
  /** Seals our probes and opens the peer's (the introduction carried it inside Noise). */
  punchKey: Uint8Array
  initiator: boolean
  candidates: Candidate[]
  localStreamId: number
  deadlineMs: number
  strategy?: PunchStrategy
  /** 'spray': the hard peer's public address. */
  sprayHost?: string
  /** 'birthday': how many extra sockets (indexes 1..n) `send` may use. */
  sockets?: number
  /**
   * TTL of the first probes to IPv4 public candidates and of the birthday sockets' probes
   * (hop-check.ts); default FIRST_PROBE_TTL. IPv6 keeps hop limit FIRST_PROBE_TTL: no NAT
   * there, only the firewall of our first router to open.
   */
  firstTtl?: number
  /**
   * The peer has no NAT (it reported verdict 'none'): the agent's socket probes its
   * IPv4 public candidates at full TTL from the first probe, 'birthday' included.
   */
  peerOpen?: boolean
  /**
   * 'normal' only because of a mapping (path-plan.ts PathPlan.search): the search to switch
   * to after MAPPED_PUNCH_MS. Both sides count from the introduction, which reached them at
   * the same moment, so the birthday side's mappings are open when the spray starts.
   */
  search?: PunchStrategy | null
}

export interface PunchComponents {
  send(buf: Uint8Array, to: Endpoint, ttl?: number, socket?: number): void
  /** Spray ports; default systemRandom. */
  random?: Random
  clock: TimerClock
  log: Logger
  /** The search (PunchInit.search) starts 'birthday': how many extra sockets `send` may now use (0: none granted). */
  birthdaySockets?(): number
}

export interface PunchResult {
  endpoint: Endpoint
  kind: CandidateKind
  remoteStreamId: number
  tookMs: number
  probesSent: number
  /** Local socket the path uses (0 = the agent's socket). */
  socket: number
}

type PunchState =
  | { kind: 'probing' }
  | { kind: 'choosing'; best: Candidate; timer: Timer }
  | { kind: 'done'; result: PunchResult }
  | { kind: 'failed'; error: NatdError }

export class Puncher {
  private state: PunchState = { kind: 'probing' }
  private readonly candidates: Candidate[]
  private readonly heard: Array<{ endpoint: Endpoint; socket: number }> = []
  private sprayed = 0
  private sprayTimer: Timer | null = null
  private birthdayTimer: Timer | null = null
  private searchTimer: Timer | null = null
  private strategy: PunchStrategy
  private sockets: number
  private readonly validated: Candidate[] = []
  private remoteStreamId = 0
  private seq = 0
  private probesSent = 0
  private readonly started: number
  private timer: Timer | null = null
  private settle: { resolve: (r: PunchResult) => void; reject: (e: Error) => void } | null = null
  private learnt = 0
  private detach: () => void = () => undefined

  constructor(
    private readonly init: PunchInit,
    private readonly c: PunchComponents
  ) {
    this.candidates = dedupe(init.candidates)
    this.strategy = init.strategy ?? 'normal'
    this.sockets = init.sockets ?? 0
    this.started = c.clock.now()
  }

  /** Probes until a path is chosen (initiator) or accepted (responder); rejects PUNCH_TIMEOUT at the deadline, ABORTED when `signal` aborts. */
  run(signal?: AbortSignal): Promise<PunchResult> {
    return new Promise<PunchResult>((resolve, reject) => {
      this.settle = { resolve, reject }
      if (signal?.aborted) return this.fail(new NatdError('ABORTED', 'punching aborted'))
      const onAbort = (): void => this.fail(new NatdError('ABORTED', 'punching aborted'))
      signal?.addEventListener('abort', onAbort, { once: true })
      this.detach = () => signal?.removeEventListener('abort', onAbort)
      // The agent's socket first: a peer without NAT hears from us before hundreds of birthday sockets are opened and probe (paths.ts opens them at their first probe).
      for (const cand of this.candidates) if (this.strategy !== 'birthday' || this.fromAgentSocket(cand)) this.probe(cand.endpoint, false, this.firstProbeTtl(cand))
      if (this.strategy === 'birthday') this.onBirthdayExpired()
      if (this.strategy === 'spray') this.sprayTimer = this.c.clock.setTimeout(() => this.onSprayExpired(), PROBE_START_DELAY_MS)
      if (this.strategy === 'normal' && this.init.search) this.searchTimer = this.c.clock.setTimeout(() => this.onMappedExpired(), MAPPED_PUNCH_MS)
      this.timer = this.c.clock.setTimeout(() => this.onProbeTimerExpired(), PROBE_START_DELAY_MS)
    })
  }

  private get firstTtl(): number {
    return this.init.firstTtl ?? FIRST_PROBE_TTL
  }

  /** The TTL of the first probe to `cand`: none to a LAN candidate, a mapped one or a peer without NAT (nothing to claim), else limited. */
  private firstProbeTtl(cand: Candidate): number | undefined {
    if (cand.kind === 'lan') return undefined
    if (isV6(cand)) return FIRST_PROBE_TTL
    return this.init.peerOpen || cand.mapped ? undefined : this.firstTtl
  }

  /**
   * 'birthday': whether the agent's socket probes `cand` at full TTL. A full-TTL probe
   * to the easy side's NAT would arrive unsolicited and could claim its port, so only
   * LAN, IPv6 and mapped candidates, those learnt on a birthday socket, and every
   * candidate of a peer without NAT.
   */
  private fromAgentSocket(cand: Candidate): boolean {
    return cand.kind === 'lan' || isV6(cand) || cand.mapped === true || (cand.socket ?? 0) !== 0 || this.init.peerOpen === true
  }

  /** A probe or ack for this introduction arrived from `from` on local socket `socket`. */
  onProbe(msg: { streamId: number; ack: boolean } & Sealed, from: Endpoint, socket = 0): void {
    if (!opened(msg, this.init.punchKey)) return // not sealed with this introduction's key: a forgery or a stray
    if (this.state.kind === 'done' || this.state.kind === 'failed') {
      if (!msg.ack) this.probe(from, true, undefined, socket) // keep answering: the peer may still be choosing
      return
    }
    this.remoteStreamId = msg.streamId
    const firstFromThere = !this.heard.some((h) => sameEndpoint(h.endpoint, from) && h.socket === socket)
    if (firstFromThere) this.heard.push({ endpoint: from, socket })
    let cand = this.candidates.find((c) => sameEndpoint(c.endpoint, from) && (c.socket ?? 0) === socket)
    if (!cand && this.learnt < MAX_LEARNT_CANDIDATES) {
      // Peer-reflexive: the peer's NAT mapped it somewhere the server did not see
      // (always so for a hard NAT), or it reached one of our birthday sockets.
      cand = { endpoint: from, kind: 'public', socket }
      this.candidates.push(cand)
      this.learnt++
    }
    if (!msg.ack) {
      this.probe(from, true, undefined, socket)
      if (firstFromThere && cand && !this.validated.includes(cand)) this.probe(from, false, undefined, socket) // triggered check
      return
    }
    if (!cand || this.validated.includes(cand)) return
    this.validated.push(cand)
    if (this.init.initiator) this.onValidated(cand)
  }

  /**
   * Responder: the initiator's first stream packet came from `from`. Accepts it (and
   * ends punching) only when a valid probe for this introduction came from there too.
   */
  accept(from: Endpoint, socket = 0): boolean {
    if (this.init.initiator || this.state.kind === 'failed') return false
    if (this.state.kind === 'done') return sameEndpoint(this.state.result.endpoint, from) && this.state.result.socket === socket
    if (!this.heard.some((h) => sameEndpoint(h.endpoint, from) && h.socket === socket)) return false
    const cand = this.candidates.find((c) => sameEndpoint(c.endpoint, from) && (c.socket ?? 0) === socket) ?? { endpoint: from, kind: 'public' as const, socket }
    this.finish(cand)
    return true
  }

  get remoteStream(): number {
    return this.remoteStreamId
  }

  private onValidated(cand: Candidate): void {
    if (cand.kind === 'lan') return this.finish(cand)
    const lanPending = this.candidates.some((c) => c.kind === 'lan' && !this.validated.includes(c))
    if (this.state.kind === 'choosing') {
      // An IPv6 path beats the IPv4 one waiting for the grace to end (a LAN one still may win).
      if (!isV6(cand) || isV6(this.state.best)) return
      if (!lanPending) return this.finish(cand)
      this.state = { ...this.state, best: cand }
      return
    }
    if (this.state.kind !== 'probing') return
    const v6Pending = !isV6(cand) && this.candidates.some((c) => isV6(c) && c.kind === 'public' && !this.validated.includes(c))
    if (!lanPending && !v6Pending) return this.finish(cand)
    const graceMs = Math.max(lanPending ? LAN_GRACE_MS : 0, v6Pending ? V6_GRACE_MS : 0)
    this.state = { kind: 'choosing', best: cand, timer: this.c.clock.setTimeout(() => this.onLanGraceExpired(), graceMs) }
  }

  private onLanGraceExpired(): void {
    if (this.state.kind === 'choosing') this.finish(this.state.best)
  }

  private onProbeTimerExpired(): void {
    if (this.state.kind === 'done' || this.state.kind === 'failed') return
    const now = this.c.clock.now()
    if (now - this.started >= this.init.deadlineMs) {
      const tried = this.candidates.map((c) => `${c.kind} ${formatEndpoint(c.endpoint)}`).join(', ')
      const heard = this.heard.length ? `; heard from ${this.heard.map((h) => formatEndpoint(h.endpoint)).join(', ')} but no answer to ours` : '; no probe from the peer arrived'
      const how = this.strategy === 'spray' ? `, ${this.sprayed} to random ports of ${this.init.sprayHost}` : this.strategy === 'birthday' ? ` from ${this.sockets} birthday sockets` : ''
      this.fail(new NatdError('PUNCH_TIMEOUT', `no direct UDP path in ${this.init.deadlineMs} ms (tried ${tried || 'no candidates'}; ${this.probesSent} probes${how}${heard})`))
      return
    }
    // The hard side only answers and refreshes its first-TTL probes (fromAgentSocket()).
    const lanToo = now - this.started < LAN_PROBE_MS
    for (const cand of this.candidates) {
      if (cand.kind === 'lan' && !lanToo) continue
      if (this.strategy !== 'birthday' || this.fromAgentSocket(cand)) this.probe(cand.endpoint, false, undefined, cand.socket ?? 0)
    }
    const period = now - this.started < PROBE_FAST_MS ? PROBE_INTERVAL_MS : PROBE_SLOW_INTERVAL_MS
    this.timer = this.c.clock.setTimeout(() => this.onProbeTimerExpired(), period)
  }

  /** Nothing validated through the mapping (stale or forged): search as the verdicts call for (PunchInit.search). */
  private onMappedExpired(): void {
    const search = this.init.search
    if (this.state.kind !== 'probing' || !search) return
    this.strategy = search
    if (search === 'birthday') this.sockets = this.c.birthdaySockets?.() ?? 0
    this.c.log.warn('mapped endpoint did not answer, searching', { strategy: search, afterMs: this.c.clock.now() - this.started, sockets: this.sockets })
    if (search === 'birthday') this.onBirthdayExpired()
    if (search === 'spray') this.onSprayExpired()
  }

  /**
   * 'birthday': first-TTL probes to the peer's public candidates from every birthday
   * socket, BIRTHDAY_BATCH sockets per turn of the event loop (`from`: the first of this turn).
   */
  private onBirthdayExpired(from = 1): void {
    if (this.state.kind !== 'probing' && this.state.kind !== 'choosing') return
    const sockets = this.sockets
    const to = Math.min(sockets, from + BIRTHDAY_BATCH - 1)
    for (const cand of this.candidates) {
      if (cand.kind !== 'public' || (cand.socket ?? 0) !== 0 || isV6(cand)) continue
      for (let i = from; i <= to; i++) this.probe(cand.endpoint, false, this.firstTtl, i)
    }
    this.birthdayTimer = to < sockets ? this.c.clock.setTimeout(() => this.onBirthdayExpired(to + 1), 0) : this.c.clock.setTimeout(() => this.onBirthdayExpired(), BIRTHDAY_REFRESH_MS)
  }

  /** 'spray': probes to random ports of the hard peer's address, bounded in count. */
  private onSprayExpired(): void {
    if (this.state.kind !== 'probing' || !this.init.sprayHost) return
    const random = this.c.random ?? systemRandom
    const burst = Math.round((SPRAY_RATE_PER_S * SPRAY_TICK_MS) / 1000)
    for (let i = 0; i < burst && this.sprayed < SPRAY_MAX_PROBES; i++, this.sprayed++) {
      this.probe({ host: this.init.sprayHost, port: 1024 + Math.floor(random() * (65536 - 1024)) }, false)
    }
    if (this.sprayed < SPRAY_MAX_PROBES) this.sprayTimer = this.c.clock.setTimeout(() => this.onSprayExpired(), SPRAY_TICK_MS)
  }

  private probe(to: Endpoint, ack: boolean, ttl?: number, socket = 0): void {
    this.probesSent++
    this.c.send(encode({ type: 'probe', introId: this.init.introId, streamId: this.init.localStreamId, seq: ++this.seq, ack, key: this.init.punchKey }), to, ttl, socket)
  }

  private stopTimers(): void {
    this.c.clock.clear(this.timer)
    this.c.clock.clear(this.sprayTimer)
    this.c.clock.clear(this.birthdayTimer)
    this.c.clock.clear(this.searchTimer)
    if (this.state.kind === 'choosing') this.c.clock.clear(this.state.timer)
  }

  private finish(cand: Candidate): void {
    this.stopTimers()
    const result: PunchResult = { endpoint: cand.endpoint, kind: cand.kind, remoteStreamId: this.remoteStreamId, tookMs: this.c.clock.now() - this.started, probesSent: this.probesSent, socket: cand.socket ?? 0 }
    this.state = { kind: 'done', result }
    this.detach()
    this.c.log.debug('punched', { endpoint: formatEndpoint(cand.endpoint), kind: cand.kind, tookMs: result.tookMs, probes: this.probesSent })
    this.settle?.resolve(result)
  }

  private fail(error: NatdError): void {
    if (this.state.kind === 'done' || this.state.kind === 'failed') return
    this.stopTimers()
    this.state = { kind: 'failed', error }
    this.detach()
    this.settle?.reject(error)
  }

  /** Stops probing (the tunnel is up, or was given up). */
  stop(): void {
    this.fail(new NatdError('ABORTED', 'stopped'))
  }
}

function isV6(c: Candidate): boolean {
  return isIPv6(c.endpoint.host)
}

function dedupe(cands: Candidate[]): Candidate[] {
  const out: Candidate[] = []
  for (const c of cands) if (!out.some((o) => sameEndpoint(o.endpoint, c.endpoint) && (o.socket ?? 0) === (c.socket ?? 0))) out.push(c)
  return out
}
