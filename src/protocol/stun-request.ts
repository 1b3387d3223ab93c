/**
 * What a STUN server makes of a Binding request (RFC 8489 §6.3, RFC 5780 §6.1, RFC 5389
 * §12.2 for RFC 3489 clients), and the answers it sends: pure, so every rule has golden
 * bytes in test/unit/protocol/stun-request.test.ts.
 *
 *   request                                         answer
 *   ─────────────────────────────────────────────   ──────────────────────────────────────
 *   Binding, cookie (RFC 8489)                      success: XOR-MAPPED-ADDRESS (+ RESPONSE-
 *                                                   ORIGIN, OTHER-ADDRESS with RFC 5780)
 *   Binding, no cookie (RFC 3489: Debian's `stun`)  success: MAPPED-ADDRESS (+ SOURCE-ADDRESS,
 *                                                   CHANGED-ADDRESS), the 128-bit ID echoed
 *   + RESPONSE-PORT p (RFC 5780 §7.5)               the answer goes to the source IP, port p
 *   + PADDING (RFC 5780 §7.6)                       PADDING back, never past the request's size
 *   + FINGERPRINT, valid                            FINGERPRINT back
 *   + FINGERPRINT, bad or not last                  nothing (ProtocolError: not STUN)
 *   + unknown type ≤ 0x7fff (comprehension-req.)    error 420 + UNKNOWN-ATTRIBUTES (≤ 8 listed)
 *   + RESPONSE-ADDRESS (RFC 3489)                   error 420, as RFC 5389 §12.2 says
 *   + PADDING and RESPONSE-PORT, bad CHANGE-REQUEST
 *     or RESPONSE-PORT (length, port 0)             error 400
 *   anything but a Binding request                  nothing
 *
 * Size: every answer goes to a source nobody verified, so it is bounded by the request:
 * at most the request's message length + 3 address attributes (36 bytes over IPv4, 72
 * over IPv6) — the plain answer to a bare 20-byte request. maxStunAnswerBytes() states it
 * and the server drops any answer past it.
 */
import { Reader, Writer } from './bytes.js'
import { isIPv4, type Endpoint } from './endpoint.js'
import { ProtocolError } from './errors.js'
import {
  BINDING_ERROR,
  BINDING_REQUEST,
  BINDING_SUCCESS,
  CHANGE_IP,
  CHANGE_PORT,
  COMPREHENSION_OPTIONAL_MIN,
  encodeStunMessage,
  isStun,
  STUN_ATTR,
  STUN_HEADER_BYTES,
  stunAttributes,
  writeAddress
} from './stun.js'

/** UNKNOWN-ATTRIBUTES lists at most this many types (coturn: 8); the rest still make it a 420. */
export const MAX_UNKNOWN_LISTED = 8
/**
 * A request longer than this is not answered: room for coturn's 1500-byte PADDING
 * (turnutils_stunclient's third request, natdiscovery -P) and the other attributes.
 */
export const MAX_STUN_REQUEST_BYTES = 2048

export type StunErrorCode = 400 | 420

interface RequestBase {
  /** RFC 3489: no magic cookie; the answer uses the old attributes and no XOR. */
  classic: boolean
  /** 12 bytes after the cookie, or the whole 16 for RFC 3489. */
  transactionId: Uint8Array
  /** The request's message length (header included), which bounds the answer. */
  bytes: number
  /** The request carried a valid FINGERPRINT: the answer carries one too. */
  fingerprint: boolean
}

export type StunRequest =
  | ({ kind: 'binding'; changeIp: boolean; changePort: boolean; responsePort: number | null; padding: boolean } & RequestBase)
  | ({ kind: 'error'; code: StunErrorCode; reason: string; unknown: number[] } & RequestBase)
  /** Not a Binding request (a response, an indication, another method): never answered. */
  | { kind: 'ignore' }

/** An RFC 3489 Binding request: no cookie to recognise it by, so the length must match the datagram exactly. */
export function isClassicStunRequest(buf: Uint8Array): boolean {
  if (buf.length < STUN_HEADER_BYTES || isStun(buf)) return false
  const type = (buf[0]! << 8) | buf[1]!
  const length = (buf[2]! << 8) | buf[3]!
  return type === BINDING_REQUEST && length % 4 === 0 && length + STUN_HEADER_BYTES === buf.length
}

