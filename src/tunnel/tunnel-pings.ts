/**
 * The pings a tunnel has in flight: each waits for its pong, its timeout or its signal,
 * whichever comes first, and removes its timer and listener when it settles.
 */
import { NatdError } from '../protocol/errors.js'
import type { TimerClock } from '../protocol/clock.js'

interface PendingPing {
  sent: number
  resolve: (rtt: number) => void
  reject: (err: Error) => void
}

export class TunnelPings {
  private seq = 0
  private readonly pending = new Map<number, PendingPing>()
  /** The last round trip a ping measured (ms), null before the first. */
  lastRttMs: number | null = null

  constructor(private readonly clock: TimerClock) {}

  /** How many pings wait for their pong. */
  get size(): number {
    return this.pending.size
  }

  /**
   * Sends a ping (`send(seq)`) and resolves with its round trip in ms; rejects TIMEOUT
   * after `timeoutMs`, or ABORTED when `signal` aborts first.
   */
  start(peerName: string, timeoutMs: number, send: (seq: number) => void, signal?: AbortSignal): Promise<number> {
    if (signal?.aborted) return Promise.reject(new NatdError('ABORTED', 'the ping was cancelled'))
    const seq = ++this.seq
    return new Promise<number>((resolve, reject) => {
      const timer = this.clock.setTimeout(() => {
        this.pending.delete(seq)
        settle()
        reject(new NatdError('TIMEOUT', `no pong from ${peerName} in ${timeoutMs} ms`))
      }, timeoutMs)
      const onAbort = (): void => {
        this.pending.delete(seq)
        settle()
        reject(new NatdError('ABORTED', 'the ping was cancelled'))
      }
      const settle = (): void => {
        this.clock.clear(timer)
        signal?.removeEventListener('abort', onAbort)
      }
      signal?.addEventListener('abort', onAbort, { once: true })
      this.pending.set(seq, {
        sent: this.clock.hrNow(),
        resolve: (rtt) => {
          settle()
          resolve(rtt)
        },
        reject: (err) => {
          settle()
          reject(err)
        }
      })
      send(seq)
    })
  }

  /** A pong came: resolves its ping and returns the round trip (ms, two decimals); null for an unknown seq. */
  onPong(seq: number): number | null {
    const p = this.pending.get(seq)
    if (!p) return null
    this.pending.delete(seq)
    const rttMs = Math.round((this.clock.hrNow() - p.sent) * 100) / 100
    this.lastRttMs = rttMs
    p.resolve(rttMs)
    return rttMs
  }

  /** Rejects every ping in flight with `err` (the tunnel closed). */
  rejectAll(err: NatdError): void {
    for (const p of this.pending.values()) p.reject(err)
    this.pending.clear()
  }
}
