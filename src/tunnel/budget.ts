/**
 * What an introduction may make this agent spend (docs/SECURITY.md "every resource a
 * stranger can make us spend is bounded"). Any registered agent can ask the server to
 * introduce it to us, listing the LAN candidates and the NAT verdict it likes, so
 * punching is paced and counted per peer and in total:
 *
 *   - UDP punch probes and TCP SYNs: token buckets, per peer and global (a probe over
 *     budget is not sent; a SYN over budget waits for its token);
 *   - introductions from one peer: a token bucket (over it: RATE_LIMITED);
 *   - punches at once, per peer and in total, and birthday punches at once (each holds
 *     BIRTHDAY_SOCKETS sockets): counted slots (over them: BUSY).
 *
 * Each default is sized from what an honest punch needs (ARCHITECTURE.md "Paths"),
 * with room to spare. Refusals are logged once per kind, then as counts
 * (PunchRefusals), never per packet.
 */
import type { TimerClock } from '../protocol/clock.js'
import type { Clock, Logger } from '../protocol/log.js'
import { TokenBucket } from './token-bucket.js'
import { RefusalLog as CommonRefusalLog } from '../common/refusal-log.js'

/** Takes a token from every bucket, or from none (so one bucket's refusal spends nothing). */
function takeAll(buckets: TokenBucket[]): boolean {
  if (buckets.some((b) => b.available() < 1)) return false
  for (const b of buckets) b.take()
  return true
}

export interface PunchBudgetInit {
  /**
   * UDP punch probes per second per peer, and the burst. The busiest honest punch is the
   * easy side of a birthday punch: SPRAY_RATE_PER_S (1,000/s) plus 50/s per candidate;
   * the hard side sends BIRTHDAY_SOCKETS (256) TTL-2 probes at once every second.
   */
  peerProbesPerS: number
  peerProbeBurst: number
  /** UDP punch probes per second in total, and the burst: two honest sprays at once. */
  probesPerS: number
  probeBurst: number
  /**
   * TCP SYNs one punch (one introduction) may send at once, then per second. Through
   * routers that answer SYNs with RST an honest punch sends one SYN per round trip until
   * two cross (tcp-punch.ts); in the lab (round trip ~50 µs, so paced at the 1 ms
   * floor, on a loaded 2-core box) the side that got through had sent a median of
   * 144-239 SYNs and at most 1,133 (40 opens); with a burst of 1,000, 1 of 30 opens
   * failed for want of SYNs. The burst covers that; the rate keeps a long punch going
   * slowly (a 30 ms path paced by its round trip needs ~33 a second, so ~45 s of burst).
   */
  punchSynBurst: number
  punchSynsPerS: number
  /** TCP SYNs per second per peer, and the burst: ten honest opens in a row, one after the other. */
  peerSynsPerS: number
  peerSynBurst: number
  /** TCP SYNs per second in total, and the burst. */
  synsPerS: number
  synBurst: number
  /**
   * Introductions a peer may make us act on: the burst, then per second. Honest opens
   * come one at a time (each punches, most take under a second), upgrade attempts
   * every UPGRADE_RETRY_MS.
   */
  peerIntrosPerS: number
  peerIntroBurst: number
  /** Punches (one per introduction) at once: per peer, and in total. */
  peerPunches: number
  punches: number
  /** Birthday punches at once (each holds BIRTHDAY_SOCKETS sockets): per peer, and in total. */
  peerBirthdayPunches: number
  birthdayPunches: number
  /**
   * Tunnels peers opened to us that we keep at once (a peer key has one: a fresh one
   * replaces it, manager.ts register). Each costs a socket, the session's buffers, timers
   * and up to TUNNEL_WINDOW_BUDGET_BYTES of channel windows (window-budget.ts). At it a
   * place is made or the newcomer refused with BUSY (manager.ts admitInbound, keep.ts).
   * Tunnels we open are not counted.
   */
  inboundTunnels: number
}

export const PUNCH_BUDGET_DEFAULTS: Readonly<PunchBudgetInit> = Object.freeze({
  peerProbesPerS: 1_500,
  peerProbeBurst: 600,
  probesPerS: 3_000,
  probeBurst: 1_500,
  punchSynBurst: 1_500,
  punchSynsPerS: 20,
  peerSynsPerS: 100,
  peerSynBurst: 3_000,
  synsPerS: 400,
  synBurst: 6_000,
  peerIntrosPerS: 2,
  peerIntroBurst: 8,
  peerPunches: 2,
  punches: 16,
  peerBirthdayPunches: 1,
  birthdayPunches: 2,
  // An agent many peers use at once (a shared drop box, a jump host) holds tens; at 256 a
  // stranger with fresh keys holds at most 256 × 64 MiB of windows, not unbounded.
  inboundTunnels: 256
})

/** A peer's buckets and slots are forgotten when idle, once this many peers are held. */
const MAX_IDLE_PEERS = 256

