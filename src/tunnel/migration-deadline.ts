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
 * TUNNEL_CLOSED and the reason (the caller's wait on the channel fails with it).
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

export class MigrationDeadline {
  private timer: Timer | null = null
  /** Time left while running (counted from `armedAt`). */
  private left: number
  private armedAt = 0
  /** Since when it is paused; null while running. */
  private pausedAt: number | null = null
  private pausedMs = 0
  private done = false
  private readonly onMigrating = (): void => this.pause()
  private readonly onResumed = (): void => this.run()

  constructor(
    private readonly clock: TimerClock,
    ms: number,
    private readonly tunnel: MigratingTunnel,
    /** Without one the deadline only measures what is left (`remaining`) for the phases of a longer exchange. */
    private readonly onExpired: () => void = () => undefined
  ) {
    this.left = ms
    tunnel.on('migrating', this.onMigrating)
    tunnel.on('resumed', this.onResumed)
    if (tunnel.isMigrating) this.pause()
    else this.run()
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
    this.tunnel.off('migrating', this.onMigrating)
    this.tunnel.off('resumed', this.onResumed)
  }

  private run(): void {
    if (this.done) return
    if (this.pausedAt !== null) this.pausedMs += this.clock.now() - this.pausedAt
    this.pausedAt = null
    this.clock.clear(this.timer)
    this.armedAt = this.clock.now()
    this.timer = this.clock.setTimeout(() => this.onDeadlineExpired(), this.left)
  }

  private pause(): void {
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
    this.onExpired()
  }
}
