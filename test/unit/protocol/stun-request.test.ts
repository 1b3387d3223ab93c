// What the STUN server makes of a request (src/protocol/stun-request.ts): golden bytes for
// each rule (RFC 3489 requests, RESPONSE-PORT, PADDING, FINGERPRINT, 420 and 400 errors),
// the RFC 5769 sample request, the size bound, and fuzzing.
import { describe, expect, it } from 'vitest'
import { ProtocolError } from '../../../src/protocol/errors.js'
import {
  decodeStunRequest,
  encodeBindingAnswer,
  encodeBindingError,
  encodeBindingRequestWith,
  isClassicStunRequest,
  isStunRequestShaped,
  maxStunAnswerBytes,
  MAX_UNKNOWN_LISTED,
  type StunRequest
} from '../../../src/protocol/stun-request.js'
import { decodeStun, encodeBindingRequest, STUN_ATTR } from '../../../src/protocol/stun.js'
import { fuzzEscapes, hex, prng, randBuf, randInt } from '../helpers.js'

const TXID = hex('0102030405060708090a0b0c')
const CLASSIC_ID = hex('a1a2a3a4 0102030405060708090a0b0c')
const MAPPED = { host: '192.0.2.1', port: 32853 }
const ORIGIN = { host: '198.51.100.1', port: 3478 }
const OTHER = { host: '198.51.100.2', port: 3479 }

type Binding = Extract<StunRequest, { kind: 'binding' }>
type Failure = Extract<StunRequest, { kind: 'error' }>

function binding(buf: Uint8Array): Binding {
  const r = decodeStunRequest(buf)
  expect(r.kind).toBe('binding')
  return r as Binding
}

function failure(buf: Uint8Array): Failure {
  const r = decodeStunRequest(buf)
  expect(r.kind).toBe('error')
  return r as Failure
}

// RFC 5769 §2.1 Sample Request: SOFTWARE, PRIORITY, ICE-CONTROLLED, USERNAME,
// MESSAGE-INTEGRITY, FINGERPRINT (e57a3bcf).
const RFC5769_REQUEST = hex(`
  00 01 00 58  21 12 a4 42  b7 e7 a7 01  bc 34 d6 86  fa 87 df ae
  80 22 00 10  53 54 55 4e  20 74 65 73  74 20 63 6c  69 65 6e 74
  00 24 00 04  6e 00 01 ff
  80 29 00 08  93 2f f9 b1  51 26 3b 36
  00 06 00 09  65 76 74 6a  3a 68 36 76  59 20 20 20
  00 08 00 14  9a ea a7 0c  bf d8 cb 56  78 1e f2 b5  b2 d3 f2 49  c1 b5 71 a2
  80 28 00 04  e5 7a 3b cf`)

