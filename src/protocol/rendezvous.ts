/**
 * Rendezvous wire format: agent <-> natd-rendezvous, over UDP datagrams and over the TCP
 * control connection (where each message is prefixed by a u32 big-endian length).
 *
 *    0       1       2       3       4
 *   +-------+-------+-------+-------+--------------------------
 *   |  'N'  |  'D'  |  ver  | type  | body (per type, below)
 *   +-------+-------+-------+-------+--------------------------
 *
 * 'N' = 0x4E has the top bits 01, so a frame never looks like STUN (00, RFC 8489 §5) or
 * a UDX packet (0xFF), and all three share the agent's one UDP socket.
 *
 * Bodies (u16/u32/u48 big-endian; ep = endpoint.ts; str8 = u8 length + UTF-8):
 *   HELLO        zeros[92]                 padding: the CHALLENGE is never larger (no amplification)
 *   CHALLENGE    nonce[32] serverTime u48
 *   REGISTER     nonce[32] time u48 publicKey[32] name str8 tcpPort u16 nat u8
 *                lanCount u8 ep*lanCount proofLen u8 proof[proofLen] signature[64]
 *                (the signature covers every byte before it, header included)
 *   REGISTER_ACK token[16] observed ep heartbeatMs u32 peerTimeoutMs u32
 *   HEARTBEAT    token[16] seq u32 zeros[8] padding: the ack is never larger
 *   HEARTBEAT_ACK seq u32 status u8 observed ep
 *   ERROR        reqId u32 code str8 message str8
 *   LIST         reqId u32
 *   PEERS        reqId u32 count u16 peer*count
 *   PEER_EVENT   event u8 (1 up, 2 down) peer
 *   PING, PONG   seq u32
 *   BYE          (empty) the agent is leaving; the server drops it at once
 *   INTRODUCE    reqId u32 target str8 via u8
 *   INTRODUCTION reqId u32 introId[16] initiator u8 via u8 peer
 *   RELAY        introId[16] initiator u8      first frame on a new TCP connection (after
 *                                             the CHALLENGE): bind it to an introduction
 *   RELAY_OK     (empty)                       both sides bound: RELAY_DATA flows from now
 *   RELAY_DATA   bytes                         ciphertext; the server forwards it as it is
 *   RELAY_END    code str8 message str8        the server ends the relay (RELAY_LIMIT, …)
 *   PROBE        introId[16] streamId u32 seq u32 flags u8 (1 = ack) zeros[8]
 *                agent <-> agent while punching; only the two agents and the server
 *                know introId, so a stray or forged probe cannot pick the path. An ack
 *                is the same size as the probe it answers.
 *
 *   peer = publicKey[32] name str8 online u8 lastSeenAgoMs u32 nat u8
 *          udp ep tcp ep lanCount u8 ep*lanCount
 *
 * Decoders check lengths before slicing, tolerate trailing bytes, and throw only
 * ProtocolError.
 */
import { Reader, truncateUtf8, Writer } from './bytes.js'
import { readEndpoint, writeEndpoint, type Endpoint } from './endpoint.js'
import { ProtocolError } from './errors.js'

export const MAGIC_0 = 0x4e
export const MAGIC_1 = 0x44
export const PROTOCOL_VERSION = 1
export const NONCE_BYTES = 32
export const TOKEN_BYTES = 16
export const KEY_BYTES = 32
export const SIGNATURE_BYTES = 64
export const INTRO_ID_BYTES = 16
/** Largest frame on the TCP control connection; a larger length prefix closes it. */
export const MAX_TCP_FRAME_BYTES = 1024 * 1024
/** Largest datagram we accept or send (fits a 1280-byte IPv6 minimum MTU). */
export const MAX_UDP_FRAME_BYTES = 1200
export const MAX_LAN_ENDPOINTS = 8
/**
 * A PEERS reply lists at most this many peers (online first, then the most recently
 * seen): it must fit MAX_TCP_FRAME_BYTES and its u16 count, and a server with 100k
 * agents stalled ~300 ms building a full list (bench/rendezvous-capacity.ts).
 */
export const MAX_LIST_PEERS = 2048
const HELLO_PADDING = 92
const HEARTBEAT_PADDING = 8

