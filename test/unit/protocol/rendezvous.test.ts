// The rendezvous wire format, version 2 (src/protocol/rendezvous.ts): golden bytes
// written by hand from the layout comments of that file, rendezvous-datagrams.ts and
// peer-record.ts (the seal tags were computed apart, with Python's
// hashlib.blake2b(key=KEY, digest_size=16), so a seal.ts that ignored its key or hashed
// the wrong bytes fails here), round trips for every
// message type, seals that open only with their key, the anti-amplification size rules,
// and fuzzing that may only throw ProtocolError.
import { describe, expect, it, vi } from 'vitest'
import { ProtocolError } from '../../../src/protocol/errors.js'
import { generateKeyPair, sign, verify } from '../../../src/protocol/identity.js'
import {
  decode,
  encode,
  encodeRegister,
  encodeRegisterUnsigned,
  encodeRelay,
  frame,
  FrameSplitter,
  isRendezvousFrame,
  MAX_LAN_ENDPOINTS,
  MAX_TCP_FRAME_BYTES,
  type Message,
  opened,
  type OutgoingMessage,
  type PeerRecord,
  type RegisterFields,
  relaySigned
} from '../../../src/protocol/rendezvous.js'
import { errorCode, fuzzEscapes, hex, prng, randBuf, randInt, seq } from '../helpers.js'

const TOKEN = seq(0xa0, 16)
const NONCE = seq(0x00, 32)
const TIME = 0x010203040506
/** The key that seals datagrams in these tests (a udpKey or a punchKey). */
const KEY = seq(0x60, 32)
const OTHER_KEY = seq(0x61, 32)
const UDP_KEY = seq(0x20, 32)
const PUNCH_KEY = seq(0x30, 32)

/** Replaces byte arrays by hex so decoded frames (Buffer views) compare to what was encoded. */
function norm(x: unknown): unknown {
  if (x instanceof Uint8Array) return Buffer.from(x).toString('hex')
  if (Array.isArray(x)) return x.map(norm)
  if (x && typeof x === 'object') return Object.fromEntries(Object.entries(x).map(([k, v]) => [k, norm(v)]))
  return x
}

/** A message without what sealing adds or needs (key; covered, tag), for comparing fields. */
function fields(m: object): object {
  const { key: _k, covered: _c, tag: _t, ...rest } = m as Record<string, unknown>
  return rest
}

function isSealed(m: Message): m is Extract<Message, { type: 'heartbeat' | 'heartbeat-ack' | 'probe' }> {
  return m.type === 'heartbeat' || m.type === 'heartbeat-ack' || m.type === 'probe'
}

const SEALED_TYPES = new Set(['heartbeat', 'heartbeat-ack', 'probe'])

const peerFull: PeerRecord = {
  publicKey: seq(0x10, 32),
  name: 'alice',
  online: true,
  lastSeenAgoMs: 1234,
  nat: 'easy',
  udp: { host: '203.0.113.5', port: 41641 },
  tcp: { host: '2001:db8::5', port: 443 },
  lan: [
    { host: '192.168.1.10', port: 41641 },
    { host: 'fe80::1', port: 1 }
  ]
}

const peerOffline: PeerRecord = {
  publicKey: seq(0x80, 32),
  name: 'bob-2_x',
  online: false,
  lastSeenAgoMs: 0xffffffff,
  nat: 'hard',
  udp: null,
  tcp: null,
  lan: []
}

const registerFields: RegisterFields = {
  nonce: NONCE,
  time: TIME,
  publicKey: seq(0x40, 32),
  name: 'bob',
  tcpPort: 41641,
  nat: 'none',
  lan: [{ host: '10.0.0.2', port: 41641 }],
  proof: Buffer.alloc(0)
}

