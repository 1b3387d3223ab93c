// The rendezvous wire format (src/protocol/rendezvous.ts): golden bytes written by hand
// from the layout comment at the top of that file, round trips for every message type,
// the anti-amplification size rules, and fuzzing that may only throw ProtocolError.
import { describe, expect, it } from 'vitest'
import { ProtocolError } from '../../../src/protocol/errors.js'
import { generateKeyPair, sign, verify } from '../../../src/protocol/identity.js'
import {
  decode,
  encode,
  encodeRegister,
  encodeRegisterUnsigned,
  frame,
  FrameSplitter,
  isRendezvousFrame,
  MAX_LAN_ENDPOINTS,
  MAX_TCP_FRAME_BYTES,
  type Message,
  type OutgoingMessage,
  type PeerRecord,
  type RegisterFields
} from '../../../src/protocol/rendezvous.js'
import { errorCode, fuzzEscapes, hex, prng, randBuf, randInt, seq } from '../helpers.js'

const TOKEN = seq(0xa0, 16)
const NONCE = seq(0x00, 32)
const TIME = 0x010203040506

/** Replaces byte arrays by hex so decoded frames (Buffer views) compare to what was encoded. */
function norm(x: unknown): unknown {
  if (x instanceof Uint8Array) return Buffer.from(x).toString('hex')
  if (Array.isArray(x)) return x.map(norm)
  if (x && typeof x === 'object') return Object.fromEntries(Object.entries(x).map(([k, v]) => [k, norm(v)]))
  return x
}


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

/** One of every message callers can encode (REGISTER is built apart: it needs a signature). */
const SAMPLES: OutgoingMessage[] = [
  { type: 'hello' },
  { type: 'challenge', nonce: NONCE, serverTime: TIME },
  { type: 'register-ack', token: TOKEN, observed: { host: '198.51.100.7', port: 65535 }, heartbeatMs: 20_000, peerTimeoutMs: 60_000 },
  { type: 'register-ack', token: TOKEN, observed: { host: '2001:db8:1234:5678:11:2233:4455:6677', port: 1 }, heartbeatMs: 1, peerTimeoutMs: 0xffffffff },
  { type: 'register-ack', token: TOKEN, observed: null, heartbeatMs: 0, peerTimeoutMs: 0 },
  { type: 'heartbeat', token: TOKEN, seq: 0xffffffff },
  { type: 'heartbeat-ack', seq: 7, status: 'ok', observed: { host: '192.0.2.1', port: 32853 } },
  { type: 'heartbeat-ack', seq: 8, status: 'moved', observed: { host: '::1', port: 9 } },
  { type: 'heartbeat-ack', seq: 9, status: 'unknown', observed: null },
  { type: 'error', reqId: 3, code: 'NAME_TAKEN', message: 'the name alice is held by another key' },
  { type: 'error', reqId: 0, code: '', message: '' },
  { type: 'list', reqId: 42 },
  { type: 'peers', reqId: 42, peers: [peerFull, peerOffline] },
  { type: 'peers', reqId: 43, peers: [] },
  { type: 'peer-event', event: 'up', peer: peerFull },
  { type: 'peer-event', event: 'down', peer: peerOffline },
  { type: 'ping', seq: 1 },
  { type: 'pong', seq: 0x80000000 },
  { type: 'bye' },
  { type: 'introduce', reqId: 5, target: 'bob', via: 'tcp' },
  { type: 'introduce', reqId: 6, target: 'abcdefgh', via: 'auto' },
  { type: 'introduction', reqId: 5, introId: seq(0xc0, 16), initiator: true, via: 'udp', peer: peerFull },
  { type: 'introduction', reqId: 0, introId: seq(0xd0, 16), initiator: false, via: 'relay', peer: peerOffline },
  { type: 'probe', introId: seq(0xe0, 16), streamId: 1, seq: 2, ack: false },
  { type: 'probe', introId: seq(0xe0, 16), streamId: 0xffffffff, seq: 0, ack: true },
  { type: 'relay', introId: seq(0xe0, 16), initiator: true },
  { type: 'relay-ok' },
  { type: 'relay-data', data: seq(1, 40) },
  { type: 'relay-end', code: 'RELAY_LIMIT', message: 'limit of 1024 bytes' },
  { type: 'introduce', reqId: 1, target: 'bob', via: 'direct' }
]

function signedRegister(fields: RegisterFields = registerFields): { bytes: Buffer; unsigned: Buffer; publicKey: Buffer } {
  const kp = generateKeyPair()
  const unsigned = encodeRegisterUnsigned({ ...fields, publicKey: kp.publicKey })
  return { bytes: encodeRegister(unsigned, sign(unsigned, kp.secretKey)), unsigned, publicKey: kp.publicKey }
}

