/**
 * PCP (RFC 6887), the successor of NAT-PMP on the same UDP port 5351: MAP (a mapping of
 * one of our ports) and ANNOUNCE (is a PCP server there?). Pure codecs; IPv4 only this
 * round (addresses travel as IPv4-mapped IPv6, ::ffff:a.b.c.d).
 *
 *   request header (24 bytes)                      response header (24 bytes)
 *   ┌───────┬─────┬──────────┬──────────────┐      ┌───────┬─────┬──────┬────────┬──────────┬─────────┬──────────┐
 *   │ ver 2 │R=0| │ reserved │ lifetime s   │      │ ver 2 │R=1| │ res. │ result │ lifetime │ epoch s │ reserved │
 *   │       │ op  │ u16      │ u32          │      │       │ op  │ u8   │ u8     │ u32      │ u32     │ 12 bytes │
 *   ├───────┴─────┴──────────┴──────────────┤      └───────┴─────┴──────┴────────┴──────────┴─────────┴──────────┘
 *   │ client IP (16): the address we send from │
 *   └───────────────────────────────────────┘
 *   MAP payload (36 bytes, request and response)
 *   ┌────────────┬──────────┬──────────────┬───────────────┬──────────────────────┬──────────────────────────┐
 *   │ nonce (12) │ protocol │ reserved (3) │ internal port │ (suggested / assigned)│ (suggested / assigned)   │
 *   │            │ 17 / 6   │              │ u16           │ external port u16     │ external IP (16)         │
 *   └────────────┴──────────┴──────────────┴───────────────┴──────────────────────┴──────────────────────────┘
 *
 * The nonce ties a response to our request (RFC 6887 §11.2): a response with another
 * nonce is not ours.
 */
import { Reader, Writer } from '../protocol/bytes.js'
import { ProtocolError } from '../protocol/errors.js'
import type { MapProtocol } from './natpmp.js'

export const PCP_VERSION = 2
const OP_ANNOUNCE = 0
const OP_MAP = 1
const RESPONSE_BIT = 0x80
const IPPROTO: Record<MapProtocol, number> = { udp: 17, tcp: 6 }
export const PCP_NONCE_BYTES = 12

/** RFC 6887 §7.4 result codes. */
export const PCP_RESULTS: Record<number, string> = {
  0: 'success',
  1: 'unsupported version',
  2: 'not authorized',
  3: 'malformed request',
  4: 'unsupported opcode',
  5: 'unsupported option',
  6: 'malformed option',
  7: 'network failure',
  8: 'no resources',
  9: 'unsupported protocol',
  10: 'user exceeded quota',
  11: 'cannot provide external',
  12: 'address mismatch',
  13: 'excessive remote peers'
}

export type PcpResponse =
  | { kind: 'announce'; result: number; lifetimeS: number; epoch: number }
  | { kind: 'map'; result: number; lifetimeS: number; epoch: number; nonce: Uint8Array; protocol: MapProtocol | null; internalPort: number; externalPort: number; externalIp: string }

/** ::ffff:a.b.c.d, as PCP carries IPv4 (RFC 6887 §5). `0.0.0.0` is "no preference". */
function writeIpv4Mapped(w: Writer, ipv4: string): void {
  const parts = ipv4.split('.').map(Number)
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) throw new RangeError(`not an IPv4 address: ${ipv4}`)
  w.zeros(10).u8(0xff).u8(0xff).bytes(Uint8Array.from(parts))
}

function readIpv4Mapped(r: Reader): string {
  const b = r.bytes(16, 'IP address')
  const mapped = b.subarray(0, 10).every((x) => x === 0) && b[10] === 0xff && b[11] === 0xff
  if (!mapped) throw new ProtocolError('BAD_REQUEST', 'PCP: not an IPv4-mapped address (IPv6 is not supported yet)')
  return Array.from(b.subarray(12)).join('.')
}

function header(w: Writer, op: number, lifetimeS: number, clientIp: string): void {
  w.u8(PCP_VERSION).u8(op).u16(0).u32(lifetimeS)
  writeIpv4Mapped(w, clientIp)
}

export function encodePcpAnnounceRequest(clientIp: string): Buffer {
  const w = new Writer()
  header(w, OP_ANNOUNCE, 0, clientIp)
  return w.finish()
}

export function encodePcpMapRequest(o: {
  clientIp: string
  nonce: Uint8Array
  protocol: MapProtocol
  internalPort: number
  suggestedExternalPort?: number
  suggestedExternalIp?: string
  lifetimeS: number
}): Buffer {
  if (o.nonce.length !== PCP_NONCE_BYTES) throw new RangeError(`a PCP nonce is ${PCP_NONCE_BYTES} bytes`)
  const w = new Writer()
  header(w, OP_MAP, o.lifetimeS, o.clientIp)
  w.bytes(o.nonce).u8(IPPROTO[o.protocol]).zeros(3).u16(o.internalPort).u16(o.suggestedExternalPort ?? 0)
  writeIpv4Mapped(w, o.suggestedExternalIp ?? '0.0.0.0')
  return w.finish()
}

/** A PCP response (version 2, R bit set); throws ProtocolError on anything else. */
export function decodePcpResponse(buf: Uint8Array): PcpResponse {
  const r = new Reader(buf)
  if (r.u8('version') !== PCP_VERSION) throw new ProtocolError('BAD_REQUEST', 'not a PCP message')
  const op = r.u8('opcode')
  if (!(op & RESPONSE_BIT)) throw new ProtocolError('BAD_REQUEST', 'a PCP request, not a response')
  r.u8('reserved')
  const result = r.u8('result code')
  const lifetimeS = r.u32('lifetime')
  const epoch = r.u32('epoch')
  r.bytes(12, 'reserved')
  if ((op & ~RESPONSE_BIT) === OP_ANNOUNCE) return { kind: 'announce', result, lifetimeS, epoch }
  if ((op & ~RESPONSE_BIT) !== OP_MAP) throw new ProtocolError('BAD_REQUEST', `unknown PCP opcode ${op & ~RESPONSE_BIT}`)
  const nonce = r.bytes(PCP_NONCE_BYTES, 'nonce')
  const proto = r.u8('protocol')
  r.bytes(3, 'reserved')
  const internalPort = r.u16('internal port')
  const externalPort = r.u16('external port')
  const externalIp = readIpv4Mapped(r)
  const protocol = proto === 17 ? 'udp' : proto === 6 ? 'tcp' : null
  return { kind: 'map', result, lifetimeS, epoch, nonce, protocol, internalPort, externalPort, externalIp }
}
