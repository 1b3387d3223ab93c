/**
 * What the manager makes of the session a punch won (tunnel/manager.ts punchAndKeep): a
 * resume of a migrating tunnel (we opened it and ask, or the peer's RESUME names one of
 * ours, resume.ts), a move of a relayed tunnel to the new path (late-switch.ts), or a
 * fresh tunnel, registered and watched (its migrations start the opener's resume loop,
 * recovery.ts). One tunnel per peer stays the manager's (register, current).
 */
import type { EventEmitter } from 'node:events'
import type SecretStream from '@hyperswarm/secret-stream'
import { formatEndpoint } from '../protocol/endpoint.js'
import { NatdError } from '../protocol/errors.js'
import { timingSafeEqual } from '../protocol/identity.js'
import type { TimerClock } from '../protocol/clock.js'
import type { Logger } from '../protocol/log.js'
import { encodeMux } from '../protocol/mux.js'
import type { Via } from '../protocol/rendezvous.js'
import type { LateSwitches } from './late-switch.js'
import { LossyWatch } from './lossy-path.js'
import type { ManagerEvents, PeerPolicy } from './manager.js'
import type { OpenRequest } from './mux.js'
import type { Established, Introduction } from './paths.js'
import type { TunnelRecovery } from './recovery.js'
import { asGoodbye, asResume, firstFrame, onResumeRequest, RESUME_ANSWER_MS, SIMULTANEOUS_OPEN_MS, type RelayEnded } from './resume.js'
import { GOODBYE_LINGER_MS, Tunnel, type TunnelTiming } from './tunnel.js'

export interface KeeperComponents {
  clock: TimerClock
  log: Logger
  timing: TunnelTiming
  peers: Pick<PeerPolicy, 'pin'>
  /** A peer asks to open a channel to one of our ports. */
  onChannel(tunnel: Tunnel, req: OpenRequest): void
  /** The tunnel the manager keeps for this peer ID now. */
  current(peerId: string): Tunnel | undefined
  /** The live tunnel to a peer (manager.ts get). */
  get(peer: string): Tunnel | undefined
  /** One tunnel per peer: keeps `tunnel` or drops it (manager.ts register). */
  register(tunnel: Tunnel): Promise<void>
  /**
   * Whether a fresh tunnel the peer `peerId` opened to us may be kept (manager.ts: the
   * cap on inbound tunnels, PunchBudgetInit.inboundTunnels); else the refusal's message.
   */
  admitInbound(peerId: string, name: string): string | null
  lateSwitches: LateSwitches<SecretStream, Tunnel>
  recovery: TunnelRecovery
  /** Tunnels the relay ended: their RESUME is refused (resume.ts). */
  relayEnded: RelayEnded
  /** Where the tunnels' moves are reported (the manager). */
  events: EventEmitter<ManagerEvents>
}

export class TunnelKeeper {
  /** The way each tunnel we opened was asked for: its resumes ask the same way. */
  private readonly vias = new WeakMap<Tunnel, Via>()

  constructor(private readonly c: KeeperComponents) {}

