/**
 * Control frames of the agent services `msg` (messages) and `file` (file transfer), sent
 * on a mux channel. A channel is a byte stream, so each frame carries its own length:
 *
 *   magic u16 'NX' (0x4e58) | version u8 (1) | type u8 | body length u16 | body
 *
 * Bodies (u16/u48 big-endian; str8 = u8 length + UTF-8; str16 = u16 length + UTF-8):
 *
 *   OFFER    transferId[32] size u48 name str8
 *                              sender → receiver: a file; transferId (the sender's name for this
 *                              version of the file) lets a re-run find the partial
 *   ACCEPT   offset u48        receiver: send the bytes from `offset` (what it already has)
 *   REFUSE   code str8 message str8
 *                              receiver: no (NOT_ALLOWED, TOO_LARGE, NO_SPACE, CORRUPT, …),
 *                              before any byte of the file, or instead of DONE
 *   DONE     name str8         receiver: verified, fsynced, stored under `name` in its inbox
 *   MESSAGE  messageId[16] sentAt u48 text str16
 *                              sender → receiver on `msg`
 *   ACK      messageId[16] flags u8
 *                              receiver: the message is on its disk; flags bit 0 (DUPLICATE): it
 *                              was there already (a retry), not stored again. An ACK of 16 bytes
 *                              (natd before flags) reads as flags 0.
 *   END      sha256[32]        sender, after the bytes: the sha256 of the whole file, [0, size)
 *
 * The `file` channel:  OFFER → (ACCEPT, then exactly size − offset raw bytes, END → DONE | REFUSE) | REFUSE.
 * (Version 2: the digest moved from OFFER to END, so a sender reads the file once.)
 * The `msg` channel:   MESSAGE → ACK | REFUSE.
 */
import { fixed, Reader, truncateUtf8, Writer } from './bytes.js'
import { ProtocolError } from './errors.js'

export const TRANSFER_MAGIC = 0x4e58
export const TRANSFER_VERSION = 2
export const TRANSFER = { OFFER: 1, ACCEPT: 2, REFUSE: 3, DONE: 4, MESSAGE: 5, ACK: 6, END: 7 } as const
export const TRANSFER_HEADER_BYTES = 6
/** ACK flag: the receiver had the message already (a retry) and did not store it again. */
export const ACK_DUPLICATE = 0x01
/** Largest message text, in UTF-8 bytes (a chat line, not a file). */
export const MAX_MESSAGE_BYTES = 16 * 1024
/** Largest file size a u48 carries (256 TiB). */
export const MAX_FILE_BYTES = 2 ** 48 - 1

export type TransferFrame =
  | { type: 'offer'; transferId: Uint8Array; size: number; name: string }
  | { type: 'accept'; offset: number }
  | { type: 'refuse'; code: string; message: string }
  | { type: 'done'; name: string }
  | { type: 'message'; messageId: Uint8Array; sentAt: number; text: string }
  | { type: 'ack'; messageId: Uint8Array; duplicate: boolean }
  | { type: 'end'; sha256: Uint8Array }

export function encodeTransfer(f: TransferFrame): Buffer {
  const body = new Writer()
  let type: number
  switch (f.type) {
    case 'offer':
      type = TRANSFER.OFFER
      body.bytes(fixed(f.transferId, 32, 'transferId')).u48(f.size).str8(f.name)
      break
    case 'accept':
      type = TRANSFER.ACCEPT
      body.u48(f.offset)
      break
    case 'refuse':
      type = TRANSFER.REFUSE
      body.str8(truncateUtf8(f.code, 64)).str8(truncateUtf8(f.message, 255))
      break
    case 'done':
      type = TRANSFER.DONE
      body.str8(f.name)
      break
    case 'message': {
      type = TRANSFER.MESSAGE
      const text = Buffer.from(f.text, 'utf8')
      if (text.length > MAX_MESSAGE_BYTES) throw new RangeError(`message text longer than ${MAX_MESSAGE_BYTES} bytes`)
      body.bytes(fixed(f.messageId, 16, 'messageId')).u48(f.sentAt).u16(text.length).bytes(text)
      break
    }
    case 'ack':
      type = TRANSFER.ACK
      body.bytes(fixed(f.messageId, 16, 'messageId')).u8(f.duplicate ? ACK_DUPLICATE : 0)
      break
    case 'end':
      type = TRANSFER.END
      body.bytes(fixed(f.sha256, 32, 'sha256'))
      break
  }
  const b = body.finish()
  return Buffer.concat([new Writer().u16(TRANSFER_MAGIC).u8(TRANSFER_VERSION).u8(type).u16(b.length).finish(), b])
}

