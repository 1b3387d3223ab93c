// TunnelHost (src/daemon/tunnel-host.ts): what the agent gives its TunnelManager, one
// object instead of callbacks. A peer's channel goes to an exposed port (no service) or
// to the registered service; an unknown service is refused with UNSUPPORTED_PATH. The
// rendezvous and NAT answers come from the objects that own them.
import os from 'node:os'
import { describe, expect, it } from 'vitest'
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
    if (mine) expect(host.onOurLinks(['240.0.0.1', mine.address])).toBe(true)
    expect(host.onOurLinks(['240.0.0.1'])).toBe(false) // class E: on no one's link
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