/** A datagram the STUN server should look at: RFC 8489 (cookie) or an RFC 3489 Binding request. */
export function isStunRequestShaped(buf: Uint8Array): boolean {
  return isStun(buf) || isClassicStunRequest(buf)
}

export function decodeStunRequest(buf: Uint8Array): StunRequest {
  const classic = !isStun(buf)
  if (classic && !isClassicStunRequest(buf)) throw new ProtocolError('BAD_REQUEST', 'not a STUN message')
  const r = new Reader(buf)
  const type = r.u16()
  const length = r.u16()
  if (length % 4 !== 0 || STUN_HEADER_BYTES + length > buf.length) throw new ProtocolError('BAD_REQUEST', `bad STUN length ${length}`)
  if (type !== BINDING_REQUEST) return { kind: 'ignore' }
  if (STUN_HEADER_BYTES + length > MAX_STUN_REQUEST_BYTES) throw new ProtocolError('BAD_REQUEST', `STUN request of ${STUN_HEADER_BYTES + length} bytes`)
  if (!classic) r.u32()
  const base: RequestBase = {
    classic,
    transactionId: r.bytes(classic ? 16 : 12, 'transaction id'),
    bytes: STUN_HEADER_BYTES + length,
    fingerprint: false
  }
  // FINGERPRINT is RFC 8489's: in an RFC 3489 message 0x8028 is just an optional unknown.
  const attrs = stunAttributes(buf, base.bytes, !classic)
  base.fingerprint = !classic && attrs.at(-1)?.type === STUN_ATTR.FINGERPRINT
  const unknown: number[] = []
  let bad: string | null = null
  let changeIp = false
  let changePort = false
  let responsePort: number | null = null
  let padding = false
  for (const { type: at, value } of attrs) {
    if (at === STUN_ATTR.CHANGE_REQUEST) {
      if (value.length !== 4) bad ??= 'CHANGE-REQUEST must be 4 bytes'
      else {
        changeIp = (value[3]! & CHANGE_IP) !== 0
        changePort = (value[3]! & CHANGE_PORT) !== 0
      }
    } else if (at === STUN_ATTR.RESPONSE_PORT && !classic) {
      const port = value.length === 4 ? (value[0]! << 8) | value[1]! : 0
      if (port === 0) bad ??= 'RESPONSE-PORT must be a 2-byte port (not 0) and 2 bytes of padding'
      else responsePort = port
    } else if (at === STUN_ATTR.PADDING && !classic) {
      padding = true
    } else if (at < COMPREHENSION_OPTIONAL_MIN && !unknown.includes(at)) {
      unknown.push(at)
    }
  }
  if (unknown.length) return { kind: 'error', code: 420, reason: 'Unknown Attribute', unknown: unknown.slice(0, MAX_UNKNOWN_LISTED), ...base }
  if (!bad && padding && responsePort !== null) bad = 'PADDING and RESPONSE-PORT together' // RFC 5780 §6.1
  if (bad) return { kind: 'error', code: 400, reason: 'Bad Request', unknown: [], ...base }
  return { kind: 'binding', changeIp, changePort, responsePort, padding, ...base }
}

/** The largest answer the server may send for a request of `requestBytes` to `to`: see the top of this file. */
export function maxStunAnswerBytes(requestBytes: number, to: Endpoint): number {
  return requestBytes + 3 * (isIPv4(to.host) ? 12 : 24)
}

export interface BindingAnswer {
  /** Where the request came from (XOR-MAPPED-ADDRESS, or MAPPED-ADDRESS for RFC 3489). */
  mapped: Endpoint
  /** RFC 5780: the socket that answers (RESPONSE-ORIGIN; SOURCE-ADDRESS for RFC 3489). */
  responseOrigin?: Endpoint
  /** RFC 5780: the socket differing in address and port (OTHER-ADDRESS; CHANGED-ADDRESS for RFC 3489). */
  otherAddress?: Endpoint
}