/** One of every message callers can encode (REGISTER and RELAY are built apart: they need a signature). */
const SAMPLES: OutgoingMessage[] = [
  { type: 'challenge', nonce: NONCE, serverTime: TIME },
  { type: 'secure' },
  { type: 'register-ack', token: TOKEN, udpKey: UDP_KEY, observed: { host: '198.51.100.7', port: 65535 }, heartbeatMs: 20_000, peerTimeoutMs: 60_000 },
  { type: 'register-ack', token: TOKEN, udpKey: UDP_KEY, observed: { host: '2001:db8:1234:5678:11:2233:4455:6677', port: 1 }, heartbeatMs: 1, peerTimeoutMs: 0xffffffff },
  { type: 'register-ack', token: TOKEN, udpKey: UDP_KEY, observed: null, heartbeatMs: 0, peerTimeoutMs: 0 },
  // server6 (--host6) trails the frame: an older agent ignores it
  { type: 'register-ack', token: TOKEN, udpKey: UDP_KEY, observed: { host: '198.51.100.7', port: 4000 }, heartbeatMs: 20_000, peerTimeoutMs: 60_000, server6: { host: '2001:db8::1', port: 3478 } },
  // features (LOOKUP) after server6, or after its family 0 when the server has none
  { type: 'register-ack', token: TOKEN, udpKey: UDP_KEY, observed: { host: '198.51.100.7', port: 4000 }, heartbeatMs: 20_000, peerTimeoutMs: 60_000, server6: { host: '2001:db8::1', port: 3478 }, features: 1 },
  { type: 'register-ack', token: TOKEN, udpKey: UDP_KEY, observed: { host: '198.51.100.7', port: 4000 }, heartbeatMs: 20_000, peerTimeoutMs: 60_000, features: 1 },
  { type: 'heartbeat', token: TOKEN, seq: 0xffffffff, key: KEY },
  { type: 'heartbeat', token: TOKEN, seq: 0, key: OTHER_KEY },
  { type: 'heartbeat-ack', seq: 7, status: 'ok', observed: { host: '192.0.2.1', port: 32853 }, key: KEY },
  { type: 'heartbeat-ack', seq: 8, status: 'moved', observed: { host: '::1', port: 9 }, key: KEY },
  { type: 'heartbeat-ack', seq: 9, status: 'moved', observed: null, key: KEY },
  { type: 'error', reqId: 3, code: 'NAME_TAKEN', message: 'the name alice is held by another key' },
  { type: 'error', reqId: 0, code: '', message: '' },
  { type: 'list', reqId: 42 },
  { type: 'lookup', reqId: 43, publicKey: KEY },
  { type: 'peers', reqId: 42, peers: [peerFull, peerOffline] },
  { type: 'peers', reqId: 43, peers: [] },
  { type: 'peer-event', event: 'up', peer: peerFull },
  { type: 'peer-event', event: 'down', peer: peerOffline, reason: 'expired' },
  { type: 'ping', seq: 1 },
  { type: 'pong', seq: 0x80000000 },
  { type: 'bye' },
  { type: 'introduce', reqId: 5, target: 'bob', via: 'tcp' },
  { type: 'introduce', reqId: 6, target: 'abcdefgh', via: 'auto' },
  { type: 'introduce', reqId: 1, target: 'bob', via: 'direct' },
  { type: 'introduction', reqId: 5, introId: seq(0xc0, 16), punchKey: PUNCH_KEY, initiator: true, via: 'udp', peer: peerFull },
  { type: 'introduction', reqId: 0, introId: seq(0xd0, 16), punchKey: PUNCH_KEY, initiator: false, via: 'relay', peer: peerOffline },
  { type: 'probe', introId: seq(0xe0, 16), streamId: 1, seq: 2, ack: false, key: KEY },
  { type: 'probe', introId: seq(0xe0, 16), streamId: 0xffffffff, seq: 0, ack: true, key: KEY },
  { type: 'relay-ok' },
  { type: 'relay-data', data: seq(1, 40) },
  { type: 'relay-data', data: Buffer.alloc(0) },
  { type: 'relay-end', code: 'RELAY_LIMIT', message: 'limit of 1024 bytes' },
  { type: 'release', reqId: 77, name: 'alice' },
  { type: 'ok', reqId: 0xffffffff }
]

const SEALED_SAMPLES = SAMPLES.filter((m): m is Extract<OutgoingMessage, { key: Uint8Array }> => SEALED_TYPES.has(m.type))

function signedRegister(fields: RegisterFields = registerFields): { bytes: Buffer; unsigned: Buffer; publicKey: Buffer } {
  const kp = generateKeyPair()
  const unsigned = encodeRegisterUnsigned({ ...fields, publicKey: kp.publicKey })
  return { bytes: encodeRegister(unsigned, sign(unsigned, kp.secretKey)), unsigned, publicKey: kp.publicKey }
}

function signedRelay(): { bytes: Buffer; publicKey: Buffer } {
  const kp = generateKeyPair()
  const introId = seq(0xe0, 16)
  return { bytes: encodeRelay(introId, true, sign(relaySigned(NONCE, introId, true), kp.secretKey)), publicKey: kp.publicKey }
}

/** Every kind of frame on the wire, encoded. */
function allFrames(): Buffer[] {
  return [...SAMPLES.map((m) => encode(m)), signedRegister().bytes, signedRelay().bytes]
}

