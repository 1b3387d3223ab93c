/**
 * The introductions we were sent lately, by id, so that one the server sends again
 * (rendezvous/intro-outbox.ts: it went to our previous control connection, which may
 * have been dead, and comes again on the new one) is punched once, not twice. Only the
 * server sends introductions (inside its Noise session); ids are random (16 bytes).
 * Bounded: the newest SEEN_INTRODUCTIONS_MAX (the server sends one again within 3 s, and
 * at most 8 per registration).
 */

export const SEEN_INTRODUCTIONS_MAX = 256

export class SeenIntroductions {
  /** Hex ids, oldest first (Set order is insertion order). */
  private readonly seen = new Set<string>()

  /** Remembers `introId`; false when it was seen already. */
  add(introId: Uint8Array): boolean {
    const key = Buffer.from(introId).toString('hex')
    if (this.seen.has(key)) return false
    this.seen.add(key)
    if (this.seen.size > SEEN_INTRODUCTIONS_MAX) this.seen.delete(this.seen.values().next().value!)
    return true
  }
}