describe('STUN requests: RFC 8489 Binding', () => {
  it('a bare request gets XOR-MAPPED-ADDRESS, RESPONSE-ORIGIN and OTHER-ADDRESS: 56 bytes', () => {
    const req = binding(encodeBindingRequest(TXID))
    expect(req).toMatchObject({ classic: false, changeIp: false, changePort: false, responsePort: null, padding: false, fingerprint: false, bytes: 20 })
    const answer = encodeBindingAnswer(req, { mapped: MAPPED, responseOrigin: ORIGIN, otherAddress: OTHER })
    expect(answer.toString('hex')).toBe(
      hex(`0101 0024 2112a442 0102030405060708090a0b0c
           | 0020 0008 0001 a147 e112a643
           | 802b 0008 0001 0d96 c6336401
           | 802c 0008 0001 0d97 c6336402`).toString('hex')
    )
  })

  it('RESPONSE-PORT (RFC 5780 §7.5) is read, beside CHANGE-REQUEST', () => {
    // turnutils_stunclient's second request: RESPONSE-PORT = its port + 1, change IP and port.
    const bytes = hex('0001 0010 2112a442 0102030405060708090a0b0c | 0027 0004 c351 0000 | 0003 0004 00000006')
    expect(encodeBindingRequestWith(TXID, { responsePort: 50001, change: { ip: true, port: true } }).equals(bytes)).toBe(true)
    expect(binding(bytes)).toMatchObject({ responsePort: 50001, changeIp: true, changePort: true })
  })

  it('a request with FINGERPRINT gets FINGERPRINT back (CRC-32 ^ 0x5354554e over the message before it)', () => {
    const req = hex('0001 0008 2112a442 0102030405060708090a0b0c | 8028 0004 5b20f9cc')
    expect(encodeBindingRequestWith(TXID, { fingerprint: true }).equals(req)).toBe(true)
    const r = binding(req)
    expect(r.fingerprint).toBe(true)
    const answer = encodeBindingAnswer(r, { mapped: MAPPED })
    expect(answer.toString('hex')).toBe(hex('0101 0014 2112a442 0102030405060708090a0b0c | 0020 0008 0001 a147 e112a643 | 8028 0004 5089d898').toString('hex'))
    expect(decodeStun(answer).mapped).toEqual(MAPPED) // our own client checks it too
  })

  it('a bad FINGERPRINT, or one that is not last, is not STUN: ProtocolError, never answered', () => {
    const bad = hex('0001 0008 2112a442 0102030405060708090a0b0c | 8028 0004 5b20f9cd')
    expect(() => decodeStunRequest(bad)).toThrow(ProtocolError)
    expect(() => decodeStunRequest(bad)).toThrow(/FINGERPRINT/)
    const notLast = hex('0001 0010 2112a442 0102030405060708090a0b0c | 8028 0004 5b20f9cc | 0003 0004 00000000')
    expect(() => decodeStunRequest(notLast)).toThrow(/after FINGERPRINT/)
    // The same check guards our client: a response whose FINGERPRINT is off is dropped.
    const answer = Buffer.from(encodeBindingAnswer(binding(encodeBindingRequestWith(TXID, { fingerprint: true })), { mapped: MAPPED }))
    answer[answer.length - 1]! ^= 1
    expect(() => decodeStun(answer)).toThrow(ProtocolError)
  })

  it('RFC 5769 §2.1: the FINGERPRINT checks out, and USERNAME, PRIORITY and MESSAGE-INTEGRITY make it a 420', () => {
    const r = failure(RFC5769_REQUEST)
    // ICE-CONTROLLED (0x8029) and SOFTWARE (0x8022) are comprehension-optional: not listed.
    expect(r).toMatchObject({ code: 420, unknown: [0x0024, 0x0006, 0x0008], fingerprint: true })
    const answer = encodeBindingError(r)
    expect(answer.length).toBeLessThanOrEqual(RFC5769_REQUEST.length)
    expect(answer.readUInt16BE(0)).toBe(0x0111)
  })
})

describe('STUN requests: errors', () => {
  it('an unknown comprehension-required attribute: 420 with UNKNOWN-ATTRIBUTES (RFC 8489 §6.3.1)', () => {
    const req = hex('0001 0008 2112a442 0102030405060708090a0b0c | 0abc 0004 deadbeef')
    const r = failure(req)
    expect(r).toMatchObject({ code: 420, unknown: [0x0abc] })
    // ERROR-CODE: class 4, number 20, "Unknown Attribute" (17 bytes, 3 of padding); UNKNOWN-ATTRIBUTES: 0x0abc, 2 of padding.
    expect(encodeBindingError(r).toString('hex')).toBe(
      hex(`0111 0024 2112a442 0102030405060708090a0b0c
           | 0009 0015 0000 0414 556e6b6e6f776e20417474726962757465 000000
           | 000a 0002 0abc 0000`).toString('hex')
    )
  })

  it('an unknown comprehension-optional attribute (≥ 0x8000) is ignored: SOFTWARE gets a success', () => {
    const req = encodeBindingRequestWith(TXID, { extra: [{ type: 0x8022, value: Buffer.from('stock client') }] })
    expect(binding(req).kind).toBe('binding')
  })

  it('lists each unknown type once and at most MAX_UNKNOWN_LISTED of them', () => {
    const extra = Array.from({ length: 12 }, (_, i) => ({ type: 0x7000 + (i % 10), value: new Uint8Array(0) }))
    const r = failure(encodeBindingRequestWith(TXID, { extra }))
    expect(r.unknown).toEqual([0x7000, 0x7001, 0x7002, 0x7003, 0x7004, 0x7005, 0x7006, 0x7007].slice(0, MAX_UNKNOWN_LISTED))
  })

  it('RFC 3489 RESPONSE-ADDRESS is refused with a 420 (RFC 5389 §12.2): answers never go to another address', () => {
    const req = hex('0001 000c a1a2a3a4 0102030405060708090a0b0c | 0002 0008 0001 0035 cb007109')
    expect(failure(req)).toMatchObject({ classic: true, code: 420, unknown: [STUN_ATTR.RESPONSE_ADDRESS] })
  })

  it('400 Bad Request: PADDING with RESPONSE-PORT (RFC 5780 §6.1), RESPONSE-PORT 0 or short, CHANGE-REQUEST not 4 bytes', () => {
    const both = failure(encodeBindingRequestWith(TXID, { responsePort: 4000, padding: 8 }))
    expect(both).toMatchObject({ code: 400, unknown: [] })
    expect(encodeBindingError(both).toString('hex')).toBe(
      hex('0111 0014 2112a442 0102030405060708090a0b0c | 0009 000f 0000 0400 42616420526571756573 74 00').toString('hex')
    )
    expect(failure(encodeBindingRequestWith(TXID, { responsePort: 0 })).code).toBe(400)
    expect(failure(hex('0001 0008 2112a442 0102030405060708090a0b0c | 0027 0002 0fa0 0000')).code).toBe(400)
    expect(failure(hex('0001 0008 2112a442 0102030405060708090a0b0c | 0003 0002 0006 0000')).code).toBe(400)
  })

  it('an error to a request with FINGERPRINT carries FINGERPRINT', () => {
    const r = failure(encodeBindingRequestWith(TXID, { extra: [{ type: 0x0abc, value: new Uint8Array(4) }], fingerprint: true }))
    const answer = encodeBindingError(r)
    expect(answer.readUInt16BE(answer.length - 8)).toBe(STUN_ATTR.FINGERPRINT)
    expect(decodeStun(answer).method).toBe('other') // decodes: the FINGERPRINT checks out
  })
})

