/**
 * The sealed UDP messages of the rendezvous protocol (rendezvous.ts has the header and the
 * rest): the only ones accepted over UDP besides STUN. Each is sealed with a key that
 * travelled inside a Noise session (seal.ts), since it cannot travel inside one itself.
 * Bodies (u32 big-endian; ep = endpoint.ts; tag = 16-byte keyed BLAKE2b over every byte
 * of the frame before it):
 *
 *   HEARTBEAT     token[16] seq u32 tag[16] zeros[8]   padding: the ack is never larger
 *   HEARTBEAT_ACK seq u32 status u8 observed ep tag[16]
 *   PROBE         introId[16] streamId u32 seq u32 flags u8 (1 = ack) tag[16]
 *                 agent <-> agent while punching, sealed with the punch key that only
 *                 the two agents and the server know, so a forged probe cannot pick the
 *                 path. An ack is the same size as the probe it answers.
 */
import { fixed, type Reader, type Writer } from './bytes.js'
import { readEndpoint, writeEndpoint, type Endpoint } from './endpoint.js'
import { ProtocolError } from './errors.js'
import { header, INTRO_ID_BYTES, MSG, TAG_BYTES, TOKEN_BYTES } from './rendezvous-wire.js'
import { tag, timingSafeEqual } from './seal.js'

const HEARTBEAT_PADDING = 8

/** ok: the endpoint is the one on record; moved: it changed and the server now holds the new one. */
export type HeartbeatStatus = 'ok' | 'moved'
// Index 1 was version 1's 'unknown' (an unauthenticated answer a spoofer could forge).
const HEARTBEAT_STATUSES: readonly (HeartbeatStatus | null)[] = ['ok', null, 'moved']

/** A sealed datagram as decoded: the bytes its tag covers, and the tag (check with opened()). */
export interface Sealed {
  covered: Uint8Array
  tag: Uint8Array
}

export type Datagram =
  | ({ type: 'heartbeat'; token: Uint8Array; seq: number } & Sealed)
  | ({ type: 'heartbeat-ack'; seq: number; status: HeartbeatStatus; observed: Endpoint | null } & Sealed)
  | ({ type: 'probe'; introId: Uint8Array; streamId: number; seq: number; ack: boolean } & Sealed)

/** A sealed message as callers build it: the fields and the key that seals it. */
type ToSeal<T> = Omit<T, 'covered' | 'tag'> & { key: Uint8Array }

export type OutgoingDatagram = ToSeal<Extract<Datagram, { type: 'heartbeat' }>> | ToSeal<Extract<Datagram, { type: 'heartbeat-ack' }>> | ToSeal<Extract<Datagram, { type: 'probe' }>>

/** Whether a sealed datagram's tag is the one `key` makes (constant time). */
export function opened(msg: Sealed, key: Uint8Array): boolean {
  return msg.tag.length === TAG_BYTES && timingSafeEqual(tag(key, msg.covered), msg.tag)
}

export function encodeDatagram(m: OutgoingDatagram): Buffer {
  switch (m.type) {
    case 'heartbeat':
      return sealed(header(MSG.HEARTBEAT).bytes(fixed(m.token, TOKEN_BYTES, 'token')).u32(m.seq), m.key).zeros(HEARTBEAT_PADDING).finish()
    case 'heartbeat-ack': {
      const w = header(MSG.HEARTBEAT_ACK).u32(m.seq).u8(HEARTBEAT_STATUSES.indexOf(m.status))
      writeEndpoint(w, m.observed)
      return sealed(w, m.key).finish()
    }
    case 'probe':
      return sealed(header(MSG.PROBE).bytes(fixed(m.introId, INTRO_ID_BYTES, 'introId')).u32(m.streamId).u32(m.seq).u8(m.ack ? 1 : 0), m.key).finish()
  }
}

/** The body of a sealed message of `type` (its header read from `r`); null for another type. */
export function decodeDatagram(type: number, r: Reader, buf: Uint8Array): Datagram | null {
  switch (type) {
    case MSG.HEARTBEAT: {
      const token = r.bytes(TOKEN_BYTES, 'token')
      const seq = r.u32('seq')
      const seal = readSeal(r, buf)
      r.bytes(HEARTBEAT_PADDING, 'heartbeat padding')
      return { type: 'heartbeat', token, seq, ...seal }
    }
    case MSG.HEARTBEAT_ACK: {
      const seq = r.u32('seq')
      const status = HEARTBEAT_STATUSES[r.u8('status')]
      if (!status) throw new ProtocolError('BAD_REQUEST', 'unknown heartbeat status')
      const observed = readEndpoint(r)
      return { type: 'heartbeat-ack', seq, status, observed, ...readSeal(r, buf) }
    }
    case MSG.PROBE: {
      const introId = r.bytes(INTRO_ID_BYTES, 'introId')
      const streamId = r.u32('streamId')
      const seq = r.u32('seq')
      const ack = (r.u8('flags') & 1) === 1
      return { type: 'probe', introId, streamId, seq, ack, ...readSeal(r, buf) }
    }
    default:
      return null
  }
}

/** Appends the tag of everything written so far. */
function sealed(w: Writer, key: Uint8Array): Writer {
  return w.bytes(tag(key, w.peek()))
}

/** Reads a tag; `covered` is every byte of the frame before it. */
function readSeal(r: Reader, buf: Uint8Array): Sealed {
  const covered = buf.subarray(0, r.position)
  return { covered, tag: r.bytes(TAG_BYTES, 'tag') }
}
