/**
 * Rendezvous wire format, protocol version 2: agent <-> natd-rendezvous, over UDP
 * datagrams and over TCP connections (where each message is prefixed by a u32
 * big-endian length until the connection turns secure, and is one Noise message after).
 *
 *    0       1       2       3       4
 *   +-------+-------+-------+-------+--------------------------
 *   |  'N'  |  'D'  |  ver  | type  | body (per type, below)
 *   +-------+-------+-------+-------+--------------------------
 *
 * 'N' = 0x4E has the top bits 01, so a frame never looks like STUN (00, RFC 8489 §5) or
 * a UDX packet (0xFF), and all three share the agent's one UDP socket.
 *
 * A TCP connection (docs/SECURITY.md has the why):
 *   server → CHALLENGE (plain, length-prefixed; a v1 agent reads a clear BAD_VERSION)
 *   agent  → SECURE     then a Noise XX session (secret-stream) with the server's key;
 *                       inside it: REGISTER (or RELEASE), then the control traffic
 *   agent  → RELAY      instead of SECURE: a relay connection (plain framing; the
 *                       tunnel inside is end-to-end Noise between the two agents)
 * UDP carries HEARTBEAT / HEARTBEAT_ACK (sealed with the key REGISTER_ACK handed out
 * inside the Noise session), PROBE between agents (sealed with the introduction's
 * punch key) and STUN. Nothing else is accepted over UDP.
 *
 * Bodies (u16/u32/u48 big-endian; ep = endpoint.ts; str8 = u8 length + UTF-8):
 *   CHALLENGE    nonce[32] serverTime u48
 *   SECURE       (empty)
 *   REGISTER     nonce[32] time u48 publicKey[32] name str8 tcpPort u16 nat u8
 *                lanCount u8 ep*lanCount proofLen u8 proof[proofLen] signature[64]
 *                (the signature covers every byte before it, header included; the
 *                publicKey must be the one that ran the Noise handshake)
 *   REGISTER_ACK token[16] udpKey[32] observed ep heartbeatMs u32 peerTimeoutMs u32 [server6 ep [features u8]]
 *                server6: the server's IPv6 UDP endpoint (--host6, always family 6),
 *                where the agent sends the same sealed heartbeats from its IPv6 socket
 *                (protocol/ipv6.ts). It trails the frame, so an older agent, which
 *                tolerates trailing bytes, ignores it; an older server sends none.
 *                features: what the server understands beyond this list (1 = LOOKUP);
 *                a server that sends it writes server6 as family 0 when it has none
 *                (an older agent reads an IPv6 endpoint only from family 6 and 19
 *                bytes, so it ignores both). An older server sends neither: no LOOKUP,
 *                which such a server would answer by closing the connection.
 *   HEARTBEAT, HEARTBEAT_ACK   sealed datagrams: rendezvous-datagrams.ts
 *   ERROR        reqId u32 code str8 message str8
 *   LIST         reqId u32
 *   PEERS        reqId u32 count u16 peer*count
 *   LOOKUP       reqId u32 publicKey[32]      one peer's record: PEERS with 0 or 1 of them,
 *                                             the one LIST would show (never the asker's own)
 *   PEER_EVENT   event u8 (1 up, 2 down) peer [reason u8 (down only: 0 unknown, 1 bye, 2 expired); absent from older servers: unknown]
 *   PING, PONG   seq u32
 *   BYE          (empty) the agent is leaving; the server drops it at once
 *   INTRODUCE    reqId u32 target str8 via u8
 *   INTRODUCTION reqId u32 introId[16] punchKey[32] flags u8 via u8 peer [relay ep]
 *                flags: 1 = initiator, 2 = a relay endpoint follows the peer: where to
 *                dial for a relayed tunnel when it is not the server that sent this
 *                (several instances: the initiator's instance holds the permit). Only
 *                a responder's side carries it, so an older agent, which reads
 *                initiator as flags == 1, still sees "responder" and ignores the rest.
 *   RELAY        introId[16] initiator u8 signature[64]   over 'natd relay v2' nonce[32] introId initiator:
 *                                             only the introduced agent binds its side
 *   RELAY_OK     (empty)                       both sides bound: RELAY_DATA flows from now
 *   RELAY_DATA   bytes                         ciphertext; the server forwards it as it is
 *   RELAY_END    code str8 message str8        the server ends the relay (RELAY_LIMIT, …)
 *   PROBE        a sealed datagram between agents: rendezvous-datagrams.ts
 *   RELEASE      reqId u32 name str8           the key holding `name` gives it up
 *   OK           reqId u32                     a request without other answer succeeded
 *
 *   peer = a peer record: peer-record.ts
 *
 * Type 1 (HELLO, version 1's UDP registration) is retired. Decoders check lengths
 * before slicing, tolerate trailing bytes, and throw only ProtocolError.
 *
 * Files: the header and field sizes in rendezvous-wire.ts, the TCP length prefix in
 * tcp-framing.ts; this module re-exports them, so callers import from here alone.
 */
