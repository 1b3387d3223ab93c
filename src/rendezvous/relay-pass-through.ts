/**
 * The relay's raw-byte path (relay.ts): the bytes of one side's reads passed on to the
 * other side as they come, frame by frame, without reassembling a frame first. Only
 * RELAY_DATA frames within the tunnel's limits go on; `admit` counts each against them.
 */
import type net from 'node:net'
import { ProtocolError } from '../protocol/errors.js'
import { MSG } from '../protocol/rendezvous.js'

/** What the path needs of a relayed tunnel (relay.ts Active). */
export interface PassingTunnel {
  ended: boolean
  /** The sides in the middle of a frame we pass to them: they get `bye` once it is whole. */
  midFrame: Set<net.Socket>
  /** The RELAY_END RELAY_LIMIT both sides get, once a limit ended the tunnel. */
  bye: Buffer | null
}

/**
 * The raw-byte path from `from` to `to`: a frame's u32 length and the first 4 bytes of
 * its body (the message type at [3]) are gathered (8 bytes, copied), then the rest of a
 * RELAY_DATA frame goes on as slices of the reads; a frame of another type is skipped.
 */
export function passThrough(t: PassingTunnel, from: net.Socket, to: net.Socket, admit: (bodyLength: number) => boolean): (chunk: Buffer, maxFrameBytes: number) => void {
  const head = Buffer.alloc(8)
  let have = 0 // header bytes gathered
  let len = 0 // the current frame's length, once its 4 bytes are in
  let left = 0 // bytes of the current frame's body still to pass on or skip
  let passing = false
  return (chunk, maxFrameBytes) => {
    let flowing = true
    to.cork()
    try {
      // Once the tunnel ended, only the rest of a frame already begun goes on (then its RELAY_END).
      for (let i = 0; i < chunk.length && (!t.ended || (passing && left > 0)); ) {
        if (left > 0) {
          const n = Math.min(left, chunk.length - i)
          if (passing) flowing = to.write(chunk.subarray(i, i + n)) && flowing
          left -= n
          i += n
          continue
        }
        const want = have < 4 ? 4 : 4 + Math.min(4, len)
        const n = Math.min(want - have, chunk.length - i)
        chunk.copy(head, have, i, i + n)
        have += n
        i += n
        if (have < want) continue
        if (have === 4) {
          len = head.readUInt32BE(0)
          if (len > maxFrameBytes) throw new ProtocolError('BAD_REQUEST', `frame of ${len} bytes exceeds ${maxFrameBytes}`)
          if (len > 0) continue // gather the body's first (up to) 4 bytes
        }
        // A whole header: pass the frame on when it is data within the limits, else skip it.
        passing = len >= 4 && head[7] === MSG.RELAY_DATA && admit(len)
        if (passing) flowing = to.write(Buffer.from(head)) && flowing
        left = len - Math.min(4, len)
        have = 0
      }
    } finally {
      if (passing && left > 0) t.midFrame.add(to)
      else if (t.midFrame.delete(to) && t.bye) to.end(t.bye) // the frame it was in is whole: its RELAY_END now
      to.uncork()
    }
    if (!flowing) from.pause() // backpressure: the slow side sets the pace
  }
}
