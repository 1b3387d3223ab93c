/**
 * Resuming a tunnel on a new session after its path went away (issue #15).
 *
 *   opener (initiator of the new introduction)        the other side (responder)
 *   tunnel migrating: detach() -> received R1
 *   RESUME{tunnelId, R1}  ── first frame, new session ──▶  its tunnel with this peer key
 *                                                          has tunnelId: detach() -> R2
 *                         ◀── RESUME{tunnelId, R2} ──────
 *   resend frames ≥ R2, carry on                           resend frames ≥ R1, carry on
 *
 * Only the opener of a tunnel asks for a resume (so two attempts never cross); the other
 * side waits, and accepts. A RESUME is honoured only on a session authenticated (Noise,
 * secret-stream) as the tunnel's own peer: tunnels are found by the session's proven
 * key, so a stranger, or the rendezvous server that knows every tunnel id (it made the
 * introduction), cannot take over someone else's tunnel — at most it opens its own.
 *
 * A RESUME naming a tunnel we do not have (we restarted, or gave up) answers with a
 * RESUME naming the new introduction instead: both sides drop the old tunnel and keep a
 * fresh one on this session — unless we hold a tunnel with the peer younger than
 * SIMULTANEOUS_OPEN_MS (we just opened it, and the peer may not have it registered yet):
 * then the answer names that one, the session closes, and the peer keeps that tunnel.
 * A tunnel closed because another replaced it says GOODBYE, so a peer that still holds
 * it drops it instead of trying to resume it. A fresh session (first frame not a RESUME) from a peer we
 * have a migrating or established tunnel with means the peer has no tunnel with us any
 * more: the fresh one replaces ours. Only two fresh tunnels opened at once (both sides
 * ran `open` together) keep the tie-break on the introduction id.
 *
 * A tunnel the relay ended (RELAY_LIMIT: its bytes or time ran out) is over for good: a
 * RESUME naming it is answered with a GOODBYE, not with a fresh tunnel on the new
 * session, and the opener closes its tunnel with that reason. Otherwise the side that
 * missed the relay's RELAY_END (it saw only a closed session) would resume onto a new
 * relayed tunnel with a fresh byte count, and the server's per-tunnel limit would bound
 * nothing. A new `open` by the user is still a new tunnel (the relay counts it afresh).
 */
import type { Duplex } from 'node:stream'
import { isErrorCode, type ErrorCode } from '../protocol/errors.js'
import { decodeMux, type MuxFrame } from '../protocol/mux.js'
import { timingSafeEqual } from '../protocol/identity.js'
import type { Clock, TimerClock } from '../protocol/clock.js'

/** An established tunnel younger than this may be the twin of a simultaneous open (both sides' punches finish within one punch timeout). */
export const SIMULTANEOUS_OPEN_MS = 10_000
/** The opener waits this long for the answer to its RESUME before the attempt fails. */
export const RESUME_ANSWER_MS = 5_000
/**
 * A tunnel the relay ended is refused a resume this long after: twice the time its
 * opener may spend migrating (tunnel.ts MIGRATE_GIVE_UP_MS, 90 s), after which no honest
 * opener still asks.
 */
export const RELAY_ENDED_KEEP_MS = 180_000
/**
 * At most this many such tunnels are remembered (oldest forgotten first): 16 bytes
 * each. Only the relay server ending our own relayed tunnels adds one.
 */
export const RELAY_ENDED_MAX = 1_024

export type ResumeFrame = Extract<MuxFrame, { type: 'resume' }>

/** What a tunnel looks like to these decisions. */
export interface ResumableTunnel {
  readonly id: Uint8Array
  readonly opener: boolean
  readonly introKey: string
  readonly isUp: boolean
  readonly isMigrating: boolean
  readonly ageMs: number
}

/** The initiator's first frame, if it is a RESUME (anything else, or garbage: null). */
export function asResume(first: Buffer | undefined): ResumeFrame | null {
  if (!first) return null
  try {
    const f = decodeMux(first)
    return f.type === 'resume' && f.channel === 0 ? f : null
  } catch {
    return null
  }
}