import { enumAt, fixed, Reader, truncateUtf8, Writer } from './bytes.js'
import { readEndpoint, writeEndpoint, type Endpoint } from './endpoint.js'
import { ProtocolError } from './errors.js'
import { NAT_VERDICTS, readEndpoints, readPeer, writeEndpoints, writePeer, type NatVerdict, type PeerRecord } from './peer-record.js'
import { decodeDatagram, encodeDatagram, type Datagram, type OutgoingDatagram } from './rendezvous-datagrams.js'
import { DATAGRAM_KEY_BYTES, header, INTRO_ID_BYTES, KEY_BYTES, MAGIC_0, MAGIC_1, MSG, NONCE_BYTES, PROTOCOL_VERSION, RELAY_DATA_HEADER, SIGNATURE_BYTES, TOKEN_BYTES } from './rendezvous-wire.js'
import { VIAS, type Via } from './via.js'

export { DATAGRAM_KEY_BYTES, INTRO_ID_BYTES, isRendezvousFrame, KEY_BYTES, MAGIC_0, MAGIC_1, MAX_UDP_FRAME_BYTES, MSG, NONCE_BYTES, PROTOCOL_VERSION, RELAY_DATA_HEADER, SIGNATURE_BYTES, TAG_BYTES, TOKEN_BYTES } from './rendezvous-wire.js'
export { FrameSplitter, frame, MAX_TCP_FRAME_BYTES } from './tcp-framing.js'
export { MAX_LAN_ENDPOINTS, NAT_VERDICTS, type NatVerdict, type PeerRecord } from './peer-record.js'
export { opened, type HeartbeatStatus, type Sealed } from './rendezvous-datagrams.js'

/**
 * A PEERS reply lists at most this many peers (online first, then the most recently
 * seen): it must fit MAX_TCP_FRAME_BYTES and its u16 count, and a server with 100k
 * agents stalled ~300 ms building a full list (bench/rendezvous-capacity.ts).
 */
export const MAX_LIST_PEERS = 2048
/** REGISTER_ACK's trailing server6: an IPv6 endpoint (family, address, port). */
const SERVER6_BYTES = 1 + 16 + 2
/** REGISTER_ACK's features: the server answers LOOKUP. */
export const FEATURE_LOOKUP = 1

// Via (the path an introduction asks for) is defined in via.ts; re-exported for the codec's users.
export type { Via } from './via.js'

/**
 * Why the server says a peer went offline: it said goodbye ('bye': its natd stopped, or
 * it released its name), or the server stopped hearing it ('expired': heartbeats lost,
 * or its connection ended without a goodbye and it did not come back within the grace);
 * 'unknown' from an older server or another instance.
 */
export type PeerDownReason = 'unknown' | 'bye' | 'expired'
const PEER_DOWN_REASONS: readonly PeerDownReason[] = ['unknown', 'bye', 'expired']

export interface RegisterFields {
  nonce: Uint8Array
  time: number
  publicKey: Uint8Array
  name: string
  tcpPort: number
  nat: NatVerdict
  lan: Endpoint[]
  proof: Uint8Array
}

