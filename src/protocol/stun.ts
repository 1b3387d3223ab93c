/**
 * The subset of STUN (RFC 8489) natd speaks: Binding requests and success responses with
 * XOR-MAPPED-ADDRESS, plus RFC 5780's CHANGE-REQUEST / RESPONSE-ORIGIN / OTHER-ADDRESS
 * for NAT behaviour discovery. Stock STUN clients work against natd-rendezvous.
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
 */
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
const ATTR_MAPPED_ADDRESS = 0x0001
const ATTR_CHANGE_REQUEST = 0x0003
const ATTR_XOR_MAPPED_ADDRESS = 0x0020
const ATTR_RESPONSE_ORIGIN = 0x802b
const ATTR_OTHER_ADDRESS = 0x802c
const CHANGE_IP = 0x04
const CHANGE_PORT = 0x02

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
  const attrs = new Reader(r.bytes(length))
  while (attrs.remaining >= 4) {
    const at = attrs.u16()
    const alen = attrs.u16()
    const value = new Reader(attrs.bytes(alen, 'STUN attribute'))
    attrs.bytes((4 - (alen % 4)) % 4, 'STUN padding')
    switch (at) {
      case ATTR_XOR_MAPPED_ADDRESS:
        msg.mapped = readAddress(value, transactionId, true)
        break
      case ATTR_MAPPED_ADDRESS:
        msg.mapped ??= readAddress(value, transactionId, false)
        break
      case ATTR_RESPONSE_ORIGIN:
        msg.responseOrigin = readAddress(value, transactionId, false)
        break
      case ATTR_OTHER_ADDRESS:
        msg.otherAddress = readAddress(value, transactionId, false)
        break
      case ATTR_CHANGE_REQUEST: {
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

function writeAddress(w: Writer, type: number, ep: Endpoint, txid: Uint8Array, xor: boolean): void {
  const v4 = isIPv4(ep.host)
  const addr = v4 ? Uint8Array.from(ep.host.split('.').map(Number)) : ipv6ToBytes(ep.host)
  const key = xorKey(txid)
  w.u16(type).u16(4 + addr.length).u8(0).u8(v4 ? 0x01 : 0x02)
  w.u16(xor ? ep.port ^ (STUN_MAGIC_COOKIE >>> 16) : ep.port)
  w.bytes(xor ? addr.map((b, i) => b ^ key[i]!) : addr)
}

export function encodeBindingRequest(transactionId: Uint8Array, change?: { ip?: boolean; port?: boolean }): Buffer {
  const w = new Writer()
  const attrs = change && (change.ip || change.port) ? 8 : 0
  w.u16(BINDING_REQUEST).u16(attrs).u32(STUN_MAGIC_COOKIE).bytes(transactionId)
  if (attrs) w.u16(ATTR_CHANGE_REQUEST).u16(4).u32((change?.ip ? CHANGE_IP : 0) | (change?.port ? CHANGE_PORT : 0))
  return w.finish()
}

export function encodeBindingSuccess(
  transactionId: Uint8Array,
  mapped: Endpoint,
  extra?: { responseOrigin?: Endpoint; otherAddress?: Endpoint }
): Buffer {
  const body = new Writer()
  writeAddress(body, ATTR_XOR_MAPPED_ADDRESS, mapped, transactionId, true)
  if (extra?.responseOrigin) writeAddress(body, ATTR_RESPONSE_ORIGIN, extra.responseOrigin, transactionId, false)
  if (extra?.otherAddress) writeAddress(body, ATTR_OTHER_ADDRESS, extra.otherAddress, transactionId, false)
  const attrs = body.finish()
  return new Writer().u16(BINDING_SUCCESS).u16(attrs.length).u32(STUN_MAGIC_COOKIE).bytes(transactionId).bytes(attrs).finish()
}
