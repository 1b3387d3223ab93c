// Endpoints (src/protocol/endpoint.ts): parsing what people type, formatting, and the
// `family | address | port` wire form.
import { describe, expect, it } from 'vitest'
import { Reader, Writer } from '../../../src/protocol/bytes.js'
import {
  bytesToIpv6,
  formatEndpoint,
  ipv6ToBytes,
  isIPv4,
  isIPv6,
  parseEndpoint,
  readEndpoint,
  sameEndpoint,
  writeEndpoint,
  type Endpoint
} from '../../../src/protocol/endpoint.js'
import { ProtocolError } from '../../../src/protocol/errors.js'
import { hex } from '../helpers.js'

function wire(ep: Endpoint | null): string {
  const w = new Writer()
  writeEndpoint(w, ep)
  return w.finish().toString('hex')
}

describe('endpoint', () => {
  it('parses host:port, [v6]:port and applies the default port', () => {
    expect(parseEndpoint('example.com:3478')).toEqual({ host: 'example.com', port: 3478 })
    expect(parseEndpoint('example.com', 3478)).toEqual({ host: 'example.com', port: 3478 })
    expect(parseEndpoint('10.0.0.1:1')).toEqual({ host: '10.0.0.1', port: 1 })
    expect(parseEndpoint('[2001:db8::1]:65535')).toEqual({ host: '2001:db8::1', port: 65535 })
    expect(parseEndpoint('[::1]', 80)).toEqual({ host: '::1', port: 80 })
  })

  it('refuses missing, zero, out-of-range ports and bare IPv6 (ambiguous with a port)', () => {
    for (const bad of ['example.com', 'h:0', 'h:65536', 'h:-1', 'h:x', '', ':80', '::1', '2001:db8::1:80', '[::1]:']) {
      expect(() => parseEndpoint(bad), bad).toThrow(RangeError)
    }
  })

  it('formats IPv6 in brackets, IPv4 plain, nothing as "-"', () => {
    expect(formatEndpoint({ host: '2001:db8::1', port: 443 })).toBe('[2001:db8::1]:443')
    expect(formatEndpoint({ host: '192.0.2.1', port: 80 })).toBe('192.0.2.1:80')
    expect(formatEndpoint(null)).toBe('-')
    expect(formatEndpoint(undefined)).toBe('-')
    for (const ep of [{ host: '2001:db8::1', port: 443 }, { host: '192.0.2.1', port: 80 }]) expect(parseEndpoint(formatEndpoint(ep))).toEqual(ep)
  })

  it('sameEndpoint compares host and port, and absent endpoints are never the same', () => {
    expect(sameEndpoint({ host: '1.2.3.4', port: 1 }, { host: '1.2.3.4', port: 1 })).toBe(true)
    expect(sameEndpoint({ host: '1.2.3.4', port: 1 }, { host: '1.2.3.4', port: 2 })).toBe(false)
    expect(sameEndpoint({ host: '1.2.3.4', port: 1 }, { host: '1.2.3.5', port: 1 })).toBe(false)
    expect(sameEndpoint(null, null)).toBe(false)
    expect(sameEndpoint(undefined, { host: '1.2.3.4', port: 1 })).toBe(false)
  })

  it('writes the documented wire form', () => {
    expect(wire(null)).toBe('00')
    expect(wire({ host: '192.0.2.1', port: 32853 })).toBe(hex('04 c0000201 8055').toString('hex'))
    expect(wire({ host: '2001:db8::1', port: 443 })).toBe(hex('06 20010db8000000000000000000000001 01bb').toString('hex'))
    expect(wire({ host: '::ffff:1.2.3.4', port: 1 })).toBe(hex('06 00000000000000000000ffff01020304 0001').toString('hex'))
    expect(() => wire({ host: 'example.com', port: 1 })).toThrow(RangeError)
  })

  it('round-trips IPv4 and IPv6 through the wire form', () => {
    const eps: Endpoint[] = [
      { host: '0.0.0.0', port: 1 },
      { host: '255.255.255.255', port: 65535 },
      { host: '::', port: 2 },
      { host: '::1', port: 3 },
      { host: '1::', port: 4 },
      { host: 'fe80::1:2', port: 5 },
      { host: '2001:db8:1234:5678:11:2233:4455:6677', port: 6 },
      { host: '2001:db8::1:0:0:1', port: 7 }
    ]
    for (const ep of eps) {
      const w = new Writer()
      writeEndpoint(w, ep)
      expect(readEndpoint(new Reader(w.finish()))).toEqual(ep)
    }
  })

  it('prints IPv6 in RFC 5952 form (longest zero run collapsed, first one on a tie, never a single group)', () => {
    expect(bytesToIpv6(ipv6ToBytes('2001:0db8:0000:0000:0001:0000:0000:0001'))).toBe('2001:db8::1:0:0:1')
    expect(bytesToIpv6(ipv6ToBytes('2001:db8:0:1:1:1:1:1'))).toBe('2001:db8:0:1:1:1:1:1')
    expect(bytesToIpv6(ipv6ToBytes('1:0:0:2:0:0:0:3'))).toBe('1:0:0:2::3')
    expect(bytesToIpv6(new Uint8Array(16))).toBe('::')
  })

  it('reading refuses unknown families and truncated addresses with ProtocolError', () => {
    expect(() => readEndpoint(new Reader(hex('05 01020304 0001')))).toThrow(ProtocolError)
    expect(() => readEndpoint(new Reader(hex('04 010203')))).toThrow(ProtocolError)
    expect(() => readEndpoint(new Reader(hex('06 0102030405060708090a0b0c0d0e0f10 00')))).toThrow(ProtocolError)
    expect(() => readEndpoint(new Reader(hex('')))).toThrow(ProtocolError)
  })

  it('isIPv4 accepts dotted quads only', () => {
    for (const ok of ['0.0.0.0', '127.0.0.1', '255.255.255.255', '10.20.30.40']) expect(isIPv4(ok), ok).toBe(true)
    for (const bad of ['256.0.0.1', '1.2.3', '1.2.3.4.5', '01.2.3.4', '1.2.3.4 ', 'a.b.c.d', '', '::1']) expect(isIPv4(bad), bad).toBe(false)
    expect(isIPv6('::1')).toBe(true)
    expect(isIPv6('1.2.3.4')).toBe(false)
    expect(isIPv6('example.com')).toBe(false)
  })

  // The comment on isIPv6 promises "the codec rejects what it cannot encode", but
  // ipv6ToBytes silently encodes malformed text as some other address.
  it('writing a malformed IPv6 text throws instead of sending another address', () => {
    for (const bad of ['1:2:3', '1:::2', '1:2:3:4:5:6:7:8:9', '12345::1']) {
      expect(() => wire({ host: bad, port: 1 }), bad).toThrow(RangeError)
    }
  })
})