export const MSG = {
  HELLO: 1,
  CHALLENGE: 2,
  REGISTER: 3,
  REGISTER_ACK: 4,
  HEARTBEAT: 5,
  HEARTBEAT_ACK: 6,
  ERROR: 7,
  LIST: 8,
  PEERS: 9,
  PEER_EVENT: 10,
  PING: 11,
  PONG: 12,
  BYE: 13,
  INTRODUCE: 14,
  INTRODUCTION: 15,
  PROBE: 16,
  RELAY: 17,
  RELAY_OK: 18,
  RELAY_DATA: 19,
  RELAY_END: 20
} as const
const PROBE_PADDING = 8

/** What the agent's netcheck concluded; peers use it to choose a punching strategy. */
export type NatVerdict = 'unknown' | 'easy' | 'hard' | 'none'
const NAT_VERDICTS: readonly NatVerdict[] = ['unknown', 'easy', 'hard', 'none']

/** Path preference an introduction asks for; 'direct' = UDP and TCP, never the relay (path upgrades). */
export type Via = 'auto' | 'udp' | 'tcp' | 'relay' | 'direct'
const VIAS: readonly Via[] = ['auto', 'udp', 'tcp', 'relay', 'direct']

export type HeartbeatStatus = 'ok' | 'unknown' | 'moved'
const HEARTBEAT_STATUSES: readonly HeartbeatStatus[] = ['ok', 'unknown', 'moved']

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
  | { type: 'hello' }
  | { type: 'challenge'; nonce: Uint8Array; serverTime: number }
  | ({ type: 'register'; signature: Uint8Array; signed: Uint8Array } & RegisterFields)
  | { type: 'register-ack'; token: Uint8Array; observed: Endpoint | null; heartbeatMs: number; peerTimeoutMs: number }
  | { type: 'heartbeat'; token: Uint8Array; seq: number }
  | { type: 'heartbeat-ack'; seq: number; status: HeartbeatStatus; observed: Endpoint | null }
  | { type: 'error'; reqId: number; code: string; message: string }
  | { type: 'list'; reqId: number }
  | { type: 'peers'; reqId: number; peers: PeerRecord[] }
  | { type: 'peer-event'; event: 'up' | 'down'; peer: PeerRecord }
  | { type: 'ping'; seq: number }
  | { type: 'pong'; seq: number }
  | { type: 'bye' }
  | { type: 'introduce'; reqId: number; target: string; via: Via }
  | { type: 'introduction'; reqId: number; introId: Uint8Array; initiator: boolean; via: Via; peer: PeerRecord }
  | { type: 'probe'; introId: Uint8Array; streamId: number; seq: number; ack: boolean }
  | { type: 'relay'; introId: Uint8Array; initiator: boolean }
  | { type: 'relay-ok' }
  | { type: 'relay-data'; data: Uint8Array }
  | { type: 'relay-end'; code: string; message: string }

/** Messages as callers build them: REGISTER is built by encodeRegister (it needs a signature). */
export type OutgoingMessage = Exclude<Message, { type: 'register' }>

/** True when a datagram starts with our magic (cheap demultiplexing on a shared socket). */
export function isRendezvousFrame(buf: Uint8Array): boolean {
  return buf.length >= 4 && buf[0] === MAGIC_0 && buf[1] === MAGIC_1
}

/** The 4 bytes before a RELAY_DATA payload (hot path: no Writer). */
export const RELAY_DATA_HEADER = Buffer.from([MAGIC_0, MAGIC_1, PROTOCOL_VERSION, MSG.RELAY_DATA])

function header(type: number): Writer {
  return new Writer().u8(MAGIC_0).u8(MAGIC_1).u8(PROTOCOL_VERSION).u8(type)
}

function writePeer(w: Writer, p: PeerRecord): void {
  w.bytes(fixed(p.publicKey, KEY_BYTES, 'publicKey')).str8(p.name).u8(p.online ? 1 : 0).u32(Math.min(p.lastSeenAgoMs, 0xffffffff))
  w.u8(NAT_VERDICTS.indexOf(p.nat))
  writeEndpoint(w, p.udp)
  writeEndpoint(w, p.tcp)
  const lan = p.lan.slice(0, MAX_LAN_ENDPOINTS)
  w.u8(lan.length)
  for (const ep of lan) writeEndpoint(w, ep)
}

