/**
 * What `natctl status` shows: the agent's view of itself, read from its parts at each call.
 * Parts appear while the agent starts (null until then), so each field says what it knows.
 */
import type { StatusResult } from '../ipc/schema.js'
import type { Clock } from '../protocol/clock.js'
import { formatEndpoint } from '../protocol/endpoint.js'
import { peerId } from '../protocol/identity.js'
import { FIRST_PROBE_TTL } from '../tunnel/hop-check.js'
import type { TunnelManager } from '../tunnel/manager.js'
import type { AgentConfig, StateStore } from './config.js'
import { lanEndpoints, type NatMonitor } from './nat-monitor.js'
import type { PortMappingKeeper } from './port-mapping.js'
import type { RendezvousClient } from './rendezvous-client.js'
import type { ServerSpec } from './server-address.js'

export const VERSION = '0.1.0'

/** The agent's parts status reads; null for a part not started yet. */
export interface StatusSources {
  config: Readonly<AgentConfig>
  id: string
  server: ServerSpec
  store: StateStore
  clock: Clock
  startedAt: number
  localPort: number
  /** The IPv6 socket's port, when there is one. */
  localPort6: number | undefined
  client: RendezvousClient | null
  nat: NatMonitor | null
  tunnels: TunnelManager | null
  portMapping: PortMappingKeeper | null
}

export function agentStatus(s: StatusSources): StatusResult {
  const client = s.client
  const state = client?.state ?? { kind: 'stopped' as const }
  return {
    version: VERSION,
    name: s.config.name,
    id: s.id,
    server: s.server.text,
    serverKey: serverKey(s.server, s.store),
    serverState: state.kind,
    registered: state.kind === 'registered',
    lastError: client?.lastError ? client.lastError.toJSON() : null,
    lastHeartbeatAgoMs: state.kind === 'registered' && client?.lastHeartbeatAt ? s.clock.now() - client.lastHeartbeatAt : null,
    serverRttMs: state.kind === 'registered' ? (client?.rttMs ?? null) : null,
    publicUdp: state.kind === 'registered' && state.udp ? formatEndpoint(state.udp) : null,
    publicTcp: state.kind === 'registered' && state.tcp ? formatEndpoint(state.tcp) : null,
    publicUdp6: state.kind === 'registered' && client?.udp6 ? formatEndpoint(client.udp6) : null,
    localUdpPort: s.localPort,
    lan: lanEndpoints(s.localPort, s.localPort6).map(formatEndpoint),
    nat: s.nat?.verdict ?? 'unknown',
    firstProbeTtl: s.nat?.learnedTtl ?? FIRST_PROBE_TTL,
    uptimeMs: s.clock.now() - s.startedAt,
    tunnels: s.tunnels?.list().length ?? 0,
    portMapping: s.portMapping?.status() ?? { state: s.config.portMapping ? 'probing' : 'off', gateway: null, via: null, udp: null, tcp: null, expiresInMs: null, retryInMs: null, reason: null },
    stateWarnings: [...s.store.stateWarnings]
  }
}

/** The server key we hold, and how it came to be pinned (the flag's #KEY, or first use). */
function serverKey(server: ServerSpec, store: StateStore): StatusResult['serverKey'] {
  if (server.key) return { id: peerId(server.key), pinned: 'flag' }
  const learnt = store.serverKey(server.text)
  return learnt ? { id: learnt, pinned: 'first-use' } : null
}
