/**
 * Tunnels by peer: opens them on request (asks the server for an introduction, punches,
 * authenticates), accepts the other side of introductions, keeps one tunnel per peer,
 * and reports state changes. Sockets, keys and the introducer are injected.
 */
import { EventEmitter } from 'node:events'
import type SecretStream from '@hyperswarm/secret-stream'
import type { Endpoint } from '../protocol/endpoint.js'
import { NatdError, toNatdError } from '../protocol/errors.js'
import { peerId } from '../protocol/identity.js'
import { isTarget, resolvePeer, type PeerRef, type PeerTarget } from '../protocol/peer-ref.js'
import type { Via } from '../protocol/rendezvous.js'
import { PunchBudget, RefusalLog, type PunchBudgetInit } from './budget.js'
import type { OpenRequest } from './mux.js'
import { Paths, type Established, type Introduction, type PathComponents } from './paths.js'
import { LATE_PATH_ANSWER_MS, LATE_PATH_MS, PathRace, type RaceOutcome } from './path-race.js'
import { raceEntries, type RaceEntriesComponents } from './race-entries.js'
import { TunnelRecovery } from './recovery.js'
import { TunnelKeeper } from './keep.js'
import { LateSwitches } from './late-switch.js'
import { asResume, onFreshTunnel, RelayEnded } from './resume.js'
import { SeenIntroductions } from './seen-introductions.js'
import { SharedAttempts } from './shared-attempts.js'
import type { PathKind, Tunnel, TunnelTiming } from './tunnel.js'

export type { Introduction } from './paths.js'
export { mostTelling } from './failures.js'
export { AUTO_TCP_GRACE_MS, LATE_PATH_MS } from './path-race.js'
export { RELAY_FALLBACK_MS } from './race-entries.js'
/** A young tunnel that would beat a fresh one in the tie-break must answer a ping this fast (resume.ts). */
export const TWIN_PROBE_MS = 1_500

/**
 * Which peers a tunnel may go to: the agent's known (pinned) peers. The daemon implements
 * it (daemon/known-peers.ts); matching is protocol/peer-ref.ts.
 */
export interface PeerPolicy {
  /** What `open(typed)` must reach (a name, a whole ID, or both). Throws PEER_UNKNOWN or INVALID_ARGUMENT. */
  expect(typed: string): Promise<PeerTarget>
  /**
   * An introduced peer, before we punch: throws KEY_MISMATCH when its name is pinned to
   * another key, PEER_MISMATCH when it is not `expected` (null: it asked for us).
   */
  check(peer: PeerRef, expected: PeerTarget | null): void
  /**
   * Pins the peer's key to its name (first use), once the handshake proved the key.
   * `by`: 'ours' for a peer we chose (a tunnel we opened, a forward's target, an allow
   * entry: never capped), 'inbound' for a peer that opened a tunnel to us (any stranger
   * can: those pins are capped, daemon/known-peers.ts).
   */
  pin(peer: PeerRef, by: PinSource): void
}

/** Who made a tunnel whose peer is pinned on first use: we, or the peer (PeerPolicy.pin). */
export type PinSource = 'ours' | 'inbound'

export interface TunnelManagerComponents extends PathComponents, RaceEntriesComponents {
  /** Asks the rendezvous server to introduce us to `target` (both sides get candidates at once). */
  introduce(target: string, via: Via): Promise<Introduction>
  /** Checks our NAT again and tells the server when the verdict changed (before an upgrade attempt). */
  refreshNat(): Promise<void>
  /**
   * Resolves once the check of our tunnel to this peer (the server reported the peer
   * offline; the tunnel closes if the peer does not answer on it) has ended; at once
   * when none runs. open() waits for it before it reuses the tunnel.
   */
  offlineCheck(peerId: string): Promise<void>
  peers: PeerPolicy
  /** A peer asks to open a channel to one of our ports. */
  onChannel(tunnel: Tunnel, req: OpenRequest): void
  /**
   * Whether the owner named this peer (an expose's or the file policy's allow list): at the
   * inbound-tunnel cap its tunnel is never closed to make room, and its own takes a
   * stranger's place (admitInbound). None = nobody is.
   */
  named?(peerId: string): boolean
}

