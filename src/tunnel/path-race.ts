/**
 * How an introduction settles on one path when several are punched at once (`auto`: UDP,
 * TCP and the relay; manager.ts acts on the outcome). No I/O: the attempts, the clock and
 * what to do with a late path are injected, so the choice is unit-tested with a fake clock.
 *
 *   attempts ──first authenticated──▶ winner ──(initiator, UDP won, TCP pending:
 *                                               up to AUTO_TCP_GRACE_MS for TCP)──▶ the tunnel
 *   attempts that could give a better path ──land within LATE_PATH_MS──▶ onLate (the tunnel moves)
 *     (initiator: only one that beats the best so far; responder: every one, the initiator chose it)
 *   everything else ──aborted; a session that still lands is discarded
 *
 * Why the late paths (issue #15): keeping TCP only if it landed within a fixed grace of UDP
 * made the choice a race whose spread grows with delay, jitter and loss (a lost SYN costs
 * the kernel's 1 s RTO): at 20-100 ms RTT, pairs that get direct-tcp with no delay got
 * direct-udp in some opens (docs/BENCHMARKS.md, 2026-12-05). Now the tunnel opens on the
 * first path and moves to a better one that lands a little later, the way a relayed
 * tunnel moves to a direct path (tunnel.ts upgrade()): opens stay fast, and the tunnel
 * settles on the same path whatever the delay. Both sides keep attempts by one rule
 * (keeps()); the initiator chooses (its first frame on the late session), the responder
 * follows (late-switch.ts moves the tunnel).
 *
 * Bounds: no attempt is started for this; at most the attempts the introduction already
 * made run on (one UDP punch, one TCP punch, each within its SYN and probe budgets,
 * budget.ts; never one that failed, only one whose candidates can beat the winner, no
 * spray or birthday punch after a direct win), for LATE_PATH_MS after the winner (the
 * responder LATE_PATH_ANSWER_MS longer, so the initiator's choice reaches it), and the
 * punch's slot is held until they end.
 */
import type { TimerClock } from '../protocol/clock.js'
import type { Logger } from '../protocol/log.js'
import { firstOf } from './failures.js'
import type { PathKind, Transport } from '../protocol/tunnel-snapshot.js'

/**
 * When UDP punches first in `auto`, the initiator waits this long for TCP before it makes
 * the tunnel: through routers that drop SYNs TCP lands within ~10 ms of UDP with no
 * delay, so the tunnel starts on TCP and need not move (what `open` reports). A TCP path
 * that lands later still takes over (LATE_PATH_MS).
 */
export const AUTO_TCP_GRACE_MS = 30
/**
 * Attempts that could give a better path run on this long after the winner: a lost SYN
 * costs 1 s (the kernel's initial RTO), a second one 2 s more, and a TCP handshake at
 * 300 ms RTT about 1 s (tcp-punch.ts TCP_HANDSHAKE_MS).
 */
export const LATE_PATH_MS = 5_000
/** The responder keeps them this much longer: the initiator's choice crosses the path to it. */
export const LATE_PATH_ANSWER_MS = 2_000

/** How `auto` ranks paths: a LAN before a direct path before the relay; TCP before UDP on the same (TCP carried 3× the forwarded throughput, docs/BENCHMARKS.md). */
export function pathRank(p: { path: PathKind; transport: Transport }): number {
  if (p.path === 'lan') return p.transport === 'tcp' ? 4 : 3
  if (p.path === 'direct-tcp') return 2
  if (p.path === 'direct-udp') return 1
  return 0
}

/** What kind of attempt it is. */
export type AttemptKind = 'udp' | 'tcp' | 'relay'

/**
 * The best rank `e` can give, from its real candidates: a `lan` path only when it
 * punches a LAN candidate (review 3 #4: UDP was kept after a TCP win "because it could
 * be LAN" when the peer offered no LAN candidate at all).
 */
export function bestRank(e: Pick<RaceEntry<RacedPath>, 'kind' | 'lan'>): number {
  if (e.kind === 'relay') return 0
  return pathRank({ path: e.lan ? 'lan' : e.kind === 'tcp' ? 'direct-tcp' : 'direct-udp', transport: e.kind })
}

export interface RacedPath {
  path: PathKind
  transport: Transport
}

export interface RaceEntry<T extends RacedPath> {
  kind: AttemptKind
  /** It punches at least one LAN candidate (so it could give a `lan` path). */
  lan: boolean
  /** A spray or birthday UDP punch (hundreds of probes or sockets): never run on after a direct path won. */
  costly: boolean
  attempt: Promise<T>
  /** Stops this attempt (its sockets and sessions go). */
  abort: AbortController
}

export interface PathRaceInit {
  /** The initiator of an `auto` introduction with both UDP and TCP: waits AUTO_TCP_GRACE_MS for TCP when UDP wins. */
  preferTcp: boolean
  /** Keep attempts that could beat the winner for this long (0: none), LATE_PATH_MS or, on the responder, plus LATE_PATH_ANSWER_MS. */
  lateMs: number
  /**
   * The responder: a path lands only once the initiator's first frame came on it, so every
   * late one is the initiator's choice and goes to onLate unranked (the two sides label
   * paths from their own candidates and could rank them differently: review 3 #3a).
   */
  follow: boolean
}

export interface PathRaceComponents<T> {
  clock: TimerClock
  log: Logger
  /** Drops a path that landed but is not used (its session and what it holds). */
  discard(p: T): void
}

