// STUN subset (src/protocol/stun.ts) against the RFC 5769 test vectors, round trips, the
// demultiplexing test that keeps STUN, rendezvous frames and UDX apart, and fuzzing.
import { describe, expect, it } from 'vitest'
import { ProtocolError } from '../../../src/protocol/errors.js'
import { encode } from '../../../src/protocol/rendezvous.js'
import {
  decodeStun,
  encodeBindingRequest,
  encodeBindingSuccess,
  isStun,
  STUN_HEADER_BYTES,
  STUN_MAGIC_COOKIE
} from '../../../src/protocol/stun.js'
import { fuzzEscapes, hex, prng, randBuf, randInt } from '../helpers.js'

const RFC5769_TXID = hex('b7e7a701 bc34d686 fa87dfae')

// RFC 5769 §2.2 Sample IPv4 Response (SOFTWARE, XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY, FINGERPRINT).
const RFC5769_IPV4_RESPONSE = hex(`
  01 01 00 3c  21 12 a4 42  b7 e7 a7 01  bc 34 d6 86  fa 87 df ae
  80 22 00 0b  74 65 73 74  20 76 65 63  74 6f 72 20
  00 20 00 08  00 01 a1 47  e1 12 a6 43
  00 08 00 14  2b 91 f5 99  fd 9e 90 c3  8c 74 89 f9  2a f9 ba 53  f0 6b e7 d7
  80 28 00 04  c0 7d 4c 96`)

// RFC 5769 §2.3 Sample IPv6 Response.
const RFC5769_IPV6_RESPONSE = hex(`
  01 01 00 48  21 12 a4 42  b7 e7 a7 01  bc 34 d6 86  fa 87 df ae
  80 22 00 0b  74 65 73 74  20 76 65 63  74 6f 72 20
  00 20 00 14  00 02 a1 47  01 13 a9 fa  a5 d3 f1 79  bc 25 f4 b5  be d2 b9 d9
  00 08 00 14  a3 82 95 4e  4b e6 7b f1  17 84 c9 7c  82 92 c2 75  bf e3 ed 41
  80 28 00 04  c8 fb 0b 4c`)

const TXID = hex('0102030405060708090a0b0c')

describe('STUN: RFC 5769 test vectors', () => {
  it('§2.2 IPv4 response: XOR-MAPPED-ADDRESS is 192.0.2.1:32853; other attributes are skipped', () => {
    const m = decodeStun(RFC5769_IPV4_RESPONSE)
    expect(m.method).toBe('binding-success')
    expect(Buffer.from(m.transactionId).equals(RFC5769_TXID)).toBe(true)
    expect(m.mapped).toEqual({ host: '192.0.2.1', port: 32853 })
    expect(m.responseOrigin).toBeNull()
    expect(m.otherAddress).toBeNull()
  })

  it('§2.3 IPv6 response: XOR-MAPPED-ADDRESS is [2001:db8:1234:5678:11:2233:4455:6677]:32853', () => {
    const m = decodeStun(RFC5769_IPV6_RESPONSE)
    expect(m.method).toBe('binding-success')
    expect(Buffer.from(m.transactionId).equals(RFC5769_TXID)).toBe(true)
    expect(m.mapped).toEqual({ host: '2001:db8:1234:5678:11:2233:4455:6677', port: 32853 })
  })

  it('our Binding success for the same address and transaction carries the RFC 5769 XOR-MAPPED-ADDRESS bytes', () => {
    const ours = encodeBindingSuccess(RFC5769_TXID, { host: '192.0.2.1', port: 32853 })
    expect(ours.toString('hex')).toBe(hex('0101 000c 2112a442 b7e7a701bc34d686fa87dfae | 0020 0008 0001 a147 e112a643').toString('hex'))
    const ours6 = encodeBindingSuccess(RFC5769_TXID, { host: '2001:db8:1234:5678:11:2233:4455:6677', port: 32853 })
    expect(ours6.subarray(STUN_HEADER_BYTES).toString('hex')).toBe(
      hex('0020 0014 0002 a147 0113a9fa a5d3f179 bc25f4b5 bed2b9d9').toString('hex')
    )
  })
})