/** The success answer to a Binding request, in the request's dialect. */
export function encodeBindingAnswer(req: Extract<StunRequest, { kind: 'binding' }>, a: BindingAnswer): Buffer {
  const txid = req.transactionId
  const body = new Writer()
  if (req.classic) {
    writeAddress(body, STUN_ATTR.MAPPED_ADDRESS, a.mapped, txid, false)
    if (a.responseOrigin) writeAddress(body, STUN_ATTR.SOURCE_ADDRESS, a.responseOrigin, txid, false)
    if (a.otherAddress) writeAddress(body, STUN_ATTR.CHANGED_ADDRESS, a.otherAddress, txid, false)
    return encodeStunMessage(BINDING_SUCCESS, txid, body.finish())
  }
  writeAddress(body, STUN_ATTR.XOR_MAPPED_ADDRESS, a.mapped, txid, true)
  if (a.responseOrigin) writeAddress(body, STUN_ATTR.RESPONSE_ORIGIN, a.responseOrigin, txid, false)
  if (a.otherAddress) writeAddress(body, STUN_ATTR.OTHER_ADDRESS, a.otherAddress, txid, false)
  if (req.padding) {
    // RFC 5780 asks for an MTU's worth; we pad up to the request's own size and no further.
    const rest = req.bytes - (STUN_HEADER_BYTES + body.size + 4 + (req.fingerprint ? 8 : 0))
    const n = Math.max(0, rest - (rest % 4))
    body.u16(STUN_ATTR.PADDING).u16(n).zeros(n)
  }
  return encodeStunMessage(BINDING_SUCCESS, txid, body.finish(), req.fingerprint)
}

/**
 * An error answer (RFC 8489 §14.8 ERROR-CODE; §14.9 UNKNOWN-ATTRIBUTES for a 420):
 *
 *   ERROR-CODE:  0 (21 bits) | class (3 bits) | number (8 bits) | reason, padded
 *   UNKNOWN-ATTRIBUTES: type u16 ..., padded to 4 bytes
 */
export function encodeBindingError(req: Extract<StunRequest, { kind: 'error' }>): Buffer {
  const reason = new TextEncoder().encode(req.reason)
  const body = new Writer()
  body.u16(STUN_ATTR.ERROR_CODE).u16(4 + reason.length).u16(0).u8(Math.floor(req.code / 100)).u8(req.code % 100).bytes(reason)
  body.zeros((4 - (reason.length % 4)) % 4)
  if (req.code === 420) {
    body.u16(STUN_ATTR.UNKNOWN_ATTRIBUTES).u16(2 * req.unknown.length)
    for (const t of req.unknown) body.u16(t)
    body.zeros(req.unknown.length % 2 ? 2 : 0)
  }
  return encodeStunMessage(BINDING_ERROR, req.transactionId, body.finish(), req.fingerprint)
}

/** For tests and clients: a Binding request with the RFC 5780 / 8489 extras. */
export function encodeBindingRequestWith(
  transactionId: Uint8Array,
  o: { change?: { ip?: boolean; port?: boolean }; responsePort?: number; padding?: number; fingerprint?: boolean; extra?: { type: number; value: Uint8Array }[] }
): Buffer {
  const body = new Writer()
  if (o.responsePort !== undefined) body.u16(STUN_ATTR.RESPONSE_PORT).u16(4).u16(o.responsePort).u16(0)
  if (o.change) body.u16(STUN_ATTR.CHANGE_REQUEST).u16(4).u32((o.change.ip ? CHANGE_IP : 0) | (o.change.port ? CHANGE_PORT : 0))
  if (o.padding !== undefined) body.u16(STUN_ATTR.PADDING).u16(o.padding).zeros(o.padding + ((4 - (o.padding % 4)) % 4))
  for (const e of o.extra ?? []) body.u16(e.type).u16(e.value.length).bytes(e.value).zeros((4 - (e.value.length % 4)) % 4)
  return encodeStunMessage(BINDING_REQUEST, transactionId, body.finish(), o.fingerprint)
}
