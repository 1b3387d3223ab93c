/**
 * UDP hole punching for one introduction (seed 000/001: both sides send to each other's
 * public endpoint at once; ARCHITECTURE.md "Paths" for what was measured here).
 *
 * Both agents got each other's candidates from the server at the same moment. Each
 * first sends a probe with IP TTL 2 to every public candidate: it opens our own NAT's
 * mapping but dies before the peer's NAT, so the peer's NAT never sees an unsolicited
 * packet that would claim the tuple (naive simultaneous probing collided in conntrack
 * 19 times out of 20). Then both probe every candidate until one answers. Every probe
 * carries the introduction's id, which only the two agents and the server know.
 *
 * The initiator picks the path: the first candidate whose probe was acknowledged, with
 * a short grace period in which a LAN candidate still wins. The responder follows: it
 * accepts the initiator's first stream packet from any endpoint that sent it a valid
 * probe (accept()).
 */
import { formatEndpoint, sameEndpoint, type Endpoint } from '../protocol/endpoint.js'
import { NatdError } from '../protocol/errors.js'
import type { Clock, Logger } from '../protocol/log.js'
import { encode } from '../protocol/rendezvous.js'

/** First probe TTL: past our NAT (hop 1) but not the peer's (hop 3 or more). */
export const FIRST_PROBE_TTL = 2
/** Normal probes start this long after the TTL-2 ones, so both NATs have their mappings. */
export const PROBE_START_DELAY_MS = 10
/** Probe period while punching; after PROBE_FAST_MS it slows to PROBE_SLOW_INTERVAL_MS. */
export const PROBE_INTERVAL_MS = 20
export const PROBE_FAST_MS = 2_000
export const PROBE_SLOW_INTERVAL_MS = 100
/** After a public candidate validates, a LAN candidate validating within this still wins. */
export const LAN_GRACE_MS = 30
/** Endpoints learnt from probes (peer-reflexive candidates) we add at most. */
export const MAX_LEARNT_CANDIDATES = 4

export type CandidateKind = 'lan' | 'public'

export interface Candidate {
  endpoint: Endpoint
  kind: CandidateKind
}

export interface PunchInit {
  introId: Uint8Array
  initiator: boolean
  candidates: Candidate[]
  localStreamId: number
  deadlineMs: number
}

export interface PunchComponents {
  send(buf: Uint8Array, to: Endpoint, ttl?: number): void
  clock: Clock
  log: Logger
}

export interface PunchResult {
  endpoint: Endpoint
  kind: CandidateKind
  remoteStreamId: number
  tookMs: number
  probesSent: number
}

type PunchState =
  | { kind: 'probing' }
  | { kind: 'choosing'; best: Candidate; timer: NodeJS.Timeout }
  | { kind: 'done'; result: PunchResult }
  | { kind: 'failed'; error: NatdError }

export class Puncher {
  private state: PunchState = { kind: 'probing' }
  private readonly candidates: Candidate[]
  private readonly heard: Endpoint[] = []
  private readonly validated: Candidate[] = []
  private remoteStreamId = 0
  private seq = 0
  private probesSent = 0
  private readonly started: number
  private timer: NodeJS.Timeout | null = null
  private settle: { resolve: (r: PunchResult) => void; reject: (e: Error) => void } | null = null
  private learnt = 0
  private detach: () => void = () => undefined

  constructor(
    private readonly init: PunchInit,
    private readonly c: PunchComponents
  ) {
    this.candidates = dedupe(init.candidates)
    this.started = c.clock.now()
  }

  /** Probes until a path is chosen (initiator) or accepted (responder); rejects PUNCH_FAILED at the deadline. */
  run(signal?: AbortSignal): Promise<PunchResult> {
    return new Promise<PunchResult>((resolve, reject) => {
      this.settle = { resolve, reject }
      if (signal?.aborted) return this.fail(new NatdError('PUNCH_FAILED', 'punching aborted'))
      const onAbort = (): void => this.fail(new NatdError('PUNCH_FAILED', 'punching aborted'))
      signal?.addEventListener('abort', onAbort, { once: true })
      this.detach = () => signal?.removeEventListener('abort', onAbort)
      for (const cand of this.candidates) this.probe(cand.endpoint, false, cand.kind === 'public' ? FIRST_PROBE_TTL : undefined)
      this.timer = setTimeout(() => this.onProbeTimerExpired(), PROBE_START_DELAY_MS)
    })
  }

