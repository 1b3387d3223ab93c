/**
 * The subset of STUN (RFC 8489) natd speaks: Binding requests and success responses with
 * XOR-MAPPED-ADDRESS, plus RFC 5780's CHANGE-REQUEST / RESPONSE-ORIGIN / OTHER-ADDRESS
 * for NAT behaviour discovery, and FINGERPRINT (§14.7). Stock STUN clients work against
 * natd-rendezvous; what the server accepts and answers is in stun-request.ts.
 *
 *    0                   1                   2                   3
 *    0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 *   +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *   |0 0|     STUN Message Type     |         Message Length        |
 *   +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *   |                 Magic Cookie = 0x2112A442                     |
 *   +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *   |                Transaction ID (96 bits)                       |
 *   +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *   | attributes: type u16, length u16, value padded to 4 bytes ... |
 *   | FINGERPRINT (optional, last): 0x8028, 4, CRC-32 of all before ^ 0x5354554e |
 *
 * An RFC 3489 message has no magic cookie: those 32 bits are the first part of a 128-bit
 * transaction ID.
 */
import { crc32 } from 'node:zlib'
import { Reader, Writer } from './bytes.js'
import { ipv6ToBytes, bytesToIpv6, isIPv4, type Endpoint } from './endpoint.js'
import { ProtocolError } from './errors.js'

/** RFC 4787 §4.1 mapping behaviour; 'none' when the server sees our own address. */
export type MappingBehaviour = 'none' | 'endpoint-independent' | 'address-dependent' | 'address-and-port-dependent' | 'unknown'
/** RFC 4787 §5 filtering behaviour of the mapping (a host without NAT or firewall: endpoint-independent). */
export type FilteringBehaviour = 'endpoint-independent' | 'address-dependent' | 'address-and-port-dependent' | 'unknown'

export const STUN_MAGIC_COOKIE = 0x2112a442
export const STUN_HEADER_BYTES = 20
export const BINDING_REQUEST = 0x0001
export const BINDING_SUCCESS = 0x0101
export const BINDING_ERROR = 0x0111

/** Attribute types (RFC 8489 §18.3, RFC 5780 §7, and RFC 3489 §11.2 for the old ones). */
export const STUN_ATTR = {
  MAPPED_ADDRESS: 0x0001,
  /** RFC 3489 only: answer to another address. Never honoured (a reflection tool). */
  RESPONSE_ADDRESS: 0x0002,
  CHANGE_REQUEST: 0x0003,
  /** RFC 3489's RESPONSE-ORIGIN. */
  SOURCE_ADDRESS: 0x0004,
  /** RFC 3489's OTHER-ADDRESS. */
  CHANGED_ADDRESS: 0x0005,
  ERROR_CODE: 0x0009,
  UNKNOWN_ATTRIBUTES: 0x000a,
  XOR_MAPPED_ADDRESS: 0x0020,
  PADDING: 0x0026,
  RESPONSE_PORT: 0x0027,
  FINGERPRINT: 0x8028,
  RESPONSE_ORIGIN: 0x802b,
  OTHER_ADDRESS: 0x802c
} as const

export const CHANGE_IP = 0x04
export const CHANGE_PORT = 0x02
/** RFC 8489 §14.7: the CRC-32 is XORed with this so it differs from other protocols' CRCs. */
const FINGERPRINT_XOR = 0x5354554e
/** Types up to 0x7fff are comprehension-required: a receiver that does not know one must refuse (§14). */
export const COMPREHENSION_OPTIONAL_MIN = 0x8000

export interface StunMessage {
  method: 'binding-request' | 'binding-success' | 'other'
  transactionId: Uint8Array
  /** RFC 5780 CHANGE-REQUEST flags on a request. */
  changeIp: boolean
  changePort: boolean
  mapped: Endpoint | null
  responseOrigin: Endpoint | null
  otherAddress: Endpoint | null
}

/** Cheap test for demultiplexing: top two bits zero and the magic cookie in place. */
export function isStun(buf: Uint8Array): boolean {
  return (
    buf.length >= STUN_HEADER_BYTES &&
    (buf[0]! & 0xc0) === 0 &&
    buf[4] === 0x21 && buf[5] === 0x12 && buf[6] === 0xa4 && buf[7] === 0x42
  )
}

