/**
 * A tunnel's timing (tunnel.ts): what it is given (TunnelTiming: the agent's keepalive,
 * when a silent path is gone, how long a migration may last), and its own fixed periods
 * and lingers. The silence limits live with their decisions in path-silence.ts.
 */

export interface TunnelTiming {
  /** Keepalive period: inside the tightest NAT UDP timeout we must survive. */
  keepaliveMs: number
  /** A path silent this long is gone (the tunnel migrates). */
  deadMs: number
  /** A tunnel migrating this long closes; default MIGRATE_GIVE_UP_MS. */
  giveUpMs?: number
}

/** How often the tunnel checks whether its path is gone. */
export const LIVENESS_CHECK_MS = 250
/** A migrating tunnel pings its old path this often: a path back after a short outage is used at once. */
export const MIGRATING_PING_MS = 500
/** A migrating tunnel gives up after this long (a 30 s outage, three times over) and closes. */
export const MIGRATE_GIVE_UP_MS = 90_000
/** A goodbye gets this long to leave before its session goes. */
export const GOODBYE_LINGER_MS = 100
/** After an upgrade the old session carries the peer's last frames on it this long (the peer switches too). */
export const OLD_SESSION_LINGER_MS = 1_000