function readPeer(r: Reader): PeerRecord {
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

function readEndpoints(r: Reader): Endpoint[] {
  const n = r.u8('endpoint count')
  if (n > MAX_LAN_ENDPOINTS) throw new ProtocolError('BAD_REQUEST', `too many endpoints (${n})`)
  const out: Endpoint[] = []
  for (let i = 0; i < n; i++) {
    const ep = readEndpoint(r)
    if (ep) out.push(ep)
  }
  return out
}

function enumAt<T>(values: readonly T[], index: number, what: string): T {
  const v = values[index]
  if (v === undefined) throw new ProtocolError('BAD_REQUEST', `unknown ${what} ${index}`)
  return v
}

function fixed(b: Uint8Array, n: number, what: string): Uint8Array {
  if (b.length !== n) throw new RangeError(`${what} must be ${n} bytes`)
  return b
}

/** The REGISTER frame up to (not including) its signature: the bytes the agent signs. */
export function encodeRegisterUnsigned(f: RegisterFields): Buffer {
  const w = header(MSG.REGISTER)
  w.bytes(fixed(f.nonce, NONCE_BYTES, 'nonce')).u48(f.time).bytes(fixed(f.publicKey, KEY_BYTES, 'publicKey'))
  w.str8(f.name).u16(f.tcpPort).u8(NAT_VERDICTS.indexOf(f.nat))
  const lan = f.lan.slice(0, MAX_LAN_ENDPOINTS)
  w.u8(lan.length)
  for (const ep of lan) writeEndpoint(w, ep)
  w.u8(f.proof.length).bytes(f.proof)
  return w.finish()
}

export function encodeRegister(unsigned: Uint8Array, signature: Uint8Array): Buffer {
  return Buffer.concat([unsigned, fixed(signature, SIGNATURE_BYTES, 'signature')])
}

export function encode(m: OutgoingMessage): Buffer {
  switch (m.type) {
    case 'hello':
      return header(MSG.HELLO).zeros(HELLO_PADDING).finish()
    case 'challenge':
      return header(MSG.CHALLENGE).bytes(fixed(m.nonce, NONCE_BYTES, 'nonce')).u48(m.serverTime).finish()
    case 'register-ack': {
      const w = header(MSG.REGISTER_ACK).bytes(fixed(m.token, TOKEN_BYTES, 'token'))
      writeEndpoint(w, m.observed)
      return w.u32(m.heartbeatMs).u32(m.peerTimeoutMs).finish()
    }
    case 'heartbeat':
      return header(MSG.HEARTBEAT).bytes(fixed(m.token, TOKEN_BYTES, 'token')).u32(m.seq).zeros(HEARTBEAT_PADDING).finish()
    case 'heartbeat-ack': {
      const w = header(MSG.HEARTBEAT_ACK).u32(m.seq).u8(HEARTBEAT_STATUSES.indexOf(m.status))
      writeEndpoint(w, m.observed)
      return w.finish()
    }
    case 'error':
      return header(MSG.ERROR).u32(m.reqId).str8(truncateUtf8(m.code, 64)).str8(truncateUtf8(m.message, 255)).finish()
    case 'list':
      return header(MSG.LIST).u32(m.reqId).finish()
    case 'peers': {
      const w = header(MSG.PEERS).u32(m.reqId).u16(m.peers.length)
      for (const p of m.peers) writePeer(w, p)
      return w.finish()
    }
    case 'peer-event': {
      const w = header(MSG.PEER_EVENT).u8(m.event === 'up' ? 1 : 2)
      writePeer(w, m.peer)
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
      const w = header(MSG.INTRODUCTION).u32(m.reqId).bytes(fixed(m.introId, INTRO_ID_BYTES, 'introId'))
      w.u8(m.initiator ? 1 : 0).u8(VIAS.indexOf(m.via))
      writePeer(w, m.peer)
      return w.finish()
    }
    case 'relay':
      return header(MSG.RELAY).bytes(fixed(m.introId, INTRO_ID_BYTES, 'introId')).u8(m.initiator ? 1 : 0).finish()
    case 'relay-ok':
      return header(MSG.RELAY_OK).finish()
    case 'relay-data':
      return Buffer.concat([RELAY_DATA_HEADER, m.data])
    case 'relay-end':
      return header(MSG.RELAY_END).str8(truncateUtf8(m.code, 64)).str8(truncateUtf8(m.message, 255)).finish()
    case 'probe':
      return header(MSG.PROBE).bytes(fixed(m.introId, INTRO_ID_BYTES, 'introId')).u32(m.streamId).u32(m.seq).u8(m.ack ? 1 : 0).zeros(PROBE_PADDING).finish()
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
    case MSG.HELLO:
      r.bytes(HELLO_PADDING, 'hello padding')
      return { type: 'hello' }
    case MSG.CHALLENGE:
      return { type: 'challenge', nonce: r.bytes(NONCE_BYTES, 'nonce'), serverTime: r.u48('serverTime') }
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
      const observed = readEndpoint(r)
      return { type: 'register-ack', token, observed, heartbeatMs: r.u32('heartbeatMs'), peerTimeoutMs: r.u32('peerTimeoutMs') }
    }
    case MSG.HEARTBEAT: {
      const token = r.bytes(TOKEN_BYTES, 'token')
      const seq = r.u32('seq')
      r.bytes(HEARTBEAT_PADDING, 'heartbeat padding')
      return { type: 'heartbeat', token, seq }
    }
    case MSG.HEARTBEAT_ACK: {
      const seq = r.u32('seq')
      const status = enumAt(HEARTBEAT_STATUSES, r.u8('status'), 'heartbeat status')
      return { type: 'heartbeat-ack', seq, status, observed: readEndpoint(r) }
    }
    case MSG.ERROR:
      return { type: 'error', reqId: r.u32('reqId'), code: r.str8('code'), message: r.str8('message') }
    case MSG.LIST:
      return { type: 'list', reqId: r.u32('reqId') }
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
      return { type: 'peer-event', event: ev === 1 ? 'up' : 'down', peer: readPeer(r) }
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
      const initiator = r.u8('initiator') === 1
      const via = enumAt(VIAS, r.u8('via'), 'via')
      return { type: 'introduction', reqId, introId, initiator, via, peer: readPeer(r) }
    }
    case MSG.RELAY:
      return { type: 'relay', introId: r.bytes(INTRO_ID_BYTES, 'introId'), initiator: r.u8('initiator') === 1 }
    case MSG.RELAY_OK:
      return { type: 'relay-ok' }
    case MSG.RELAY_DATA:
      return { type: 'relay-data', data: r.bytes(r.remaining) }
    case MSG.RELAY_END:
      return { type: 'relay-end', code: r.str8('code'), message: r.str8('message') }
    case MSG.PROBE: {
      const introId = r.bytes(INTRO_ID_BYTES, 'introId')
      const streamId = r.u32('streamId')
      const seq = r.u32('seq')
      const ack = (r.u8('flags') & 1) === 1
      r.bytes(PROBE_PADDING, 'probe padding')
      return { type: 'probe', introId, streamId, seq, ack }
    }
    default:
      throw new ProtocolError('BAD_REQUEST', `unknown message type ${type}`)
  }
}


/**
 * Splits a TCP byte stream into frames (u32 big-endian length, then the frame).
 * Throws ProtocolError when a length exceeds MAX_TCP_FRAME_BYTES: the caller closes.
 */
export class FrameSplitter {
  private pending: Buffer = Buffer.alloc(0)

  push(chunk: Buffer): Buffer[] {
    this.pending = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk
    const frames: Buffer[] = []
    while (this.pending.length >= 4) {
      const len = this.pending.readUInt32BE(0)
      if (len > MAX_TCP_FRAME_BYTES) throw new ProtocolError('BAD_REQUEST', `frame of ${len} bytes exceeds ${MAX_TCP_FRAME_BYTES}`)
      if (this.pending.length < 4 + len) break
      frames.push(this.pending.subarray(4, 4 + len))
      this.pending = this.pending.subarray(4 + len)
    }
    return frames
  }
}

export function frame(msg: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(4 + msg.length)
  out.writeUInt32BE(msg.length, 0)
  out.set(msg, 4)
  return out
}