export interface OpenOutcome {
  tunnel: Tunnel
  tookMs: number
  reused: boolean
}

/** What a caller whose signal aborted gets (the attempt goes on while another caller waits for it). */
function cancelled(what: string): NatdError {
  return new NatdError('ABORTED', `${what} was cancelled by its caller`)
}

/** One punch (open, accepted introduction, resume or upgrade), for the agent's metrics: the path it got, or the error code. */
export interface PunchOutcome {
  via: Via
  path: PathKind | null
  code: string | null
  ms: number
}

export interface ManagerEvents {
  punched: [outcome: PunchOutcome]
  up: [tunnel: Tunnel]
  down: [tunnel: Tunnel, reason: string]
  path: [tunnel: Tunnel, from: PathKind]
  migrating: [tunnel: Tunnel, reason: string]
  resumed: [tunnel: Tunnel, stalledMs: number]
  /** A tunnel silent while it waits for an answer (tunnel.ts SUSPECT_SILENT_MS). */
  suspect: [tunnel: Tunnel]
}

export class TunnelManager extends EventEmitter<ManagerEvents> {
  private readonly tunnels = new Map<string, Tunnel>()
  /** Moves tunnels to the late paths of their introductions, one at a time per tunnel (late-switch.ts). */
  private readonly lateSwitches: LateSwitches<SecretStream, Tunnel>
  /** Open attempts by the peer asked for, shared by the callers that ask at once. */
  private readonly opening = new SharedAttempts<OpenOutcome>()
  private readonly paths: Paths
  /** What introductions may make us spend (budget.ts). */
  readonly budget: PunchBudget
  private readonly refusals: RefusalLog
  /** The resume and upgrade loops (recovery.ts). */
  private readonly recovery: TunnelRecovery
  private closed = false
  /** Tunnels the relay ended (RELAY_LIMIT): never resumed (resume.ts). */
  private readonly relayEnded: RelayEnded
  private readonly seenIntros = new SeenIntroductions()
  /** By peer ID: cancels our answer to the peer's last introduction once it sends a newer one (accept). */
  private readonly answering = new Map<string, AbortController>()
  /** What a won session becomes: a resume, an upgrade or a fresh tunnel (keep.ts). */
  private readonly keeper: TunnelKeeper

  constructor(
    timing: TunnelTiming,
    private readonly c: TunnelManagerComponents,
    budget: Partial<PunchBudgetInit> = {}
  ) {
    super()
    this.budget = new PunchBudget(c.clock, budget)
    this.refusals = new RefusalLog(c.log, c.clock)
    this.relayEnded = new RelayEnded(c.clock)
    this.paths = new Paths(c, this.budget, this.refusals)
    this.lateSwitches = new LateSwitches({ log: c.log, current: (t) => this.tunnels.get(t.peer.id) === t })
    this.recovery = new TunnelRecovery({
      clock: c.clock,
      log: c.log,
      introduce: (target, via) => c.introduce(target, via),
      refreshNat: () => c.refreshNat(),
      establish: (intro, timeoutMs, expected, resuming) => this.establish(intro, timeoutMs, expected, resuming),
      current: (id) => this.tunnels.get(id),
      closed: () => this.closed
    })
    this.keeper = new TunnelKeeper({
      clock: c.clock,
      log: c.log,
      timing,
      peers: c.peers,
      onChannel: (tunnel, req) => c.onChannel(tunnel, req),
      current: (id) => this.tunnels.get(id),
      get: (peer) => this.get(peer),
      register: (tunnel) => this.register(tunnel),
      admitInbound: (peer, name) => this.admitInbound(peer, name),
      lateSwitches: this.lateSwitches,
      recovery: this.recovery,
      relayEnded: this.relayEnded,
      events: this
    })
  }

  /**
   * Live tunnel to a peer: a whole ID, a name, or an ID abbreviation unique among the live
   * tunnels (peer-ref.ts; INVALID_ARGUMENT when ambiguous).
   */
  get(peer: string): Tunnel | undefined {
    const target = resolvePeer(peer, this.list().map((t) => t.peer))
    return target === null ? undefined : this.find(target)
  }

