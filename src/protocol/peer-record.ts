/**
 * The peer record of the rendezvous protocol (rendezvous.ts): what PEERS, PEER_EVENT and
 * INTRODUCTION say of an agent. Layout (u32 big-endian; ep = endpoint.ts; str8 = u8
 * length + UTF-8):
 *
 *   peer = publicKey[32] name str8 online u8 lastSeenAgoMs u32 nat u8
 *          udp ep tcp ep lanCount u8 ep*lanCount
 */
import { enumAt, fixed, type Reader, type Writer } from './bytes.js'
import { readEndpoint, writeEndpoint, type Endpoint } from './endpoint.js'
import { ProtocolError } from './errors.js'
import { KEY_BYTES } from './rendezvous-wire.js'

export const MAX_LAN_ENDPOINTS = 8

/** What the agent's netcheck concluded; peers use it to choose a punching strategy. */
export type NatVerdict = 'unknown' | 'easy' | 'hard' | 'none'
/** The wire encoding of NatVerdict (the index): append, never reorder. */
export const NAT_VERDICTS: readonly NatVerdict[] = ['unknown', 'easy', 'hard', 'none']

export interface PeerRecord {
  publicKey: Uint8Array
  name: string
  online: boolean
  lastSeenAgoMs: number
  nat: NatVerdict
  udp: Endpoint | null
  tcp: Endpoint | null
  lan: Endpoint[]
}

export function writePeer(w: Writer, p: PeerRecord): void {
  w.bytes(fixed(p.publicKey, KEY_BYTES, 'publicKey')).str8(p.name).u8(p.online ? 1 : 0).u32(Math.min(p.lastSeenAgoMs, 0xffffffff))
  w.u8(NAT_VERDICTS.indexOf(p.nat))
  writeEndpoint(w, p.udp)
  writeEndpoint(w, p.tcp)
  writeEndpoints(w, p.lan)
}

export function readPeer(r: Reader): PeerRecord {
  const publicKey = r.bytes(KEY_BYTES, 'publicKey')
  const name = r.str8('name')
  const online = r.u8('online') === 1
  const lastSeenAgoMs = r.u32('lastSeen')
  const nat = enumAt(NAT_VERDICTS, r.u8('nat'), 'nat verdict')
  const udp = readEndpoint(r)
  const tcp = readEndpoint(r)
  const lan = readEndpoints(r)
  return { publicKey, name, online, lastSeenAgoMs, nat, udp, tcp, lan }
}

/** A count u8 and the first MAX_LAN_ENDPOINTS endpoints (a peer's LAN addresses, REGISTER's). */
export function writeEndpoints(w: Writer, eps: Endpoint[]): void {
  const lan = eps.slice(0, MAX_LAN_ENDPOINTS)
  w.u8(lan.length)
  for (const ep of lan) writeEndpoint(w, ep)
}

export function readEndpoints(r: Reader): Endpoint[] {
  const n = r.u8('endpoint count')
  if (n > MAX_LAN_ENDPOINTS) throw new ProtocolError('BAD_REQUEST', `too many endpoints (${n})`)
  const out: Endpoint[] = []
  for (let i = 0; i < n; i++) {
    const ep = readEndpoint(r)
    if (ep) out.push(ep)
  }
  return out
}
