// natctl's port-mapping line in `natctl status` (src/cli/format.ts): what the gateway
// mapped and for how long, or why there is no mapping.
import { describe, expect, it } from 'vitest'
import { pongLine, portMappingLine, span } from '../../../src/cli/format.js'

const none = { gateway: null, via: null, udp: null, tcp: null, expiresInMs: null, retryInMs: null, reason: null }

describe('portMappingLine', () => {
  it('a live mapping: protocol, external endpoints, gateway, lease left', () => {
    expect(portMappingLine({ state: 'mapped', gateway: '10.1.0.1', via: 'pcp', udp: '198.18.1.2:41641', tcp: '198.18.1.2:41641', expiresInMs: 7_140_000, retryInMs: null, reason: null })).toBe(
      'PCP 198.18.1.2:41641 (udp), 198.18.1.2:41641 (tcp), gateway 10.1.0.1, lease ends in 1h 59m unless renewed'
    )
    expect(portMappingLine({ state: 'mapped', gateway: '10.1.0.1', via: 'nat-pmp', udp: '198.18.1.2:5000', tcp: null, expiresInMs: 90_000, retryInMs: null, reason: null })).toBe(
      'NAT-PMP 198.18.1.2:5000 (udp), gateway 10.1.0.1, lease ends in 90s unless renewed'
    )
    expect(portMappingLine({ state: 'mapped', gateway: '10.1.0.1', via: 'upnp', udp: '198.18.1.2:41642', tcp: '198.18.1.2:41641', expiresInMs: 3_600_000, retryInMs: null, reason: null })).toBe(
      'UPnP 198.18.1.2:41642 (udp), 198.18.1.2:41641 (tcp), gateway 10.1.0.1, lease ends in 1h 0m unless renewed'
    )
  })

  it('no mapping says why; off and probing say so', () => {
    expect(portMappingLine({ ...none, state: 'none', gateway: '10.1.0.1', reason: 'the gateway 10.1.0.1 answers none of PCP, NAT-PMP and UPnP' })).toBe('none: the gateway 10.1.0.1 answers none of PCP, NAT-PMP and UPnP')
    expect(portMappingLine({ ...none, state: 'off', reason: 'turned off (--no-port-mapping)' })).toBe('off (--no-port-mapping)')
    expect(portMappingLine({ ...none, state: 'probing', gateway: '10.1.0.1' })).toBe('asking the gateway 10.1.0.1')
  })

  it('after failed attempts: when natd asks the gateway again', () => {
    expect(portMappingLine({ ...none, state: 'none', gateway: '10.1.0.1', retryInMs: 240_000, reason: 'the gateway refused the PCP mapping: not authorized (2)' })).toBe(
      'none: the gateway refused the PCP mapping: not authorized (2); next try in 4m'
    )
    expect(portMappingLine({ state: 'mapped', gateway: '10.1.0.1', via: 'pcp', udp: '198.18.1.2:41641', tcp: null, expiresInMs: 3_000_000, retryInMs: 60_000, reason: null })).toBe(
      'PCP 198.18.1.2:41641 (udp), gateway 10.1.0.1, lease ends in 50m unless renewed; renewal failed; next try in 60s'
    )
  })

  it('span', () => {
    expect(span(0)).toBe('0s')
    expect(span(119_000)).toBe('119s')
    expect(span(45 * 60_000)).toBe('45m')
    expect(span(2 * 3_600_000 + 60_000)).toBe('2h 1m')
  })
})

describe('pongLine', () => {
  const pong = { peer: 'bob', path: 'direct-udp' as const, remote: '198.18.1.2:41641', rttMs: 12.5 }
  it('a pong on a tunnel that was up: the round trip only', () => {
    expect(pongLine({ ...pong, waitedMs: 0 })).toBe('pong from bob (direct-udp 198.18.1.2:41641) in 12.5 ms')
  })

  it('a pong after the call waited for a migrating tunnel: says how long', () => {
    expect(pongLine({ ...pong, waitedMs: 1_234 })).toBe('pong from bob (direct-udp 198.18.1.2:41641) in 12.5 ms after waiting 1.2 s for the tunnel to resume')
  })
})