  /** A probe or ack for this introduction arrived from `from`. */
  onProbe(msg: { streamId: number; ack: boolean }, from: Endpoint): void {
    if (this.state.kind === 'done' || this.state.kind === 'failed') {
      if (!msg.ack) this.probe(from, true) // keep answering: the peer may still be choosing
      return
    }
    this.remoteStreamId = msg.streamId
    if (!this.heard.some((e) => sameEndpoint(e, from))) this.heard.push(from)
    let cand = this.candidates.find((c) => sameEndpoint(c.endpoint, from))
    if (!cand && this.learnt < MAX_LEARNT_CANDIDATES) {
      // Peer-reflexive: the peer's NAT mapped it somewhere the server did not see.
      cand = { endpoint: from, kind: 'public' }
      this.candidates.push(cand)
      this.learnt++
    }
    if (!msg.ack) {
      this.probe(from, true)
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
  accept(from: Endpoint): boolean {
    if (this.init.initiator || this.state.kind === 'failed') return false
    if (this.state.kind === 'done') return sameEndpoint(this.state.result.endpoint, from)
    if (!this.heard.some((e) => sameEndpoint(e, from))) return false
    const cand = this.candidates.find((c) => sameEndpoint(c.endpoint, from)) ?? { endpoint: from, kind: 'public' as const }
    this.finish(cand)
    return true
  }

  get remoteStream(): number {
    return this.remoteStreamId
  }

  private onValidated(cand: Candidate): void {
    if (cand.kind === 'lan') return this.finish(cand)
    if (this.state.kind !== 'probing') return
    const lanPending = this.candidates.some((c) => c.kind === 'lan' && !this.validated.includes(c))
    if (!lanPending) return this.finish(cand)
    this.state = { kind: 'choosing', best: cand, timer: setTimeout(() => this.onLanGraceExpired(), LAN_GRACE_MS) }
  }

  private onLanGraceExpired(): void {
    if (this.state.kind === 'choosing') this.finish(this.state.best)
  }

  private onProbeTimerExpired(): void {
    if (this.state.kind === 'done' || this.state.kind === 'failed') return
    const now = this.c.clock.now()
    if (now - this.started >= this.init.deadlineMs) {
      const tried = this.candidates.map((c) => `${c.kind} ${formatEndpoint(c.endpoint)}`).join(', ')
      const heard = this.heard.length ? `; heard from ${this.heard.map(formatEndpoint).join(', ')} but no answer to ours` : '; no probe from the peer arrived'
      this.fail(new NatdError('PUNCH_FAILED', `no direct UDP path in ${this.init.deadlineMs} ms (tried ${tried || 'no candidates'}; ${this.probesSent} probes${heard})`))
      return
    }
    for (const cand of this.candidates) this.probe(cand.endpoint, false)
    const period = now - this.started < PROBE_FAST_MS ? PROBE_INTERVAL_MS : PROBE_SLOW_INTERVAL_MS
    this.timer = setTimeout(() => this.onProbeTimerExpired(), period)
  }

  private probe(to: Endpoint, ack: boolean, ttl?: number): void {
    this.probesSent++
    this.c.send(encode({ type: 'probe', introId: this.init.introId, streamId: this.init.localStreamId, seq: ++this.seq, ack }), to, ttl)
  }

  private finish(cand: Candidate): void {
    if (this.state.kind === 'choosing') clearTimeout(this.state.timer)
    if (this.timer) clearTimeout(this.timer)
    const result: PunchResult = { endpoint: cand.endpoint, kind: cand.kind, remoteStreamId: this.remoteStreamId, tookMs: this.c.clock.now() - this.started, probesSent: this.probesSent }
    this.state = { kind: 'done', result }
    this.detach()
    this.c.log.debug('punched', { endpoint: formatEndpoint(cand.endpoint), kind: cand.kind, tookMs: result.tookMs, probes: this.probesSent })
    this.settle?.resolve(result)
  }

  private fail(error: NatdError): void {
    if (this.state.kind === 'done' || this.state.kind === 'failed') return
    if (this.state.kind === 'choosing') clearTimeout(this.state.timer)
    if (this.timer) clearTimeout(this.timer)
    this.state = { kind: 'failed', error }
    this.detach()
    this.settle?.reject(error)
  }

  /** Stops probing (the tunnel is up, or was given up). */
  stop(): void {
    this.fail(new NatdError('PUNCH_FAILED', 'stopped'))
  }
}

function dedupe(cands: Candidate[]): Candidate[] {
  const out: Candidate[] = []
  for (const c of cands) if (!out.some((o) => sameEndpoint(o.endpoint, c.endpoint))) out.push(c)
  return out
}