describe('rendezvous codec: golden bytes', () => {
  // Each expected frame is written from the layout comment, field by field (`|` separates
  // fields). The tags (the last 16 bytes, or before the zeros of a HEARTBEAT) are the
  // BLAKE2b-128 of the bytes before them keyed with KEY = 60 61 … 7f.
  const golden: [string, OutgoingMessage, string][] = [
    [
      'CHALLENGE',
      { type: 'challenge', nonce: NONCE, serverTime: TIME },
      '4e 44 02 02 | 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f | 01 02 03 04 05 06'
    ],
    ['SECURE', { type: 'secure' }, '4e 44 02 15'],
    [
      'REGISTER_ACK (IPv4)',
      { type: 'register-ack', token: TOKEN, udpKey: UDP_KEY, observed: { host: '127.0.0.1', port: 8080 }, heartbeatMs: 20_000, peerTimeoutMs: 60_000 },
      '4e 44 02 04 | a0a1a2a3a4a5a6a7a8a9aaabacadaeaf | 202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f' +
        ' | 04 7f000001 1f90 | 00004e20 | 0000ea60'
    ],
    [
      'REGISTER_ACK (IPv6)',
      { type: 'register-ack', token: TOKEN, udpKey: UDP_KEY, observed: { host: '2001:db8::1', port: 443 }, heartbeatMs: 1, peerTimeoutMs: 2 },
      '4e 44 02 04 | a0a1a2a3a4a5a6a7a8a9aaabacadaeaf | 202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f' +
        ' | 06 20010db8000000000000000000000001 01bb | 00000001 | 00000002'
    ],
    [
      'REGISTER_ACK (with server6, trailing)',
      { type: 'register-ack', token: TOKEN, udpKey: UDP_KEY, observed: { host: '127.0.0.1', port: 8080 }, heartbeatMs: 20_000, peerTimeoutMs: 60_000, server6: { host: '2001:db8::1', port: 3478 } },
      '4e 44 02 04 | a0a1a2a3a4a5a6a7a8a9aaabacadaeaf | 202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f' +
        ' | 04 7f000001 1f90 | 00004e20 | 0000ea60 | 06 20010db8000000000000000000000001 0d96'
    ],
    [
      'REGISTER_ACK (features, no server6)',
      { type: 'register-ack', token: TOKEN, udpKey: UDP_KEY, observed: { host: '127.0.0.1', port: 8080 }, heartbeatMs: 20_000, peerTimeoutMs: 60_000, features: 1 },
      '4e 44 02 04 | a0a1a2a3a4a5a6a7a8a9aaabacadaeaf | 202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f' +
        ' | 04 7f000001 1f90 | 00004e20 | 0000ea60 | 00 | 01'
    ],
    [
      'HEARTBEAT',
      { type: 'heartbeat', token: TOKEN, seq: 0x01020304, key: KEY },
      '4e 44 02 05 | a0a1a2a3a4a5a6a7a8a9aaabacadaeaf | 01020304 | 1c5ffc0f4a3c4c754ddc158b057a364b | 0000000000000000'
    ],
    [
      'HEARTBEAT_ACK (ok, IPv4)',
      { type: 'heartbeat-ack', seq: 7, status: 'ok', observed: { host: '192.0.2.1', port: 32853 }, key: KEY },
      '4e 44 02 06 | 00000007 | 00 | 04 c0000201 8055 | 7d10696ac967c8b57a956d049b9dac81'
    ],
    [
      'HEARTBEAT_ACK (moved, IPv6)',
      { type: 'heartbeat-ack', seq: 9, status: 'moved', observed: { host: '2001:db8::1', port: 443 }, key: KEY },
      '4e 44 02 06 | 00000009 | 02 | 06 20010db8000000000000000000000001 01bb | c3dee52fb9b633850cbe8f4d2b97e8bb'
    ],
    [
      'HEARTBEAT_ACK (moved, no endpoint)',
      { type: 'heartbeat-ack', seq: 0xfffffffe, status: 'moved', observed: null, key: KEY },
      '4e 44 02 06 | fffffffe | 02 | 00 | 9e93a3219071aba64a1a00fea78ad635'
    ],
    ['ERROR', { type: 'error', reqId: 9, code: 'NAME_TAKEN', message: 'x' }, '4e 44 02 07 | 00000009 | 0a 4e414d455f54414b454e | 01 78'],
    ['LIST', { type: 'list', reqId: 42 }, '4e 44 02 08 | 0000002a'],
    ['LOOKUP', { type: 'lookup', reqId: 43, publicKey: seq(0x10, 32) }, '4e 44 02 18 | 0000002b | 101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f'],
    ['PEERS (empty)', { type: 'peers', reqId: 1, peers: [] }, '4e 44 02 09 | 00000001 | 0000'],
    [
      'PEER_EVENT (up)',
      { type: 'peer-event', event: 'up', peer: { ...peerFull, tcp: null, lan: [{ host: '192.168.1.10', port: 41641 }] } },
      '4e 44 02 0a | 01 | 101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f | 05 616c696365 | 01 | 000004d2 | 01' +
        ' | 04 cb007105 a2a9 | 00 | 01 04 c0a8010a a2a9'
    ],
    [
      'PEER_EVENT (down, bye)',
      { type: 'peer-event', event: 'down', peer: { ...peerFull, online: false, tcp: null, lan: [] }, reason: 'bye' },
      '4e 44 02 0a | 02 | 101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f | 05 616c696365 | 00 | 000004d2 | 01' +
        ' | 04 cb007105 a2a9 | 00 | 00 | 01'
    ],
    ['PING', { type: 'ping', seq: 1 }, '4e 44 02 0b | 00000001'],
    ['PONG', { type: 'pong', seq: 0xdeadbeef }, '4e 44 02 0c | deadbeef'],
    ['BYE', { type: 'bye' }, '4e 44 02 0d'],
    ['INTRODUCE', { type: 'introduce', reqId: 5, target: 'bob', via: 'tcp' }, '4e 44 02 0e | 00000005 | 03 626f62 | 02'],
    [
      'INTRODUCTION',
      { type: 'introduction', reqId: 5, introId: seq(0xc0, 16), punchKey: PUNCH_KEY, initiator: true, via: 'relay', peer: { ...peerOffline, name: 'b' } },
      '4e 44 02 0f | 00000005 | c0c1c2c3c4c5c6c7c8c9cacbcccdcecf | 303132333435363738393a3b3c3d3e3f404142434445464748494a4b4c4d4e4f' +
        ' | 01 | 03 | 808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f | 01 62 | 00 | ffffffff | 02 | 00 | 00 | 00'
    ],
    [
      'INTRODUCTION (responder, relay on another instance)',
      { type: 'introduction', reqId: 0, introId: seq(0xc0, 16), punchKey: PUNCH_KEY, initiator: false, via: 'relay', peer: { ...peerOffline, name: 'b' }, relay: { host: '10.0.0.3', port: 3478 } },
      '4e 44 02 0f | 00000000 | c0c1c2c3c4c5c6c7c8c9cacbcccdcecf | 303132333435363738393a3b3c3d3e3f404142434445464748494a4b4c4d4e4f' +
        ' | 02 | 03 | 808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f | 01 62 | 00 | ffffffff | 02 | 00 | 00 | 00 | 04 0a000003 0d96'
    ],
    [
      'PROBE (ack)',
      { type: 'probe', introId: seq(0xe0, 16), streamId: 0x0a0b0c0d, seq: 3, ack: true, key: KEY },
      '4e 44 02 10 | e0e1e2e3e4e5e6e7e8e9eaebecedeeef | 0a0b0c0d | 00000003 | 01 | 809643461e08366e6481cc0a2c45c7b0'
    ],
    ['RELAY_OK', { type: 'relay-ok' }, '4e 44 02 12'],
    ['RELAY_DATA', { type: 'relay-data', data: hex('cafe') }, '4e 44 02 13 | cafe'],
    ['RELAY_END', { type: 'relay-end', code: 'RELAY_LIMIT', message: 'x' }, '4e 44 02 14 | 0b 52454c41595f4c494d4954 | 01 78'],
    ['RELEASE', { type: 'release', reqId: 0x01020304, name: 'alice' }, '4e 44 02 16 | 01020304 | 05 616c696365'],
    ['OK', { type: 'ok', reqId: 0x2a }, '4e 44 02 17 | 0000002a']
  ]

  for (const [label, msg, expected] of golden) {
    it(`${label} encodes to the documented bytes and decodes back`, () => {
      expect(encode(msg).toString('hex')).toBe(hex(expected).toString('hex'))
      const decoded = decode(hex(expected))
      expect(norm(fields(decoded))).toEqual(norm(fields(msg)))
      if ('key' in msg) {
        if (!isSealed(decoded)) throw new Error(`decoded ${decoded.type}`)
        expect(opened(decoded, KEY)).toBe(true)
        expect(opened(decoded, OTHER_KEY)).toBe(false)
      }
    })
  }

  it('a sealed frame covers every byte before its tag, header included', () => {
    const m = decode(hex('4e 44 02 05 | a0a1a2a3a4a5a6a7a8a9aaabacadaeaf | 01020304 | 1c5ffc0f4a3c4c754ddc158b057a364b | 0000000000000000'))
    if (m.type !== 'heartbeat') throw new Error(`decoded ${m.type}`)
    expect(Buffer.from(m.covered).toString('hex')).toBe('4e440205a0a1a2a3a4a5a6a7a8a9aaabacadaeaf01020304')
    expect(Buffer.from(m.tag).toString('hex')).toBe('1c5ffc0f4a3c4c754ddc158b057a364b')
  })

  it('REGISTER: the signed part has the documented layout and the signature follows it', () => {
    const unsigned = encodeRegisterUnsigned(registerFields)
    const expected =
      '4e 44 02 03 | 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f | 010203040506' +
      ' | 404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f | 03 626f62 | a2a9 | 03' +
      ' | 01 04 0a000002 a2a9 | 00'
    expect(unsigned.toString('hex')).toBe(hex(expected).toString('hex'))
    const sig = seq(0x01, 64)
    const full = encodeRegister(unsigned, sig)
    expect(full.toString('hex')).toBe(hex(expected).toString('hex') + sig.toString('hex'))
  })

  it('RELAY: introId, side, then the signature; the signed bytes are nonce, introId and side', () => {
    const sig = seq(0x01, 64)
    const expected = '4e 44 02 11 | e0e1e2e3e4e5e6e7e8e9eaebecedeeef | 01 | ' + sig.toString('hex')
    expect(encodeRelay(seq(0xe0, 16), true, sig).toString('hex')).toBe(hex(expected).toString('hex'))
    expect(norm(decode(hex(expected)))).toEqual(norm({ type: 'relay', introId: seq(0xe0, 16), initiator: true, signature: sig }))
    expect(relaySigned(NONCE, seq(0xe0, 16), false).toString('hex')).toBe(
      hex('6e6174642072656c6179207632 | 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f | e0e1e2e3e4e5e6e7e8e9eaebecedeeef | 00').toString('hex') // 'natd relay v2', nonce, introId, side
    )
  })

  it('frame() prefixes a u32 big-endian length', () => {
    expect(frame(hex('0102 03')).toString('hex')).toBe('00000003010203')
    expect(frame(Buffer.alloc(0)).toString('hex')).toBe('00000000')
  })

  it('isRendezvousFrame recognises the magic and nothing shorter than a header', () => {
    expect(isRendezvousFrame(encode({ type: 'bye' }))).toBe(true)
    expect(isRendezvousFrame(hex('4e44 02'))).toBe(false)
    expect(isRendezvousFrame(hex('4e45 0201'))).toBe(false)
    expect(isRendezvousFrame(hex('ff44 0201'))).toBe(false)
  })
})

