/**
 * When `auto` moves a lossy direct-tcp tunnel to UDP (issue #15). TCP delivers in order:
 * one lost segment holds every byte behind it until its retransmission gets through, and
 * the retransmission timer doubles on each loss (200 ms, 400, 800…), so under heavy loss
 * a TCP path stalls for seconds (measured: 4.3 s at 20% loss, against 0.4 s for UDX on
 * the same link, test/lab/roaming.test.ts). UDX retransmits per packet and keeps the
 * rest flowing.
 *
 * Lossy versus gone (tunnel/tunnel.ts): a path is *gone* when nothing at all arrives for
 * WAITING_SILENT_MS (2 s) while we wait for an answer: the tunnel migrates. It is *lossy*
 * when it goes silent for SUSPECT_SILENT_MS (600 ms) while we wait and is then heard
 * again, without our or the peer's mapping having changed (daemon/path-check.ts would
 * have migrated it). LOSSY_SILENCES such silences within LOSSY_WINDOW_MS make the opener
 * of an `auto` tunnel on direct-tcp try UDP: an introduction asking for UDP, a punch and
 * a RESUME on the new session (the same tunnel moves, nothing lost); the TCP path carries
 * on meanwhile. A failed try waits LOSSY_RETRY_MS before the next. Heavier loss silences
 * TCP past WAITING_SILENT_MS at once (measured at 20%: 600 ms, then 2 s without a byte):
 * the tunnel migrates, and its opener's first resume attempt then asks for UDP
 * (tunnel/manager.ts resumeLoop), the next ones for `auto` again.
 */
import type { Clock } from '../protocol/clock.js'

export const LOSSY_SILENCES = 3
export const LOSSY_WINDOW_MS = 30_000
/** At most one try this often per tunnel (an introduction and a punch each). */
export const LOSSY_RETRY_MS = 60_000

export class LossyWatch {
  private readonly silences: number[] = []
  private lastTry = -Infinity

  constructor(private readonly clock: Clock) {}

  /** A lossy silence on the tunnel's direct-tcp path; true when it should try UDP now. */
  onLossy(): boolean {
    const now = this.clock.now()
    this.silences.push(now)
    while (this.silences.length > 0 && now - this.silences[0]! > LOSSY_WINDOW_MS) this.silences.shift()
    if (this.silences.length < LOSSY_SILENCES || now - this.lastTry < LOSSY_RETRY_MS) return false
    this.lastTry = now
    this.silences.length = 0
    return true
  }
}
