// TunnelHost (src/daemon/tunnel-host.ts): what the agent gives its TunnelManager, one
// object instead of callbacks. A peer's channel goes to an exposed port (no service) or
// to the registered service; an unknown service is refused with UNSUPPORTED_PATH. The
// rendezvous and NAT answers come from the objects that own them.
import os from 'node:os'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { lanEndpoints } from '../../../src/daemon/nat-monitor.js'
import { isUlaIPv6, MAX_ULA_CANDIDATES } from '../../../src/protocol/ipv6.js'
import { MAX_LAN_CANDIDATES } from '../../../src/protocol/lan.js'
import { OFFLINE_PEER_PING_MS, TunnelHost } from '../../../src/daemon/tunnel-host.js'
import { NatdError } from '../../../src/protocol/errors.js'
import { silentLogger, systemClock } from '../../../src/protocol/log.js'
import type { OpenRequest } from '../../../src/tunnel/mux.js'
import type { Tunnel } from '../../../src/tunnel/tunnel.js'
import type { TunnelManagerComponents } from '../../../src/tunnel/manager.js'

const TUNNEL = { peer: { name: 'bob', id: 'b'.repeat(51) + 'q' } } as unknown as Tunnel

function request(service: string): OpenRequest & { rejected: [string, string] | null } {
  const r = { service, port: 22, rejected: null as [string, string] | null, reject: (code: string, message: string) => void (r.rejected = [code, message]) }
  return r as unknown as OpenRequest & { rejected: [string, string] | null }
}

