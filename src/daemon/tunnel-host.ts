/**
 * What the agent gives its TunnelManager besides sockets and keys, as one object that
 * implements the manager's interface (tunnel/manager.ts TunnelManagerComponents) instead
 * of loose callbacks built in agent.ts:
 *
 *   - the rendezvous side: introductions, the control connection's port (TCP punching
 *     reuses it), the server's address (it relays);
 *   - our NAT verdict and first-probe TTL, kept fresh by the NatMonitor (the one place
 *     NAT checks run);
 *   - where a peer's channel goes: an exposed port, or an agent service (messages, files);
 *   - the check of a tunnel whose peer the server reported offline (open waits for it).
 */
import type { UDXSocket } from 'udx-native'
import type UDX from 'udx-native'
import type { Endpoint } from '../protocol/endpoint.js'
import type { KeyPair } from '../protocol/identity.js'
import type { Random, TimerClock } from '../protocol/clock.js'
import type { Logger } from '../protocol/log.js'
import type { NatVerdict, Via } from '../protocol/rendezvous.js'
import type { Introduction, PeerPolicy, TunnelManagerComponents } from '../tunnel/manager.js'
import type { PathComponents } from '../tunnel/paths.js'
import type { OpenRequest } from '../tunnel/mux.js'
import type { Tunnel } from '../tunnel/tunnel.js'
import type { NatMonitor } from './nat-monitor.js'
import type { RendezvousClient } from './rendezvous-client.js'
import { globalV6Addresses, ulaV6Addresses } from './ipv6-socket.js'
import { defaultRouteInterfaces, onLinksOf } from './our-links.js'
import os from 'node:os'
import { readFileSync } from 'node:fs'

/**
 * A peer the server reports offline keeps its tunnel only if it answers a ping within
 * this (it may have lost just the server): 10 round trips at 300 ms.
 */
export const OFFLINE_PEER_PING_MS = 3_000

/** A handler for channels a peer opens to one of our services; it decides whom it accepts (it gets the authenticated peer). */
export type ChannelHandler = (tunnel: Tunnel, req: OpenRequest) => void

/** The socket, key, time and chance it hands the path layer as they are (tunnel/paths.ts). */
export interface TunnelHostComponents extends Pick<PathComponents, 'udx' | 'socket' | 'socket6' | 'keyPair' | 'clock' | 'random' | 'log'> {
  peers: PeerPolicy
  rendezvous: Pick<RendezvousClient, 'introduce' | 'tcpLocalPort' | 'serverEndpoint' | 'state'>
  nat: Pick<NatMonitor, 'verdict' | 'fresh' | 'firstProbeTtl'>
  /** Channels that name no service: to an exposed port (exposes.ts decides). */
  exposes: { onChannel: ChannelHandler }
  /** The external endpoint of the UDP port our gateway mapped for us (port-mapping.ts); null = none. */
  mappedUdp?: () => Endpoint | null
  /** Whether an allow list of the owner's names the peer (tunnel/manager.ts named). */
  named?: (peerId: string) => boolean
  /** The text of /proc/net/route (our-links.ts); null where there is none. Tests give their own. */
  routeTable?: () => string | null
}

/** Linux's IPv4 routing table; null elsewhere or when unreadable (every interface then counts: our-links.ts). */
function readRouteTable(): string | null {
  try {
    return readFileSync('/proc/net/route', 'utf8')
  } catch {
    return null
  }
}

export class TunnelHost implements TunnelManagerComponents {
  readonly udx: UDX
  readonly socket: UDXSocket
  readonly socket6: UDXSocket | null
  readonly keyPair: KeyPair
  readonly clock: TimerClock
  readonly random: Random
  readonly log: Logger
  readonly peers: PeerPolicy
  private readonly services = new Map<string, ChannelHandler>()
  /** Checks of tunnels whose peer the server reported offline (peerOffline), by peer ID. */
  private readonly offlineChecks = new Map<string, Promise<void>>()

  constructor(private readonly c: TunnelHostComponents) {
    this.udx = c.udx
    this.socket = c.socket
    this.socket6 = c.socket6 ?? null
    this.keyPair = c.keyPair
    this.clock = c.clock
    this.random = c.random
    this.log = c.log
    this.peers = c.peers
  }

  introduce(target: string, via: Via): Promise<Introduction> {
    return this.c.rendezvous.introduce(target, via)
  }

  localTcpPort(): number {
    return this.c.rendezvous.tcpLocalPort
  }

  relayServer(): Endpoint | null {
    return this.c.rendezvous.serverEndpoint
  }

  natVerdict(): NatVerdict {
    return this.c.nat.verdict
  }

  publicAddress(): string | null {
    const s = this.c.rendezvous.state
    return s.kind === 'registered' ? (s.udp?.host ?? null) : null
  }

  /** Only the default route's links, never an address of ours (our-links.ts says why). */
  onOurLinks(hosts: string[]): boolean {
    return onLinksOf(hosts, os.networkInterfaces(), defaultRouteInterfaces((this.c.routeTable ?? readRouteTable)() ?? ''))
  }

  hasIPv6(): boolean {
    return this.socket6 !== null && globalV6Addresses().length > 0
  }

  ulaAddresses(): string[] {
    return ulaV6Addresses()
  }

  /** The first-probe TTL the NatMonitor learnt (tunnel/hop-check.ts). */
  firstProbeTtl(peerHost?: string): number {
    return this.c.nat.firstProbeTtl(peerHost)
  }

  /**
   * Whether our gateway holds a mapping that peers see: at our public address, as the
   * server sees it (it offers them no other: protocol/lan.ts). A gateway behind a CGN maps
   * at its own external address, which no peer is told of: then no peer plans for it
   * (path-plan.ts), so neither do we.
   */
  hasPortMapping(): boolean {
    const mapped = this.c.mappedUdp?.() ?? null
    return mapped !== null && mapped.host === this.publicAddress()
  }

  /** Before an upgrade attempt: shares the NatMonitor's check in flight or a recent one. */
  refreshNat(): Promise<void> {
    return this.c.nat.fresh()
  }

  /**
   * The server reports the peer of `tunnel` offline: the tunnel is closed now if the
   * peer does not answer on it, not once its path has been silent for TUNNEL_DEAD_MS, so
   * its forwarded connections are reset at once and `open` (which waits for the check,
   * tunnel/manager.ts) tells PEER_OFFLINE. One check per peer at a time.
   */
  peerOffline(tunnel: Tunnel): void {
    const id = tunnel.peer.id
    if (this.offlineChecks.has(id)) return
    const check = tunnel.ping(OFFLINE_PEER_PING_MS).then(
      () => undefined,
      () => tunnel.close(`${tunnel.peer.name} went offline and does not answer`, { goodbye: false, code: 'PEER_OFFLINE' })
    )
    this.offlineChecks.set(id, check.finally(() => this.offlineChecks.delete(id)))
  }

  offlineCheck(peerId: string): Promise<void> {
    return this.offlineChecks.get(peerId) ?? Promise.resolve()
  }

  /** Registers the handler for channels that name `service`. */
  registerService(service: string, handler: ChannelHandler): void {
    this.services.set(service, handler)
  }

  named(peerId: string): boolean {
    return this.c.named?.(peerId) ?? false
  }

  onChannel(tunnel: Tunnel, req: OpenRequest): void {
    if (req.service === '') return this.c.exposes.onChannel(tunnel, req)
    const handler = this.services.get(req.service)
    if (!handler) return req.reject('UNSUPPORTED_PATH', `this agent has no service ${JSON.stringify(req.service)}`)
    handler(tunnel, req)
  }
}