/**
 * The error code a GOODBYE's reason starts with (`BUSY: …` when the peer refuses our
 * tunnel past its cap on inbound tunnels, keep.ts; `RELAY_LIMIT: …`), so the tunnel
 * closes with it; undefined for a reason without one (an older peer's, a user's close).
 */
export function goodbyeCode(reason: string): ErrorCode | undefined {
  const code = /^([A-Z_]+): /.exec(reason)?.[1]
  return isErrorCode(code) ? code : undefined
}

/** The peer's answer to our RESUME, if it is a GOODBYE (it refuses: the tunnel is over): its reason. */
export function asGoodbye(first: Buffer | undefined): string | null {
  if (!first) return null
  try {
    const f = decodeMux(first)
    return f.type === 'goodbye' && f.channel === 0 ? f.reason : null
  } catch {
    return null
  }
}

/**
 * The tunnels the relay ended (RELAY_LIMIT), by id, so that a RESUME naming one is
 * refused: bounded by RELAY_ENDED_MAX entries, each kept RELAY_ENDED_KEEP_MS.
 */
export class RelayEnded {
  /** Hex tunnel id -> when it ended; Map order is insertion order (oldest first). */
  private readonly ended = new Map<string, number>()

  constructor(private readonly clock: Clock) {}

  add(tunnelId: Uint8Array): void {
    const key = Buffer.from(tunnelId).toString('hex')
    this.ended.delete(key)
    this.ended.set(key, this.clock.now())
    this.expire()
    while (this.ended.size > RELAY_ENDED_MAX) this.ended.delete(this.ended.keys().next().value!)
  }

  has(tunnelId: Uint8Array): boolean {
    this.expire()
    return this.ended.has(Buffer.from(tunnelId).toString('hex'))
  }

  get size(): number {
    return this.ended.size
  }

  private expire(): void {
    const now = this.clock.now()
    for (const [key, at] of this.ended) {
      if (now - at < RELAY_ENDED_KEEP_MS) break
      this.ended.delete(key)
    }
  }
}

/**
 * What the responder does with a RESUME that came over a session authenticated as the
 * peer whose tunnel (if any) is `current` (pure): resume it, or start fresh.
 */
export function onResumeRequest(frame: ResumeFrame, current: ResumableTunnel | undefined): 'resume' | 'fresh' {
  // Only the opener resumes: a RESUME from the side that did not open the tunnel is not
  // ours to honour (it would cross with the opener's own attempt).
  if (current && !current.opener && timingSafeEqual(current.id, frame.tunnelId)) return 'resume'
  return 'fresh'
}

/**
 * A fresh tunnel from a peer arrived while `current` is open (pure): 'keep-current' when
 * both sides opened at once and the current one wins the tie-break (the smaller
 * introduction id), else 'replace' (the peer no longer has `current`).
 */
export function onFreshTunnel(fresh: { introKey: string }, current: ResumableTunnel): 'keep-current' | 'replace' {
  if (current.isUp && current.ageMs < SIMULTANEOUS_OPEN_MS && current.introKey < fresh.introKey) return 'keep-current'
  return 'replace'
}

/**
 * The peer's first frame on `session` (the answer to our RESUME), or null when none came
 * in `timeoutMs` or the session closed. The session is paused after it, so no later
 * frame is lost before the tunnel's mux listens.
 */
export function firstFrame(session: Duplex, timeoutMs: number, clock: TimerClock): Promise<Buffer | null> {
  return new Promise((resolve) => {
    const done = (v: Buffer | null): void => {
      clock.clear(timer)
      session.off('data', onData)
      session.off('close', onClose)
      if (v) session.pause()
      resolve(v)
    }
    const onData = (buf: Buffer): void => done(buf)
    const onClose = (): void => done(null)
    const timer = clock.setTimeout(() => done(null), timeoutMs)
    session.once('data', onData)
    session.once('close', onClose)
  })
}
