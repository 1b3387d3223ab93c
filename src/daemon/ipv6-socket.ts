/**
 * The agent's IPv6 socket: a second UDX socket bound to `::` with IPV6_V6ONLY, beside
 * the IPv4 one (agent.ts). Two sockets rather than one dual-stack socket, because the
 * IPv4 socket's mapping is what the server and peers see, and a dual-stack socket would
 * show IPv4 peers v4-mapped addresses and make every family check a special case.
 *
 * It carries what the IPv4 socket carries, to IPv6 addresses: the sealed heartbeat to
 * the server's IPv6 socket (whose source becomes our IPv6 candidate), punching probes
 * and UDX streams to a peer's IPv6 candidate, and the rendezvous traffic itself when the
 * server is reached over IPv6 only.
 */
import os from 'node:os'
import type UDX from 'udx-native'
import type { UDXSocket } from 'udx-native'
import { isIPv6, type Endpoint } from '../protocol/endpoint.js'
import { isGlobalIPv6, isUlaIPv6, MAX_ULA_CANDIDATES } from '../protocol/ipv6.js'
import type { Logger } from '../protocol/log.js'

/** This host's global IPv6 addresses (protocol/ipv6.ts says which count): with none, we offer no IPv6 candidate. */
export function globalV6Addresses(): string[] {
  return interfaceV6(isGlobalIPv6)
}

/**
 * This host's unique-local IPv6 addresses (fc00::/7) we use, the first MAX_ULA_CANDIDATES:
 * its IPv6 LAN candidates (nat-monitor.ts lanEndpoints), and the /64s a peer's must share
 * (sameLanV6). The same ones for both, so that when one side punches TCP over a shared
 * /64 the other does too (tunnel/paths.ts tcp(): a simultaneous open needs both to aim
 * at the same kind of candidate).
 */
export function ulaV6Addresses(): string[] {
  return interfaceV6(isUlaIPv6).slice(0, MAX_ULA_CANDIDATES)
}

/** The IPv6 addresses of this host's interfaces (not loopback) that `keep` accepts, in interface order. */
function interfaceV6(keep: (host: string) => boolean): string[] {
  const out: string[] = []
  for (const addrs of Object.values(os.networkInterfaces())) {
    for (const a of addrs ?? []) if (!a.internal && a.family === 'IPv6' && keep(a.address)) out.push(a.address)
  }
  return out
}

/**
 * Binds the IPv6 socket on `port` (the IPv4 socket's number, so both read alike), or any
 * free port when that one is taken; null when the host has no IPv6 at all (logged).
 */
export function openV6Socket(udx: UDX, port: number, log: Logger): UDXSocket | null {
  for (const p of port ? [port, 0] : [0]) {
    const socket = udx.createSocket({ ipv6Only: true })
    try {
      socket.bind(p, '::')
      return socket
    } catch (err) {
      void socket.close()
      if (p === 0) log.info('no ipv6 socket', { err: (err as Error).message })
    }
  }
  return null
}

/** The socket of the two that reaches `to`: the IPv6 one for an IPv6 address (null: none). */
export function socketFor(to: Endpoint, v4: UDXSocket, v6: UDXSocket | null): UDXSocket | null {
  return isIPv6(to.host) ? v6 : v4
}
