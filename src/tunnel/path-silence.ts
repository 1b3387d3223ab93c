/**
 * Whether a tunnel's path is gone, lossy or fine, from when anything was last heard on it
 * (tunnel.ts, "Gone" versus "lossy"): the decisions only, apart from the tunnel's timers
 * and sessions.
 */

/** A tunnel that waits for an answer and hears nothing at all for this long has lost its path. */
export const WAITING_SILENT_MS = 2_000
/**
 * A tunnel that waits for an answer and hears nothing for this long is suspect: the agent
 * checks its own side at once (daemon/path-check.ts: a heartbeat and a ping to the
 * server, which tell whether our NAT mapping or address changed). Long enough for TCP's
 * first retransmission (RTO at least 200 ms) and one backoff (400 ms) on a lossy path.
 */
export const SUSPECT_SILENT_MS = 600

/** What a liveness check found: a further suspect silence, and the limit past which the path is gone (null: not gone). */
export interface SilenceVerdict {
  suspect: boolean
  goneAfterMs: number | null
}

export class PathSilence {
  private lastHeard: number
  /** Since when we wait for an answer (unacknowledged frames or a ping); null when we do not. */
  private waitingSince: number | null = null
  /** How many SUSPECT_SILENT_MS of the current silence were reported ('suspect'); 0 when anything is heard. */
  private suspected = 0

  constructor(now: number) {
    this.lastHeard = now
  }

  /** Something arrived: returns how long the suspect silence it ends lasted (the path is lossy), null when there was none. */
  heard(now: number): number | null {
    const silentMs = this.suspected > 0 ? now - Math.max(this.lastHeard, this.waitingSince ?? 0) : null
    this.lastHeard = now
    this.suspected = 0
    return silentMs
  }

  /** The path starts afresh (a new session or path): heard now. */
  touched(now: number): void {
    this.lastHeard = now
  }

  /** No longer waiting for an answer (the tunnel came back up). */
  stopWaiting(): void {
    this.waitingSince = null
  }

  /** The silence ended in a migration: it was a gone path, not a lossy one. */
  forgetSuspicion(): void {
    this.suspected = 0
  }

  /** How long nothing has been heard, waiting or not. */
  silentMs(now: number): number {
    return now - this.lastHeard
  }

  /** A liveness check while up: `waiting` says whether frames or pings wait for an answer. */
  check(now: number, waiting: boolean, deadMs: number): SilenceVerdict {
    if (!waiting) {
      this.waitingSince = null
      this.suspected = 0
      return { suspect: false, goneAfterMs: null }
    }
    this.waitingSince ??= now
    const silentMs = now - Math.max(this.lastHeard, this.waitingSince)
    const limit = Math.min(WAITING_SILENT_MS, deadMs)
    let suspect = false
    if (silentMs > (this.suspected + 1) * Math.min(SUSPECT_SILENT_MS, limit)) {
      this.suspected++
      suspect = true
    }
    return { suspect, goneAfterMs: silentMs > limit ? limit : null }
  }
}
