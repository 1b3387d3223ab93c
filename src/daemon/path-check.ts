/**
 * When a tunnel goes silent, checks at once whether a side of its path changed (issue
 * #15), instead of waiting for the tunnel's silence detector (2 s) and, behind a dead
 * control connection, for three missed heartbeats: a router that came back with a new
 * public port or address, a laptop that moved from Wi-Fi to LTE.
 *
 *   tunnel silent SUSPECT_SILENT_MS (again each further SUSPECT_SILENT_MS)
 *     ──▶ our side: probe() — a heartbeat and a ping to the server
 *           heartbeat seen from another mapping ('moved') ──▶ every direct IPv4 tunnel migrates now
 *           control connection silent ──▶ dropped, registered again at once
 *     ──▶ the peer's side: its record on the server (LOOKUP; LIST from an older
 *         server) against the endpoints the tunnel's introduction gave; other ones
 *         ──▶ that tunnel migrates now
 *     neither ──▶ nothing: the silence is loss (tunnel.ts decides "gone")
 *
 * The opener of the migrating tunnel then resumes it on a new path (tunnel/manager.ts).
 * A heartbeat that finds our mapping moved on its own schedule has the same effect.
 *
 * Bounds: a peer that stops answering (anyone we have a tunnel with can) makes us send
 * at most one check (a heartbeat, a ping and a lookup, to our own server) per
 * CHECK_MIN_INTERVAL_MS, whatever the number of silent tunnels.
 */
import { sameEndpoint, type Endpoint } from '../protocol/endpoint.js'
import type { Clock } from '../protocol/clock.js'
import type { Logger } from '../protocol/log.js'
import type { PeerRecord } from '../protocol/rendezvous.js'
import type { PathKind } from '../protocol/tunnel-snapshot.js'
import type { ProbeResult } from './path-probe.js'

/** At most one check this often (a silent tunnel asks every SUSPECT_SILENT_MS, 600 ms). */
export const CHECK_MIN_INTERVAL_MS = 500

/** What a check needs of a silent tunnel. */
export interface SilentTunnel {
  readonly peer: { name: string; id: string }
  readonly path: PathKind
  readonly isUp: boolean
  readonly peerEndpoints: { udp: Endpoint | null; tcp: Endpoint | null } | null
  pathChanged(reason: string): void
}

export interface PathCheckComponents {
  /** Asks the server about our side (rendezvous-client.ts probe()); null when not registered. */
  probe(): Promise<ProbeResult | null>
  /** The peer's record on the server now; null when it has none or we are not registered. */
  peerRecord(id: string): Promise<PeerRecord | null>
  /** Our IPv4 mapping changed: the tunnels whose path goes through it migrate now (tunnel/manager.ts). */
  pathChanged(reason: string): void
  clock: Clock
  log: Logger
}

/**
 * Whether the peer's record shows another public endpoint than the tunnel's introduction
 * gave for its path (pure). Only direct paths through the peer's NAT count. A direct-tcp
 * tunnel also counts a changed UDP endpoint: the peer's heartbeat tells the server of a
 * new mapping at once, its TCP endpoint only once it registered again (its control
 * connection died with the mapping, noticed seconds later), and a NAT that changed one
 * mapping (new address, flushed state) has lost the other (bench/roaming.ts: a host
 * that moved site was seen 2 s late, by silence, without this).
 */
export function peerMoved(t: Pick<SilentTunnel, 'path' | 'peerEndpoints'>, now: Pick<PeerRecord, 'udp' | 'tcp'>): boolean {
  const then = t.peerEndpoints
  if (!then) return false
  if (t.path === 'direct-udp') return then.udp !== null && now.udp !== null && !sameEndpoint(then.udp, now.udp)
  if (t.path === 'direct-tcp') return (then.tcp !== null && now.tcp !== null && !sameEndpoint(then.tcp, now.tcp)) || (then.udp !== null && now.udp !== null && !sameEndpoint(then.udp, now.udp))
  return false
}

export class PathCheck {
  private running = false
  private last = -Infinity

  constructor(private readonly c: PathCheckComponents) {}

  /** `tunnel` is silent while it waits for an answer. Never rejects. */
  onSuspect(tunnel: SilentTunnel): void {
    const now = this.c.clock.now()
    if (this.running || now - this.last < CHECK_MIN_INTERVAL_MS) return
    this.running = true
    this.last = now
    void this.check(tunnel).finally(() => (this.running = false))
  }

  /** The server saw our mapping move (a heartbeat, a new session). */
  onMoved(): void {
    this.c.pathChanged('our NAT mapping or address changed')
  }

  private async check(tunnel: SilentTunnel): Promise<void> {
    try {
      const r = await this.c.probe()
      this.c.log.debug('path check', { peer: tunnel.peer.name, mapping: r?.mapping ?? null, control: r?.control ?? null, tookMs: this.c.clock.now() - this.last })
      if (r?.mapping === 'moved') return this.onMoved()
      if (!tunnel.isUp) return
      const record = await this.c.peerRecord(tunnel.peer.id)
      if (record && tunnel.isUp && peerMoved(tunnel, record)) {
        this.c.log.debug('peer mapping changed', { peer: tunnel.peer.name, path: tunnel.path })
        tunnel.pathChanged('the peer\'s NAT mapping or address changed')
      }
    } catch (err) {
      this.c.log.debug('path check failed', { err: (err as Error).message })
    }
  }
}
