/**
 * A tunnel's state model (tunnel.ts draws the moves): where it runs, its states, the moves
 * allowed between them, and whether its path moves with a NAT mapping. Pure: no I/O, no timers.
 */
import { formatEndpoint, isIPv4, type Endpoint } from '../protocol/endpoint.js'
import type { Logger } from '../protocol/log.js'
import type { PathKind, Transport } from '../protocol/tunnel-snapshot.js'

export interface TunnelPeer {
  name: string
  id: string
}

/** Where a tunnel runs: its path, the peer's address on it, the transport under the session. */
export interface TunnelRoute {
  path: PathKind
  remote: Endpoint
  transport: Transport
}

export type TunnelState =
  | ({ kind: 'up' } & TunnelRoute)
  | ({ kind: 'migrating'; since: number; reason: string } & TunnelRoute)
  | ({ kind: 'closed'; reason: string } & TunnelRoute)

/**
 * The moves the diagram at the top of tunnel.ts draws: up to anything (up to up is a new
 * path), migrating to up or closed, closed to nothing.
 */
export function canTransition(from: TunnelState['kind'], to: TunnelState['kind']): boolean {
  if (from === 'closed') return false
  if (from === 'migrating') return to !== 'migrating'
  return true
}

/** What a tunnel emits (tunnel.ts). */
export interface TunnelEvents {
  closed: [reason: string]
  /** The peer's first frame came (heardFromPeer()). */
  answered: []
  /** The tunnel moved to another path (an upgrade from the relay, or a resume). */
  path: [from: PathKind, to: PathKind]
  /** The path is gone: the opener looks for a new one (tunnel/manager.ts). */
  migrating: [reason: string]
  /** Up again after migrating: on a new session (resumed) or on the old path. */
  resumed: [stalledMs: number]
  /** Silent for SUSPECT_SILENT_MS (path-silence.ts) while waiting for an answer (again at each further SUSPECT_SILENT_MS of it). */
  suspect: []
  /** A suspect silence ended with the path heard again while up: the path is lossy, not gone. */
  lossy: [silentMs: number]
}

/** Why a move happens, for its log line: how a tunnel came up again, the code it closed with. */
export interface MoveCause {
  how?: 'old path' | 'new session' | 'upgrade'
  code?: string | undefined
}

/** Logs a tunnel's move from `from` to `next` (tunnel.ts transition(), once per move): info, warn when it migrates or closes with a code. */
export function logMove(log: Logger, tunnel: { peer: string; opener: boolean; now: number }, from: TunnelState, next: TunnelState, cause: MoveCause): void {
  const peer = tunnel.peer
  if (next.kind === 'migrating') log.warn('tunnel migrating', { peer, path: next.path, reason: next.reason, opener: tunnel.opener })
  else if (next.kind === 'closed') {
    if (cause.code) log.warn(`${cause.code}: tunnel closed`, { peer, path: next.path, reason: next.reason, code: cause.code })
    else log.info('tunnel closed', { peer, path: next.path, reason: next.reason })
  } else if (cause.how === 'upgrade') log.info('path upgraded', { peer, from: from.path, to: next.path, remote: formatEndpoint(next.remote) })
  else {
    const migratedMs = from.kind === 'migrating' ? tunnel.now - from.since : 0
    log.info('tunnel resumed', { peer, how: cause.how ?? 'new session', path: next.path, migratedMs })
  }
}

/**
 * Whether a tunnel's path runs through the public IPv4 mapping of a NAT (ours or the
 * peer's), so that a changed mapping (a heartbeat seen from another port or address, a
 * peer's record with another endpoint) leaves it dead: direct UDP or TCP to an IPv4
 * endpoint. A `lan` path goes host to host inside the site, an IPv6 one to a global
 * address without NAT, a relayed one to the server over its own connection: none of them
 * moves with the mapping (a LAN or IPv6 path that did die still migrates, by silence).
 */
export function movesWithMapping(route: { path: PathKind; remote: Endpoint }): boolean {
  return (route.path === 'direct-udp' || route.path === 'direct-tcp') && isIPv4(route.remote.host)
}