export type Message =
  | { type: 'challenge'; nonce: Uint8Array; serverTime: number }
  | { type: 'secure' }
  | ({ type: 'register'; signature: Uint8Array; signed: Uint8Array } & RegisterFields)
  | { type: 'register-ack'; token: Uint8Array; udpKey: Uint8Array; observed: Endpoint | null; heartbeatMs: number; peerTimeoutMs: number; server6?: Endpoint | null; features?: number }
  | { type: 'error'; reqId: number; code: string; message: string }
  | { type: 'list'; reqId: number }
  | { type: 'peers'; reqId: number; peers: PeerRecord[] }
  | { type: 'lookup'; reqId: number; publicKey: Uint8Array }
  | { type: 'peer-event'; event: 'up' | 'down'; peer: PeerRecord; reason?: PeerDownReason }
  | { type: 'ping'; seq: number }
  | { type: 'pong'; seq: number }
  | { type: 'bye' }
  | { type: 'introduce'; reqId: number; target: string; via: Via }
  | { type: 'introduction'; reqId: number; introId: Uint8Array; punchKey: Uint8Array; initiator: boolean; via: Via; peer: PeerRecord; relay?: Endpoint | null }
  | { type: 'relay'; introId: Uint8Array; initiator: boolean; signature: Uint8Array }
  | { type: 'relay-ok' }
  | { type: 'relay-data'; data: Uint8Array }
  | { type: 'relay-end'; code: string; message: string }
  | { type: 'release'; reqId: number; name: string }
  | { type: 'ok'; reqId: number }
  | Datagram

/**
 * Messages as callers build them: REGISTER by encodeRegister (it needs a signature),
 * RELAY by encodeRelay, sealed datagrams with the key that seals them.
 */
export type OutgoingMessage = Exclude<Message, { type: 'register' | 'relay' | Datagram['type'] }> | OutgoingDatagram

/** Prefixes what a RELAY signature covers, so it can never stand for anything else the agent's key signs. */
export const RELAY_SIGNATURE_LABEL = 'natd relay v2'

/** The bytes a RELAY signature covers: a label, the connection's challenge nonce, the introduction, the side. */
export function relaySigned(nonce: Uint8Array, introId: Uint8Array, initiator: boolean): Buffer {
  return new Writer().bytes(Buffer.from(RELAY_SIGNATURE_LABEL)).bytes(fixed(nonce, NONCE_BYTES, 'nonce')).bytes(fixed(introId, INTRO_ID_BYTES, 'introId')).u8(initiator ? 1 : 0).finish()
}

export function encodeRelay(introId: Uint8Array, initiator: boolean, signature: Uint8Array): Buffer {
  return header(MSG.RELAY).bytes(fixed(introId, INTRO_ID_BYTES, 'introId')).u8(initiator ? 1 : 0).bytes(fixed(signature, SIGNATURE_BYTES, 'signature')).finish()
}

/** The REGISTER frame up to (not including) its signature: the bytes the agent signs. */
export function encodeRegisterUnsigned(f: RegisterFields): Buffer {
  const w = header(MSG.REGISTER)
  w.bytes(fixed(f.nonce, NONCE_BYTES, 'nonce')).u48(f.time).bytes(fixed(f.publicKey, KEY_BYTES, 'publicKey'))
  w.str8(f.name).u16(f.tcpPort).u8(NAT_VERDICTS.indexOf(f.nat))
  writeEndpoints(w, f.lan)
  w.u8(f.proof.length).bytes(f.proof)
  return w.finish()
}

export function encodeRegister(unsigned: Uint8Array, signature: Uint8Array): Buffer {
  return Buffer.concat([unsigned, fixed(signature, SIGNATURE_BYTES, 'signature')])
}

