/**
 * What the manager does for a tunnel after it came up, in the background: while a tunnel
 * we opened migrates (its path died), ask for a new introduction and resume it on the
 * path punched (resume.ts); while an `auto` tunnel is relayed, keep looking for a direct
 * path (libp2p's DCUtR idea: a NAT that changes, or a peer that moves, may allow one
 * later). Each loop runs for one tunnel and stops by itself when that tunnel is up again,
 * direct, closed, replaced, or the manager closes. Both loops never reject.
 *
 * Who makes us do this work: our own tunnels only (the loops start from the manager, for
 * tunnels it keeps); each attempt is one introduction (the server's rate limit counts
 * it) and one punch inside the punching budget (budget.ts).
 */
import type { TimerClock } from '../protocol/clock.js'
import { toNatdError } from '../protocol/errors.js'
import type { Logger } from '../protocol/log.js'
import type { PeerTarget } from '../protocol/peer-ref.js'
import type { Via } from '../protocol/rendezvous.js'
import type { Introduction } from './paths.js'
import type { Tunnel } from './tunnel.js'
import { TokenBucket } from './token-bucket.js'

/** A relayed `auto` tunnel tries a direct path this long after it came up, then at this period. */
export const UPGRADE_FIRST_MS = 2_000
export const UPGRADE_RETRY_MS = 5_000
/** One upgrade attempt may take this long. */
export const UPGRADE_TIMEOUT_MS = 5_000
/**
 * A migrating tunnel's opener asks for a new introduction this long after a failed
 * attempt: the stall after the network comes back is at most about this plus an attempt
 * plus one punch (1 s here left most of the over-2 s stalls at 20 ms RTT,
 * bench/roaming.ts). But never sooner than RESUME_ATTEMPT_SPACING_MS after the last
 * attempt started.
 */
export const RESUME_RETRY_MS = 400
/** After a first failed attempt the opener asks again this soon (then RESUME_RETRY_MS). */
export const RESUME_RETRY_FIRST_MS = 200
/**
 * From the second retry on, attempts start at least this far apart, however fast they
 * fail: an introduction refused in one round trip (a peer's error, RATE_LIMITED) would
 * otherwise come back every RESUME_RETRY_MS (~150 a minute). So a migrating tunnel asks
 * at most 60 times a minute (plus the early first retry), half the server's default
 * 120 introductions a minute per key (rendezvous/limits.ts DEFAULT_SERVER_LIMITS
 * introductionsPerMinute), which also count the user's own opens and every relayed
 * tunnel's upgrade attempts (12 a minute each).
 */
export const RESUME_ATTEMPT_SPACING_MS = 1_000
/**
 * The server refused an introduction with RATE_LIMITED (this key is over its budget):
 * the opener waits this long, doubling up to RESUME_RATE_LIMITED_MAX_MS, so the bucket
 * refills (2 a second at 120 a minute) for the user's own opens too.
 */
export const RESUME_RATE_LIMITED_MS = 5_000
export const RESUME_RATE_LIMITED_MAX_MS = 30_000
/**
 * While we are not registered (our mapping changed and the agent registers again) the
 * opener asks again this soon: the introduction fails locally, nothing is sent (the
 * server's 120 introductions a minute are not spent).
 */
export const RESUME_UNREGISTERED_RETRY_MS = 100
/**
 * The server answered PEER_OFFLINE (the peer's control connection is gone: its link was
 * dark, or its mapping moved, and it registers again within a second or two): the opener
 * asks again this soon, so the peer's new registration is used within a fraction of a
 * second, not after up to RESUME_ATTEMPT_SPACING_MS (bench/roaming.ts: 0.75 s of a 2.9 s
 * stall after a 10 s outage, two PEER_OFFLINE answers a second apart around the peer's
 * registration). Each is one introduction of the server's budget (120 a minute per key),
 * so at most RESUME_OFFLINE_FAST_MAX of them per migration: 20 more than the 60 a minute
 * of RESUME_ATTEMPT_SPACING_MS; after those, PEER_OFFLINE is spaced like any failure.
 */
