/**
 * A ping someone asked for (the API's `ping`, `natctl ping`) on a tunnel that may be
 * migrating. A forwarded connection, a message or a file started while the tunnel
 * migrates waits for the resume (migration-deadline.ts); a ping does too, within its own
 * timeout. It cannot simply be sent: a PING is a frame of channel 0, never replayed
 * (mux.ts), so one written while the path is gone is lost, and the ping timed out although
 * the tunnel resumed a moment later.
 *
 *   up ──PING──▶ pong                                         → rttMs, waitedMs 0
 *   migrating ──(resumed)──▶ PING on the path it resumed on ──▶ pong → rttMs, waitedMs = the wait
 *   up, PING out ──(migrating: that PING is lost)──▶ wait ──(resumed)──▶ PING again
 *   neither a pong nor a resume within timeoutMs ──▶ TIMEOUT (saying the tunnel migrates, since when and why)
 *   the tunnel closes meanwhile ──▶ TUNNEL_CLOSED at once;  signal aborted ──▶ ABORTED at once
 *
 * One deadline for the whole call (timeoutMs from the start): waiting and round trips
 * together never take longer, so `natctl ping -c N` keeps its pace per ping. rttMs is the
 * round trip of the PING that was answered, on the path the tunnel resumed on, not the
 * wait; waitedMs says how long the call waited for resumes.
 */
import type { TimerClock } from '../protocol/clock.js'
import { formatDuration } from '../protocol/duration.js'
import { NatdError } from '../protocol/errors.js'
import type { Tunnel } from './tunnel.js'

export interface PingAcrossResult {
  rttMs: number
  /** Time the call spent waiting for the tunnel to resume (0 when it was up throughout). */
  waitedMs: number
}

/** What a ping reads of its tunnel (tunnel.ts). */
export type PingableTunnel = Pick<Tunnel, 'peer' | 'state' | 'isMigrating' | 'isOpen' | 'ping' | 'on' | 'off'>

/** Pings `tunnel` once, waiting for it to resume when it migrates, all within `timeoutMs`. */
export async function pingAcross(tunnel: PingableTunnel, timeoutMs: number, clock: TimerClock, signal?: AbortSignal): Promise<PingAcrossResult> {
  const deadline = clock.now() + timeoutMs
  let waitedMs = 0
  for (;;) {
    if (!tunnel.isOpen) throw new NatdError('TUNNEL_CLOSED', `tunnel to ${tunnel.peer.name} closed`)
    if (signal?.aborted) throw new NatdError('ABORTED', 'the ping was cancelled')
    const left = deadline - clock.now()
    if (tunnel.isMigrating) {
      const started = clock.now()
      await resumed(tunnel, left, timeoutMs, clock, signal)
      waitedMs += clock.now() - started
      continue
    }
    if (left <= 0) throw new NatdError('TIMEOUT', `no pong from ${tunnel.peer.name} in ${timeoutMs} ms`)
    // A migration while the PING is out loses it: stop waiting for its pong, wait for the resume, ping again.
    const lost = new AbortController()
    const onMigrating = (): void => lost.abort()
    const onAbort = (): void => lost.abort()
    tunnel.on('migrating', onMigrating)
    signal?.addEventListener('abort', onAbort, { once: true })
    try {
      return { rttMs: await tunnel.ping(left, lost.signal), waitedMs }
    } catch (err) {
      if (!(err instanceof NatdError && err.code === 'ABORTED') || signal?.aborted) throw err
      // The migration aborted it: loop (the tunnel migrates now, or already resumed).
    } finally {
      tunnel.off('migrating', onMigrating)
      signal?.removeEventListener('abort', onAbort)
    }
  }
}

/** Resolves when `tunnel` is up again; rejects TIMEOUT after `ms`, TUNNEL_CLOSED when it closes, ABORTED when `signal` aborts. */
function resumed(tunnel: PingableTunnel, ms: number, timeoutMs: number, clock: TimerClock, signal?: AbortSignal): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const done = (err?: Error): void => {
      clock.clear(timer)
      tunnel.off('resumed', onResumed)
      tunnel.off('closed', onClosed)
      signal?.removeEventListener('abort', onAbort)
      if (err) reject(err)
      else resolve()
    }
    const onResumed = (): void => done()
    const onClosed = (reason: string): void => done(new NatdError('TUNNEL_CLOSED', `tunnel to ${tunnel.peer.name} closed while it migrated: ${reason}`))
    const onAbort = (): void => done(new NatdError('ABORTED', 'the ping was cancelled'))
    const timer = clock.setTimeout(() => {
      const s = tunnel.state
      const how = s.kind === 'migrating' ? ` (for ${formatDuration(clock.now() - s.since)}: ${s.reason})` : ''
      done(new NatdError('TIMEOUT', `no pong from ${tunnel.peer.name} in ${timeoutMs} ms: the tunnel is migrating${how} and did not resume in time`))
    }, Math.max(0, ms))
    tunnel.on('resumed', onResumed)
    tunnel.on('closed', onClosed)
    signal?.addEventListener('abort', onAbort, { once: true })
  })
}