export function encode(m: OutgoingMessage): Buffer {
  switch (m.type) {
    case 'challenge':
      return header(MSG.CHALLENGE).bytes(fixed(m.nonce, NONCE_BYTES, 'nonce')).u48(m.serverTime).finish()
    case 'secure':
      return header(MSG.SECURE).finish()
    case 'register-ack': {
      const w = header(MSG.REGISTER_ACK).bytes(fixed(m.token, TOKEN_BYTES, 'token')).bytes(fixed(m.udpKey, DATAGRAM_KEY_BYTES, 'udpKey'))
      writeEndpoint(w, m.observed)
      w.u32(m.heartbeatMs).u32(m.peerTimeoutMs)
      if (m.features !== undefined) {
        writeEndpoint(w, m.server6 ?? null)
        w.u8(m.features)
      } else if (m.server6) writeEndpoint(w, m.server6)
      return w.finish()
    }
    case 'heartbeat':
    case 'heartbeat-ack':
    case 'probe':
      return encodeDatagram(m)
    case 'error':
      return header(MSG.ERROR).u32(m.reqId).str8(truncateUtf8(m.code, 64)).str8(truncateUtf8(m.message, 255)).finish()
    case 'list':
      return header(MSG.LIST).u32(m.reqId).finish()
    case 'lookup':
      return header(MSG.LOOKUP).u32(m.reqId).bytes(fixed(m.publicKey, KEY_BYTES, 'publicKey')).finish()
    case 'peers': {
      const w = header(MSG.PEERS).u32(m.reqId).u16(m.peers.length)
      for (const p of m.peers) writePeer(w, p)
      return w.finish()
    }
    case 'peer-event': {
      const w = header(MSG.PEER_EVENT).u8(m.event === 'up' ? 1 : 2)
      writePeer(w, m.peer)
      if (m.event === 'down') w.u8(PEER_DOWN_REASONS.indexOf(m.reason ?? 'unknown'))
      return w.finish()
    }
    case 'ping':
      return header(MSG.PING).u32(m.seq).finish()
    case 'pong':
      return header(MSG.PONG).u32(m.seq).finish()
    case 'bye':
      return header(MSG.BYE).finish()
    case 'introduce':
      return header(MSG.INTRODUCE).u32(m.reqId).str8(m.target).u8(VIAS.indexOf(m.via)).finish()
    case 'introduction': {
      const w = header(MSG.INTRODUCTION).u32(m.reqId).bytes(fixed(m.introId, INTRO_ID_BYTES, 'introId')).bytes(fixed(m.punchKey, DATAGRAM_KEY_BYTES, 'punchKey'))
      w.u8((m.initiator ? 1 : 0) | (m.relay ? 2 : 0)).u8(VIAS.indexOf(m.via))
      writePeer(w, m.peer)
      if (m.relay) writeEndpoint(w, m.relay)
      return w.finish()
    }
    case 'relay-ok':
      return header(MSG.RELAY_OK).finish()
    case 'relay-data':
      return Buffer.concat([RELAY_DATA_HEADER, m.data])
    case 'relay-end':
      return header(MSG.RELAY_END).str8(truncateUtf8(m.code, 64)).str8(truncateUtf8(m.message, 255)).finish()
    case 'release':
      return header(MSG.RELEASE).u32(m.reqId).str8(m.name).finish()
    case 'ok':
      return header(MSG.OK).u32(m.reqId).finish()
  }
}