describe('TunnelHost', () => {
  const routed: string[] = []
  let fresh = 0
  const host = new TunnelHost({
    udx: null as never,
    socket: null as never,
    keyPair: null as never,
    clock: systemClock,
    random: Math.random,
    log: silentLogger,
    peers: null as never,
    rendezvous: { introduce: () => Promise.reject(new Error('not used')), tcpLocalPort: 40001, serverEndpoint: { host: '198.51.100.1', port: 3478 }, state: { kind: 'registered', since: 0, udp: { host: '203.0.113.7', port: 40001 }, tcp: null } },
    nat: { verdict: 'hard', fresh: async () => void fresh++, firstProbeTtl: (peerHost) => (peerHost === '203.0.113.9' ? 2 : 3) },
    exposes: { onChannel: (_t, req) => void routed.push(`expose ${req.port}`) }
  })
  host.registerService('msg', (t, req) => void routed.push(`msg from ${t.peer.name} (${req.service})`))

  it('gives our public address as the server sees it, and tells whether an address is on a link of ours', () => {
    expect(host.publicAddress()).toBe('203.0.113.7')
    const mine = Object.values(os.networkInterfaces()).flatMap((l) => l ?? []).find((i) => !i.internal && i.family === 'IPv4')
    if (mine) expect(host.onOurLinks(['240.0.0.1', mine.address])).toBe(false) // our own address: another host's LAN, never ours
    expect(host.onOurLinks(['240.0.0.1'])).toBe(false) // class E: on no one's link
  })

  describe('with a default route on eth0, docker0 beside it, and two ULAs more than we offer', () => {
    const iface = (address: string, netmask: string, family: 'IPv4' | 'IPv6' = 'IPv4') => ({ address, netmask, family, mac: '02:00:00:00:00:01', internal: false, cidr: null }) as os.NetworkInterfaceInfo
    const IFACES = {
      lo: [{ ...iface('127.0.0.1', '255.0.0.0'), internal: true }],
      eth0: [iface('192.168.1.10', '255.255.255.0'), iface('fd12:3456:789a:1::10', 'ffff:ffff:ffff:ffff::', 'IPv6'), iface('fd12:3456:789a:2::10', 'ffff:ffff:ffff:ffff::', 'IPv6')],
      docker0: [iface('172.17.0.1', '255.255.0.0'), iface('fd00:d0c:1::1', 'ffff:ffff:ffff:ffff::', 'IPv6'), iface('fd00:d0c:2::1', 'ffff:ffff:ffff:ffff::', 'IPv6')]
    }
    const ROUTES = [
      'Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT',
      'eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0',
      'eth0\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0',
      'docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0'
    ].join('\n')
    const stubbed = (routeTable: string | null) =>
      new TunnelHost({ ...(host as unknown as { c: ConstructorParameters<typeof TunnelHost>[0] }).c, routeTable: () => routeTable })
    afterEach(() => void vi.restoreAllMocks())

    it('onOurLinks: only the default route\'s subnet counts, and never an address of ours (a CGN neighbour has docker0 or 192.168.1.0/24 too)', () => {
      vi.spyOn(os, 'networkInterfaces').mockReturnValue(IFACES)
      const h = stubbed(ROUTES)
      expect(h.onOurLinks(['172.17.0.1'])).toBe(false) // its docker bridge, same address as ours
      expect(h.onOurLinks(['172.17.0.2'])).toBe(false) // a docker subnet leads to no other host
      expect(h.onOurLinks(['192.168.1.10'])).toBe(false) // our own LAN address: it is in another home
      expect(h.onOurLinks(['172.17.0.1', '192.168.1.20'])).toBe(true) // a neighbour on our LAN
      // no routing table to read: every interface counts (errs towards "on our link"), still not our own addresses
      expect(stubbed(null).onOurLinks(['172.17.0.2'])).toBe(true)
      expect(stubbed(null).onOurLinks(['172.17.0.1', '192.168.1.10'])).toBe(false)
    })

    it('ulaAddresses: exactly the unique-local addresses our LAN candidates offer (MAX_ULA_CANDIDATES), so both sides choose TCP over ULA alike', () => {
      vi.spyOn(os, 'networkInterfaces').mockReturnValue(IFACES)
      const offered = lanEndpoints(40001, 40002).filter((e) => isUlaIPv6(e.host)).map((e) => e.host)
      expect(offered).toHaveLength(MAX_ULA_CANDIDATES)
      expect(host.ulaAddresses()).toEqual(offered)
    })

    it('lanEndpoints: the unique-local candidates come first, so no cut to MAX_LAN_CANDIDATES drops one', () => {
      const many = Object.fromEntries(Array.from({ length: 10 }, (_, n) => [`eth${n}`, [iface(`10.0.${n}.2`, '255.255.255.0')]]))
      vi.spyOn(os, 'networkInterfaces').mockReturnValue({ ...many, ula: [iface('fd12:3456:789a:1::10', 'ffff:ffff:ffff:ffff::', 'IPv6')] })
      const lan = lanEndpoints(40001, 40002)
      expect(lan).toHaveLength(MAX_LAN_CANDIDATES)
      expect(lan[0]).toEqual({ host: 'fd12:3456:789a:1::10', port: 40002 })
    })
  })

  it('routes channels: no service to the exposes, a registered one to its handler, an unknown one refused', () => {
    host.onChannel(TUNNEL, request(''))
    host.onChannel(TUNNEL, request('msg'))
    const unknown = request('shell')
    host.onChannel(TUNNEL, unknown)
    expect(routed).toEqual(['expose 22', 'msg from bob (msg)'])
    expect(unknown.rejected).toEqual(['UNSUPPORTED_PATH', 'this agent has no service "shell"'])
  })

  it('answers for the rendezvous client and the NAT monitor, as the manager asks them', async () => {
    const c: TunnelManagerComponents = host
    expect([c.localTcpPort(), c.relayServer(), c.natVerdict()]).toEqual([40001, { host: '198.51.100.1', port: 3478 }, 'hard'])
    await c.refreshNat()
    expect(fresh).toBe(1)
    expect([c.firstProbeTtl?.('198.51.100.7'), c.firstProbeTtl?.('203.0.113.9')]).toEqual([3, 2]) // the monitor's answer, per peer address
  })

  it('a port mapping counts for planning only at our public address (the only one the server offers peers)', () => {
    const c = (host as unknown as { c: ConstructorParameters<typeof TunnelHost>[0] }).c
    const mapped = (udp: { host: string; port: number } | null): boolean => new TunnelHost({ ...c, mappedUdp: () => udp }).hasPortMapping()
    expect(host.hasPortMapping()).toBe(false) // no port mapper
    expect(mapped(null)).toBe(false)
    expect(mapped({ host: '203.0.113.7', port: 51000 })).toBe(true)
    expect(mapped({ host: '100.64.0.9', port: 51000 })).toBe(false) // a gateway behind a CGN: mapped at an address no peer sees
  })

  it('a peer reported offline: one ping of OFFLINE_PEER_PING_MS per peer at a time; no answer closes the tunnel PEER_OFFLINE; offlineCheck resolves when the check ends', async () => {
    const closes: string[] = []
    const pings: number[] = []
    let answer!: (ok: boolean) => void
    const tunnel = {
      peer: { name: 'carol', id: 'c'.repeat(52) },
      ping: (ms: number) => {
        pings.push(ms)
        return new Promise<number>((resolve, reject) => (answer = (ok) => (ok ? resolve(1) : reject(new NatdError('TIMEOUT', 'no pong')))))
      },
      close: (reason: string, opts: { code?: string }) => void closes.push(`${opts.code}: ${reason}`)
    } as unknown as Tunnel
    let ended = false
    await host.offlineCheck(tunnel.peer.id) // none running: at once
    host.peerOffline(tunnel)
    host.peerOffline(tunnel) // the second report while the first check runs starts nothing
    const check = host.offlineCheck(tunnel.peer.id).then(() => (ended = true))
    await Promise.resolve()
    expect([pings, ended]).toEqual([[OFFLINE_PEER_PING_MS], false])
    answer(false)
    await check
    expect(closes).toEqual(['PEER_OFFLINE: carol went offline and does not answer'])
    host.peerOffline(tunnel) // a later report checks again; an answer keeps the tunnel
    answer(true)
    await host.offlineCheck(tunnel.peer.id)
    expect(pings).toEqual([OFFLINE_PEER_PING_MS, OFFLINE_PEER_PING_MS])
    expect(closes).toHaveLength(1)
  })
})