describe('rendezvous codec: golden bytes', () => {
  // Each expected frame is written from the layout comment, field by field (`|` separates fields).
  const golden: [string, OutgoingMessage, string][] = [
    ['HELLO', { type: 'hello' }, '4e 44 01 01 |' + ' 00'.repeat(92)],
    ['RELAY', { type: 'relay', introId: seq(0xe0, 16), initiator: true }, '4e 44 01 11 | e0e1e2e3e4e5e6e7e8e9eaebecedeeef | 01'],
    ['RELAY_OK', { type: 'relay-ok' }, '4e 44 01 12'],
    ['RELAY_DATA', { type: 'relay-data', data: hex('cafe') }, '4e 44 01 13 | cafe'],
    ['RELAY_END', { type: 'relay-end', code: 'RELAY_LIMIT', message: 'x' }, '4e 44 01 14 | 0b 52454c41595f4c494d4954 | 01 78'],
    [
      'CHALLENGE',
      { type: 'challenge', nonce: NONCE, serverTime: TIME },
      '4e 44 01 02 | 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f | 01 02 03 04 05 06'
    ],
    [
      'REGISTER_ACK (IPv4)',
      { type: 'register-ack', token: TOKEN, observed: { host: '127.0.0.1', port: 8080 }, heartbeatMs: 20_000, peerTimeoutMs: 60_000 },
      '4e 44 01 04 | a0a1a2a3a4a5a6a7a8a9aaabacadaeaf | 04 7f000001 1f90 | 00004e20 | 0000ea60'
    ],
    [
      'REGISTER_ACK (IPv6)',
      { type: 'register-ack', token: TOKEN, observed: { host: '2001:db8::1', port: 443 }, heartbeatMs: 1, peerTimeoutMs: 2 },
      '4e 44 01 04 | a0a1a2a3a4a5a6a7a8a9aaabacadaeaf | 06 20010db8000000000000000000000001 01bb | 00000001 | 00000002'
    ],
    [
      'HEARTBEAT',
      { type: 'heartbeat', token: TOKEN, seq: 0x01020304 },
      '4e 44 01 05 | a0a1a2a3a4a5a6a7a8a9aaabacadaeaf | 01020304 | 0000000000000000'
    ],
    [
      'HEARTBEAT_ACK (ok, IPv4)',
      { type: 'heartbeat-ack', seq: 7, status: 'ok', observed: { host: '192.0.2.1', port: 32853 } },
      '4e 44 01 06 | 00000007 | 00 | 04 c0000201 8055'
    ],
    [
      'HEARTBEAT_ACK (moved, no endpoint)',
      { type: 'heartbeat-ack', seq: 0xfffffffe, status: 'moved', observed: null },
      '4e 44 01 06 | fffffffe | 02 | 00'
    ],
    [
      'ERROR',
      { type: 'error', reqId: 9, code: 'NAME_TAKEN', message: 'x' },
      '4e 44 01 07 | 00000009 | 0a 4e414d455f54414b454e | 01 78'
    ],
    ['LIST', { type: 'list', reqId: 42 }, '4e 44 01 08 | 0000002a'],
    ['PEERS (empty)', { type: 'peers', reqId: 1, peers: [] }, '4e 44 01 09 | 00000001 | 0000'],
    [
      'PEER_EVENT (up)',
      {
        type: 'peer-event',
        event: 'up',
        peer: { ...peerFull, tcp: null, lan: [{ host: '192.168.1.10', port: 41641 }] }
      },
      '4e 44 01 0a | 01 | 101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f | 05 616c696365 | 01 | 000004d2 | 01' +
        ' | 04 cb007105 a2a9 | 00 | 01 04 c0a8010a a2a9'
    ],
    ['PING', { type: 'ping', seq: 1 }, '4e 44 01 0b | 00000001'],
    ['PONG', { type: 'pong', seq: 0xdeadbeef }, '4e 44 01 0c | deadbeef'],
    ['BYE', { type: 'bye' }, '4e 44 01 0d'],
    ['INTRODUCE', { type: 'introduce', reqId: 5, target: 'bob', via: 'tcp' }, '4e 44 01 0e | 00000005 | 03 626f62 | 02'],
    [
      'INTRODUCTION',
      { type: 'introduction', reqId: 5, introId: seq(0xc0, 16), initiator: true, via: 'relay', peer: { ...peerOffline, name: 'b' } },
      '4e 44 01 0f | 00000005 | c0c1c2c3c4c5c6c7c8c9cacbcccdcecf | 01 | 03' +
        ' | 808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f | 01 62 | 00 | ffffffff | 02 | 00 | 00 | 00'
    ],
    [
      'PROBE (ack)',
      { type: 'probe', introId: seq(0xe0, 16), streamId: 0x0a0b0c0d, seq: 3, ack: true },
      '4e 44 01 10 | e0e1e2e3e4e5e6e7e8e9eaebecedeeef | 0a0b0c0d | 00000003 | 01 | 0000000000000000'
    ]
  ]

  for (const [label, msg, expected] of golden) {
    it(`${label} encodes to the documented bytes and decodes back`, () => {
      const bytes = encode(msg)
      expect(bytes.toString('hex')).toBe(hex(expected).toString('hex'))
      expect(norm(decode(hex(expected)))).toEqual(norm(msg))
    })
  }

  it('REGISTER: the signed part has the documented layout and the signature follows it', () => {
    const unsigned = encodeRegisterUnsigned(registerFields)
    const expected =
      '4e 44 01 03 | 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f | 010203040506' +
      ' | 404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f | 03 626f62 | a2a9 | 03' +
      ' | 01 04 0a000002 a2a9 | 00'
    expect(unsigned.toString('hex')).toBe(hex(expected).toString('hex'))
    const sig = seq(0x01, 64)
    const full = encodeRegister(unsigned, sig)
    expect(full.toString('hex')).toBe(hex(expected).toString('hex') + sig.toString('hex'))
  })

  it('frame() prefixes a u32 big-endian length', () => {
    expect(frame(hex('0102 03')).toString('hex')).toBe('00000003010203')
    expect(frame(Buffer.alloc(0)).toString('hex')).toBe('00000000')
  })

  it('isRendezvousFrame recognises the magic and nothing shorter than a header', () => {
    expect(isRendezvousFrame(encode({ type: 'bye' }))).toBe(true)
    expect(isRendezvousFrame(hex('4e44 01'))).toBe(false)
    expect(isRendezvousFrame(hex('4e45 0101'))).toBe(false)
    expect(isRendezvousFrame(hex('ff44 0101'))).toBe(false)
  })
})

