/**
 * Tunnel multiplexing frames. Each frame is one message of the encrypted session
 * (secret-stream keeps message boundaries), so frames need no length of their own.
 *
 *   type u8 | channel u32 | body
 *
 *   OPEN     port u16 window u32 [service str8]
 *                                    open a channel: to the peer's exposed TCP `port` when
 *                                    `service` is empty (or absent), else to the named
 *                                    agent service (messages, files; port is then 0)
 *   OPEN_OK  window u32              accepted; the opener may send `window` bytes
 *   DATA     bytes (≤ MAX_DATA)      counts against the receiver's window
 *   WINDOW   increment u32           the receiver consumed bytes; send that many more
 *   FIN      (empty)                 the sender will send no more data (half close)
 *   RESET    code str8 message str8  the channel is gone (NOT_EXPOSED, CONNECT_FAILED, …)
 *   PING     seq u32                 on channel 0: keepalive and `natctl ping`
 *   PONG     seq u32
 *   GOODBYE  reason str8             on channel 0: the peer is closing the tunnel now
 *   SWITCH   (empty)                 on channel 0: the sender's last frame on this session;
 *                                    its next frames come on the new session (path upgrade)
 *   ACK      received u32            on channel 0: how many sequenced frames the sender has
 *                                    received in all (mod 2^32); the peer may forget them
 *   RESUME   tunnelId[16] received u32
 *                                    on channel 0, the first frame of a session that resumes
 *                                    tunnel `tunnelId` (tunnel/resume.ts); `received` as in ACK
 *
 * Sequence numbers are implicit: every frame on a channel other than 0 is sequenced, and
 * both sides count them (the session is reliable and ordered, so counting needs no bytes
 * on the wire). Channel-0 frames belong to one session and are never replayed.
 *
 * Channel ids: the side that opened the tunnel uses odd ids, the other side even ids,
 * so both can open channels without agreeing first (as in HTTP/2 and yamux).
 */
import { Reader, truncateUtf8, Writer } from './bytes.js'
import { ProtocolError } from './errors.js'

export const MUX = { OPEN: 1, OPEN_OK: 2, DATA: 3, WINDOW: 4, FIN: 5, RESET: 6, PING: 7, PONG: 8, GOODBYE: 9, SWITCH: 10, ACK: 11, RESUME: 12 } as const
/** Largest DATA payload: big enough to amortise per-message crypto, small enough to interleave channels. */
export const MAX_DATA_BYTES = 64 * 1024
/** A tunnel's id: the id of the introduction that opened it (both sides know it). */
export const TUNNEL_ID_BYTES = 16

export type MuxFrame =
  | { type: 'open'; channel: number; port: number; window: number; service: string }
  | { type: 'open-ok'; channel: number; window: number }
  | { type: 'data'; channel: number; data: Uint8Array }
  | { type: 'window'; channel: number; increment: number }
  | { type: 'fin'; channel: number }
  | { type: 'reset'; channel: number; code: string; message: string }
  | { type: 'ping'; channel: number; seq: number }
  | { type: 'pong'; channel: number; seq: number }
  | { type: 'goodbye'; channel: number; reason: string }
  | { type: 'switch'; channel: number }
  | { type: 'ack'; channel: number; received: number }
  | { type: 'resume'; channel: number; tunnelId: Uint8Array; received: number }

const HEADER_BYTES = 5

function head(type: number, channel: number): Writer {
  return new Writer().u8(type).u32(channel)
}

/** A frame whose body is one u32 (OPEN_OK, WINDOW, PING, PONG, ACK). */
const U32_FRAME_BYTES = HEADER_BYTES + 4

/**
 * The frames with one u32 for a body, built in one small buffer from Node's pool: an ACK
 * goes out every 64-256 KiB received, and the Writer's growable buffer cost ~1 µs per
 * frame against ~0.06 (issue 18).
 */
function u32Frame(type: number, channel: number, value: number): Buffer {
  const out = Buffer.allocUnsafe(U32_FRAME_BYTES)
  out[0] = type
  out.writeUInt32BE(channel >>> 0, 1)
  out.writeUInt32BE(value >>> 0, HEADER_BYTES)
  return out
}

