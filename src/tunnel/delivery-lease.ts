/**
 * Whether the consumer of a message being delivered is done with its memory when the
 * delivery returns (issue 18). The session reader (session-reader.ts) reads the tunnel's
 * socket into slabs of its own and hands full DATA frames to the mux as views into them;
 * a slab none of whose views is kept can be read into again instead of allocating the
 * next one (fresh 256 KiB buffers per 256 KiB received kept V8 collecting old space for
 * their external memory: the garbage collector was 9-14% of the receiving agent's time).
 *
 * The default is "kept": only a consumer that knows it holds no reference says otherwise,
 * by calling released() during the delivery (a forwarded connection's socket that took
 * the bytes whole in the write call, or copied them: daemon/pipe.ts). Anything else (a
 * channel's Readable side, a file's disk queue, the mux's early frames) keeps the slab
 * pinned, and the reader moves on to a fresh one as before.
 *
 * Deliveries are synchronous and never nested (each comes from one socket read), so one
 * flag serves the process.
 *
 * The messages of one read are delivered as a batch (deliverBatch): a consumer may put
 * off its write to the batch's end (deferToBatchEnd), so the several DATA frames of one
 * read go to a local socket in one writev (issue 18: the receiving agent's writes to the
 * local socket were 24% of its time, one per 64 KiB frame). Such a delivery counts as
 * released if the consumer calls released(); the write at the batch's end then says
 * whether the kernel took everything, and the read's memory counts as kept if not. A
 * consumer that must write its put-off messages before the batch's end (the peer's FIN
 * among the read's frames ends the socket's writing after them) says so with
 * keptInBatch() when the kernel did not take them whole.
 */
let done = false
/** Inside deliverBatch(): the consumers' writes put off to its end. */
let batchEnds: Array<() => boolean> | null = null

/** The consumer of the message being delivered keeps no reference to its bytes. */
export function released(): void {
  done = true
}

/** Calls `deliver()` and says whether its consumer released the message's memory. */
export function deliverLeased(deliver: () => void): boolean {
  done = false
  try {
    deliver()
    return done
  } finally {
    done = false
  }
}

/**
 * Calls `deliver()`, then `kept()` unless its consumer released the message's memory,
 * also when the consumer throws: it may hold a view of the bytes by then, so the memory
 * must count as kept before the exception goes on.
 */
export function deliverOrKeep(deliver: () => void, kept: () => void): void {
  let free = false
  try {
    free = deliverLeased(deliver)
  } finally {
    if (!free) kept()
  }
}

/**
 * Within a batch delivery: `flush` is called at the batch's end (after every message of
 * the read was delivered) and returns false if the consumer still refers to the memory
 * of a message it was given then. False: no batch, the consumer must write now. A consumer
 * registers once per batch (it keeps its deferred messages itself, in order).
 */
export function deferToBatchEnd(flush: () => boolean): boolean {
  if (batchEnds === null) return false
  batchEnds.push(flush)
  return true
}

/**
 * Within a batch delivery: the consumer wrote messages of this batch before its end and
 * still refers to their memory (its write was queued), so the batch counts as kept
 * whatever its end's writes say. Outside a batch: nothing (a write then answers for itself).
 */
export function keptInBatch(): void {
  batchEnds?.push(() => false)
}

/**
 * Runs `deliveries` (the messages of one read) as a batch, then the writes the consumers
 * put off to its end (also when a delivery throws: what was accepted is written). False
 * when one of those writes left its consumer referring to the read's memory.
 */
export function deliverBatch(deliveries: () => void): boolean {
  const ends: Array<() => boolean> = []
  batchEnds = ends
  let free = true
  try {
    deliveries()
  } finally {
    batchEnds = null
    for (const flush of ends) if (!flush()) free = false
  }
  return free
}
