// IPv6 candidates (src/protocol/ipv6.ts): only global unicast (2000::/3), at most
// MAX_V6_CANDIDATES, all in the /64 of the first (the server's reflection), so a
// malicious server cannot hand us a list of strangers to probe.
import { describe, expect, it } from 'vitest'
import { isGlobalIPv6, isUlaIPv6, MAX_ULA_CANDIDATES, MAX_V6_CANDIDATES, sameLanV6, sameV6Prefix64, v6Candidates, withV6Candidate } from '../../../src/protocol/ipv6.js'

describe('isGlobalIPv6', () => {
  it('keeps global unicast 2000::/3 at both edges', () => {
    for (const host of ['2000::', '2001:db8::1', '2a00:1450:4001::8', '3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff']) expect(isGlobalIPv6(host), host).toBe(true)
  })

  it('drops link-local, unique-local, loopback, unspecified, multicast, v4-mapped, IPv4 and junk', () => {
    for (const host of ['fe80::1', 'fd00::1', 'fc00::1', '::1', '::', 'ff02::1', '::ffff:192.0.2.1', '1fff:ffff::1', '4000::1', '192.0.2.1', 'example.com', '']) {
      expect(isGlobalIPv6(host), host).toBe(false)
    }
  })

  it('drops 6to4 (2002::/16) and Teredo (2001::/32): relays deliver them to the IPv4 host they embed', () => {
    for (const host of ['2002:c000:0201::1', '2002::', '2001::1', '2001:0:4136:e378:8000:63bf:3fff:fdd2']) expect(isGlobalIPv6(host), host).toBe(false)
    for (const host of ['2001:1::1', '2001:db8::1', '2003::1']) expect(isGlobalIPv6(host), host).toBe(true)
  })
})

describe('sameV6Prefix64', () => {
  it('compares the first 64 bits only', () => {
    expect(sameV6Prefix64('2001:db8:1:2::1', '2001:db8:1:2:ffff::9')).toBe(true)
    expect(sameV6Prefix64('2001:db8:1:2::1', '2001:db8:1:3::1')).toBe(false)
    expect(sameV6Prefix64('2001:db8::1', '192.0.2.1')).toBe(false)
  })
})

describe('v6Candidates', () => {
  it('keeps global IPv6 endpoints in the /64 of the first, at most MAX_V6_CANDIDATES, in order', () => {
    const list = [
      { host: '10.0.0.5', port: 4000 },
      { host: 'fd00::5', port: 4000 },
      { host: '2001:db8:1:2::5', port: 4000 },
      { host: '2001:db8:9::66', port: 22 }, // another site: a stranger
      { host: '2001:db8:1:2::6', port: 4001 },
      { host: '2001:db8:1:2::7', port: 4002 }
    ]
    expect(MAX_V6_CANDIDATES).toBe(2)
    expect(v6Candidates(list)).toEqual([
      { host: '2001:db8:1:2::5', port: 4000 },
      { host: '2001:db8:1:2::6', port: 4001 }
    ])
  })

  it('drops bad ports and returns nothing without a global IPv6 endpoint', () => {
    expect(v6Candidates([{ host: '2001:db8::1', port: 0 }, { host: '2001:db8::2', port: 70000 }])).toEqual([])
    expect(v6Candidates([{ host: '192.168.1.2', port: 1 }, { host: 'fe80::1', port: 1 }])).toEqual([])
  })
})

describe('withV6Candidate', () => {
  it('puts the reflection first, replacing the global IPv6 entries, keeping the rest, capped', () => {
    const list = [
      { host: '2001:db8:5::1', port: 9 },
      { host: '10.0.0.5', port: 4000 },
      { host: 'fd00::5', port: 4000 }
    ]
    expect(withV6Candidate(list, { host: '2001:db8:1::5', port: 4000 }, 8)).toEqual([
      { host: '2001:db8:1::5', port: 4000 },
      { host: '10.0.0.5', port: 4000 },
      { host: 'fd00::5', port: 4000 }
    ])
    expect(withV6Candidate(list, { host: '2001:db8:1::5', port: 4000 }, 2)).toHaveLength(2)
    expect(withV6Candidate(list, null, 8)).toEqual(list.slice(1))
    // Not global: never made a candidate
    expect(withV6Candidate(list, { host: 'fe80::1', port: 4000 }, 8)).toEqual(list.slice(1))
  })
})

describe('unique-local LAN candidates (sameLanV6)', () => {
  it('isUlaIPv6: fc00::/7 only', () => {
    for (const host of ['fc00::1', 'fd12:3456:789a:1::2', 'fdff:ffff:ffff:ffff::1']) expect(isUlaIPv6(host), host).toBe(true)
    for (const host of ['fe80::1', 'fb00::1', 'fe00::1', '2001:db8::1', '::1', '10.0.0.1', '::ffff:10.0.0.1', 'not an address']) expect(isUlaIPv6(host), host).toBe(false)
  })

  it('keeps only a peer\'s unique-local candidates in the /64 of one of ours (our LAN), with a real port', () => {
    const peer = [
      { host: 'fd12:3456:789a:1::5', port: 4000 }, // our LAN
      { host: 'fd12:3456:789a:2::5', port: 4000 }, // same site, another /64
      { host: 'fd99:3456:789a:1::5', port: 4000 }, // another site
      { host: 'fe80::5', port: 4000 }, // link-local: every link's prefix
      { host: '10.0.0.5', port: 4000 },
      { host: '2001:db8:1::5', port: 4000 },
      { host: 'fd12:3456:789a:1::6', port: 0 }
    ]
    const ours = ['fd12:3456:789a:1::2', 'fe80::2', '2001:db8:1::2']
    expect(sameLanV6(peer, ours)).toEqual([{ host: 'fd12:3456:789a:1::5', port: 4000 }])
    // without a unique-local address of ours, no IPv6 LAN candidate at all (link-local or global do not count)
    expect(sameLanV6(peer, ['fe80::5', '2001:db8:1::2'])).toEqual([])
    expect(sameLanV6(peer, [])).toEqual([])
  })

  it('keeps at most MAX_ULA_CANDIDATES (a stranger who knows our /64 cannot aim 8 TCP punches into it)', () => {
    const peer = Array.from({ length: 8 }, (_, n) => ({ host: `fd12:3456:789a:1::${n + 5}`, port: 4000 + n }))
    expect(sameLanV6(peer, ['fd12:3456:789a:1::2'])).toEqual(peer.slice(0, MAX_ULA_CANDIDATES))
  })
})
