/**
 * A path check's question to the server (daemon/path-check.ts): did our side of the paths
 * change? One sealed heartbeat (the server takes a new mapping from it and says 'moved')
 * and one ping on the control connection, both under one sequence number, answered or
 * not within a few of the server's round trips.
 *
 *   heartbeat ──▶ HEARTBEAT_ACK status  'ok' → 'same', 'moved' → 'moved', none → 'unanswered'
 *   ping      ──▶ PONG                  'alive', none (or the connection closed) → 'lost'
 *
 * What a lost control connection means for the session (dropped, registered again at
 * once) is the client's (rendezvous-client.ts probe()); this only asks and waits.
 */
import type { Endpoint } from '../protocol/endpoint.js'
import type { TimerClock } from '../protocol/clock.js'
import type { ControlConnection } from './control-connection.js'

/**
 * A path check waits for the server's answers this many of its round trips, and at
 * least PROBE_ANSWER_MIN_MS (a round trip measured on a quiet moment may be far below the
 * one under load).
 */
export const PROBE_ANSWER_RTTS = 4
export const PROBE_ANSWER_MIN_MS = 500

/**
 * What a path check found: whether the server saw our heartbeat come from the mapping it
 * knew ('same'), from another ('moved': our NAT mapping or address changed; the server
 * took the new one) or not at all; and whether the control connection answered its ping
 * (a dead one is dropped at once and the agent registers again without backoff).
 */
export interface ProbeResult {
  mapping: 'same' | 'moved' | 'unanswered'
  control: 'alive' | 'lost'
}

/** What one probe uses of the registered session. */
export interface ProbeSession {
  control: Pick<ControlConnection, 'once' | 'off' | 'send'>
  server: Endpoint
  /** The server's last measured round trip, null before the first. */
  rttMs: number | null
  /** Sends a sealed heartbeat to `server`; returns its sequence number. */
  sendHeartbeat(server: Endpoint): number
}

export class PathProbe {
  /** Probes waiting for the ack of their heartbeat and the pong of their ping, by sequence number. */
  private readonly acks = new Map<number, (status: 'same' | 'moved') => void>()
  private readonly pongs = new Map<number, () => void>()

  constructor(private readonly clock: Pick<TimerClock, 'setTimeout' | 'clear'>) {}

  /** A sealed HEARTBEAT_ACK (its seal checked by the client) for `seq`. */
  onAck(seq: number, status: 'ok' | 'moved'): void {
    this.acks.get(seq)?.(status === 'moved' ? 'moved' : 'same')
  }

  /** A PONG on the control connection for `seq`. */
  onPong(seq: number): void {
    this.pongs.get(seq)?.()
  }

  /** Asks and waits for both answers, at most waitMs(s.rttMs); never rejects. */
  async run(s: ProbeSession): Promise<ProbeResult & { waitedMs: number }> {
    const waitMs = Math.max(PROBE_ANSWER_MIN_MS, PROBE_ANSWER_RTTS * (s.rttMs ?? 0))
    const seq = s.sendHeartbeat(s.server)
    let mapping: ProbeResult['mapping'] = 'unanswered'
    let alive = false
    let settle = (): void => undefined
    const done = new Promise<void>((resolve) => (settle = resolve))
    const check = (): void => {
      if (mapping !== 'unanswered' && alive) settle()
    }
    this.acks.set(seq, (status) => {
      mapping = status
      check()
    })
    this.pongs.set(seq, () => {
      alive = true
      check()
    })
    const onClose = (): void => settle()
    s.control.once('close', onClose)
    const timer = this.clock.setTimeout(() => settle(), waitMs)
    void s.control.send({ type: 'ping', seq })
    try {
      await done
    } finally {
      this.clock.clear(timer)
      s.control.off('close', onClose)
      this.acks.delete(seq)
      this.pongs.delete(seq)
    }
    return { mapping, control: alive ? 'alive' : 'lost', waitedMs: waitMs }
  }
}
