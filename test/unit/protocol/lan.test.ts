// LAN candidates (src/protocol/lan.ts): an agent may offer, and a peer will probe, only
// addresses no one on the internet can be made to receive probes at (RFC 1918, CGNAT,
// link-local, unique-local IPv6), with a real port, at most MAX_LAN_CANDIDATES of them.
import { describe, expect, it } from 'vitest'
import { isLanAddress, lanCandidates, mappedCandidates, MAX_LAN_CANDIDATES, offeredCandidates, onSubnet } from '../../../src/protocol/lan.js'

describe('isLanAddress', () => {
  it('keeps private, CGNAT, link-local and unique-local addresses, at both edges of each range', () => {
    for (const host of [
      '10.0.0.0',
      '10.255.255.255',
      '172.16.0.1',
      '172.31.255.255',
      '192.168.0.1',
      '192.168.255.254',
      '100.64.0.1', // CGNAT, RFC 6598
      '100.127.255.255',
      '169.254.0.1', // link-local, RFC 3927
      '169.254.255.255',
      'fc00::1', // unique local, RFC 4193
      'fd12:3456:789a::1',
      'fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff',
      'fe80::1', // link-local
      'febf:ffff::1'
    ]) {
      expect(isLanAddress(host), host).toBe(true)
    }
  })

  it('drops public, loopback, benchmarking and unspecified addresses, and anything just outside a range', () => {
    for (const host of [
      '8.8.8.8',
      '203.0.113.5',
      '9.255.255.255',
      '11.0.0.0',
      '172.15.255.255',
      '172.32.0.0',
      '192.167.1.1',
      '192.169.0.1',
      '100.63.255.255',
      '100.128.0.0',
      '169.253.0.1',
      '169.255.0.1',
      '198.18.0.1', // benchmarking, RFC 2544: not a LAN
      '198.19.255.255',
      '127.0.0.1',
      '0.0.0.0',
      '255.255.255.255',
      '2001:db8::1',
      '2606:4700::1111',
      '::1',
      '::',
      'fbff::1',
      'fec0::1', // just past fe80::/10
      'ff02::1',
      '::ffff:8.8.8.8',
      'localhost',
      'router.lan',
      '',
      '10.0.0',
      '10.0.0.256'
    ]) {
      expect(isLanAddress(host), JSON.stringify(host)).toBe(false)
    }
  })
})

describe('lanCandidates', () => {
  it('keeps LAN endpoints in order and drops public ones and port 0', () => {
    const list = [
      { host: '192.168.1.10', port: 41641 },
      { host: '8.8.8.8', port: 53 },
      { host: '10.0.0.2', port: 0 },
      { host: '198.18.0.5', port: 41641 },
      { host: '0.0.0.0', port: 41641 },
      { host: '100.100.1.1', port: 1 },
      { host: 'fe80::1', port: 65535 },
      { host: 'fd00::2', port: 41641 },
      { host: '2001:db8::1', port: 41641 }
    ]
    expect(lanCandidates(list)).toEqual([
      { host: '192.168.1.10', port: 41641 },
      { host: '100.100.1.1', port: 1 },
      { host: 'fe80::1', port: 65535 },
      { host: 'fd00::2', port: 41641 }
    ])
  })

  it('drops ports that are not a real port (negative, too large, fractional, NaN)', () => {
    const bad = [-1, 65536, 1.5, Number.NaN].map((port) => ({ host: '10.0.0.1', port }))
    expect(lanCandidates(bad)).toEqual([])
  })

  it(`keeps at most ${MAX_LAN_CANDIDATES}, counting only the kept ones`, () => {
    const list = Array.from({ length: 12 }, (_, i) => [
      { host: `203.0.113.${i + 1}`, port: 1000 + i }, // public: dropped, does not use up a slot
      { host: `10.0.0.${i + 1}`, port: 1000 + i }
    ]).flat()
    const kept = lanCandidates(list)
    expect(kept).toHaveLength(8)
    expect(kept.map((ep) => ep.host)).toEqual(Array.from({ length: 8 }, (_, i) => `10.0.0.${i + 1}`))
  })

  it('does not change the list it is given', () => {
    const list = [{ host: '8.8.8.8', port: 1 }, { host: '10.0.0.1', port: 1 }]
    const copy = structuredClone(list)
    lanCandidates(list)
    expect(list).toEqual(copy)
  })
})

describe('mappedCandidates, offeredCandidates (ports the gateway mapped)', () => {
  const list = [
    { host: '192.168.1.2', port: 41641 },
    { host: '198.51.100.7', port: 41641 }, // another public address: never
    { host: '203.0.113.5', port: 41641 },
    { host: '203.0.113.5', port: 0 },
    { host: '203.0.113.5', port: 50000 },
    { host: '203.0.113.5', port: 50001 }
  ]

  it('keeps only endpoints at the address the server sees the agent at, with a real port, at most 2', () => {
    expect(mappedCandidates(list, '203.0.113.5')).toEqual([{ host: '203.0.113.5', port: 41641 }, { host: '203.0.113.5', port: 50000 }])
    expect(mappedCandidates(list, null)).toEqual([])
    expect(mappedCandidates(list, '198.51.100.8')).toEqual([])
    // A private "public" address (a host on a LAN server): its LAN candidates are not mappings.
    expect(mappedCandidates(list, '192.168.1.2')).toEqual([])
  })

  it('the server keeps the mapped ones first, then the LAN ones, at most 8 in all', () => {
    expect(offeredCandidates(list, '203.0.113.5')).toEqual([{ host: '203.0.113.5', port: 41641 }, { host: '203.0.113.5', port: 50000 }, { host: '192.168.1.2', port: 41641 }])
    const many = Array.from({ length: 10 }, (_, i) => ({ host: `10.0.0.${i + 1}`, port: 1 }))
    expect(offeredCandidates([...many, { host: '203.0.113.5', port: 9 }], '203.0.113.5')).toHaveLength(MAX_LAN_CANDIDATES)
    expect(offeredCandidates([...many, { host: '203.0.113.5', port: 9 }], '203.0.113.5')[0]).toEqual({ host: '203.0.113.5', port: 9 })
  })
})

describe("onSubnet (is a peer's LAN candidate on a link of ours)", () => {
  it.each<[string, string, string, boolean]>([
    ['10.7.0.3', '10.7.0.2', '255.255.255.0', true],
    ['10.8.0.3', '10.7.0.2', '255.255.255.0', false], // another home behind the same CGN
    ['192.168.1.20', '192.168.1.5', '255.255.0.0', true],
    ['100.64.3.9', '100.64.3.1', '255.255.255.0', true],
    ['10.7.0.3', '10.7.0.2', '0.0.0.0', false], // no mask: says nothing
    ['fe80::1', 'fe80::2', 'ffff:ffff:ffff:ffff::', false], // IPv6 link-local is on every link
    ['not an address', '10.7.0.2', '255.255.255.0', false]
  ])('%s on %s/%s: %s', (host, address, netmask, want) => {
    expect(onSubnet(host, address, netmask)).toBe(want)
  })
})