describe('rendezvous codec: round trips', () => {
  for (const msg of SAMPLES) {
    it(`${msg.type} ${JSON.stringify(norm(msg)).slice(0, 60)}… survives encode/decode`, () => {
      expect(norm(decode(encode(msg)))).toEqual(norm(msg))
    })
  }

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

  it(`REGISTER: at most ${MAX_LAN_ENDPOINTS} LAN endpoints are sent, and more are refused on decode`, () => {
    const lan = Array.from({ length: 12 }, (_, i) => ({ host: `10.0.0.${i + 1}`, port: 1000 + i }))
    const m = decode(encodeRegister(encodeRegisterUnsigned({ ...registerFields, lan }), Buffer.alloc(64)))
    if (m.type !== 'register') throw new Error(`decoded ${m.type}`)
    expect(m.lan).toEqual(lan.slice(0, MAX_LAN_ENDPOINTS))
    // Hand-made frame claiming 9 endpoints.
    const nine = Buffer.concat([
      hex('4e 44 01 03'),
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

  it('refuses version 2 (and 0) with BAD_VERSION, a foreign magic and unknown types with BAD_REQUEST', () => {
    expect(errorCode(() => decode(hex('4e 44 02 0d')), ProtocolError)).toBe('BAD_VERSION')
    expect(errorCode(() => decode(hex('4e 44 02 01' + ' 00'.repeat(92))), ProtocolError)).toBe('BAD_VERSION')
    expect(errorCode(() => decode(hex('4e 44 00 0b 00000001')), ProtocolError)).toBe('BAD_VERSION')
    expect(errorCode(() => decode(hex('4e 45 01 0d')), ProtocolError)).toBe('BAD_REQUEST')
    expect(errorCode(() => decode(hex('4e 44 01 00')), ProtocolError)).toBe('BAD_REQUEST')
    expect(errorCode(() => decode(hex('4e 44 01 11')), ProtocolError)).toBe('BAD_REQUEST')
    expect(errorCode(() => decode(hex('4e 44 01 7f' + ' 00'.repeat(100))), ProtocolError)).toBe('BAD_REQUEST')
    expect(errorCode(() => decode(hex('4e 44 01 ff')), ProtocolError)).toBe('BAD_REQUEST')
    expect(errorCode(() => decode(Buffer.alloc(0)), ProtocolError)).toBe('BAD_REQUEST')
  })

  it('refuses out-of-range enums (status, event, via, nat, endpoint family)', () => {
    expect(errorCode(() => decode(hex('4e 44 01 06 | 00000007 | 03 | 00')), ProtocolError)).toBe('BAD_REQUEST') // status 3
    expect(errorCode(() => decode(hex('4e 44 01 0e | 00000005 | 03 626f62 | 05')), ProtocolError)).toBe('BAD_REQUEST') // via 5
    expect(errorCode(() => decode(hex('4e 44 01 06 | 00000007 | 00 | 05 01020304 0001')), ProtocolError)).toBe('BAD_REQUEST') // family 5
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
  const fixedLength = SAMPLES.filter((m) => m.type !== 'relay-data')

  it('tolerates trailing bytes after every message', () => {
    const rand = prng(7)
    const all = [...fixedLength.map((m) => encode(m)), signedRegister().bytes]
    for (const bytes of all) {
      const extra = Buffer.concat([bytes, randBuf(rand, randInt(rand, 1, 40))])
      expect(norm(decode(extra))).toEqual(norm(decode(bytes)))
    }
  })

  it('every strict prefix of a valid frame is refused with ProtocolError', () => {
    const all = [...fixedLength.map((m) => encode(m)), signedRegister().bytes]
    for (const bytes of all) {
      for (let n = 0; n < bytes.length; n++) {
        expect(() => decode(bytes.subarray(0, n)), `${bytes.subarray(0, 4).toString('hex')} cut at ${n}`).toThrow(ProtocolError)
      }
    }
  })
})

describe('rendezvous codec: no amplification', () => {
  it('a CHALLENGE is never larger than the HELLO that asks for it', () => {
    const hello = encode({ type: 'hello' })
    const challenge = encode({ type: 'challenge', nonce: Buffer.alloc(32, 0xff), serverTime: 2 ** 48 - 1 })
    expect(challenge.length).toBeLessThanOrEqual(hello.length)
  })

  it('a HEARTBEAT_ACK, even with an IPv6 observed endpoint, is never larger than the HEARTBEAT', () => {
    const heartbeat = encode({ type: 'heartbeat', token: TOKEN, seq: 1 })
    const ack = encode({ type: 'heartbeat-ack', seq: 1, status: 'moved', observed: { host: 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', port: 65535 } })
    expect(ack.length).toBeLessThanOrEqual(heartbeat.length)
  })

  it('a PROBE ack is exactly the size of the probe it answers', () => {
    const probe = encode({ type: 'probe', introId: seq(0, 16), streamId: 1, seq: 1, ack: false })
    const ack = encode({ type: 'probe', introId: seq(0, 16), streamId: 1, seq: 1, ack: true })
    expect(ack.length).toBe(probe.length)
  })

  it('a HELLO or HEARTBEAT without its padding is refused (the server would otherwise answer a smaller request)', () => {
    expect(() => decode(encode({ type: 'hello' }).subarray(0, 4))).toThrow(ProtocolError)
    expect(() => decode(encode({ type: 'heartbeat', token: TOKEN, seq: 1 }).subarray(0, 24))).toThrow(ProtocolError)
  })
})

describe('rendezvous codec: fuzz', () => {
  const SEED = 0x6e617464

  function* fuzzInputs(): Generator<Buffer> {
    const rand = prng(SEED)
    const valid = [...SAMPLES.map((m) => encode(m)), signedRegister().bytes]
    for (let i = 0; i < 20_000; i++) {
      const kind = i % 4
      if (kind === 0) {
        yield randBuf(rand, randInt(rand, 0, 300))
      } else if (kind === 1) {
        // Our magic and version, a random (mostly known) type, random body.
        const b = randBuf(rand, randInt(rand, 4, 300))
        b[0] = 0x4e
        b[1] = 0x44
        b[2] = 0x01
        b[3] = randInt(rand, 0, 18)
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

  // Known bug (reported): Reader.str8 decodes with TextDecoder({fatal: true}), whose
  // TypeError on invalid UTF-8 escapes decode(). Remove `.fails` once str8 wraps it.
  it('20,000 random, magic-prefixed, truncated and mutated frames either decode or throw ProtocolError', () => {
    const escapes = fuzzEscapes(fuzzInputs(), decode)
    expect(escapes.slice(0, 3), `seed ${SEED}: ${escapes.length} inputs threw something else`).toEqual([])
  })

  it('the same fuzz finds no escape other than the known invalid-UTF-8 TypeError', () => {
    const escapes = fuzzEscapes(fuzzInputs(), decode)
    const other = escapes.filter((e) => !/TypeError: .*encoded data/i.test(e.error))
    expect(other.slice(0, 3), `seed ${SEED}`).toEqual([])
  })

  it('a string field that is not valid UTF-8 is refused with ProtocolError (src/protocol/bytes.ts str8)', () => {
    // ERROR with code = one byte 0xff (never valid UTF-8).
    expect(() => decode(hex('4e 44 01 07 | 00000000 | 01 ff | 00'))).toThrow(ProtocolError)
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
})