  private find(target: PeerTarget): Tunnel | undefined {
    for (const t of this.tunnels.values()) if (isTarget(t.peer, target)) return t
    return undefined
  }

  list(): Tunnel[] {
    return [...this.tunnels.values()]
  }

  /**
   * Opens a tunnel to `peer` (a name, a peer ID or an abbreviated one) or returns the
   * open one (idempotent); concurrent calls share one attempt. Only the peer asked for is
   * accepted: a name must come back as that name (with the pinned key, when one is
   * pinned), an ID as that key; anything else is PEER_MISMATCH or KEY_MISMATCH. A tunnel
   * whose peer the server reported offline is reused only if the peer still answers on
   * it (offlineCheck); otherwise a new one is opened (and the server says PEER_OFFLINE).
   *
   * `signal` cancels this caller's wait (ABORTED); the punching stops once no caller
   * waits for it any more, so a client that goes away leaves no work running.
   */
  async open(peer: string, via: Via, timeoutMs: number, signal?: AbortSignal): Promise<OpenOutcome> {
    const started = this.c.clock.now()
    if (signal?.aborted) throw cancelled(`opening a tunnel to ${peer}`)
    const target = await this.c.peers.expect(peer)
    const checked = this.find(target)
    if (checked) await this.c.offlineCheck(checked.peer.id)
    const existing = this.find(target)
    if (existing) return { tunnel: existing, tookMs: 0, reused: true }
    // The server is asked for what the user named: a name by name (so a changed key is
    // reported as KEY_MISMATCH), an ID by the whole ID.
    const ask = target.name ?? target.id!
    if (signal?.aborted) throw cancelled(`opening a tunnel to ${peer}`)
    const attempt = async (aborted: AbortSignal): Promise<OpenOutcome> => {
      const intro = await this.c.introduce(ask, via)
      if (aborted.aborted) throw cancelled(`opening a tunnel to ${peer}`)
      const tunnel = await this.establish(intro, Math.max(1, timeoutMs - (this.c.clock.now() - started)), target, null, aborted)
      return { tunnel, tookMs: this.c.clock.now() - started, reused: false }
    }
    return this.opening.join(ask, attempt, signal, () => cancelled(`opening a tunnel to ${peer}`))
  }

  /**
   * The server introduced a peer that wants a tunnel to us. Never rejects. A peer that
   * asks more often than its introduction budget allows is refused before anything is
   * sent (RATE_LIMITED, logged once with a count).
   */
  accept(intro: Introduction, timeoutMs: number): void {
    if (!this.seenIntros.add(intro.introId)) return // the server sent it again on our new control connection
    const id = peerId(intro.peer.publicKey)
    if (!this.budget.introduction(id)) {
      this.refusals.note('RATE_LIMITED', 'introductions', intro.peer.name)
      return
    }
    // A newer introduction supersedes the one we still answer: the peer (the initiator)
    // moved on, e.g. it restarted. The old race's TCP attempt dials from the same port to
    // the same port, and the handshake names no introduction, so it could catch the new
    // introduction's late TCP path and make a second tunnel that replaces the new one.
    this.answering.get(id)?.abort()
    const answer = new AbortController()
    this.answering.set(id, answer)
    this.establish(intro, timeoutMs, null, null, answer.signal).catch((err: unknown) => {
      const e = toNatdError(err)
      if (e.code === 'BUSY') return // the refusal log has it
      if (answer.signal.aborted) {
        this.c.log.debug('introduction superseded', { peer: intro.peer.name, code: e.code })
        return
      }
      // A failed upgrade attempt (the tunnel stays on the relay) is routine, not a warning.
      this.c.log[intro.via === 'direct' ? 'debug' : 'warn']('incoming tunnel failed', { peer: intro.peer.name, via: intro.via, code: e.code, err: e.message })
    }).finally(() => {
      if (this.answering.get(id) === answer) this.answering.delete(id)
    })
  }

  /** Datagrams of type PROBE from the shared socket. */
  onProbe(buf: Buffer, from: Endpoint): void {
    this.paths.onProbe(buf, from)
  }