describe('STUN requests: RFC 3489 (no magic cookie)', () => {
  // Debian's `stun` client (vovida 0.97): an empty CHANGE-REQUEST on its test I.
  const VOVIDA_TEST_I = hex('0001 0008 a1a2a3a4 0102030405060708090a0b0c | 0003 0004 00000000')

  it('is recognised only as an exact-length Binding request', () => {
    expect(isClassicStunRequest(VOVIDA_TEST_I)).toBe(true)
    expect(isStunRequestShaped(VOVIDA_TEST_I)).toBe(true)
    expect(isClassicStunRequest(Buffer.concat([VOVIDA_TEST_I, hex('00')]))).toBe(false) // trailing byte
    const response = Buffer.from(VOVIDA_TEST_I)
    response[1] = 0x01 + 0x00
    response[0] = 0x01
    expect(isClassicStunRequest(response)).toBe(false) // a response
    expect(isClassicStunRequest(encodeBindingRequest(TXID))).toBe(false) // has the cookie: RFC 8489
    expect(isStunRequestShaped(hex('4e440110 00000000 00000000 00000000 00000000'))).toBe(false) // a rendezvous frame
  })

  it('gets MAPPED-ADDRESS, SOURCE-ADDRESS and CHANGED-ADDRESS with its 128-bit ID echoed, no XOR', () => {
    const r = binding(VOVIDA_TEST_I)
    expect(r).toMatchObject({ classic: true, changeIp: false, changePort: false })
    expect(Buffer.from(r.transactionId).equals(CLASSIC_ID)).toBe(true)
    expect(encodeBindingAnswer(r, { mapped: MAPPED, responseOrigin: ORIGIN, otherAddress: OTHER }).toString('hex')).toBe(
      hex(`0101 0024 a1a2a3a4 0102030405060708090a0b0c
           | 0001 0008 0001 8055 c0000201
           | 0004 0008 0001 0d96 c6336401
           | 0005 0008 0001 0d97 c6336402`).toString('hex')
    )
    // Without RFC 5780 sockets: MAPPED-ADDRESS alone.
    expect(encodeBindingAnswer(r, { mapped: MAPPED })).toHaveLength(32)
  })

  it('reads CHANGE-REQUEST; RESPONSE-PORT and PADDING are RFC 5780 only (a 420 here)', () => {
    expect(binding(hex('0001 0008 a1a2a3a4 0102030405060708090a0b0c | 0003 0004 00000004'))).toMatchObject({ changeIp: true, changePort: false })
    expect(failure(hex('0001 0008 a1a2a3a4 0102030405060708090a0b0c | 0027 0004 0fa0 0000')).unknown).toEqual([STUN_ATTR.RESPONSE_PORT])
  })
})