  /** The tunnel the winner makes: a resume, an upgrade of a relayed tunnel, or a fresh one. */
  async keep(intro: Introduction, won: Established, upgrade: boolean, id: string, resuming: Tunnel | null, late: Promise<void>): Promise<Tunnel> {
    const name = intro.peer.name
    // We asked for this introduction: an open (any --via), or the resume, upgrade or move of
    // a tunnel we opened (only the opener runs those loops: recovery.ts) — a peer we chose.
    this.c.peers.pin({ name, id }, intro.initiator ? 'ours' : 'inbound')
    if (intro.initiator && resuming) return this.resumeAsOpener(resuming, won, intro)
    if (!intro.initiator) {
      const ask = asResume(won.first)
      if (ask && this.c.relayEnded.has(ask.tunnelId)) {
        // The relay ended it: over for good, however the peer asks (resume.ts).
        won.session.write(encodeMux({ type: 'goodbye', channel: 0, reason: 'RELAY_LIMIT: the relay ended this tunnel; open a new one' }))
        const session = won.session
        this.c.clock.setTimeout(() => session.destroy(), GOODBYE_LINGER_MS).unref()
        won.release?.()
        throw new NatdError('RELAY_LIMIT', `${name} asked to resume a tunnel the relay ended; refused`)
      }
      if (ask) {
        const current = this.c.current(id)
        if (current && onResumeRequest(ask, current) === 'resume') {
          const received = current.detach()
          won.session.write(encodeMux({ type: 'resume', channel: 0, tunnelId: current.id, received }))
          if (!current.resume(won.session, ask.received, won.path, won.remote, won.transport)) throw new NatdError('BAD_REQUEST', `${name} resumed with an impossible frame count`)
          current.peerEndpoints = { udp: intro.peer.udp, tcp: intro.peer.tcp }
          if (won.release) current.once('closed', won.release)
          return current
        }
        if (current?.isUp && current.ageMs < SIMULTANEOUS_OPEN_MS) {
          // A tunnel the peer may not have registered yet (it opened one as we restarted):
          // name it, and keep it rather than start a third.
          won.session.write(encodeMux({ type: 'resume', channel: 0, tunnelId: current.id, received: 0 }))
          const session = won.session
          this.c.clock.setTimeout(() => session.destroy(), GOODBYE_LINGER_MS).unref()
          won.release?.()
          throw new NatdError('ABORTED', `${name} resumed a tunnel we no longer have; we keep a newer one`)
        }
        // Not a tunnel we have (we restarted or gave up): a fresh one, and the peer learns so.
        won.session.write(encodeMux({ type: 'resume', channel: 0, tunnelId: intro.introId, received: 0 }))
        current?.close('the peer resumed a tunnel we no longer have', { goodbye: true })
        return this.fresh(intro, won, upgrade, id, late)
      }
    }
    const existing = this.c.current(id)
    if (intro.initiator && intro.via === 'direct' && existing?.isOpen && existing.path !== 'relay') {
      // An upgrade attempt, and the tunnel found a direct path meanwhile (a late one): this one goes unused (the peer sees it close).
      won.session.destroy()
      won.release?.()
      throw new NatdError('ABORTED', `the tunnel to ${name} is on ${existing.path} already`)
    }
    if (existing?.isUp && existing.path === 'relay' && won.path !== 'relay') {
      // The relayed tunnel moves to the new path in its turn, as a late path does (late-switch.ts):
      // the "this one" ping goes out only when upgrade() takes the path (review 3 #8).
      if (await this.c.lateSwitches.add(existing, won, intro.initiator, name)) return existing
      throw new NatdError('ABORTED', `the tunnel to ${name} did not take the new path (it moved or went down meanwhile)`)
    }
    if (intro.initiator) won.session.write(encodeMux({ type: 'ping', channel: 0, seq: 0 })) // "this one"
    return this.fresh(intro, won, upgrade, id, late)
  }

  /** A new tunnel on the session that won. */
  private async fresh(intro: Introduction, won: Established, upgrade: boolean, id: string, late: Promise<void> = Promise.resolve()): Promise<Tunnel> {
    const { session, path, remote } = won
    const name = intro.peer.name
    const log = this.c.log
    const refused = intro.initiator ? null : this.c.admitInbound(id, name)
    if (refused !== null) {
      // Said to the opener before its tunnel carries anything: its tunnel closes with BUSY (tunnel.ts onGoodbye).
      session.write(encodeMux({ type: 'goodbye', channel: 0, reason: `BUSY: ${refused}` }))
      this.c.clock.setTimeout(() => session.destroy(), GOODBYE_LINGER_MS).unref()
      won.release?.()
      throw new NatdError('BUSY', refused)
    }
    const introKey = Buffer.from(intro.introId).toString('hex')
    const tunnel = new Tunnel({ name, id }, path, remote, won.transport, introKey, intro.initiator, session, this.c.timing, this.c.clock, log.child({ peer: name }))
    tunnel.peerEndpoints = { udp: intro.peer.udp, tcp: intro.peer.tcp }
    if (intro.initiator) this.vias.set(tunnel, intro.via)
    tunnel.mux.on('open', (req) => this.c.onChannel(tunnel, req))
    if (won.release) tunnel.once('closed', won.release)
    tunnel.on('path', (from) => this.c.events.emit('path', tunnel, from))
    tunnel.on('migrating', (reason) => {
      this.c.events.emit('migrating', tunnel, reason)
      if (tunnel.opener) void this.c.recovery.resume(tunnel, this.vias.get(tunnel) ?? 'auto')
    })
    tunnel.on('resumed', (stalledMs) => this.c.events.emit('resumed', tunnel, stalledMs))
    tunnel.on('suspect', () => this.c.events.emit('suspect', tunnel))
    if (intro.initiator && intro.via === 'auto') {
      const lossy = new LossyWatch(this.c.clock)
      tunnel.on('lossy', () => {
        if (tunnel.isUp && tunnel.path === 'direct-tcp' && lossy.onLossy()) void this.c.recovery.moveToUdp(tunnel)
      })
    }
    await this.c.register(tunnel)
    // The upgrade loop starts once the late attempts of this introduction ended (path-race.ts).
    if (path === 'relay' && upgrade) void late.then(() => this.c.recovery.upgrade(tunnel))
    log.info('tunnel up', { peer: name, path, transport: won.transport, remote: formatEndpoint(remote), punchMs: won.punchMs, sent: won.sent, strategy: won.strategy, initiator: intro.initiator, via: intro.via })
    return this.c.get(id) ?? tunnel
  }