export function decode(buf: Uint8Array): Message {
  const r = new Reader(buf)
  if (r.u8('magic') !== MAGIC_0 || r.u8('magic') !== MAGIC_1) throw new ProtocolError('BAD_REQUEST', 'bad magic')
  const version = r.u8('version')
  if (version !== PROTOCOL_VERSION) {
    throw new ProtocolError('BAD_VERSION', `protocol version ${version} is not supported (this build speaks ${PROTOCOL_VERSION})`)
  }
  const type = r.u8('type')
  switch (type) {
    case MSG.CHALLENGE:
      return { type: 'challenge', nonce: r.bytes(NONCE_BYTES, 'nonce'), serverTime: r.u48('serverTime') }
    case MSG.SECURE:
      return { type: 'secure' }
    case MSG.REGISTER: {
      const nonce = r.bytes(NONCE_BYTES, 'nonce')
      const time = r.u48('time')
      const publicKey = r.bytes(KEY_BYTES, 'publicKey')
      const name = r.str8('name')
      const tcpPort = r.u16('tcpPort')
      const nat = enumAt(NAT_VERDICTS, r.u8('nat'), 'nat verdict')
      const lan = readEndpoints(r)
      const proof = r.bytes(r.u8('proof length'), 'proof')
      const signed = buf.subarray(0, r.position)
      const signature = r.bytes(SIGNATURE_BYTES, 'signature')
      return { type: 'register', nonce, time, publicKey, name, tcpPort, nat, lan, proof, signature, signed }
    }
    case MSG.REGISTER_ACK: {
      const token = r.bytes(TOKEN_BYTES, 'token')
      const udpKey = r.bytes(DATAGRAM_KEY_BYTES, 'udpKey')
      const observed = readEndpoint(r)
      const heartbeatMs = r.u32('heartbeatMs')
      const peerTimeoutMs = r.u32('peerTimeoutMs')
      // An extension, not a field: a frame that ends here is an older server's (trailing
      // bytes that are no IPv6 endpoint are tolerated as before).
      const server6 = r.remaining >= SERVER6_BYTES && buf[r.position] === 6 ? readEndpoint(r) : null
      // features follow server6, or its family 0 when the server has no IPv6 socket.
      const noServer6 = !server6 && r.remaining >= 2 && buf[r.position] === 0
      if (noServer6) r.u8('server6 family')
      const features = (server6 || noServer6) && r.remaining >= 1 ? r.u8('features') : undefined
      return { type: 'register-ack', token, udpKey, observed, heartbeatMs, peerTimeoutMs, ...(server6 ? { server6 } : {}), ...(features !== undefined ? { features } : {}) }
    }
    case MSG.ERROR:
      return { type: 'error', reqId: r.u32('reqId'), code: r.str8('code'), message: r.str8('message') }
    case MSG.LIST:
      return { type: 'list', reqId: r.u32('reqId') }
    case MSG.LOOKUP:
      return { type: 'lookup', reqId: r.u32('reqId'), publicKey: r.bytes(KEY_BYTES, 'publicKey') }
    case MSG.PEERS: {
      const reqId = r.u32('reqId')
      const count = r.u16('count')
      const peers: PeerRecord[] = []
      for (let i = 0; i < count; i++) peers.push(readPeer(r))
      return { type: 'peers', reqId, peers }
    }
    case MSG.PEER_EVENT: {
      const ev = r.u8('event')
      if (ev !== 1 && ev !== 2) throw new ProtocolError('BAD_REQUEST', `unknown peer event ${ev}`)
      const peer = readPeer(r)
      if (ev === 1) return { type: 'peer-event', event: 'up', peer }
      // An unknown reason (a newer server) reads as 'unknown', not as an error.
      const reason = r.remaining > 0 ? (PEER_DOWN_REASONS[r.u8('reason')] ?? 'unknown') : 'unknown'
      return { type: 'peer-event', event: 'down', peer, reason }
    }
    case MSG.PING:
      return { type: 'ping', seq: r.u32('seq') }
    case MSG.PONG:
      return { type: 'pong', seq: r.u32('seq') }
    case MSG.BYE:
      return { type: 'bye' }
    case MSG.INTRODUCE:
      return { type: 'introduce', reqId: r.u32('reqId'), target: r.str8('target'), via: enumAt(VIAS, r.u8('via'), 'via') }
    case MSG.INTRODUCTION: {
      const reqId = r.u32('reqId')
      const introId = r.bytes(INTRO_ID_BYTES, 'introId')
      const punchKey = r.bytes(DATAGRAM_KEY_BYTES, 'punchKey')
      const flags = r.u8('flags')
      const via = enumAt(VIAS, r.u8('via'), 'via')
      const peer = readPeer(r)
      const relay = flags & 2 ? readEndpoint(r) : null
      return { type: 'introduction', reqId, introId, punchKey, initiator: (flags & 1) === 1, via, peer, ...(relay ? { relay } : {}) }
    }
    case MSG.RELAY: {
      const introId = r.bytes(INTRO_ID_BYTES, 'introId')
      const initiator = r.u8('initiator') === 1
      const signature = r.bytes(SIGNATURE_BYTES, 'signature')
      return { type: 'relay', introId, initiator, signature }
    }
    case MSG.RELAY_OK:
      return { type: 'relay-ok' }
    case MSG.RELAY_DATA:
      return { type: 'relay-data', data: r.bytes(r.remaining) }
    case MSG.RELAY_END:
      return { type: 'relay-end', code: r.str8('code'), message: r.str8('message') }
    case MSG.RELEASE:
      return { type: 'release', reqId: r.u32('reqId'), name: r.str8('name') }
    case MSG.OK:
      return { type: 'ok', reqId: r.u32('reqId') }
    default: {
      const datagram = decodeDatagram(type, r, buf)
      if (datagram) return datagram
      throw new ProtocolError('BAD_REQUEST', `unknown message type ${type}`)
    }
  }
}