describe('STUN: requests and responses', () => {
  it('a Binding request is a bare 20-byte header (RFC 8489 §6)', () => {
    const req = encodeBindingRequest(TXID)
    expect(req.toString('hex')).toBe('000100002112a442' + TXID.toString('hex'))
    const m = decodeStun(req)
    expect(m).toMatchObject({ method: 'binding-request', changeIp: false, changePort: false, mapped: null })
    expect(Buffer.from(m.transactionId).equals(TXID)).toBe(true)
  })

  it('CHANGE-REQUEST flags (RFC 5780 §7.2) round-trip, and an empty change adds no attribute', () => {
    expect(encodeBindingRequest(TXID, {})).toHaveLength(20)
    expect(encodeBindingRequest(TXID, { ip: false, port: false })).toHaveLength(20)
    const both = encodeBindingRequest(TXID, { ip: true, port: true })
    expect(both.subarray(20).toString('hex')).toBe('0003000400000006')
    expect(decodeStun(both)).toMatchObject({ method: 'binding-request', changeIp: true, changePort: true })
    expect(decodeStun(encodeBindingRequest(TXID, { ip: true }))).toMatchObject({ changeIp: true, changePort: false })
    expect(decodeStun(encodeBindingRequest(TXID, { port: true }))).toMatchObject({ changeIp: false, changePort: true })
  })

  it('a Binding success round-trips mapped, RESPONSE-ORIGIN and OTHER-ADDRESS, IPv4 and IPv6', () => {
    const cases = [
      { mapped: { host: '203.0.113.9', port: 1 }, extra: {} },
      { mapped: { host: '10.1.2.3', port: 65535 }, extra: { responseOrigin: { host: '198.51.100.1', port: 3478 }, otherAddress: { host: '198.51.100.2', port: 3479 } } },
      { mapped: { host: '2001:db8::9', port: 40000 }, extra: { responseOrigin: { host: '2001:db8::1', port: 3478 }, otherAddress: { host: '::1', port: 3479 } } },
      { mapped: { host: '::', port: 5 }, extra: {} }
    ]
    for (const { mapped, extra } of cases) {
      const bytes = encodeBindingSuccess(TXID, mapped, extra)
      const m = decodeStun(bytes)
      expect(m.method).toBe('binding-success')
      expect(m.mapped).toEqual(mapped)
      expect(m.responseOrigin).toEqual(extra.responseOrigin ?? null)
      expect(m.otherAddress).toEqual(extra.otherAddress ?? null)
      expect(bytes.readUInt16BE(2)).toBe(bytes.length - STUN_HEADER_BYTES) // header length field is honest
    }
  })

  it('an IPv4 Binding success is 32 bytes, as RFC 8489 fixes it for a 20-byte request', () => {
    expect(encodeBindingSuccess(TXID, { host: '255.255.255.255', port: 65535 })).toHaveLength(32)
  })

  it('MAPPED-ADDRESS (RFC 3489) is used only when no XOR-MAPPED-ADDRESS is present', () => {
    const plain = hex('0101 000c 2112a442 0102030405060708090a0b0c | 0001 0008 0001 1f90 c0000201')
    expect(decodeStun(plain).mapped).toEqual({ host: '192.0.2.1', port: 8080 })
    const both = hex(
      '0101 0018 2112a442 0102030405060708090a0b0c | 0001 0008 0001 1f90 c0000201 | 0020 0008 0001 a147 e112a643'
    )
    // XOR value decoded with this txid: port 0xa147 ^ 0x2112 = 32853, address e112a643 ^ 2112a442 = 192.0.2.1.
    expect(decodeStun(both).mapped).toEqual({ host: '192.0.2.1', port: 32853 })
  })

  it('other STUN methods decode as "other"', () => {
    const err = hex('0111 0000 2112a442 0102030405060708090a0b0c')
    expect(decodeStun(err).method).toBe('other')
  })

  it('refuses bad lengths, truncated attributes and unknown families with ProtocolError', () => {
    expect(() => decodeStun(hex('0101 0003 2112a442 0102030405060708090a0b0c 000000'))).toThrow(ProtocolError) // length % 4
    expect(() => decodeStun(hex('0101 0008 2112a442 0102030405060708090a0b0c 0020 0008'))).toThrow(ProtocolError) // length past end
    expect(() => decodeStun(hex('0101 0008 2112a442 0102030405060708090a0b0c 0020 0008 0001 a147'))).toThrow(ProtocolError) // attr past end
    expect(() => decodeStun(hex('0101 000c 2112a442 0102030405060708090a0b0c 0020 0008 0003 a147 e112a643'))).toThrow(ProtocolError) // family 3
    expect(() => decodeStun(hex('0101 0008 2112a442 0102030405060708090a0b0c 0020 0004 0001 a147'))).toThrow(ProtocolError) // no address
  })
})

