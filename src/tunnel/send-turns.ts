/**
 * Turns for the channels of one tunnel (mux.ts) that wait to send: while the session can
 * take more, each waiting channel in order may send TURN_BYTES, then waits at the back if
 * others wait. A channel that waits alone sends on without turns.
 */

/**
 * Bytes of channel data a waiting channel may send when its turn comes before the next
 * waiting channel's turn (one full DATA frame): a bulk transfer and a 1-byte request that
 * both wait for the session take turns, the request is not behind all of the bulk's.
 */
export const TURN_BYTES = 64 * 1024 + 5

export type TurnWaiter = (err?: Error | null) => void

export class SendTurns {
  /** Channels waiting for the session (or the in-flight limit), in turn order. */
  private waiters: TurnWaiter[] = []
  /** wake() is handing out turns. */
  private waking = false
  /** Bytes the channel whose turn it is may still send (Infinity outside a turn). */
  private left = Infinity

  /** `congested`: channel data must wait (the session's buffer or the in-flight limit is full). */
  constructor(private readonly congested: () => boolean) {}

  /** A sequenced frame of `bytes` went out: it counts against the current turn. */
  spent(bytes: number): void {
    this.left -= bytes
  }

  /**
   * Channel data may be sent now: not congested, and no channel waits ahead of the caller
   * (outside wake() nobody waits unless congested; in a turn, the channel whose turn it is
   * has TURN_BYTES).
   */
  get mayPush(): boolean {
    return !this.congested() && (this.waiters.length === 0 || this.left > 0)
  }

  /** Calls back at once if the caller may send, else when its turn comes. */
  wait(cb: TurnWaiter): void {
    if (this.mayPush) return cb()
    this.waiters.push(cb)
  }

  /** Gives waiting channels their turns, in order, while the session is not congested. */
  wake(): void {
    if (this.waking) return
    this.waking = true
    try {
      while (this.waiters.length > 0 && !this.congested()) {
        const w = this.waiters.shift()!
        this.left = TURN_BYTES
        w()
      }
    } finally {
      this.waking = false
      this.left = Infinity
    }
  }

  /** Removes every waiter and returns them in turn order (the session changed, or the tunnel closes). */
  takeAll(): TurnWaiter[] {
    return this.waiters.splice(0)
  }
}