export function decodeStun(buf: Uint8Array): StunMessage {
  if (!isStun(buf)) throw new ProtocolError('BAD_REQUEST', 'not a STUN message')
  const r = new Reader(buf)
  const type = r.u16()
  const length = r.u16()
  r.u32()
  const transactionId = r.bytes(12, 'transaction id')
  if (length % 4 !== 0 || length > r.remaining) throw new ProtocolError('BAD_REQUEST', `bad STUN length ${length}`)
  const msg: StunMessage = {
    method: type === BINDING_REQUEST ? 'binding-request' : type === BINDING_SUCCESS ? 'binding-success' : 'other',
    transactionId,
    changeIp: false,
    changePort: false,
    mapped: null,
    responseOrigin: null,
    otherAddress: null
  }
  for (const { type: at, value: v } of stunAttributes(buf, STUN_HEADER_BYTES + length, true)) {
    const value = new Reader(v)
    switch (at) {
      case STUN_ATTR.XOR_MAPPED_ADDRESS:
        msg.mapped = readAddress(value, transactionId, true)
        break
      case STUN_ATTR.MAPPED_ADDRESS:
        msg.mapped ??= readAddress(value, transactionId, false)
        break
      case STUN_ATTR.RESPONSE_ORIGIN:
        msg.responseOrigin = readAddress(value, transactionId, false)
        break
      case STUN_ATTR.OTHER_ADDRESS:
        msg.otherAddress = readAddress(value, transactionId, false)
        break
      case STUN_ATTR.CHANGE_REQUEST: {
        const flags = value.u32('CHANGE-REQUEST')
        msg.changeIp = (flags & CHANGE_IP) !== 0
        msg.changePort = (flags & CHANGE_PORT) !== 0
        break
      }
      default:
        break // unknown comprehension-optional attributes are ignored (RFC 8489 §14)
    }
  }
  return msg
}

export interface StunAttribute {
  type: number
  value: Uint8Array
  /** Where the attribute's header starts in the message. */
  offset: number
}

/**
 * The attributes of the message `buf[0, end)` (end = 20 + the header's length), checked:
 * every value and its padding inside the message, and a FINGERPRINT, when `verify` and
 * present, last and matching (RFC 8489 §14.7). Throws ProtocolError otherwise: a message
 * with a bad FINGERPRINT is not STUN and is dropped.
 */
export function stunAttributes(buf: Uint8Array, end: number, verify: boolean): StunAttribute[] {
  const out: StunAttribute[] = []
  const r = new Reader(buf.subarray(STUN_HEADER_BYTES, end))
  while (r.remaining >= 4) {
    const offset = STUN_HEADER_BYTES + r.position
    const type = r.u16()
    const len = r.u16()
    const value = r.bytes(len, 'STUN attribute')
    r.bytes((4 - (len % 4)) % 4, 'STUN padding')
    out.push({ type, value, offset })
  }
  if (!verify) return out
  const fp = out.findIndex((a) => a.type === STUN_ATTR.FINGERPRINT)
  if (fp === -1) return out
  if (fp !== out.length - 1) throw new ProtocolError('BAD_REQUEST', 'STUN attribute after FINGERPRINT')
  const { value, offset } = out[fp]!
  if (value.length !== 4) throw new ProtocolError('BAD_REQUEST', `bad STUN FINGERPRINT length ${value.length}`)
  const want = new DataView(value.buffer, value.byteOffset, 4).getUint32(0)
  if (stunFingerprint(buf.subarray(0, offset)) !== want) throw new ProtocolError('BAD_REQUEST', 'bad STUN FINGERPRINT')
  return out
}

/** FINGERPRINT's value for the message bytes before it (whose header length already counts it). */
export function stunFingerprint(before: Uint8Array): number {
  return (crc32(before) ^ FINGERPRINT_XOR) >>> 0
}