describe('rendezvous codec: round trips', () => {
  for (const msg of SAMPLES) {
    it(`${msg.type} ${JSON.stringify(norm(fields(msg))).slice(0, 60)}… survives encode/decode`, () => {
      expect(norm(fields(decode(encode(msg))))).toEqual(norm(fields(msg)))
    })
  }

  for (const msg of SEALED_SAMPLES) {
    it(`${msg.type} seq ${msg.seq}: opens with its key only, and not after any one bit of it or its tag flips`, () => {
      const bytes = encode(msg)
      const m = decode(bytes)
      if (!isSealed(m)) throw new Error(`decoded ${m.type}`)
      expect(opened(m, msg.key)).toBe(true)
      expect(opened(m, msg.key === KEY ? OTHER_KEY : KEY)).toBe(false)
      const flippedKey = Buffer.from(msg.key)
      flippedKey[31]! ^= 0x80
      expect(opened(m, flippedKey)).toBe(false)
      const sealedLength = m.covered.length + m.tag.length // a HEARTBEAT's zeros follow, unsealed
      for (let bit = 0; bit < sealedLength * 8; bit++) {
        const wire = Buffer.from(bytes)
        wire[bit >> 3]! ^= 1 << (bit & 7)
        let d: Message
        try {
          d = decode(wire)
        } catch (err) {
          expect(err, `bit ${bit}`).toBeInstanceOf(ProtocolError)
          continue
        }
        if (isSealed(d)) expect(opened(d, msg.key), `bit ${bit}`).toBe(false)
      }
    })
  }

  it('a tag cut short (or padded) never opens, even when its bytes are right', () => {
    const m = decode(encode({ type: 'probe', introId: seq(0, 16), streamId: 1, seq: 1, ack: false, key: KEY }))
    if (m.type !== 'probe') throw new Error(`decoded ${m.type}`)
    expect(opened(m, KEY)).toBe(true)
    expect(opened({ covered: m.covered, tag: m.tag.subarray(0, 15) }, KEY)).toBe(false)
    expect(opened({ covered: m.covered, tag: Buffer.concat([m.tag, hex('00')]) }, KEY)).toBe(false)
    expect(opened({ covered: m.covered, tag: Buffer.alloc(0) }, KEY)).toBe(false)
  })

  it('PEERS carries IPv4, IPv6 and absent endpoints exactly', () => {
    const decoded = decode(encode({ type: 'peers', reqId: 1, peers: [peerFull, peerOffline] }))
    if (decoded.type !== 'peers') throw new Error(`decoded ${decoded.type}`)
    const [a, b] = decoded.peers
    expect(a?.udp).toEqual({ host: '203.0.113.5', port: 41641 })
    expect(a?.tcp).toEqual({ host: '2001:db8::5', port: 443 })
    expect(a?.lan).toEqual(peerFull.lan)
    expect(b?.udp).toBeNull()
    expect(b?.tcp).toBeNull()
    expect(b?.online).toBe(false)
    expect(b?.lastSeenAgoMs).toBe(0xffffffff)
  })

  it('REGISTER: decodes every field; the signature verifies over `signed`', () => {
    const { bytes, unsigned, publicKey } = signedRegister({ ...registerFields, proof: seq(0x77, 32), lan: [{ host: '10.0.0.2', port: 1 }, { host: 'fd00::2', port: 2 }] })
    const m = decode(bytes)
    if (m.type !== 'register') throw new Error(`decoded ${m.type}`)
    expect(norm({ ...m, signature: undefined, signed: undefined })).toEqual(
      norm({ type: 'register', ...registerFields, publicKey, proof: seq(0x77, 32), lan: [{ host: '10.0.0.2', port: 1 }, { host: 'fd00::2', port: 2 }], signature: undefined, signed: undefined })
    )
    expect(Buffer.from(m.signed).equals(unsigned)).toBe(true)
    expect(m.signature).toHaveLength(64)
    expect(verify(m.signed, m.signature, m.publicKey)).toBe(true)
  })

  it('REGISTER: flipping any byte of the signed part makes the signature fail', () => {
    const { bytes, unsigned, publicKey } = signedRegister()
    const m = decode(bytes)
    if (m.type !== 'register') throw new Error(`decoded ${m.type}`)
    for (let i = 0; i < unsigned.length; i++) {
      const tampered = Buffer.from(m.signed)
      tampered[i]! ^= 0x01
      expect(verify(tampered, m.signature, publicKey), `byte ${i}`).toBe(false)
      // And as a peer sees it on the wire: the tampered frame does not decode, or does not verify.
      const wire = Buffer.from(bytes)
      wire[i]! ^= 0x01
      let d: Message
      try {
        d = decode(wire)
      } catch (err) {
        expect(err, `byte ${i}`).toBeInstanceOf(ProtocolError)
        continue
      }
      if (d.type === 'register') expect(verify(d.signed, d.signature, d.publicKey), `byte ${i}`).toBe(false)
    }
  })

  it('REGISTER: another key cannot verify the signature', () => {
    const { bytes } = signedRegister()
    const m = decode(bytes)
    if (m.type !== 'register') throw new Error(`decoded ${m.type}`)
    expect(verify(m.signed, m.signature, generateKeyPair().publicKey)).toBe(false)
  })

  it('RELAY: the signature verifies over relaySigned(nonce, introId, side), and not for the other side or another nonce', () => {
    const { bytes, publicKey } = signedRelay()
    const m = decode(bytes)
    if (m.type !== 'relay') throw new Error(`decoded ${m.type}`)
    expect(Buffer.from(m.introId)).toEqual(seq(0xe0, 16))
    expect(m.initiator).toBe(true)
    expect(verify(relaySigned(NONCE, m.introId, m.initiator), m.signature, publicKey)).toBe(true)
    expect(verify(relaySigned(NONCE, m.introId, false), m.signature, publicKey)).toBe(false)
    expect(verify(relaySigned(seq(0x01, 32), m.introId, true), m.signature, publicKey)).toBe(false)
    expect(verify(relaySigned(NONCE, m.introId, true), m.signature, generateKeyPair().publicKey)).toBe(false)
  })

  it('encoders refuse fields of the wrong length instead of writing a frame peers would misread', () => {
    expect(() => encodeRelay(seq(0, 15), true, Buffer.alloc(64))).toThrow(RangeError)
    expect(() => encodeRelay(seq(0, 16), true, Buffer.alloc(63))).toThrow(RangeError)
    expect(() => relaySigned(seq(0, 31), seq(0, 16), true)).toThrow(RangeError)
    expect(() => encode({ type: 'register-ack', token: TOKEN, udpKey: seq(0, 16), observed: null, heartbeatMs: 1, peerTimeoutMs: 1 })).toThrow(RangeError)
    expect(() => encode({ type: 'introduction', reqId: 1, introId: seq(0, 16), punchKey: seq(0, 31), initiator: true, via: 'udp', peer: peerOffline })).toThrow(RangeError)
  })

  it(`REGISTER: at most ${MAX_LAN_ENDPOINTS} LAN endpoints are sent, and more are refused on decode`, () => {
    const lan = Array.from({ length: 12 }, (_, i) => ({ host: `10.0.0.${i + 1}`, port: 1000 + i }))
    const m = decode(encodeRegister(encodeRegisterUnsigned({ ...registerFields, lan }), Buffer.alloc(64)))
    if (m.type !== 'register') throw new Error(`decoded ${m.type}`)
    expect(m.lan).toEqual(lan.slice(0, MAX_LAN_ENDPOINTS))
    // Hand-made frame claiming 9 endpoints.
    const nine = Buffer.concat([
      hex('4e 44 02 03'),
      NONCE,
      hex('010203040506'),
      seq(0x40, 32),
      hex('03 626f62 | a2a9 | 00 | 09'),
      ...Array.from({ length: 9 }, () => hex('04 0a000001 0001')),
      hex('00'),
      Buffer.alloc(64)
    ])
    expect(errorCode(() => decode(nine), ProtocolError)).toBe('BAD_REQUEST')
  })

  it('ERROR: long codes and messages are cut to fit their length bytes, on a UTF-8 boundary', () => {
    const m = decode(encode({ type: 'error', reqId: 1, code: 'C'.repeat(100), message: 'é'.repeat(200) }))
    if (m.type !== 'error') throw new Error(`decoded ${m.type}`)
    expect(m.code).toBe('C'.repeat(64))
    expect(m.message).toBe('é'.repeat(127)) // 254 bytes: a 128th 'é' would need 256
  })

  it('refuses version 1 (and 0, 3) with BAD_VERSION and a message naming both versions', () => {
    // Version 1 frames as a v1 peer sends them: HELLO, a CHALLENGE, a HEARTBEAT.
    for (const v1 of [
      '4e 44 01 01' + ' 00'.repeat(92),
      '4e 44 01 02 | 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f | 010203040506',
      '4e 44 01 05 | a0a1a2a3a4a5a6a7a8a9aaabacadaeaf | 00000001 | 0000000000000000',
      '4e 44 01 0d'
    ]) {
      expect(errorCode(() => decode(hex(v1)), ProtocolError), v1.slice(0, 11)).toBe('BAD_VERSION')
    }
    expect(() => decode(hex('4e 44 01 0d'))).toThrow(/version 1 .*speaks 2/)
    expect(errorCode(() => decode(hex('4e 44 00 0b 00000001')), ProtocolError)).toBe('BAD_VERSION')
    expect(errorCode(() => decode(hex('4e 44 03 0d')), ProtocolError)).toBe('BAD_VERSION')
  })

  it('refuses a foreign magic, the retired HELLO and unknown types with BAD_REQUEST', () => {
    expect(errorCode(() => decode(hex('4e 45 02 0d')), ProtocolError)).toBe('BAD_REQUEST')
    expect(errorCode(() => decode(hex('4e 44 02 01' + ' 00'.repeat(92))), ProtocolError)).toBe('BAD_REQUEST') // HELLO, type 1
    expect(errorCode(() => decode(hex('4e 44 02 00')), ProtocolError)).toBe('BAD_REQUEST')
    expect(errorCode(() => decode(hex('4e 44 02 19' + ' 00'.repeat(100))), ProtocolError)).toBe('BAD_REQUEST') // 25: after LOOKUP
    expect(errorCode(() => decode(hex('4e 44 02 11')), ProtocolError)).toBe('BAD_REQUEST') // RELAY without its body
    expect(errorCode(() => decode(hex('4e 44 02 ff')), ProtocolError)).toBe('BAD_REQUEST')
    expect(errorCode(() => decode(Buffer.alloc(0)), ProtocolError)).toBe('BAD_REQUEST')
  })

  it("refuses out-of-range enums (status, including version 1's 'unknown', event, via, nat, endpoint family)", () => {
    const tag = '00'.repeat(16)
    expect(errorCode(() => decode(hex(`4e 44 02 06 | 00000007 | 01 | 00 | ${tag}`)), ProtocolError)).toBe('BAD_REQUEST') // status 1 = 'unknown'
    expect(errorCode(() => decode(hex(`4e 44 02 06 | 00000007 | 03 | 00 | ${tag}`)), ProtocolError)).toBe('BAD_REQUEST') // status 3
    expect(errorCode(() => decode(hex('4e 44 02 0e | 00000005 | 03 626f62 | 05')), ProtocolError)).toBe('BAD_REQUEST') // via 5
    expect(errorCode(() => decode(hex(`4e 44 02 06 | 00000007 | 00 | 05 01020304 0001 | ${tag}`)), ProtocolError)).toBe('BAD_REQUEST') // family 5
    // The same frames with a valid status decode, so the refusals above are the status's doing.
    expect(decode(hex(`4e 44 02 06 | 00000007 | 02 | 00 | ${tag}`)).type).toBe('heartbeat-ack')
    const ev = encode({ type: 'peer-event', event: 'up', peer: peerOffline })
    ev[4] = 3
    expect(errorCode(() => decode(ev), ProtocolError)).toBe('BAD_REQUEST')
    const natAt = 4 + 1 + 32 + 1 + peerOffline.name.length + 1 + 4
    const bad = encode({ type: 'peer-event', event: 'up', peer: peerOffline })
    expect(bad[natAt]).toBe(2) // 'hard'
    bad[natAt] = 4
    expect(errorCode(() => decode(bad), ProtocolError)).toBe('BAD_REQUEST')
  })

  // RELAY_DATA is the exception to both rules below: its payload is the rest of the frame.
  const fixedLength = (): Buffer[] => allFrames().filter((b) => b[3] !== 0x13)

  it('tolerates trailing bytes after every message', () => {
    const rand = prng(7)
    for (const bytes of fixedLength()) {
      const tail = randBuf(rand, randInt(rand, 1, 40))
      const plain = decode(bytes)
      // A REGISTER_ACK's extensions start with an endpoint family (0 or 6), and features
      // follow server6: only bytes after the last extension it has are trailing ones.
      if (plain.type === 'register-ack' && 'server6' in plain && !('features' in plain)) continue
      if (bytes[3] === 0x04 && (tail[0] === 0 || tail[0] === 6)) tail[0] = 0xee
      const extra = Buffer.concat([bytes, tail])
      expect(norm(decode(extra))).toEqual(norm(plain))
    }
  })

  it('every strict prefix of a valid frame is refused with ProtocolError (but the optional last byte of PEER_EVENT down: its reason, absent from older servers)', () => {
    // Nor a REGISTER_ACK's trailing server6: without it (or with part of it) the frame is an older server's, and valid.
    const withExtension = (b: Buffer): boolean => b[3] === 0x04 && ('server6' in decode(b) || 'features' in decode(b))
    for (const bytes of fixedLength().filter((b) => !withExtension(b))) {
      const optional = bytes[3] === 0x0a && bytes[4] === 2 ? 1 : 0
      if (optional) expect(decode(bytes.subarray(0, bytes.length - 1))).toMatchObject({ type: 'peer-event', event: 'down', reason: 'unknown' })
      for (let n = 0; n < bytes.length - optional; n++) {
        expect(() => decode(bytes.subarray(0, n)), `${bytes.subarray(0, 4).toString('hex')} cut at ${n}`).toThrow(ProtocolError)
      }
    }
  })
})

