// A peer that pushes as fast as its credit allows (the abuse tests' senders), queuing
// nothing on its own side: what the process then holds is the receiver's. Written ahead
// instead, the bytes would wait in the sender's own channel for credit that never comes.
import { randomBytes } from 'node:crypto'
import { MAX_DATA_BYTES } from '../../src/protocol/mux.js'
import type { MuxChannel } from '../../src/tunnel/mux-channel.js'

/** Sends `bytes` on `ch` as its credit allows; never rejects (a closed channel ends it). */
export function pushAll(ch: MuxChannel, bytes: number): void {
  const chunk = randomBytes(MAX_DATA_BYTES)
  let left = bytes
  const pump = (err?: Error | null): void => {
    if (err) return
    while (left > 0 && ch.canSend) left -= ch.sendSome(chunk.subarray(0, Math.min(left, chunk.length)))
    if (left > 0) ch.whenSendable(pump)
  }
  pump()
}
