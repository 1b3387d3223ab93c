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
 */
import type { Duplex } from 'node:stream'
import { decodeMux, type MuxFrame } from '../protocol/mux.js'
import { timingSafeEqual } from '../protocol/identity.js'
import type { TimerClock } from '../protocol/clock.js'

/** An established tunnel younger than this may be the twin of a simultaneous open (both sides' punches finish within one punch timeout). */
export const SIMULTANEOUS_OPEN_MS = 10_000
/** The opener waits this long for the answer to its RESUME before the attempt fails. */
export const RESUME_ANSWER_MS = 5_000

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