/**
 * Length of the frame at the start of `buf` (header included), or null when fewer than
 * the header's bytes are there. Throws ProtocolError on a bad magic or version.
 */
export function transferFrameLength(buf: Uint8Array): number | null {
  if (buf.length < TRANSFER_HEADER_BYTES) return null
  const r = new Reader(buf)
  if (r.u16('magic') !== TRANSFER_MAGIC) throw new ProtocolError('BAD_REQUEST', 'not a natd transfer frame (bad magic)')
  const version = r.u8('version')
  if (version !== TRANSFER_VERSION) throw new ProtocolError('BAD_VERSION', `transfer frame version ${version}, this natd speaks ${TRANSFER_VERSION}`)
  r.u8('type')
  return TRANSFER_HEADER_BYTES + r.u16('length')
}

/** Decodes one whole frame; tolerates trailing bytes; throws only ProtocolError. */
export function decodeTransfer(buf: Uint8Array): TransferFrame {
  const total = transferFrameLength(buf)
  if (total === null) throw new ProtocolError('BAD_REQUEST', `truncated transfer frame: ${buf.length} bytes`)
  if (buf.length < total) throw new ProtocolError('BAD_REQUEST', `truncated transfer frame: body needs ${total - TRANSFER_HEADER_BYTES} bytes, ${buf.length - TRANSFER_HEADER_BYTES} left`)
  const type = buf[3]!
  const r = new Reader(buf.subarray(TRANSFER_HEADER_BYTES, total))
  switch (type) {
    case TRANSFER.OFFER:
      return { type: 'offer', transferId: r.bytes(32, 'transferId'), size: r.u48('size'), name: r.str8('name') }
    case TRANSFER.ACCEPT:
      return { type: 'accept', offset: r.u48('offset') }
    case TRANSFER.REFUSE:
      return { type: 'refuse', code: r.str8('code'), message: r.str8('message') }
    case TRANSFER.DONE:
      return { type: 'done', name: r.str8('name') }
    case TRANSFER.MESSAGE: {
      const messageId = r.bytes(16, 'messageId')
      const sentAt = r.u48('sentAt')
      const n = r.u16('text length')
      if (n > MAX_MESSAGE_BYTES) throw new ProtocolError('BAD_REQUEST', `message text of ${n} bytes exceeds ${MAX_MESSAGE_BYTES}`)
      const bytes = r.bytes(n, 'text')
      let text: string
      try {
        text = new TextDecoder('utf-8', { fatal: true }).decode(bytes)
      } catch {
        throw new ProtocolError('BAD_REQUEST', 'message text is not valid UTF-8')
      }
      return { type: 'message', messageId, sentAt, text }
    }
    case TRANSFER.ACK: {
      const messageId = r.bytes(16, 'messageId')
      const flags = r.remaining > 0 ? r.u8('flags') : 0
      return { type: 'ack', messageId, duplicate: (flags & ACK_DUPLICATE) !== 0 }
    }
    case TRANSFER.END:
      return { type: 'end', sha256: r.bytes(32, 'sha256') }
    default:
      throw new ProtocolError('BAD_REQUEST', `unknown transfer frame type ${type}`)
  }
}
