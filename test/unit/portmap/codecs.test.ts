// NAT-PMP (RFC 6886) and PCP (RFC 6887) codecs (src/portmap): golden bytes laid out by
// field, the answers miniupnpd 2.3.1 gives, and fuzzing.
import { describe, expect, it } from 'vitest'
import { decodeNatPmpResponse, encodeNatPmpAddressRequest, encodeNatPmpMapRequest } from '../../../src/portmap/natpmp.js'
import { decodePcpResponse, encodePcpAnnounceRequest, encodePcpMapRequest } from '../../../src/portmap/pcp.js'
import { fuzzEscapes, hex, prng, randBuf, randInt } from '../helpers.js'

const NONCE = hex('0102030405060708090a0b0c')

describe('NAT-PMP', () => {
  it('requests: external address (2 bytes), UDP and TCP mappings, delete (lifetime 0)', () => {
    expect(encodeNatPmpAddressRequest().toString('hex')).toBe('0000')
    // ver 0 | op 1 | reserved | internal 41641 | suggested 41641 | lifetime 7200
    expect(encodeNatPmpMapRequest('udp', 41641, 41641, 7200).toString('hex')).toBe(hex('00 01 0000 a2a9 a2a9 00001c20').toString('hex'))
    expect(encodeNatPmpMapRequest('tcp', 8080, 0, 0).toString('hex')).toBe(hex('00 02 0000 1f90 0000 00000000').toString('hex'))
  })

  it('responses: external address, a mapping, a refusal, and "unsupported version" (what a NAT-PMP-only gateway says to PCP)', () => {
    expect(decodeNatPmpResponse(hex('00 80 0000 00000003 c6120102'))).toEqual({ kind: 'external-address', result: 0, epoch: 3, address: '198.18.1.2' })
    expect(decodeNatPmpResponse(hex('00 81 0000 00000003 a2a9 a2aa 00000258'))).toEqual({
      kind: 'map', protocol: 'udp', result: 0, epoch: 3, internalPort: 41641, externalPort: 41642, lifetimeS: 600
    })
    expect(decodeNatPmpResponse(hex('00 82 0002 00000003 1f90 0000 00000000'))).toMatchObject({ kind: 'map', protocol: 'tcp', result: 2 })
    expect(decodeNatPmpResponse(hex('00 80 0001 00000000'))).toEqual({ kind: 'external-address', result: 1, epoch: 0, address: null })
  })

  it('refuses requests, other versions, unknown opcodes and truncated answers with ProtocolError', () => {
    for (const bad of ['0000', '02 80 0000 00000000', '00 85 0000 00000000', '00 80 0000 00000003 c612', '00 81 0000 00000003 a2a9']) {
      expect(() => decodeNatPmpResponse(hex(bad)), bad).toThrow(/NAT-PMP|truncated/)
    }
  })
})

describe('PCP', () => {
  it('ANNOUNCE: a 24-byte header with our IPv4-mapped address', () => {
    expect(encodePcpAnnounceRequest('10.1.0.2').toString('hex')).toBe(hex('02 00 0000 00000000 | 00000000 00000000 0000ffff 0a010002').toString('hex'))
  })

  it('MAP request: header, nonce, protocol 17, internal and suggested port, no preferred address', () => {
    const req = encodePcpMapRequest({ clientIp: '10.1.0.2', nonce: NONCE, protocol: 'udp', internalPort: 41641, suggestedExternalPort: 41641, lifetimeS: 7200 })
    expect(req.toString('hex')).toBe(
      hex(`02 01 0000 00001c20 | 00000000 00000000 0000ffff 0a010002
           | 0102030405060708090a0b0c | 11 000000 | a2a9 | a2a9 | 00000000 00000000 0000ffff 00000000`).toString('hex')
    )
    expect(req).toHaveLength(60)
  })

  it('MAP response: result, lifetime, epoch, the nonce back and the assigned external endpoint', () => {
    const res = hex(`02 81 00 00 00000258 00000005 000000000000000000000000
                     | 0102030405060708090a0b0c | 11 000000 | a2a9 | a2a9 | 00000000 00000000 0000ffff c6120102`)
    const r = decodePcpResponse(res)
    expect(r).toMatchObject({ kind: 'map', result: 0, lifetimeS: 600, epoch: 5, protocol: 'udp', internalPort: 41641, externalPort: 41641, externalIp: '198.18.1.2' })
    expect(Buffer.from((r as { nonce: Uint8Array }).nonce).equals(NONCE)).toBe(true)
    expect(decodePcpResponse(hex('02 80 00 00 00000000 00000005 000000000000000000000000'))).toEqual({ kind: 'announce', result: 0, lifetimeS: 0, epoch: 5 })
    expect(decodePcpResponse(hex('02 81 00 02 00000000 00000005 000000000000000000000000 | 0102030405060708090a0b0c | 11 000000 | a2a9 | 0000 | 00000000 00000000 0000ffff 00000000'))).toMatchObject({ result: 2 })
  })

  it('refuses requests, NAT-PMP bytes, IPv6 external addresses and truncations with ProtocolError', () => {
    expect(() => decodePcpResponse(encodePcpAnnounceRequest('10.1.0.2'))).toThrow(/request/)
    expect(() => decodePcpResponse(hex('00 80 0000 00000003 c6120102'))).toThrow(/not a PCP/)
    expect(() => decodePcpResponse(hex('02 81 00 00 00000258 00000005 000000000000000000000000 0102030405060708090a0b0c 11 000000 a2a9 a2a9 20010db8000000000000000000000001'))).toThrow(/IPv6/)
    expect(() => decodePcpResponse(hex('02 81 00 00 00000258 00000005'))).toThrow(/truncated/)
  })
})

describe('port-mapping codecs: fuzz', () => {
  it('20,000 random and mutated answers either decode or throw ProtocolError', () => {
    const rand = prng(0x504d4150)
    const seeds = [hex('00 81 0000 00000003 a2a9 a2aa 00000258'), hex('00 80 0000 00000003 c6120102'), hex('02 81 00 00 00000258 00000005 000000000000000000000000 0102030405060708090a0b0c 11 000000 a2a9 a2a9 00000000000000000000ffffc6120102')]
    function* inputs(): Generator<Buffer> {
      for (let i = 0; i < 20_000; i++) {
        if (i % 2) yield randBuf(rand, randInt(rand, 0, 80))
        else {
          const b = Buffer.from(seeds[randInt(rand, 0, seeds.length - 1)]!).subarray(0, randInt(rand, 1, 60))
          for (let k = randInt(rand, 0, 3); k > 0 && b.length > 1; k--) b[randInt(rand, 1, b.length - 1)] = randInt(rand, 0, 255)
          yield Buffer.from(b)
        }
      }
    }
    const escapes = fuzzEscapes(inputs(), (b) => (b[0] === 0 ? decodeNatPmpResponse(b) : decodePcpResponse(b)))
    expect(escapes.slice(0, 3)).toEqual([])
  })
})