interface PeerState {
  probes: TokenBucket
  syns: TokenBucket
  intros: TokenBucket
  punches: number
  birthdays: number
}

/** What a punch holds until it calls `release()` (idempotent). */
export interface Slot {
  release(): void
}

export class PunchBudget {
  readonly init: Readonly<PunchBudgetInit>
  private readonly peers = new Map<string, PeerState>()
  private readonly probes: TokenBucket
  private readonly syns: TokenBucket
  private punches = 0
  private birthdays = 0

  constructor(
    private readonly clock: Clock,
    init: Partial<PunchBudgetInit> = {}
  ) {
    this.init = Object.freeze({ ...PUNCH_BUDGET_DEFAULTS, ...init })
    this.probes = new TokenBucket(this.init.probesPerS, this.init.probeBurst, clock)
    this.syns = new TokenBucket(this.init.synsPerS, this.init.synBurst, clock)
  }

  private peer(id: string): PeerState {
    let p = this.peers.get(id)
    if (!p) {
      if (this.peers.size >= MAX_IDLE_PEERS) this.forgetIdle()
      const i = this.init
      p = {
        probes: new TokenBucket(i.peerProbesPerS, i.peerProbeBurst, this.clock),
        syns: new TokenBucket(i.peerSynsPerS, i.peerSynBurst, this.clock),
        intros: new TokenBucket(i.peerIntrosPerS, i.peerIntroBurst, this.clock),
        punches: 0,
        birthdays: 0
      }
      this.peers.set(id, p)
    }
    return p
  }

  /** A peer whose buckets are full and who holds no slot is as good as new. */
  private forgetIdle(): void {
    for (const [id, p] of this.peers) if (p.punches === 0 && p.birthdays === 0 && p.probes.full && p.syns.full && p.intros.full) this.peers.delete(id)
  }

  /** One UDP punch probe to or for `peer`: false when over budget (do not send it). */
  probe(peer: string): boolean {
    return takeAll([this.peer(peer).probes, this.probes])
  }

  /**
   * The SYN gate of one TCP punch with `peer`: each call is one SYN, 0 when it may go now
   * (its tokens taken from the punch's, the peer's and the global bucket), else the ms
   * to wait.
   */
  synGate(peer: string): () => number {
    const own = new TokenBucket(this.init.punchSynsPerS, this.init.punchSynBurst, this.clock)
    const p = this.peer(peer)
    return () => {
      const buckets = [own, p.syns, this.syns]
      if (takeAll(buckets)) return 0
      return Math.max(1, ...buckets.map((b) => b.waitMs()))
    }
  }

  /** An introduction from `peer` we are asked to act on: false when it asks too often. */
  introduction(peer: string): boolean {
    return this.peer(peer).intros.take()
  }

  /** A punch slot for `peer`, or null when it (or everyone) has as many as allowed at once. */
  punch(peer: string): Slot | null {
    const p = this.peer(peer)
    if (p.punches >= this.init.peerPunches || this.punches >= this.init.punches) return null
    p.punches++
    this.punches++
    return this.slot(() => {
      p.punches--
      this.punches--
    })
  }

  /** A birthday-punch slot (BIRTHDAY_SOCKETS sockets) for `peer`, or null. */
  birthday(peer: string): Slot | null {
    const p = this.peer(peer)
    if (p.birthdays >= this.init.peerBirthdayPunches || this.birthdays >= this.init.birthdayPunches) return null
    p.birthdays++
    this.birthdays++
    return this.slot(() => {
      p.birthdays--
      this.birthdays--
    })
  }

  private slot(free: () => void): Slot {
    let held = true
    return {
      release: () => {
        if (!held) return
        held = false
        free()
      }
    }
  }

  /** Slots held now (natctl status could show it; tests do). */
  get inUse(): { punches: number; birthdays: number } {
    return { punches: this.punches, birthdays: this.birthdays }
  }
}

/** The agent's punching refusals are counted over this window (common/refusal-log.ts). */
export const REFUSAL_LOG_MS = 10_000

/**
 * The punching refusals of an agent (introductions over budget, punches at once, probes
 * and SYNs over their rates), logged as common/refusal-log.ts logs every refusal: the
 * first of a kind at once, then a count per REFUSAL_LOG_MS, at warn (the user may wonder
 * why an open failed).
 */
export class PunchRefusals extends CommonRefusalLog {
  constructor(log: Logger, timers?: Pick<TimerClock, 'setTimeout' | 'clear'>) {
    super(log, { windowMs: REFUSAL_LOG_MS, level: 'warn' }, timers)
  }

  note(code: string, what: string, peer: string): void {
    this.refused(what, peer, code)
  }
}

/** The name manager.ts and paths.ts use (being rewritten elsewhere; they can take PunchRefusals then). */
export { PunchRefusals as RefusalLog }