/** DATA frames are built without copying the payload twice (hot path). */
export function encodeData(channel: number, data: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(HEADER_BYTES + data.length)
  out[0] = MUX.DATA
  out.writeUInt32BE(channel, 1)
  out.set(data, HEADER_BYTES)
  return out
}

export function encodeMux(f: MuxFrame): Buffer {
  switch (f.type) {
    case 'open':
      return head(MUX.OPEN, f.channel).u16(f.port).u32(f.window).str8(f.service).finish()
    case 'open-ok':
      return u32Frame(MUX.OPEN_OK, f.channel, f.window)
    case 'data':
      return encodeData(f.channel, f.data)
    case 'window':
      return u32Frame(MUX.WINDOW, f.channel, f.increment)
    case 'fin':
      return head(MUX.FIN, f.channel).finish()
    case 'reset':
      return head(MUX.RESET, f.channel).str8(truncateUtf8(f.code, 64)).str8(truncateUtf8(f.message, 255)).finish()
    case 'ping':
      return u32Frame(MUX.PING, f.channel, f.seq)
    case 'pong':
      return u32Frame(MUX.PONG, f.channel, f.seq)
    case 'goodbye':
      return head(MUX.GOODBYE, f.channel).str8(truncateUtf8(f.reason, 255)).finish()
    case 'switch':
      return head(MUX.SWITCH, f.channel).finish()
    case 'ack':
      return u32Frame(MUX.ACK, f.channel, f.received)
    case 'resume':
      if (f.tunnelId.length !== TUNNEL_ID_BYTES) throw new ProtocolError('BAD_REQUEST', `tunnel id of ${f.tunnelId.length} bytes, not ${TUNNEL_ID_BYTES}`)
      return head(MUX.RESUME, f.channel).bytes(f.tunnelId).u32(f.received >>> 0).finish()
  }
}

/** Whether a frame (as sent, undecoded) is sequenced: every frame on a channel other than 0. */
export function isSequenced(buf: Uint8Array): boolean {
  return buf.length >= HEADER_BYTES && (buf[1]! | buf[2]! | buf[3]! | buf[4]!) !== 0
}

export function decodeMux(buf: Uint8Array): MuxFrame {
  const r = new Reader(buf)
  const type = r.u8('mux type')
  const channel = r.u32('channel')
  switch (type) {
    case MUX.OPEN:
      return { type: 'open', channel, port: r.u16('port'), window: r.u32('window'), service: r.remaining > 0 ? r.str8('service') : '' }
    case MUX.OPEN_OK:
      return { type: 'open-ok', channel, window: r.u32('window') }
    case MUX.DATA:
      if (r.remaining > MAX_DATA_BYTES) throw new ProtocolError('BAD_REQUEST', `DATA frame of ${r.remaining} bytes exceeds ${MAX_DATA_BYTES}`)
      return { type: 'data', channel, data: r.bytes(r.remaining) }
    case MUX.WINDOW:
      return { type: 'window', channel, increment: r.u32('increment') }
    case MUX.FIN:
      return { type: 'fin', channel }
    case MUX.RESET:
      return { type: 'reset', channel, code: r.str8('code'), message: r.str8('message') }
    case MUX.PING:
      return { type: 'ping', channel, seq: r.u32('seq') }
    case MUX.PONG:
      return { type: 'pong', channel, seq: r.u32('seq') }
    case MUX.GOODBYE:
      return { type: 'goodbye', channel, reason: r.str8('reason') }
    case MUX.SWITCH:
      return { type: 'switch', channel }
    case MUX.ACK:
      return { type: 'ack', channel, received: r.u32('received') }
    case MUX.RESUME:
      return { type: 'resume', channel, tunnelId: r.bytes(TUNNEL_ID_BYTES), received: r.u32('received') }
    default:
      throw new ProtocolError('BAD_REQUEST', `unknown mux frame type ${type}`)
  }
}