describe('STUN requests: PADDING and the size bound', () => {
  it('PADDING comes back, but never makes the answer longer than the request', () => {
    // turnutils_stunclient's third request: change IP and port, 1500 bytes of PADDING.
    const req = encodeBindingRequestWith(TXID, { change: { ip: true, port: true }, padding: 1500 })
    const r = binding(req)
    expect(r.padding).toBe(true)
    const answer = encodeBindingAnswer(r, { mapped: MAPPED, responseOrigin: ORIGIN, otherAddress: OTHER })
    expect(answer.length).toBe(req.length)
    expect(answer.readUInt16BE(56)).toBe(STUN_ATTR.PADDING)
    expect(decodeStun(answer).mapped).toEqual(MAPPED)
    // A token PADDING gets a token PADDING (an empty one), within the bound.
    const small = encodeBindingRequestWith(TXID, { padding: 0 })
    const a = encodeBindingAnswer(binding(small), { mapped: MAPPED, responseOrigin: ORIGIN, otherAddress: OTHER })
    expect(a.length).toBe(60)
    expect(a.length).toBeLessThanOrEqual(maxStunAnswerBytes(small.length, MAPPED))
  })

  it('over 2,000 random well-formed requests, every answer stays within maxStunAnswerBytes (IPv4 and IPv6)', () => {
    const rand = prng(0x424f554e)
    const types = [STUN_ATTR.CHANGE_REQUEST, STUN_ATTR.RESPONSE_PORT, STUN_ATTR.PADDING, STUN_ATTR.RESPONSE_ADDRESS, 0x0abc, 0x8022, 0x7fff]
    const v6 = { host: '2001:db8::1', port: 1 }
    let answered = 0
    for (let i = 0; i < 2_000; i++) {
      const extra = Array.from({ length: randInt(rand, 0, 5) }, () => ({ type: types[randInt(rand, 0, types.length - 1)]!, value: randBuf(rand, randInt(rand, 0, 12)) }))
      const classic = rand() < 0.3
      const req = encodeBindingRequestWith(TXID, { extra, fingerprint: !classic && rand() < 0.5 })
      const buf = classic ? Buffer.concat([hex('00010000 a1a2a3a4'), req.subarray(8)]) : req
      if (classic) buf.writeUInt16BE(buf.length - 20, 2)
      let r: StunRequest
      try {
        r = decodeStunRequest(buf)
      } catch (err) {
        expect(err).toBeInstanceOf(ProtocolError)
        continue
      }
      for (const mapped of [MAPPED, v6]) {
        const origin = mapped === v6 ? { responseOrigin: v6, otherAddress: v6 } : { responseOrigin: ORIGIN, otherAddress: OTHER }
        const answer = r.kind === 'binding' ? encodeBindingAnswer(r, { mapped, ...origin }) : r.kind === 'error' ? encodeBindingError(r) : null
        if (!answer) continue
        answered++
        expect(answer.length, buf.toString('hex')).toBeLessThanOrEqual(maxStunAnswerBytes(buf.length, mapped))
      }
    }
    expect(answered).toBeGreaterThan(2_000)
  })

  it('20,000 random and mutated buffers either decode or throw ProtocolError', () => {
    const rand = prng(0x52455155)
    const seeds = [RFC5769_REQUEST, encodeBindingRequestWith(TXID, { responsePort: 9, change: { ip: true }, fingerprint: true }), hex('0001 0008 a1a2a3a4 0102030405060708090a0b0c 0003 0004 00000006')]
    function* inputs(): Generator<Buffer> {
      for (let i = 0; i < 20_000; i++) {
        if (i % 2) {
          const b = randBuf(rand, randInt(rand, 20, 120))
          b[0]! &= 0x3f
          if (rand() < 0.5) b.writeUInt32BE(0x2112a442, 4)
          if (rand() < 0.7) b.writeUInt16BE((b.length - 20) & ~3, 2)
          yield b
        } else {
          const b = Buffer.from(seeds[randInt(rand, 0, seeds.length - 1)]!)
          for (let k = randInt(rand, 1, 3); k > 0; k--) b[randInt(rand, 20, b.length - 1)] = randInt(rand, 0, 255)
          yield b
        }
      }
    }
    const escapes = fuzzEscapes(inputs(), (b) => (isStunRequestShaped(b) ? decodeStunRequest(b) : null))
    expect(escapes.slice(0, 3)).toEqual([])
  })
})
