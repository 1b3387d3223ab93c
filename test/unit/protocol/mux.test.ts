// Tunnel multiplexing frames (src/protocol/mux.ts): golden bytes written by hand from the
// layout comment at the top of that file, round trips for every frame type, the DATA
// size cap, and fuzzing that may only throw ProtocolError.
import { describe, expect, it } from 'vitest'
import { ProtocolError } from '../../../src/protocol/errors.js'
import { decodeMux, encodeData, encodeMux, MAX_DATA_BYTES, type MuxFrame } from '../../../src/protocol/mux.js'
import { errorCode, fuzzEscapes, hex, prng, randBuf, randInt, seq } from '../helpers.js'

/** Replaces byte arrays by hex so decoded frames (Buffer views) compare to what was encoded. */
function norm(f: MuxFrame): unknown {
  if (f.type === 'resume') return { ...f, tunnelId: Buffer.from(f.tunnelId).toString('hex') }
  return f.type === 'data' ? { ...f, data: Buffer.from(f.data).toString('hex') } : f
}


const SAMPLES: MuxFrame[] = [
  { type: 'open', channel: 1, port: 8080, window: 4 * 1024 * 1024, service: '' },
  { type: 'open', channel: 0xffffffff, port: 65535, window: 0xffffffff, service: '' },
  { type: 'open', channel: 9, port: 0, window: 1024, service: 'msg' },
  { type: 'open-ok', channel: 2, window: 0 },
  { type: 'data', channel: 3, data: seq(0, 100) },
  { type: 'data', channel: 4, data: new Uint8Array(0) },
  { type: 'window', channel: 5, increment: 256 * 1024 },
  { type: 'fin', channel: 6 },
  { type: 'reset', channel: 7, code: 'NOT_EXPOSED', message: 'port 22 is not exposed to alice' },
  { type: 'reset', channel: 8, code: '', message: '' },
  { type: 'ping', channel: 0, seq: 0 },
  { type: 'pong', channel: 0, seq: 0xffffffff },
  { type: 'goodbye', channel: 0, reason: 'daemon shutting down' },
  { type: 'goodbye', channel: 0, reason: 'ünïcødé ✓' },
  { type: 'switch', channel: 0 },
  { type: 'ack', channel: 0, received: 0 },
  { type: 'ack', channel: 0, received: 0xffffffff },
  { type: 'resume', channel: 0, tunnelId: seq(1, 16), received: 12345 }
]

describe('mux codec: golden bytes', () => {
  const cases: Array<[string, MuxFrame, string]> = [
    ['OPEN', { type: 'open', channel: 1, port: 8080, window: 0x00400000, service: '' }, '01 | 00000001 | 1f90 | 00400000 | 00'],
    ['OPEN (service)', { type: 'open', channel: 3, port: 0, window: 0x00400000, service: 'msg' }, '01 | 00000003 | 0000 | 00400000 | 03 6d7367'],
    ['OPEN_OK', { type: 'open-ok', channel: 2, window: 0x00400000 }, '02 | 00000002 | 00400000'],
    ['SWITCH', { type: 'switch', channel: 0 }, '0a | 00000000'],
    ['DATA', { type: 'data', channel: 0x01020304, data: hex('cafe') }, '03 | 01020304 | cafe'],
    ['WINDOW', { type: 'window', channel: 3, increment: 0x00040000 }, '04 | 00000003 | 00040000'],
    ['FIN', { type: 'fin', channel: 0xfffffffe }, '05 | fffffffe'],
    ['RESET', { type: 'reset', channel: 5, code: 'NOT_EXPOSED', message: 'no' }, '06 | 00000005 | 0b 4e4f545f4558504f534544 | 02 6e6f'],
    ['PING', { type: 'ping', channel: 0, seq: 0xdeadbeef }, '07 | 00000000 | deadbeef'],
    ['PONG', { type: 'pong', channel: 0, seq: 1 }, '08 | 00000000 | 00000001'],
    ['GOODBYE', { type: 'goodbye', channel: 0, reason: 'bye' }, '09 | 00000000 | 03 627965'],
    ['ACK', { type: 'ack', channel: 0, received: 0x01020304 }, '0b | 00000000 | 01020304'],
    ['RESUME', { type: 'resume', channel: 0, tunnelId: hex('000102030405060708090a0b0c0d0e0f'), received: 7 }, '0c | 00000000 | 000102030405060708090a0b0c0d0e0f | 00000007']
  ]

  for (const [name, frame, golden] of cases) {
    it(`${name} encodes to the documented bytes and decodes back`, () => {
      expect(encodeMux(frame).toString('hex')).toBe(hex(golden).toString('hex'))
      expect(norm(decodeMux(hex(golden)))).toEqual(norm(frame))
    })
  }

  it('an ACK\'s count and a WINDOW\'s increment are written mod 2^32 (counts wrap)', () => {
    expect(encodeMux({ type: 'ack', channel: 0, received: 2 ** 32 + 5 }).toString('hex')).toBe(hex('0b | 00000000 | 00000005').toString('hex'))
    expect(encodeMux({ type: 'window', channel: 1, increment: -1 }).toString('hex')).toBe(hex('04 | 00000001 | ffffffff').toString('hex'))
  })

  it('encodeData (the hot path) writes the same bytes as encodeMux', () => {
    const data = seq(7, 300)
    expect(encodeData(9, data).toString('hex')).toBe(encodeMux({ type: 'data', channel: 9, data }).toString('hex'))
  })
})

