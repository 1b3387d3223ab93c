/**
 * Introductions sent to an agent's control connection are held a little while, and sent
 * again when the agent registers on a new control connection: the one they went to may
 * have been dead already. An agent whose NAT mapping moved (a router that came back with
 * a new port, a host that changed network) loses its control connection with it, and
 * this server learns that only when the agent registers again, ~0.1–2 s later; an
 * introduction sent in between went into a connection nobody reads, and its requester
 * punched alone for a whole attempt (bench/roaming.ts: 1.7 s of a 2.9 s stall at 20 ms
 * RTT, 3 s of a 5.7 s one at 100 ms). Sent again, the agent punches back while the
 * requester still punches.
 *
 * Who makes the server hold what: a registered agent, through INTRODUCE (introductions.ts:
 * introductionsPerMinute per key, INTRO_SOURCE_FACTOR times that per source address), or
 * another instance's introduction for one of our agents. Each held introduction is the
 * message already built (the requester's record, ids, punch key: ~0.5–1 KiB), kept
 * REDELIVER_MS, at most REDELIVER_PER_AGENT per target agent (the newest), at most
 * REDELIVER_MAX in all (beyond it, an introduction is sent once, as before). It is sent
 * again only to the target's own key (a new registration, checked against its Noise
 * session), at most once, and only by that agent's registering again (registrations are
 * rate-limited per key): at most REDELIVER_PER_AGENT messages per registration. An agent
 * that floods introductions to one target can crowd out others' held ones for that
 * target: they are then sent once, as without this file.
 */
import type { Clock } from '../protocol/log.js'
import type { OutgoingMessage } from '../protocol/rendezvous.js'
import type { RegRef } from './registry.js'
import type { TcpConn, TcpGate } from './tcp-gate.js'

/**
 * An introduction is sent again this long after it was first sent: the target registers
 * again within ~0.2 s (its mapping moved: at once) to ~2 s (a connect begun while its link
 * was dark, control-connection.ts URGENT_CONNECT_TIMEOUT_MS), and its requester punches
 * for at most ~3 s per attempt (tunnel/recovery.ts RESUME_ATTEMPT_MS): older ones have
 * been given up.
 */
export const REDELIVER_MS = 3_000
/** At most this many held per target agent (the newest). */
export const REDELIVER_PER_AGENT = 8
/** At most this many held in all (~4 MiB at most). */
export const REDELIVER_MAX = 4_096

export type IntroductionMessage = Extract<OutgoingMessage, { type: 'introduction' }>

interface Held {
  at: number
  conn: TcpConn
  msg: IntroductionMessage
}

export class IntroOutbox {
  private readonly held = new Map<RegRef, Held[]>()
  private count = 0

  constructor(private readonly c: { clock: Clock; gate: Pick<TcpGate, 'send'> }) {}

  /** Introductions held now. */
  get size(): number {
    return this.count
  }

  /** Sends `msg` to agent `ref` on its control connection `conn`, and holds it. */
  send(ref: RegRef, conn: TcpConn, msg: IntroductionMessage): void {
    this.c.gate.send(conn, msg)
    const list = this.fresh(ref)
    if (this.count >= REDELIVER_MAX) return
    list.push({ at: this.c.clock.now(), conn, msg })
    this.count++
    if (list.length > REDELIVER_PER_AGENT) {
      list.shift()
      this.count--
    }
    this.held.set(ref, list)
  }

  /**
   * Agent `ref` registered on `conn`: the introductions sent to another (older)
   * connection of it within REDELIVER_MS go to `conn` now, once. Returns how many.
   */
  redeliver(ref: RegRef, conn: TcpConn): number {
    const list = this.fresh(ref)
    const again = list.filter((h) => h.conn !== conn)
    if (again.length === 0) return 0
    const kept = list.filter((h) => h.conn === conn)
    this.count -= again.length
    if (kept.length) this.held.set(ref, kept)
    else this.held.delete(ref)
    for (const h of again) this.c.gate.send(conn, h.msg)
    return again.length
  }

  /** Forgets what is older than REDELIVER_MS (the server's sweep, once a second). */
  sweep(): void {
    for (const ref of [...this.held.keys()]) this.fresh(ref)
  }

  /** `ref`'s held introductions younger than REDELIVER_MS (the older ones forgotten). */
  private fresh(ref: RegRef): Held[] {
    const list = this.held.get(ref)
    if (!list) return []
    const now = this.c.clock.now()
    const young = list.filter((h) => now - h.at < REDELIVER_MS)
    this.count -= list.length - young.length
    if (young.length) this.held.set(ref, young)
    else this.held.delete(ref)
    return young
  }
}
