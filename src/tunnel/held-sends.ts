/**
 * Bytes read from a local source that a channel could not take at once (no credit, the
 * session congested), copied aside and sent first when it can: the one queue of the
 * direct paths (daemon/pipe.ts for forwarded sockets, daemon/file-feed.ts for `natctl cp`).
 * It holds at most what one read left over, plus what its owner pushes on purpose.
 */
import type { MuxChannel } from './mux-channel.js'

export class HeldSends {
  private readonly held: Buffer[] = []
  private waiting = false

  constructor(
    private readonly ch: MuxChannel,
    /** Called with the bytes of each send (held bytes only; the caller counts its own sendSome()s). */
    private readonly onSent: (n: number) => void = () => undefined
  ) {}

  get empty(): boolean {
    return this.held.length === 0
  }

  /** A later() call waits for the channel. */
  get isWaiting(): boolean {
    return this.waiting
  }

  /** Keeps `buf` (the caller's: copy it first if its memory is reused) to send after what is held. */
  push(buf: Buffer): void {
    this.held.push(buf)
  }

  /** Sends what is held; true when nothing is left. */
  flush(): boolean {
    while (this.held.length > 0) {
      const b = this.held[0]!
      const n = this.ch.sendSome(b)
      if (n > 0) this.onSent(n)
      if (n < b.length) {
        this.held[0] = b.subarray(n)
        return false
      }
      this.held.shift()
    }
    return true
  }

  /** Calls `then` once the channel can send, or with the error if it dies first; once, however often asked meanwhile. */
  later(then: (err?: Error | null) => void): void {
    if (this.waiting) return
    this.waiting = true
    this.ch.whenSendable((err) => {
      this.waiting = false
      then(err)
    })
  }
}