export const RESUME_OFFLINE_RETRY_MS = 250
export const RESUME_OFFLINE_FAST_MAX = 20
/**
 * The fast PEER_OFFLINE retries of all the agent's migrating tunnels share one budget:
 * the server's 120 introductions a minute are per key, not per tunnel, and after a server
 * restart every tunnel migrates at once (15 tunnels × 20 fast retries went over it, and
 * the RATE_LIMITED back-off then held up the user's own opens). A burst of
 * RESUME_OFFLINE_FAST_BURST (one tunnel's full fast run, the roaming case) refilled at
 * RESUME_OFFLINE_FAST_PER_MIN: at most 30 in the first minute and 10 a minute after, a
 * quarter of the server's budget at most. When it is empty, PEER_OFFLINE is spaced as
 * any failure.
 */
export const RESUME_OFFLINE_FAST_BURST = 20
export const RESUME_OFFLINE_FAST_PER_MIN = 10
/**
 * One resume attempt (introduction, punch, handshake, RESUME answer) may take this long:
 * enough at 300 ms RTT (an open takes ~1.3 s there), short enough that an attempt made
 * while the peer was away does not hold back the one that can succeed once it is back.
 */
export const RESUME_ATTEMPT_MS = 3_000
/**
 * The first resume attempt may take RESUME_ATTEMPT_RTTS of the tunnel's round trip, at
 * least RESUME_ATTEMPT_MIN_MS; each next one twice as long up to RESUME_ATTEMPT_MS. An
 * attempt made before the peer registered again (its mapping changed with ours, its
 * control connection died with it) cannot succeed, and the next one should come soon;
 * a punch and resume take ~4-5 round trips (docs/BENCHMARKS.md: opens of 3.3-4 RTTs).
 */
export const RESUME_ATTEMPT_RTTS = 10
export const RESUME_ATTEMPT_MIN_MS = 600

/** What the loops read of a tunnel. */
export type RecoveringTunnel = Pick<Tunnel, 'peer' | 'path' | 'isOpen' | 'isUp' | 'isMigrating' | 'migratedBySilence' | 'lastRttMs'>

export interface RecoveryComponents<T extends RecoveringTunnel = Tunnel> {
  clock: TimerClock
  log: Logger
  /** Asks the rendezvous server to introduce us to `target` again. */
  introduce(target: string, via: Via): Promise<Introduction>
  /** Checks our NAT again and tells the server when the verdict changed (before an upgrade attempt). */
  refreshNat(): Promise<void>
  /**
   * Punches the paths the introduction asks for and keeps the winner: it resumes
   * `resuming`, or upgrades the relayed tunnel to the peer when null (manager.ts).
   */
  establish(intro: Introduction, timeoutMs: number, expected: PeerTarget, resuming: T | null): Promise<unknown>
  /** The tunnel the manager keeps for this peer now: a loop for any other stops. */
  current(peerId: string): T | undefined
  /** True once the manager closed (daemon shutdown): every loop stops. */
  closed(): boolean
}

export class TunnelRecovery<T extends RecoveringTunnel = Tunnel> {
  /** One per agent (the manager keeps one TunnelRecovery): RESUME_OFFLINE_FAST_BURST. */
  private readonly fastOffline: TokenBucket

  constructor(private readonly c: RecoveryComponents<T>) {
    this.fastOffline = new TokenBucket(RESUME_OFFLINE_FAST_PER_MIN / 60, RESUME_OFFLINE_FAST_BURST, c.clock)
  }

  private kept(tunnel: T): boolean {
    return !this.c.closed() && this.c.current(tunnel.peer.id) === tunnel
  }

