/**
 * NAT-PMP (RFC 6886): ask the default gateway, on UDP 5351, for its external address and
 * for a mapping of one of our ports. Pure codecs; the client is port-mapper.ts.
 *
 *   external address request (2 bytes)      response (12 bytes)
 *   ┌───────┬───────┐                        ┌───────┬────────┬───────────────┬───────────────┬─────────────┐
 *   │ ver 0 │ op 0  │                        │ ver 0 │ op 128 │ result u16    │ epoch s u32   │ IPv4 (4)    │
 *   └───────┴───────┘                        └───────┴────────┴───────────────┴───────────────┴─────────────┘
 *
 *   mapping request (12 bytes)
 *   ┌───────┬─────────────┬──────────┬──────────────────┬───────────────────────┬────────────────┐
 *   │ ver 0 │ op 1 UDP    │ 0 (u16)  │ internal port    │ suggested ext. port   │ lifetime s u32 │
 *   │       │    2 TCP    │          │ u16              │ u16 (0: any)          │ (0: delete)    │
 *   └───────┴─────────────┴──────────┴──────────────────┴───────────────────────┴────────────────┘
 *   mapping response (16 bytes)
 *   ┌───────┬──────────┬────────────┬─────────────┬───────────────┬───────────────┬────────────────┐
 *   │ ver 0 │ 128 + op │ result u16 │ epoch s u32 │ internal port │ external port │ lifetime s u32 │
 *   └───────┴──────────┴────────────┴─────────────┴───────────────┴───────────────┴────────────────┘
 *
 * A PCP server that also speaks NAT-PMP answers version 0; a NAT-PMP-only server answers
 * a PCP (version 2) request with a version-0 "unsupported version" (result 1): the first
 * byte tells the two apart (RFC 6887 §9).
 */
import { Reader, Writer } from '../protocol/bytes.js'
import { ProtocolError } from '../protocol/errors.js'

export const PORT_MAPPING_PORT = 5351
export const NATPMP_VERSION = 0
const OP_EXTERNAL_ADDRESS = 0
const OP_MAP_UDP = 1
const OP_MAP_TCP = 2
const RESPONSE = 128

export type MapProtocol = 'udp' | 'tcp'

/** RFC 6886 §3.5 result codes. */
export const NATPMP_RESULTS: Record<number, string> = {
  0: 'success',
  1: 'unsupported version',
  2: 'not authorized or refused',
  3: 'network failure',
  4: 'out of resources',
  5: 'unsupported opcode'
}

export type NatPmpResponse =
  | { kind: 'external-address'; result: number; epoch: number; address: string | null }
  | { kind: 'map'; protocol: MapProtocol; result: number; epoch: number; internalPort: number; externalPort: number; lifetimeS: number }

export function encodeNatPmpAddressRequest(): Buffer {
  return new Writer().u8(NATPMP_VERSION).u8(OP_EXTERNAL_ADDRESS).finish()
}

export function encodeNatPmpMapRequest(protocol: MapProtocol, internalPort: number, suggestedExternalPort: number, lifetimeS: number): Buffer {
  return new Writer()
    .u8(NATPMP_VERSION)
    .u8(protocol === 'udp' ? OP_MAP_UDP : OP_MAP_TCP)
    .u16(0)
    .u16(internalPort)
    .u16(suggestedExternalPort)
    .u32(lifetimeS)
    .finish()
}

/** A NAT-PMP response (version 0, op ≥ 128); throws ProtocolError on anything else. */
export function decodeNatPmpResponse(buf: Uint8Array): NatPmpResponse {
  const r = new Reader(buf)
  if (r.u8('version') !== NATPMP_VERSION) throw new ProtocolError('BAD_REQUEST', 'not a NAT-PMP message')
  const op = r.u8('opcode')
  if (op < RESPONSE) throw new ProtocolError('BAD_REQUEST', 'a NAT-PMP request, not a response')
  const result = r.u16('result code')
  // An error response may stop after the epoch (an "unsupported version" to PCP: 8 bytes).
  const epoch = r.remaining >= 4 ? r.u32('epoch') : 0
  if (op === RESPONSE + OP_EXTERNAL_ADDRESS) {
    const address = result === 0 ? Array.from(r.bytes(4, 'external address')).join('.') : null
    return { kind: 'external-address', result, epoch, address }
  }
  if (op === RESPONSE + OP_MAP_UDP || op === RESPONSE + OP_MAP_TCP) {
    const protocol: MapProtocol = op === RESPONSE + OP_MAP_UDP ? 'udp' : 'tcp'
    if (result !== 0 && r.remaining < 8) return { kind: 'map', protocol, result, epoch, internalPort: 0, externalPort: 0, lifetimeS: 0 }
    return { kind: 'map', protocol, result, epoch, internalPort: r.u16('internal port'), externalPort: r.u16('external port'), lifetimeS: r.u32('lifetime') }
  }
  throw new ProtocolError('BAD_REQUEST', `unknown NAT-PMP opcode ${op}`)
}