describe('STUN: demultiplexing on the shared UDP socket', () => {
  it('recognises STUN requests and responses', () => {
    expect(isStun(encodeBindingRequest(TXID))).toBe(true)
    expect(isStun(RFC5769_IPV4_RESPONSE)).toBe(true)
  })

  it('rejects our rendezvous frames, UDX-like packets and short or cookie-less buffers', () => {
    for (const m of [
      encode({ type: 'challenge', nonce: Buffer.alloc(32), serverTime: 1 }),
      encode({ type: 'heartbeat', token: Buffer.alloc(16), seq: 1, key: Buffer.alloc(32, 7) }),
      encode({ type: 'bye' })
    ]) {
      expect(isStun(m)).toBe(false)
      expect(() => decodeStun(m)).toThrow(ProtocolError)
    }
    // UDX packets start with 0xFF; even with the cookie in place they are not STUN.
    const udx = Buffer.concat([hex('ff 01 0000'), hex('2112a442'), Buffer.alloc(24)])
    expect(isStun(udx)).toBe(false)
    // Top bits 01/10/11 are never STUN (RFC 8489 §5), even with the cookie.
    for (const first of [0x40, 0x80, 0xc0]) {
      const b = Buffer.from(encodeBindingRequest(TXID))
      b[0] = first
      expect(isStun(b)).toBe(false)
    }
    expect(isStun(encodeBindingRequest(TXID).subarray(0, 19))).toBe(false)
    const noCookie = Buffer.from(encodeBindingRequest(TXID))
    noCookie.writeUInt32BE(STUN_MAGIC_COOKIE ^ 1, 4)
    expect(isStun(noCookie)).toBe(false)
  })
})

describe('STUN: fuzz', () => {
  const SEED = 0x5354554e

  function* inputs(): Generator<Buffer> {
    const rand = prng(SEED)
    const valid = [
      RFC5769_IPV4_RESPONSE,
      RFC5769_IPV6_RESPONSE,
      encodeBindingRequest(TXID, { ip: true, port: true }),
      encodeBindingSuccess(TXID, { host: '2001:db8::9', port: 4 }, { responseOrigin: { host: '1.2.3.4', port: 5 }, otherAddress: { host: '::1', port: 6 } })
    ]
    for (let i = 0; i < 20_000; i++) {
      const kind = i % 4
      if (kind === 0) {
        yield randBuf(rand, randInt(rand, 0, 300))
      } else if (kind === 1) {
        // A plausible header (top bits 00, cookie) with random length and attributes.
        const b = randBuf(rand, randInt(rand, 20, 300))
        b[0]! &= 0x3f
        b.writeUInt32BE(STUN_MAGIC_COOKIE, 4)
        if (rand() < 0.5) b.writeUInt16BE((b.length - 20) & ~3, 2)
        yield b
      } else if (kind === 2) {
        // Rendezvous magic, a random type, random body.
        const b = randBuf(rand, randInt(rand, 4, 300))
        b[0] = 0x4e
        b[1] = 0x44
        b[2] = 0x01
        b[3] = randInt(rand, 0, 17)
        yield b
      } else {
        const v = valid[randInt(rand, 0, valid.length - 1)]!
        const b = rand() < 0.5 ? Buffer.from(v.subarray(0, randInt(rand, 0, v.length))) : Buffer.from(v)
        for (let k = randInt(rand, 0, 3); k > 0 && b.length > 20; k--) b[randInt(rand, 2, b.length - 1)] = randInt(rand, 0, 255)
        yield b
      }
    }
  }

  it('20,000 random, header-shaped, rendezvous-shaped and mutated buffers either decode or throw ProtocolError', () => {
    const escapes = fuzzEscapes(inputs(), decodeStun)
    expect(escapes.slice(0, 3), `seed ${SEED}: ${escapes.length} escapes`).toEqual([])
  })
})