  close(peer: string, reason = 'closed by user'): boolean {
    const t = this.get(peer)
    if (!t) return false
    t.close(reason)
    return true
  }

  /** Says goodbye on every tunnel (daemon shutdown). */
  closeAll(reason: string): void {
    this.closed = true
    this.refusals.flush()
    for (const t of this.tunnels.values()) t.close(reason)
  }

  /**
   * Punches the paths the introduction asks for (UDP, TCP, or both at once for `auto`),
   * authenticates, and makes a tunnel of the first path that works. The initiator
   * picks: it sends its first frame (a ping) on the winner and drops the rest; the
   * responder uses the session on which that first frame arrives, so both sides agree.
   * `expected` is the peer we asked for (null when the peer asked for us): anyone else is
   * refused before a packet goes to them.
   */
  private async establish(intro: Introduction, timeoutMs: number, expected: PeerTarget | null, resuming: Tunnel | null = null, signal?: AbortSignal): Promise<Tunnel> {
    if (this.closed) throw new NatdError('TUNNEL_CLOSED', 'shutting down')
    const id = peerId(intro.peer.publicKey)
    const name = intro.peer.name
    this.c.peers.check({ name, id }, expected)
    const slot = this.budget.punch(id)
    if (!slot) {
      this.refusals.note('BUSY', 'punch', name)
      throw new NatdError('BUSY', `already punching ${this.budget.init.punches} paths at once (or ${this.budget.init.peerPunches} to ${name}); try again in a moment`)
    }
    const started = this.c.clock.now()
    let held = false
    try {
      const { tunnel, done } = await this.punchAndKeep(intro, timeoutMs, id, resuming, signal)
      this.emit('punched', { via: intro.via, path: tunnel.path, code: null, ms: this.c.clock.now() - started })
      // Attempts that may still give a better path hold the slot until they end (path-race.ts).
      held = true
      void done.finally(() => slot.release())
      return tunnel
    } catch (err) {
      this.emit('punched', { via: intro.via, path: null, code: toNatdError(err).code, ms: this.c.clock.now() - started })
      throw err
    } finally {
      if (!held) slot.release()
    }
  }

  private async punchAndKeep(intro: Introduction, timeoutMs: number, id: string, resuming: Tunnel | null, signal?: AbortSignal): Promise<{ tunnel: Tunnel; done: Promise<void> }> {
    const name = intro.peer.name
    if (signal?.aborted) throw cancelled(`punching to ${name}`)
    const { plan, entries } = raceEntries(intro, timeoutMs, this.paths, this.c)
    const discard = (p: Established): void => {
      p.session.destroy()
      p.release?.()
    }
    // `auto` keeps what could still give a better path (path-race.ts); not for a resume (a RESUME exchange of its own).
    const lateMs = plan.late && resuming === null ? LATE_PATH_MS + (intro.initiator ? 0 : LATE_PATH_ANSWER_MS) : 0
    const race = new PathRace(entries, { preferTcp: plan.preferTcp, lateMs, follow: !intro.initiator }, { clock: this.c.clock, log: this.c.log, discard })
    // The caller's cancel stops every attempt, as a winner does.
    const cancel = (): void => race.cancel()
    signal?.addEventListener('abort', cancel, { once: true })
    let made: (t: Tunnel | null) => void = () => undefined
    const tunnelMade = new Promise<Tunnel | null>((resolve) => (made = resolve))
    let outcome: RaceOutcome<Established>
    try {
      outcome = await race.run((late) => void tunnelMade.then((t) => this.lateSwitches.add(t, late, intro.initiator, intro.peer.name)), signal)
    } catch (err) {
      race.cancel()
      throw err
    } finally {
      signal?.removeEventListener('abort', cancel)
    }
    const won = outcome.won
    // The initiator resumes on this session and keeps no late attempt (lateMs 0): neither do we (review 3 #2).
    if (!intro.initiator && asResume(won.first) !== null) race.endLate()
    if (signal?.aborted) {
      discard(won)
      race.cancel()
      throw cancelled(`punching to ${name}`)
    }
    try {
      const tunnel = await this.keeper.keep(intro, won, plan.upgrade, id, resuming, outcome.done)
      // A closed tunnel needs no better path: its late attempts stop and free the punch slot.
      if (!tunnel.isOpen) race.cancel()
      else {
        const stop = (): void => race.cancel()
        tunnel.once('closed', stop)
        void outcome.done.then(() => tunnel.off('closed', stop))
      }
      made(tunnel)
      return { tunnel, done: outcome.done }
    } catch (err) {
      made(null)
      race.cancel()
      throw err
    }
  }

