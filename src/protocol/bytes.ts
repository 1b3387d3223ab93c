/**
 * Bounds-checked reader and growable writer for the wire codecs. The reader checks every
 * length before it slices and throws only ProtocolError('BAD_REQUEST').
 */
import { ProtocolError } from './errors.js'

const UTF8 = new TextDecoder('utf-8', { fatal: true })

export class Reader {
  private offset = 0
  constructor(private readonly buf: Uint8Array) {}

  get remaining(): number {
    return this.buf.length - this.offset
  }

  get position(): number {
    return this.offset
  }

  private need(n: number, what: string): void {
    if (this.remaining < n) throw new ProtocolError('BAD_REQUEST', `truncated frame: ${what} needs ${n} bytes, ${this.remaining} left`)
  }

  u8(what = 'u8'): number {
    this.need(1, what)
    return this.buf[this.offset++]!
  }

  u16(what = 'u16'): number {
    this.need(2, what)
    const v = (this.buf[this.offset]! << 8) | this.buf[this.offset + 1]!
    this.offset += 2
    return v
  }

  u32(what = 'u32'): number {
    this.need(4, what)
    const b = this.buf
    const o = this.offset
    this.offset += 4
    return ((b[o]! << 24) >>> 0) + ((b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!)
  }

  /** Unsigned 48-bit big-endian integer (milliseconds since the epoch fit until year 10889). */
  u48(what = 'u48'): number {
    const hi = this.u16(what)
    return hi * 2 ** 32 + this.u32(what)
  }

  bytes(n: number, what = 'bytes'): Uint8Array {
    this.need(n, what)
    const out = this.buf.subarray(this.offset, this.offset + n)
    this.offset += n
    return out
  }

  /** UTF-8 string with a one-byte length. */
  str8(what = 'string'): string {
    const n = this.u8(what)
    const bytes = this.bytes(n, what)
    try {
      return UTF8.decode(bytes)
    } catch {
      throw new ProtocolError('BAD_REQUEST', `${what} is not valid UTF-8`)
    }
  }
}

export class Writer {
  private buf = new Uint8Array(128)
  private length = 0

  private ensure(n: number): void {
    if (this.length + n <= this.buf.length) return
    const next = new Uint8Array(Math.max(this.buf.length * 2, this.length + n))
    next.set(this.buf.subarray(0, this.length))
    this.buf = next
  }

  u8(v: number): this {
    this.ensure(1)
    this.buf[this.length++] = v & 0xff
    return this
  }

  u16(v: number): this {
    this.ensure(2)
    this.buf[this.length++] = (v >>> 8) & 0xff
    this.buf[this.length++] = v & 0xff
    return this
  }

  u32(v: number): this {
    this.ensure(4)
    this.buf[this.length++] = (v >>> 24) & 0xff
    this.buf[this.length++] = (v >>> 16) & 0xff
    this.buf[this.length++] = (v >>> 8) & 0xff
    this.buf[this.length++] = v & 0xff
    return this
  }

  u48(v: number): this {
    return this.u16(Math.floor(v / 2 ** 32)).u32(v >>> 0)
  }

  bytes(b: Uint8Array): this {
    this.ensure(b.length)
    this.buf.set(b, this.length)
    this.length += b.length
    return this
  }

  zeros(n: number): this {
    this.ensure(n)
    this.buf.fill(0, this.length, this.length + n)
    this.length += n
    return this
  }

  str8(s: string): this {
    const b = new TextEncoder().encode(s)
    if (b.length > 255) throw new RangeError('string longer than 255 bytes')
    return this.u8(b.length).bytes(b)
  }

  get size(): number {
    return this.length
  }

  /** The bytes written so far (a view: later writes may move the buffer). */
  peek(): Uint8Array {
    return this.buf.subarray(0, this.length)
  }

  finish(): Buffer {
    return Buffer.from(this.buf.buffer, this.buf.byteOffset, this.length)
  }
}

/** Cuts a string to at most `maxBytes` of UTF-8 without splitting a character. */
export function truncateUtf8(s: string, maxBytes: number): string {
  const bytes = new TextEncoder().encode(s)
  if (bytes.length <= maxBytes) return s
  let end = maxBytes
  while (end > 0 && (bytes[end]! & 0xc0) === 0x80) end-- // back off continuation bytes
  return new TextDecoder().decode(bytes.subarray(0, end))
}

/** `b` when it is `n` bytes long (what an encoder writes into a fixed-size field); else RangeError: a caller's bug, not wire input. */
export function fixed(b: Uint8Array, n: number, what: string): Uint8Array {
  if (b.length !== n) throw new RangeError(`${what} must be ${n} bytes`)
  return b
}

/** The value a wire enum's `index` stands for; ProtocolError for one this build does not know. */
export function enumAt<T>(values: readonly T[], index: number, what: string): T {
  const v = values[index]
  if (v === undefined) throw new ProtocolError('BAD_REQUEST', `unknown ${what} ${index}`)
  return v
}