describe('rendezvous codec: no amplification', () => {
  // UDP carries only HEARTBEAT / HEARTBEAT_ACK and PROBE: a spoofed source must never
  // get back more bytes than it sent.
  const widest = { host: 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', port: 65535 }

  it('a HEARTBEAT_ACK, even with an IPv6 observed endpoint, is never larger than the HEARTBEAT', () => {
    const heartbeat = encode({ type: 'heartbeat', token: TOKEN, seq: 1, key: KEY })
    for (const status of ['ok', 'moved'] as const) {
      const ack = encode({ type: 'heartbeat-ack', seq: 1, status, observed: widest, key: KEY })
      expect(ack.length).toBeLessThanOrEqual(heartbeat.length)
    }
  })

  it('a PROBE ack is exactly the size of the probe it answers', () => {
    const probe = encode({ type: 'probe', introId: seq(0, 16), streamId: 1, seq: 1, ack: false, key: KEY })
    const ack = encode({ type: 'probe', introId: seq(0, 16), streamId: 1, seq: 1, ack: true, key: KEY })
    expect(ack.length).toBe(probe.length)
  })

  it('a HEARTBEAT without its padding is refused (the server would otherwise answer a smaller request)', () => {
    const heartbeat = encode({ type: 'heartbeat', token: TOKEN, seq: 1, key: KEY })
    const ack = encode({ type: 'heartbeat-ack', seq: 1, status: 'moved', observed: widest, key: KEY })
    // Any heartbeat short enough to be answered by a larger ack is refused.
    for (let n = 0; n < ack.length; n++) expect(() => decode(heartbeat.subarray(0, n)), `cut at ${n}`).toThrow(ProtocolError)
    expect(() => decode(heartbeat.subarray(0, heartbeat.length - 8))).toThrow(ProtocolError)
    expect(() => decode(heartbeat.subarray(0, heartbeat.length - 1))).toThrow(ProtocolError)
    expect(decode(heartbeat).type).toBe('heartbeat')
  })
})

describe('rendezvous codec: fuzz', () => {
  const SEED = 0x6e617464

  function* fuzzInputs(): Generator<Buffer> {
    const rand = prng(SEED)
    const valid = allFrames()
    for (let i = 0; i < 20_000; i++) {
      const kind = i % 4
      if (kind === 0) {
        yield randBuf(rand, randInt(rand, 0, 300))
      } else if (kind === 1) {
        // Our magic and version, a random (mostly known) type, random body.
        const b = randBuf(rand, randInt(rand, 4, 300))
        b[0] = 0x4e
        b[1] = 0x44
        b[2] = 0x02
        b[3] = randInt(rand, 0, 25)
        yield b
      } else {
        // A valid frame, truncated at a random point or with a few bytes changed.
        const v = valid[randInt(rand, 0, valid.length - 1)]!
        const b = kind === 2 ? Buffer.from(v.subarray(0, randInt(rand, 0, v.length))) : Buffer.from(v)
        if (kind === 3) for (let k = randInt(rand, 1, 4); k > 0; k--) b[randInt(rand, 4, b.length - 1)] = randInt(rand, 0, 255)
        yield b
      }
    }
  }

  /** decode, then what a receiver does next with a sealed datagram. */
  function decodeAndOpen(b: Uint8Array): unknown {
    const m = decode(b)
    return isSealed(m) ? opened(m, KEY) : m
  }

  it('20,000 random, magic-prefixed, truncated and mutated frames either decode or throw ProtocolError', () => {
    const escapes = fuzzEscapes(fuzzInputs(), decodeAndOpen)
    expect(escapes.slice(0, 3), `seed ${SEED}: ${escapes.length} inputs threw something else`).toEqual([])
  })

  it('a mutated sealed frame that still decodes never opens with the key', () => {
    let decoded = 0
    const rand = prng(SEED + 1)
    for (const msg of SEALED_SAMPLES.filter((m) => m.key === KEY)) {
      const bytes = encode(msg)
      for (let i = 0; i < 500; i++) {
        const b = Buffer.from(bytes)
        const at = randInt(rand, 0, bytes.length - 1)
        b[at] = (b[at]! + randInt(rand, 1, 255)) & 0xff // always a change
        let m: Message
        try {
          m = decode(b)
        } catch {
          continue
        }
        if (!isSealed(m) || at >= m.covered.length + m.tag.length) continue // a HEARTBEAT's zeros are not sealed
        decoded++
        expect(opened(m, KEY), `${b.toString('hex')}`).toBe(false)
      }
    }
    expect(decoded).toBeGreaterThan(100) // the loop above did test something
  })

  it('a string field that is not valid UTF-8 is refused with ProtocolError (src/protocol/bytes.ts str8)', () => {
    // ERROR with code = one byte 0xff (never valid UTF-8).
    expect(errorCode(() => decode(hex('4e 44 02 07 | 00000000 | 01 ff | 00')), ProtocolError)).toBe('BAD_REQUEST')
  })
})

describe('FrameSplitter', () => {
  const frames = [encode({ type: 'ping', seq: 1 }), Buffer.alloc(0), encode({ type: 'peers', reqId: 1, peers: [peerFull] }), encode({ type: 'bye' })]
  const stream = Buffer.concat(frames.map((f) => frame(f)))

  it('splits frames fed one byte at a time', () => {
    const s = new FrameSplitter()
    const out: Buffer[] = []
    for (let i = 0; i < stream.length; i++) out.push(...s.push(stream.subarray(i, i + 1)))
    expect(out.map((b) => b.toString('hex'))).toEqual(frames.map((b) => b.toString('hex')))
  })

  it('splits frames arriving together and in random chunks', () => {
    expect(new FrameSplitter().push(stream).map((b) => b.toString('hex'))).toEqual(frames.map((b) => b.toString('hex')))
    const rand = prng(3)
    for (let round = 0; round < 50; round++) {
      const s = new FrameSplitter()
      const out: Buffer[] = []
      for (let i = 0; i < stream.length; ) {
        const n = randInt(rand, 1, 20)
        out.push(...s.push(Buffer.from(stream.subarray(i, i + n))))
        i += n
      }
      expect(out.map((b) => b.toString('hex'))).toEqual(frames.map((b) => b.toString('hex')))
    }
  })

  it('copies a frame that arrives in small reads about once, not once per read (a relayed 64 KiB frame in TCP segments)', () => {
    const body = randBuf(prng(9), 64 * 1024)
    const f = frame(body)
    const reads: Buffer[] = []
    for (let i = 0; i < f.length; i += 1448) reads.push(Buffer.from(f.subarray(i, i + 1448)))
    // Every byte copy the splitter can make goes through Buffer.concat or Buffer#copy: count them.
    let copied = 0
    const originalConcat = Buffer.concat
    const concat = vi.spyOn(Buffer, 'concat').mockImplementation((list: readonly Uint8Array[], total?: number) => {
      copied += total ?? list.reduce((n, b) => n + b.length, 0)
      return originalConcat(list, total)
    })
    const copy = vi.spyOn(Buffer.prototype, 'copy')
    try {
      const s = new FrameSplitter()
      const out: Buffer[] = []
      for (const r of reads) out.push(...s.push(r))
      expect(out).toHaveLength(1)
      expect(out[0]!.equals(body)).toBe(true)
      for (const source of copy.mock.contexts) copied += (source as Buffer).length
      // Each byte once, plus the partial frame moved each time the buffer doubles (less than once more).
      expect(copied).toBeLessThan(2 * f.length)
    } finally {
      concat.mockRestore()
      copy.mockRestore()
    }
  })

  it(`throws ProtocolError on a length above MAX_TCP_FRAME_BYTES (${MAX_TCP_FRAME_BYTES}), as soon as the prefix is in`, () => {
    const tooBig = Buffer.alloc(4)
    tooBig.writeUInt32BE(MAX_TCP_FRAME_BYTES + 1)
    expect(() => new FrameSplitter().push(tooBig)).toThrow(ProtocolError)
    expect(() => new FrameSplitter().push(hex('ffffffff'))).toThrow(ProtocolError)
    // Even after a good frame in the same chunk.
    expect(() => new FrameSplitter().push(Buffer.concat([frame(encode({ type: 'bye' })), tooBig]))).toThrow(ProtocolError)
    // A length of exactly the maximum is legal: the splitter waits for the bytes.
    const max = Buffer.alloc(4)
    max.writeUInt32BE(MAX_TCP_FRAME_BYTES)
    expect(new FrameSplitter().push(max)).toEqual([])
  })

  it('next() takes one frame at a time and rest() hands over what follows the framing (the start of Noise)', () => {
    const challenge = encode({ type: 'challenge', nonce: NONCE, serverTime: TIME })
    const noise = hex('00 0a 1f ff 4e 44 02') // not framing: rest() must return it untouched
    const s = new FrameSplitter()
    s.add(Buffer.concat([frame(challenge), frame(encode({ type: 'secure' })), noise]))
    expect(s.next()?.toString('hex')).toBe(challenge.toString('hex'))
    expect(s.next()?.toString('hex')).toBe('4e440215')
    expect(s.rest().toString('hex')).toBe(noise.toString('hex'))
    // rest() empties the splitter.
    expect(s.rest()).toHaveLength(0)
    expect(s.next()).toBeNull()
  })

  it('next() is null until a whole frame is in, and add() alone never splits', () => {
    const f = frame(encode({ type: 'ping', seq: 7 }))
    const s = new FrameSplitter()
    for (let i = 0; i < f.length - 1; i++) {
      s.add(f.subarray(i, i + 1))
      expect(s.next(), `after ${i + 1} bytes`).toBeNull()
    }
    s.add(f.subarray(f.length - 1))
    expect(s.next()?.toString('hex')).toBe('4e44020b00000007')
    expect(s.next()).toBeNull()
    expect(s.rest()).toHaveLength(0)
  })

  it('rest() returns a partial frame as it is (nothing is lost at the switch)', () => {
    const f = frame(encode({ type: 'ping', seq: 7 }))
    const s = new FrameSplitter()
    s.add(Buffer.concat([f, f.subarray(0, 5)]))
    expect(s.next()).not.toBeNull()
    expect(s.next()).toBeNull()
    expect(s.rest().toString('hex')).toBe(f.subarray(0, 5).toString('hex'))
  })

  it('next() throws ProtocolError on an oversized length', () => {
    const s = new FrameSplitter()
    s.add(hex('ffffffff 00'))
    expect(errorCode(() => s.next(), ProtocolError)).toBe('BAD_REQUEST')
  })
})