  /**
   * A fresh tunnel `peer` opened to us: null when we keep it (it replaces the peer's own,
   * or fewer than PunchBudgetInit.inboundTunnels tunnels peers opened are open), else why
   * not (logged once per kind, then counted; natd_punches_total counts it as BUSY).
   *
   * At the cap a place is made (review 10: strangers' idle tunnels held it for good, and a
   * peer whose own tunnel had closed was refused for as long as they liked): the oldest
   * inbound tunnel with no channel open closes, else, for a peer the owner named, the
   * oldest of a peer the owner did not name. A tunnel of a named peer never closes for
   * another, so strangers hold a place only while they use it, and never against the
   * owner's peers; only a stranger finding every place busy is refused.
   */
  private admitInbound(peer: string, name: string): string | null {
    if (this.tunnels.get(peer)?.isOpen) return null
    const inbound = [...this.tunnels.values()].filter((t) => t.isOpen && !t.opener)
    const max = this.budget.init.inboundTunnels
    if (inbound.length < max) return null
    const named = (id: string): boolean => this.c.named?.(id) ?? false
    const strangers = inbound.filter((t) => !named(t.peer.id))
    const place = strangers.find((t) => t.mux.size === 0) ?? (named(peer) ? strangers[0] : undefined)
    if (place) {
      this.refusals.note('BUSY', 'inbound tunnel closed for a newcomer', place.peer.name)
      place.close(`BUSY: the agent holds ${max} tunnels other peers opened, its most; this one gave its place to a newcomer`, { goodbye: true, code: 'BUSY' })
      return null
    }
    this.refusals.note('BUSY', 'inbound tunnel', name)
    return `the agent holds ${max} tunnels other peers opened, its most; try again later`
  }

  /** Our IPv4 mapping changed (daemon/path-check.ts): the tunnels whose path goes through it migrate now (tunnel.ts movesWithMapping). */
  pathChanged(reason: string): void {
    for (const t of this.tunnels.values()) t.pathChanged(reason)
  }

  /**
   * One tunnel per peer. A fresh tunnel replaces an open one (the peer no longer has it:
   * it restarted, or gave up a migration) unless both sides opened at once: then both
   * keep the smaller introduction id (resume.ts onFreshTunnel). A young tunnel that would
   * win the tie-break must prove it is a live twin first (a ping answered in
   * TWIN_PROBE_MS): a peer that restarted moments after opening cannot answer on it.
   */
  private async register(tunnel: Tunnel): Promise<void> {
    const first = this.tunnels.get(tunnel.peer.id)
    if (first?.isOpen && onFreshTunnel(tunnel, first) === 'keep-current') {
      const alive = await first.ping(TWIN_PROBE_MS).then(() => true, () => false)
      if (alive && first.isOpen) {
        // The goodbye tells the peer to drop its copy rather than try to resume it.
        tunnel.close('duplicate tunnel', { goodbye: true })
        return
      }
    }
    if (!tunnel.isOpen) return
    const current = this.tunnels.get(tunnel.peer.id)
    if (current?.isOpen && current !== tunnel) {
      // The goodbye tells the peer, should it still hold `current`, to drop it rather than resume it.
      current.close(current.isMigrating ? 'replaced: the peer opened a new tunnel' : 'replaced by a newer tunnel', { goodbye: true })
    }
    this.tunnels.set(tunnel.peer.id, tunnel)
    tunnel.once('closed', (reason) => {
      if (tunnel.closedWith === 'RELAY_LIMIT') this.relayEnded.add(tunnel.id)
      if (this.tunnels.get(tunnel.peer.id) === tunnel) this.tunnels.delete(tunnel.peer.id)
      this.emit('down', tunnel, reason)
    })
    this.emit('up', tunnel)
  }

}