  /**
   * We opened `tunnel` and it is migrating: a new session from a new introduction
   * resumes it (resume.ts). If the peer answers with another tunnel id, it lost ours:
   * ours closes and the fresh one takes its place.
   */
  private async resumeAsOpener(tunnel: Tunnel, won: Established, intro: Introduction): Promise<Tunnel> {
    if (!tunnel.isOpen || this.c.current(tunnel.peer.id) !== tunnel) {
      won.session.destroy()
      won.release?.()
      throw new NatdError('ABORTED', 'the tunnel closed while a new path was punched')
    }
    const received = tunnel.detach()
    won.session.write(encodeMux({ type: 'resume', channel: 0, tunnelId: tunnel.id, received }))
    const first = (await firstFrame(won.session, RESUME_ANSWER_MS, this.c.clock)) ?? undefined
    const refused = asGoodbye(first)
    if (refused !== null) {
      // The peer will not resume it (the relay ended it): over, no fresh tunnel either.
      won.session.destroy()
      won.release?.()
      tunnel.close(`peer closed the tunnel (${refused})`, { goodbye: false, code: 'TUNNEL_CLOSED' })
      throw new NatdError('TUNNEL_CLOSED', `${tunnel.peer.name} refused to resume the tunnel: ${refused}`)
    }
    const answer = asResume(first)
    if (!answer) {
      won.session.destroy()
      won.release?.()
      tunnel.resumeFailed('the peer did not answer the resume')
      throw new NatdError('PUNCH_TIMEOUT', `${tunnel.peer.name} did not answer the resume in time`)
    }
    if (timingSafeEqual(answer.tunnelId, tunnel.id)) {
      if (!tunnel.resume(won.session, answer.received, won.path, won.remote, won.transport)) {
        won.release?.()
        throw new NatdError(tunnel.isOpen ? 'BAD_REQUEST' : 'ABORTED', `${tunnel.peer.name} resumed with an impossible frame count, or the tunnel closed meanwhile`)
      }
      if (won.release) tunnel.once('closed', won.release)
      tunnel.peerEndpoints = { udp: intro.peer.udp, tcp: intro.peer.tcp }
      return tunnel
    }
    tunnel.close('the peer no longer has this tunnel (it restarted or gave up)', { goodbye: false })
    if (timingSafeEqual(answer.tunnelId, intro.introId)) {
      // The peer started a fresh tunnel on this session.
      won.session.resume()
      return this.fresh(intro, won, false, tunnel.peer.id)
    }
    // The peer keeps another tunnel with us (one it just opened): that one it is.
    won.session.destroy()
    won.release?.()
    const kept = this.c.current(tunnel.peer.id)
    if (kept?.isOpen) return kept
    throw new NatdError('ABORTED', `${tunnel.peer.name} keeps another tunnel with us`)
  }
}