/**
 * A whole message: header, `body` (attributes, each padded), then FINGERPRINT when asked.
 * `transactionId` is 12 bytes after the magic cookie, or 16 for an RFC 3489 message
 * (no cookie).
 */
export function encodeStunMessage(type: number, transactionId: Uint8Array, body: Uint8Array, fingerprint = false): Buffer {
  const w = new Writer().u16(type).u16(body.length + (fingerprint ? 8 : 0))
  if (transactionId.length === 12) w.u32(STUN_MAGIC_COOKIE)
  else if (transactionId.length !== 16) throw new RangeError(`a STUN transaction ID is 12 or 16 bytes, not ${transactionId.length}`)
  w.bytes(transactionId).bytes(body)
  if (fingerprint) {
    const crc = stunFingerprint(w.peek()) // over everything before the attribute
    w.u16(STUN_ATTR.FINGERPRINT).u16(4).u32(crc)
  }
  return w.finish()
}

function readAddress(r: Reader, txid: Uint8Array, xor: boolean): Endpoint {
  r.u8('reserved')
  const family = r.u8('family')
  let port = r.u16('port')
  if (xor) port ^= STUN_MAGIC_COOKIE >>> 16
  const key = xorKey(txid)
  if (family === 0x01) {
    const a = r.bytes(4, 'IPv4 address')
    return { host: Array.from(a, (b, i) => (xor ? b ^ key[i]! : b)).join('.'), port }
  }
  if (family === 0x02) {
    const a = Uint8Array.from(r.bytes(16, 'IPv6 address'), (b, i) => (xor ? b ^ key[i]! : b))
    return { host: bytesToIpv6(a), port }
  }
  throw new ProtocolError('BAD_REQUEST', `bad STUN address family ${family}`)
}

function xorKey(txid: Uint8Array): Uint8Array {
  const key = new Uint8Array(16)
  new DataView(key.buffer).setUint32(0, STUN_MAGIC_COOKIE)
  key.set(txid, 4)
  return key
}

/** An address attribute (MAPPED-ADDRESS family; XOR-MAPPED-ADDRESS when `xor`, which needs a 12-byte txid). */
export function writeAddress(w: Writer, type: number, ep: Endpoint, txid: Uint8Array, xor: boolean): void {
  const v4 = isIPv4(ep.host)
  const addr = v4 ? Uint8Array.from(ep.host.split('.').map(Number)) : ipv6ToBytes(ep.host)
  const key = xor ? xorKey(txid) : null
  w.u16(type).u16(4 + addr.length).u8(0).u8(v4 ? 0x01 : 0x02)
  w.u16(xor ? ep.port ^ (STUN_MAGIC_COOKIE >>> 16) : ep.port)
  w.bytes(key ? addr.map((b, i) => b ^ key[i]!) : addr)
}

export function encodeBindingRequest(transactionId: Uint8Array, change?: { ip?: boolean; port?: boolean }): Buffer {
  const w = new Writer()
  const attrs = change && (change.ip || change.port) ? 8 : 0
  w.u16(BINDING_REQUEST).u16(attrs).u32(STUN_MAGIC_COOKIE).bytes(transactionId)
  if (attrs) w.u16(STUN_ATTR.CHANGE_REQUEST).u16(4).u32((change?.ip ? CHANGE_IP : 0) | (change?.port ? CHANGE_PORT : 0))
  return w.finish()
}

export function encodeBindingSuccess(
  transactionId: Uint8Array,
  mapped: Endpoint,
  extra?: { responseOrigin?: Endpoint; otherAddress?: Endpoint }
): Buffer {
  const body = new Writer()
  writeAddress(body, STUN_ATTR.XOR_MAPPED_ADDRESS, mapped, transactionId, true)
  if (extra?.responseOrigin) writeAddress(body, STUN_ATTR.RESPONSE_ORIGIN, extra.responseOrigin, transactionId, false)
  if (extra?.otherAddress) writeAddress(body, STUN_ATTR.OTHER_ADDRESS, extra.otherAddress, transactionId, false)
  return encodeStunMessage(BINDING_SUCCESS, transactionId, body.finish())
}