describe('mux codec: round trips and limits', () => {
  it('every sample frame survives encode → decode', () => {
    for (const f of SAMPLES) expect(norm(decodeMux(encodeMux(f))), f.type).toEqual(norm(f))
  })

  it('tolerates trailing bytes after every fixed-size frame', () => {
    const rand = prng(11)
    for (const f of SAMPLES.filter((s) => s.type !== 'data')) {
      const bytes = Buffer.concat([encodeMux(f), randBuf(rand, randInt(rand, 1, 30))])
      expect(norm(decodeMux(bytes)), f.type).toEqual(norm(f))
    }
  })

  it('every strict prefix of a non-DATA frame is refused with ProtocolError (OPEN without its optional service excepted)', () => {
    for (const f of SAMPLES.filter((s) => s.type !== 'data')) {
      const bytes = encodeMux(f)
      // An OPEN that ends right after its window is a valid OPEN to a TCP port (service '').
      const valid = f.type === 'open' ? [11] : []
      for (let n = 0; n < bytes.length; n++) {
        if (valid.includes(n)) expect(decodeMux(bytes.subarray(0, n))).toMatchObject({ type: 'open', service: '' })
        else expect(() => decodeMux(bytes.subarray(0, n)), `${f.type} cut at ${n}`).toThrow(ProtocolError)
      }
    }
  })

  it(`DATA of exactly MAX_DATA_BYTES (${MAX_DATA_BYTES}) decodes; one byte more is BAD_REQUEST`, () => {
    const max = Buffer.alloc(MAX_DATA_BYTES, 0xab)
    const f = decodeMux(encodeData(1, max))
    expect(f.type).toBe('data')
    if (f.type === 'data') expect(f.data.length).toBe(MAX_DATA_BYTES)
    expect(errorCode(() => decodeMux(encodeData(1, Buffer.alloc(MAX_DATA_BYTES + 1))), ProtocolError)).toBe('BAD_REQUEST')
  })

  it('refuses unknown frame types (0, 13, 255) and empty input with BAD_REQUEST', () => {
    expect(errorCode(() => decodeMux(hex('00 | 00000001')), ProtocolError)).toBe('BAD_REQUEST')
    expect(errorCode(() => decodeMux(hex('0d | 00000001 | 00000000')), ProtocolError)).toBe('BAD_REQUEST')
    expect(errorCode(() => decodeMux(hex('ff | 00000001')), ProtocolError)).toBe('BAD_REQUEST')
    expect(errorCode(() => decodeMux(Buffer.alloc(0)), ProtocolError)).toBe('BAD_REQUEST')
  })

  it('RESET and GOODBYE cut long text to fit their length bytes (code 64, message/reason 255 bytes)', () => {
    const r = decodeMux(encodeMux({ type: 'reset', channel: 1, code: 'C'.repeat(100), message: 'm'.repeat(300) }))
    expect(r).toEqual({ type: 'reset', channel: 1, code: 'C'.repeat(64), message: 'm'.repeat(255) })
    const g = decodeMux(encodeMux({ type: 'goodbye', channel: 0, reason: 'r'.repeat(300) }))
    expect(g).toEqual({ type: 'goodbye', channel: 0, reason: 'r'.repeat(255) })
  })

  it('RESET and GOODBYE with long non-ASCII text are cut on a UTF-8 boundary, not thrown', () => {
    const g = decodeMux(encodeMux({ type: 'goodbye', channel: 0, reason: 'é'.repeat(200) }))
    expect(g).toEqual({ type: 'goodbye', channel: 0, reason: 'é'.repeat(127) }) // 254 bytes: a 128th would need 256
    const r = decodeMux(encodeMux({ type: 'reset', channel: 1, code: 'CONNECT_FAILED', message: '✓'.repeat(100) }))
    expect(r).toMatchObject({ type: 'reset', code: 'CONNECT_FAILED', message: '✓'.repeat(85) }) // 3 bytes each
  })
})

describe('mux codec: fuzz', () => {
  const SEED = 0x6d757821

  function* fuzzInputs(): Generator<Buffer> {
    const rand = prng(SEED)
    const valid = SAMPLES.map((f) => encodeMux(f))
    for (let i = 0; i < 20_000; i++) {
      const kind = i % 4
      if (kind === 0) {
        yield randBuf(rand, randInt(rand, 0, 80))
      } else if (kind === 1) {
        // A (mostly) known type and a random body, sometimes longer than MAX_DATA_BYTES.
        const big = rand() < 0.01
        const b = big ? Buffer.alloc(MAX_DATA_BYTES + randInt(rand, 1, 64)) : randBuf(rand, randInt(rand, 1, 300))
        b[0] = randInt(rand, 0, 13)
        yield b
      } else {
        // A valid frame, truncated at a random point or with a few bytes changed.
        const v = valid[randInt(rand, 0, valid.length - 1)]!
        const b = kind === 2 ? Buffer.from(v.subarray(0, randInt(rand, 0, v.length))) : Buffer.from(v)
        if (kind === 3 && b.length > 0) for (let k = randInt(rand, 1, 4); k > 0; k--) b[randInt(rand, 0, b.length - 1)] = randInt(rand, 0, 255)
        yield b
      }
    }
  }

  it('20,000 random, type-prefixed, truncated and mutated frames either decode or throw ProtocolError', () => {
    const escapes = fuzzEscapes(fuzzInputs(), decodeMux)
    expect(escapes.slice(0, 3), `seed ${SEED}: ${escapes.length} inputs threw something else`).toEqual([])
  })

  it('RESET or GOODBYE text that is not valid UTF-8 is refused with ProtocolError BAD_REQUEST', () => {
    expect(errorCode(() => decodeMux(hex('06 | 00000001 | 01 ff | 00')), ProtocolError)).toBe('BAD_REQUEST')
    expect(errorCode(() => decodeMux(hex('09 | 00000000 | 02 c328')), ProtocolError)).toBe('BAD_REQUEST')
  })
})
