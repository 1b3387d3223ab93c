// Message and file-transfer control frames (src/protocol/transfer.ts): golden bytes written
// by hand from the layout comment at the top of that file, round trips, the length
// prefix on a byte stream, limits, and fuzzing that may only throw ProtocolError.
import { describe, expect, it } from 'vitest'
import { ProtocolError } from '../../../src/protocol/errors.js'
import { decodeTransfer, encodeTransfer, MAX_MESSAGE_BYTES, transferFrameLength, type TransferFrame } from '../../../src/protocol/transfer.js'
import { errorCode, fuzzEscapes, hex, prng, randBuf, randInt, seq } from '../helpers.js'

/** Byte arrays as hex, so decoded frames (Buffer views) compare to what was encoded. */
function norm(f: TransferFrame): unknown {
  return Object.fromEntries(Object.entries(f).map(([k, v]) => [k, v instanceof Uint8Array ? Buffer.from(v).toString('hex') : v]))
}


const ID32 = seq(0, 32)
const SHA = seq(0x80, 32)
const ID16 = seq(0xa0, 16)

const SAMPLES: TransferFrame[] = [
  { type: 'offer', transferId: ID32, size: 0, name: '' },
  { type: 'offer', transferId: ID32, size: 2 ** 48 - 1, name: '../../etc/evil' },
  { type: 'accept', offset: 0 },
  { type: 'accept', offset: 268_435_456 },
  { type: 'refuse', code: 'TOO_LARGE', message: '2 GiB is more than 1 GiB' },
  { type: 'done', name: 'report-1.pdf' },
  { type: 'message', messageId: ID16, sentAt: 1_763_863_200_000, text: 'hello ✓' },
  { type: 'message', messageId: ID16, sentAt: 0, text: 'x'.repeat(MAX_MESSAGE_BYTES) },
  { type: 'ack', messageId: ID16, duplicate: false },
  { type: 'ack', messageId: ID16, duplicate: true },
  { type: 'end', sha256: SHA }
]

describe('transfer codec: golden bytes', () => {
  const H = (type: string, len: string): string => `4e58 | 02 | ${type} | ${len}`
  const cases: Array<[string, TransferFrame, string]> = [
    ['OFFER', { type: 'offer', transferId: ID32, size: 0x010203040506, name: 'a.txt' }, `${H('01', '002c')} | ${seq(0, 32).toString('hex')} | 010203040506 | 05 612e747874`],
    ['ACCEPT', { type: 'accept', offset: 0x100000 }, `${H('02', '0006')} | 000000100000`],
    ['REFUSE', { type: 'refuse', code: 'NO_SPACE', message: 'full' }, `${H('03', '000e')} | 08 4e4f5f5350414345 | 04 66756c6c`],
    ['DONE', { type: 'done', name: 'b' }, `${H('04', '0002')} | 01 62`],
    ['MESSAGE', { type: 'message', messageId: ID16, sentAt: 0x0000deadbeef, text: 'hi' }, `${H('05', '001a')} | ${seq(0xa0, 16).toString('hex')} | 0000deadbeef | 0002 6869`],
    ['ACK', { type: 'ack', messageId: ID16, duplicate: false }, `${H('06', '0011')} | ${seq(0xa0, 16).toString('hex')} | 00`],
    ['ACK (duplicate)', { type: 'ack', messageId: ID16, duplicate: true }, `${H('06', '0011')} | ${seq(0xa0, 16).toString('hex')} | 01`],
    ['END', { type: 'end', sha256: SHA }, `${H('07', '0020')} | ${seq(0x80, 32).toString('hex')}`]
  ]
  for (const [name, frame, golden] of cases) {
    it(`${name} encodes to the documented bytes and decodes back`, () => {
      expect(encodeTransfer(frame).toString('hex')).toBe(hex(golden).toString('hex'))
      expect(norm(decodeTransfer(hex(golden)))).toEqual(norm(frame))
    })
  }
})

describe('transfer codec: round trips and framing', () => {
  it.each(SAMPLES.map((s) => [s.type, s] as const))('%s round-trips', (_, frame) => {
    const buf = encodeTransfer(frame)
    expect(transferFrameLength(buf)).toBe(buf.length)
    expect(norm(decodeTransfer(buf))).toEqual(norm(frame))
  })

  it('finds frame boundaries in a byte stream and tolerates trailing bytes (the file that follows)', () => {
    const a = encodeTransfer({ type: 'accept', offset: 7 })
    const stream = Buffer.concat([a, hex('deadbeef')])
    expect(transferFrameLength(stream.subarray(0, 5))).toBeNull()
    expect(transferFrameLength(stream)).toBe(a.length)
    expect(decodeTransfer(stream)).toEqual({ type: 'accept', offset: 7 })
  })

  it('refuses a bad magic, another version, an unknown type, a truncated body, bad UTF-8 and an oversized text', () => {
    expect(errorCode(() => transferFrameLength(hex('4e59 01 02 0006')), ProtocolError)).toBe('BAD_REQUEST')
    // Version 1 (digest in the OFFER) and anything newer than this natd.
    expect(errorCode(() => transferFrameLength(hex('4e58 01 02 0006')), ProtocolError)).toBe('BAD_VERSION')
    expect(errorCode(() => transferFrameLength(hex('4e58 03 02 0006')), ProtocolError)).toBe('BAD_VERSION')
    expect(errorCode(() => decodeTransfer(hex('4e58 02 09 0000')), ProtocolError)).toBe('BAD_REQUEST')
    expect(errorCode(() => decodeTransfer(hex('4e58 02 02 0006 0000')), ProtocolError)).toBe('BAD_REQUEST')
    expect(errorCode(() => decodeTransfer(hex('4e58 02 04 0002 01 ff')), ProtocolError)).toBe('BAD_REQUEST')
    const big = Buffer.concat([hex('4e58 02 05 ffff'), seq(0, 16), hex('000000000000'), hex('ffff'), Buffer.alloc(0xffff - 24)])
    expect(errorCode(() => decodeTransfer(big), ProtocolError)).toBe('BAD_REQUEST')
    expect(() => encodeTransfer({ type: 'message', messageId: ID16, sentAt: 0, text: 'x'.repeat(MAX_MESSAGE_BYTES + 1) })).toThrow(RangeError)
    expect(() => encodeTransfer({ type: 'ack', messageId: seq(0, 15), duplicate: false })).toThrow(RangeError)
  })

  it('an ACK without flags (natd before them) reads as not a duplicate', () => {
    expect(norm(decodeTransfer(hex(`4e58 02 06 0010 ${seq(0xa0, 16).toString('hex')}`)))).toEqual(norm({ type: 'ack', messageId: ID16, duplicate: false }))
  })

  it('random and mutated input only ever throws ProtocolError', () => {
    const seed = 0x7a5f
    const rand = prng(seed)
    const inputs: Uint8Array[] = []
    for (let i = 0; i < 3000; i++) inputs.push(randBuf(rand, randInt(rand, 0, 80)))
    for (const s of SAMPLES) {
      const good = encodeTransfer(s)
      for (let i = 0; i < 200; i++) {
        const b = Buffer.from(good.subarray(0, randInt(rand, 0, good.length)))
        if (b.length > 0) b[randInt(rand, 0, b.length - 1)] = randInt(rand, 0, 255)
        inputs.push(b)
      }
    }
    expect(fuzzEscapes(inputs, (b) => (transferFrameLength(b), decodeTransfer(b))), `seed ${seed}`).toEqual([])
  })
})
