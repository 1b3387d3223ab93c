/**
 * One open tunnel as the agent reports it: Tunnel.snapshot() (src/tunnel/tunnel.ts)
 * builds it and the local API returns it as it is (`TunnelInfo`, the `tunnels` and
 * `open` results, documented in docs/API.md#tunnels). It lives here because both
 * src/tunnel and src/ipc need it and neither may import the other. No imports: natctl
 * may load it.
 */

/** The path a tunnel runs over. */
export const PATH_KINDS = ['lan', 'direct-udp', 'direct-tcp', 'relay'] as const
export type PathKind = (typeof PATH_KINDS)[number]

/** What carries the session: UDX streams over the punched UDP socket, or a TCP connection. */
export type Transport = 'udp' | 'tcp'

export interface TunnelSnapshot {
  /** Peer name. */
  peer: string
  /** Peer ID. */
  id: string
  path: PathKind
  /** The peer's endpoint the tunnel uses, `host:port`. */
  remote: string
  /** Last measured round trip; null until the first ping or keepalive answer. */
  rttMs: number | null
  bytesIn: number
  bytesOut: number
  /** When the tunnel came up, ISO 8601 (UTC). */
  since: string
  /** Channels (forwarded connections, messages, files) the tunnel carries now. */
  streams: number
  transport: Transport
  /**
   * `up`, or `migrating`: its path is gone and the agents look for a new one; channels
   * wait (their data is kept) until the tunnel resumes or gives up.
   */
  state: 'up' | 'migrating'
}
