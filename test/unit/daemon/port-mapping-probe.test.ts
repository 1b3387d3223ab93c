// The default gateway from /proc/net/route (src/daemon/port-mapping-probe.ts), as netcheck
// finds the gateway it asks for PCP and NAT-PMP.
import { describe, expect, it } from 'vitest'
import { defaultGatewayOf } from '../../../src/daemon/port-mapping-probe.js'

const HEAD = 'Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT'

describe('defaultGatewayOf', () => {
  it('reads the default route\'s gateway (little-endian hex), the lowest metric first', () => {
    const text = [
      HEAD,
      'eth0\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0',
      'wlan0\t00000000\t0100000A\t0003\t0\t0\t50\t00000000\t0\t0\t0',
      'eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0'
    ].join('\n')
    expect(defaultGatewayOf(text)).toBe('10.0.0.1')
    expect(defaultGatewayOf([HEAD, 'eth0\t00000000\t0100010A\t0003\t0\t0\t0\t00000000\t0\t0\t0'].join('\n'))).toBe('10.1.0.1')
  })

  it('null without a default route, for a route without a gateway or down, and for junk', () => {
    expect(defaultGatewayOf(HEAD)).toBeNull()
    expect(defaultGatewayOf([HEAD, 'eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0'].join('\n'))).toBeNull()
    expect(defaultGatewayOf([HEAD, 'eth0\t00000000\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0'].join('\n'))).toBeNull() // no RTF_GATEWAY
    expect(defaultGatewayOf([HEAD, 'eth0\t00000000\t010200C0\t0002\t0\t0\t0\t00000000\t0\t0\t0'].join('\n'))).toBeNull() // not RTF_UP
    expect(defaultGatewayOf('')).toBeNull()
    expect(defaultGatewayOf('garbage\nmore garbage')).toBeNull()
  })
})