  /**
   * Looks for a new path while `tunnel` (which we opened) migrates: asks the server for
   * a new introduction the way the tunnel was opened (`via`), punches, resumes. Stops
   * when the tunnel is up again or closed (it gives up by itself). Never rejects.
   */
  async resume(tunnel: T, opened: Via): Promise<void> {
    // A direct-tcp path gone silent (no changed mapping) is often a lossy one: `auto`
    // tries UDP first (lossy-path.ts), then as it was opened.
    let via: Via = opened
    if (opened === 'auto' && tunnel.path === 'direct-tcp' && tunnel.migratedBySilence) {
      via = 'udp'
      this.c.log.info('direct-tcp path lossy, trying UDP', { peer: tunnel.peer.name, how: 'resume' })
    }
    let attemptMs = Math.min(RESUME_ATTEMPT_MS, Math.max(RESUME_ATTEMPT_MIN_MS, Math.round(RESUME_ATTEMPT_RTTS * (tunnel.lastRttMs ?? 0))))
    let retryMs = RESUME_RETRY_FIRST_MS
    let spacingMs = 0 // the first retry may come sooner (RESUME_RETRY_FIRST_MS)
    let rateLimitedMs = RESUME_RATE_LIMITED_MS
    let fastOffline = 0
    while (tunnel.isMigrating && this.kept(tunnel)) {
      const started = this.c.clock.now()
      try {
        const intro = await this.c.introduce(tunnel.peer.id, via)
        if (!tunnel.isMigrating) return
        const ms = attemptMs
        attemptMs = Math.min(RESUME_ATTEMPT_MS, attemptMs * 2)
        via = opened
        await this.c.establish(intro, ms, { name: null, id: tunnel.peer.id }, tunnel)
      } catch (err) {
        const e = toNatdError(err)
        this.c.log.debug('resume attempt failed', { peer: tunnel.peer.name, code: e.code, err: e.message })
        // Registering again (our mapping changed): asking costs nothing until we are.
        if ((e.code === 'NOT_REGISTERED' || e.code === 'SERVER_UNREACHABLE') && tunnel.isMigrating) {
          await this.c.clock.sleep(RESUME_UNREGISTERED_RETRY_MS)
          continue
        }
        // The peer registers again (its control connection went with its link): ask soon, a bounded number of times.
        if (e.code === 'PEER_OFFLINE' && tunnel.isMigrating && fastOffline < RESUME_OFFLINE_FAST_MAX && this.fastOffline.take()) {
          fastOffline++
          await this.c.clock.sleep(RESUME_OFFLINE_RETRY_MS)
          continue
        }
        // This key is over the server's budget: let it refill, for the user's opens too.
        if (e.code === 'RATE_LIMITED' && tunnel.isMigrating) {
          this.c.log.info('resume rate limited by the server, backing off', { peer: tunnel.peer.name, waitMs: rateLimitedMs })
          await this.c.clock.sleep(rateLimitedMs)
          rateLimitedMs = Math.min(RESUME_RATE_LIMITED_MAX_MS, rateLimitedMs * 2)
          continue
        }
      }
      if (tunnel.isMigrating) await this.c.clock.sleep(Math.max(retryMs, started + spacingMs - this.c.clock.now()))
      retryMs = RESUME_RETRY_MS
      spacingMs = RESUME_ATTEMPT_SPACING_MS
    }
  }

  /**
   * `auto` moves a lossy direct-tcp tunnel we opened to UDP (lossy-path.ts): a UDP
   * introduction, a punch, a RESUME on the new session. Never rejects.
   */
  async moveToUdp(tunnel: T): Promise<void> {
    if (!tunnel.isUp) return // migrating: its resume loop runs (and asks for UDP first)
    this.c.log.info('direct-tcp path lossy, trying UDP', { peer: tunnel.peer.name })
    try {
      const intro = await this.c.introduce(tunnel.peer.id, 'udp')
      if (!tunnel.isUp || tunnel.path !== 'direct-tcp') return
      await this.c.establish(intro, RESUME_ATTEMPT_MS, { name: null, id: tunnel.peer.id }, tunnel)
    } catch (err) {
      const e = toNatdError(err)
      this.c.log.info('no UDP path for the lossy tunnel, it stays on direct-tcp', { peer: tunnel.peer.name, code: e.code, err: e.message })
    }
  }

  /**
   * Keeps looking for a direct path while `tunnel` is relayed: first after
   * UPGRADE_FIRST_MS, then every UPGRADE_RETRY_MS; a migrating tunnel's resume comes
   * first. Never rejects.
   */
  async upgrade(tunnel: T): Promise<void> {
    let wait = UPGRADE_FIRST_MS
    while (!this.c.closed()) {
      await this.c.clock.sleep(wait)
      wait = UPGRADE_RETRY_MS
      if (!tunnel.isOpen || tunnel.path !== 'relay' || !this.kept(tunnel)) return
      if (!tunnel.isUp) continue // migrating: its resume comes first
      try {
        await this.c.refreshNat()
        const intro = await this.c.introduce(tunnel.peer.id, 'direct')
        await this.c.establish(intro, UPGRADE_TIMEOUT_MS, { name: null, id: tunnel.peer.id }, null)
      } catch (err) {
        const e = toNatdError(err)
        this.c.log.debug('no direct path yet', { peer: tunnel.peer.name, code: e.code, err: e.message })
      }
    }
  }
}
