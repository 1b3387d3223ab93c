/**
 * What every rendezvous frame shares (rendezvous.ts draws the layout): the header's magic,
 * version and type numbers, and the sizes of the fixed fields. The codecs of the message
 * families (rendezvous.ts, rendezvous-datagrams.ts, peer-record.ts) build on it.
 */
import { Writer } from './bytes.js'
import { SEAL_TAG_BYTES } from './seal.js'

export const MAGIC_0 = 0x4e
export const MAGIC_1 = 0x44
export const PROTOCOL_VERSION = 2
export const NONCE_BYTES = 32
export const TOKEN_BYTES = 16
export const KEY_BYTES = 32
export const SIGNATURE_BYTES = 64
export const INTRO_ID_BYTES = 16
/** A datagram key (heartbeats: REGISTER_ACK's udpKey; probes: the introduction's punchKey). */
export const DATAGRAM_KEY_BYTES = 32
/** The keyed BLAKE2b tag that seals a datagram (seal.ts). */
export const TAG_BYTES = SEAL_TAG_BYTES
/** Largest datagram we accept or send (fits a 1280-byte IPv6 minimum MTU). */
export const MAX_UDP_FRAME_BYTES = 1200

export const MSG = {
  // 1 was HELLO (version 1's UDP registration)
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
  RELAY_END: 20,
  SECURE: 21,
  RELEASE: 22,
  OK: 23,
  LOOKUP: 24
} as const

/** True when a datagram starts with our magic (cheap demultiplexing on a shared socket). */
export function isRendezvousFrame(buf: Uint8Array): boolean {
  return buf.length >= 4 && buf[0] === MAGIC_0 && buf[1] === MAGIC_1
}

/** The 4 bytes before a RELAY_DATA payload (hot path: no Writer). */
export const RELAY_DATA_HEADER = Buffer.from([MAGIC_0, MAGIC_1, PROTOCOL_VERSION, MSG.RELAY_DATA])

/** A Writer that holds a frame's header: magic, version, `type`. */
export function header(type: number): Writer {
  return new Writer().u8(MAGIC_0).u8(MAGIC_1).u8(PROTOCOL_VERSION).u8(type)
}
