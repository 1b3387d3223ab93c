/**
 * The port-mapping keeper's state (port-mapping.ts), and what `natctl status` shows of it
 * (docs/API.md#status).
 */
import { formatEndpoint } from '../protocol/endpoint.js'
import type { PortMapping } from '../portmap/port-mapper.js'
import type { PortMappingStatus } from '../ipc/schema.js'

export type KeeperState =
  | { kind: 'off' }
  | { kind: 'probing'; gateway: string | null }
  | { kind: 'none'; gateway: string | null; reason: string }
  /** at: when the lease began; epoch: the gateway's epoch in its latest answer, seen at epochAt. */
  | { kind: 'mapped'; gateway: string; udp: PortMapping; tcp: PortMapping | null; at: number; epoch: number; epochAt: number }

/** The status of `s` at `now`; `retryInMs`: until the next attempt after failures (null: none failed). */
export function keeperStatus(s: KeeperState, now: number, retryInMs: number | null): PortMappingStatus {
  const base = { gateway: null, via: null, udp: null, tcp: null, expiresInMs: null, retryInMs: null, reason: null }
  switch (s.kind) {
    case 'off':
      return { ...base, state: 'off', reason: 'turned off (--no-port-mapping)' }
    case 'probing':
      return { ...base, state: 'probing', gateway: s.gateway }
    case 'none':
      return { ...base, state: 'none', gateway: s.gateway, retryInMs, reason: s.reason }
    case 'mapped':
      return {
        state: 'mapped',
        gateway: s.gateway,
        via: s.udp.via,
        udp: formatEndpoint(s.udp.external),
        tcp: s.tcp ? formatEndpoint(s.tcp.external) : null,
        expiresInMs: Math.max(0, s.at + s.udp.lifetimeS * 1000 - now),
        retryInMs,
        reason: null
      }
  }
}
