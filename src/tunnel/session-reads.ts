/**
 * Which session a tunnel (mux.ts) reads. On a path upgrade both sides write a SWITCH as
 * their last frame on the old session; we read the old one until the peer's SWITCH comes,
 * then the next, whose frames that came before it wait here: none is lost or reordered.
 */
import type { MessageStream } from './mux.js'
import { readMessages } from './session-reader.js'

export class SessionReads {
  /** Where we read: the old session until the peer's SWITCH, then the next; null in between. */
  private reading: MessageStream | null
  /** The next session, attached but not yet read (its frames wait in `early`). */
  private next: MessageStream | null = null
  private early: Buffer[] = []
  /** The peer's SWITCH came before we attached the next session. */
  private peerSwitched = false

  constructor(
    session: MessageStream,
    /** Gets every frame of the session being read, in order. */
    private readonly onMessage: (buf: Buffer) => void
  ) {
    this.reading = session
    this.listen(session)
  }

  /** Our SWITCH went out: `next` is read once the peer's SWITCH came (at once if it did). */
  attach(next: MessageStream): void {
    if (this.peerSwitched) this.reading = next
    else this.next = next
    this.listen(next)
  }

  /** Our SWITCH went out and the peer's has not come yet. */
  get switchPending(): boolean {
    return this.next !== null
  }

  /** The peer's SWITCH came: returns the session it will send nothing more on. */
  onSwitch(): MessageStream | null {
    const old = this.reading
    if (this.next) {
      this.reading = this.next
      this.next = null
      for (const b of this.early.splice(0)) this.onMessage(b)
    } else {
      this.peerSwitched = true
      this.reading = null
    }
    return old
  }

  /** Reads nothing more (before a resume): frames still arriving on old sessions are dropped. */
  detach(): void {
    this.reading = null
    this.next = null
    this.early = []
    this.peerSwitched = false
  }

  /** Reads `next` from now on (a resume). */
  resumeOn(next: MessageStream): void {
    this.reading = next
    this.listen(next)
  }

  private listen(session: MessageStream): void {
    readMessages(session, (buf) => this.onData(session, buf))
  }

  private onData(from: MessageStream, buf: Buffer): void {
    if (from === this.reading) this.onMessage(buf)
    else if (from === this.next) this.early.push(buf)
  }
}
