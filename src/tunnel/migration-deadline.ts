/**
 * A deadline for work on a tunnel (a forwarded connection's channel open, a message, a
 * file offer) that does not run while the tunnel migrates. Frames written while a
 * tunnel migrates wait in its replay buffer (mux.ts) and go out once it resumes, so an
 * OPEN made then is answered a round trip after the resume: a deadline that ran on
 * through the migration failed it (FORWARD_OPEN_TIMEOUT_MS 15 s, a message's or a
 * file's own) although the resume came soon after.
 *
 *   running ──(tunnel migrating)──▶ paused ──(tunnel resumed)──▶ running (the time left)
 *   running ──(ms passed)──▶ expired      paused ──(paused MIGRATION_PAUSE_MAX_MS in all)──▶ expired
 *
 * Bound: the work fails at most `ms` + MIGRATION_PAUSE_MAX_MS after it started (the
 * time a migration may last before the tunnel gives up, tunnel.ts MIGRATE_GIVE_UP_MS),
 * and at once when the tunnel gives up or closes: its mux destroys every channel with
 * TUNNEL_CLOSED and the reason (the caller's wait on the channel fails with it). One
 * deadline per operation: its phases (open, then answer) wait on the same deadline
 * (`onExpiry`), so the pause budget is the operation's, not each phase's.
 *
 * The deadlines of a tunnel share one 'migrating' and one 'resumed' listener (`watchers`):
 * hundreds of connections opening at once add no listener each (Node warns past 10).
 */
import type { Timer, TimerClock } from '../protocol/clock.js'
import { MIGRATE_GIVE_UP_MS } from './tunnel.js'

/** All the pauses of one deadline together last at most this long (a tunnel that keeps migrating and resuming does not hold the work for ever). */
export const MIGRATION_PAUSE_MAX_MS = MIGRATE_GIVE_UP_MS

/** What a deadline reads of a tunnel: whether it migrates now, and its moves. */
export interface MigratingTunnel {
  readonly isMigrating: boolean
  on(event: 'migrating' | 'resumed', fn: () => void): unknown
  off(event: 'migrating' | 'resumed', fn: () => void): unknown
}

/** The deadlines running on each tunnel, fed by one listener pair per tunnel. */
const watchers = new WeakMap<MigratingTunnel, TunnelWatch>()

class TunnelWatch {
  readonly deadlines = new Set<MigrationDeadline>()
  private readonly onMigrating = (): void => {
    for (const d of [...this.deadlines]) d.pause()
  }
  private readonly onResumed = (): void => {
    for (const d of [...this.deadlines]) d.run()
  }

  static add(tunnel: MigratingTunnel, d: MigrationDeadline): void {
    let w = watchers.get(tunnel)
    if (!w) {
      w = new TunnelWatch()
      tunnel.on('migrating', w.onMigrating)
      tunnel.on('resumed', w.onResumed)
      watchers.set(tunnel, w)
    }
    w.deadlines.add(d)
  }

  static remove(tunnel: MigratingTunnel, d: MigrationDeadline): void {
    const w = watchers.get(tunnel)
    if (!w || !w.deadlines.delete(d) || w.deadlines.size > 0) return
    tunnel.off('migrating', w.onMigrating)
    tunnel.off('resumed', w.onResumed)
    watchers.delete(tunnel)
  }
}

export class MigrationDeadline {
  private timer: Timer | null = null
  /** Time left while running (counted from `armedAt`). */
  private left: number
  private armedAt = 0
  /** Since when it is paused; null while running. */
  private pausedAt: number | null = null
  private pausedMs = 0
  /** The whole time allowed, pauses not counted (said in errors). */
  readonly ms: number
  private done = false
  private expired = false
  /** Called once when it expires: the constructor's onExpired, then each phase's (onExpiry). */
  private readonly onExpiredFns = new Set<() => void>()

  constructor(
    private readonly clock: TimerClock,
    ms: number,
    private readonly tunnel: MigratingTunnel,
    /** Optional: the phases of a longer exchange wait on it with `onExpiry` instead. */
    onExpired?: () => void
  ) {
    this.ms = ms
    this.left = ms
    if (onExpired) this.onExpiredFns.add(onExpired)
    TunnelWatch.add(tunnel, this)
    if (tunnel.isMigrating) this.pause()
    else this.arm()
  }

  /**
   * Calls `fn` when the deadline expires (at once when it has expired already); returns
   * the function that stops waiting (a phase of the work that ended in time).
   */
  onExpiry(fn: () => void): () => void {
    if (this.expired) {
      fn()
      return () => undefined
    }
    this.onExpiredFns.add(fn)
    return () => void this.onExpiredFns.delete(fn)
  }

  /** Time spent paused so far (the tunnel migrating), at most MIGRATION_PAUSE_MAX_MS. */
  get paused(): number {
    const now = this.pausedAt === null ? 0 : this.clock.now() - this.pausedAt
    return Math.min(MIGRATION_PAUSE_MAX_MS, this.pausedMs + now)
  }

  /** Time left before it expires, not counting pauses to come (at least 1 ms until it expired, then 0). */
  get remaining(): number {
    if (this.done) return 0
    if (this.pausedAt !== null) return Math.max(1, this.left)
    return Math.max(1, this.left - (this.clock.now() - this.armedAt))
  }

  /** Ends the deadline without calling onExpired (the work finished). */
  stop(): void {
    if (this.done) return
    this.done = true
    this.clock.clear(this.timer)
    this.timer = null
    TunnelWatch.remove(this.tunnel, this)
  }

  /** The tunnel resumed: runs on with the time left (nothing to do while running already). */
  run(): void {
    if (this.done || this.pausedAt === null) return
    this.pausedMs += this.clock.now() - this.pausedAt
    this.pausedAt = null
    this.arm()
  }

  private arm(): void {
    this.clock.clear(this.timer)
    this.armedAt = this.clock.now()
    this.timer = this.clock.setTimeout(() => this.onDeadlineExpired(), this.left)
  }

  /** The tunnel migrates: stops the clock (nothing to do while paused already). */
  pause(): void {
    if (this.done || this.pausedAt !== null) return
    const now = this.clock.now()
    if (this.timer !== null) this.left = Math.max(0, this.left - (now - this.armedAt))
    this.clock.clear(this.timer)
    this.pausedAt = now
    this.timer = this.clock.setTimeout(() => this.onDeadlineExpired(), Math.max(0, MIGRATION_PAUSE_MAX_MS - this.pausedMs))
  }

  private onDeadlineExpired(): void {
    if (this.done) return
    this.stop()
    this.expired = true
    for (const fn of [...this.onExpiredFns]) fn()
    this.onExpiredFns.clear()
  }
}