export interface RaceOutcome<T> {
  /** The path the tunnel starts on. */
  won: T
  /** Resolves once no attempt of the race runs any more (the punch's slot is released then). Never rejects. */
  done: Promise<void>
}

export class PathRace<T extends RacedPath> {
  private state: 'racing' | 'settling' | 'done' = 'racing'
  /** Paths that landed while the race ran, by entry (the winner among them). */
  private readonly early = new Map<RaceEntry<T>, T>()
  /** Attempts kept after the winner: they could still give a better path. */
  private readonly kept = new Set<RaceEntry<T>>()
  /** Attempts that failed, whenever (never kept: review 3 #1). */
  private readonly settled = new Set<RaceEntry<T>>()
  private onLate: (p: T) => void = () => undefined
  /** The best rank handed out so far (the winner, then late paths): a late path must beat it. */
  private best = -1
  private finish: () => void = () => undefined

  constructor(
    private readonly entries: Array<RaceEntry<T>>,
    private readonly init: PathRaceInit,
    private readonly c: PathRaceComponents<T>
  ) {
    for (const e of entries) e.attempt.then((p) => this.landed(e, p), () => this.failed(e))
  }

  private landed(e: RaceEntry<T>, p: T): void {
    if (this.state === 'racing') {
      this.early.set(e, p)
      return
    }
    if (this.state === 'settling' && this.kept.delete(e)) {
      if (this.init.follow) this.onLate(p)
      else if (pathRank(p) > this.best) {
        this.best = pathRank(p)
        this.onLate(p)
      } else this.c.discard(p)
      if (this.kept.size === 0) this.finish()
      return
    }
    this.c.discard(p) // it lost, or came after the window
  }

  private failed(e: RaceEntry<T>): void {
    this.settled.add(e)
    if (this.state === 'settling' && this.kept.delete(e) && this.kept.size === 0) this.finish()
  }

  /**
   * The path the tunnel starts on: the first that authenticates (on the responder, the
   * one the initiator chose), or TCP when it lands within AUTO_TCP_GRACE_MS of a UDP
   * winner on the initiator; rejects with the most telling error when every attempt
   * fails. Then every other attempt is aborted, except, when lateMs > 0, those worth
   * keeping (keeps()): each of those that lands within lateMs goes to `onLate` (on the
   * initiator only when it beats the best path so far), which takes it (the tunnel moves)
   * or discards it.
   */
  async run(onLate: (p: T) => void, signal?: AbortSignal): Promise<RaceOutcome<T>> {
    let { p: won, e: entry } = await firstOf(this.entries.map((e) => e.attempt.then((p) => ({ p, e }))))
    const tcp = this.entries.find((e) => e.kind === 'tcp' && e !== entry)
    if (this.init.preferTcp && won.transport === 'udp' && tcp) {
      const late = this.early.get(tcp) ?? (await Promise.race([tcp.attempt.catch(() => null), this.c.clock.sleep(AUTO_TCP_GRACE_MS, signal).then(() => null)]))
      if (late && pathRank(late) > pathRank(won)) {
        this.early.delete(tcp)
        this.early.delete(entry)
        this.c.discard(won)
        won = late
        entry = tcp
      }
    }
    this.early.delete(entry)
    this.onLate = onLate
    this.best = pathRank(won)
    this.state = 'settling'
    for (const e of this.entries) {
      if (e === entry) continue
      const landed = this.early.get(e)
      if (landed) {
        // Landed while the race ran, and lost it: better paths are late ones.
        if (this.init.lateMs > 0 && (this.init.follow || pathRank(landed) > this.best)) {
          this.best = Math.max(this.best, pathRank(landed))
          onLate(landed)
        } else this.c.discard(landed)
      } else if (this.keeps(e, won)) this.kept.add(e)
      else e.abort.abort()
    }
    this.early.clear()
    if (this.kept.size === 0) {
      this.state = 'done'
      return { won, done: Promise.resolve() }
    }
    const done = new Promise<void>((resolve) => {
      const timer = this.c.clock.setTimeout(() => this.finish(), this.init.lateMs).unref()
      this.finish = () => {
        this.state = 'done'
        this.c.clock.clear(timer)
        for (const e of this.kept) e.abort.abort()
        this.kept.clear()
        resolve()
      }
    })
    return { won, done }
  }

  /**
   * The one rule for which attempts run on after `won`: none when lateMs is 0, never one
   * that already failed, only one whose real candidates can beat `won`, and never a spray
   * or birthday puncher once a direct path won (its cost is only worth a first path).
   */
  private keeps(e: RaceEntry<T>, won: T): boolean {
    if (this.init.lateMs <= 0 || this.settled.has(e)) return false
    if (e.costly && pathRank(won) > 0) return false
    // The responder ranks its winner as the initiator may see it: a path it labels `lan` can be a direct one there (a learnt endpoint is `public`).
    const path = this.init.follow && won.path === 'lan' ? (won.transport === 'tcp' ? 'direct-tcp' : 'direct-udp') : won.path
    return bestRank(e) > pathRank({ path, transport: won.transport })
  }

  /** Stops the late attempts, if any, and leaves the winner alone (none is wanted: a resume). */
  endLate(): void {
    if (this.state === 'settling') this.finish()
  }

  /** Stops every attempt still running (the tunnel was not made, or closed). */
  cancel(): void {
    if (this.state === 'settling') this.finish()
    this.state = 'done'
    for (const e of this.entries) e.abort.abort()
  }
}
