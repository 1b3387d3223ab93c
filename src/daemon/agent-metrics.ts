/**
 * Prometheus metrics of one natd (`natd --metrics [HOST:]PORT`, off by default; loopback
 * unless a host is given), through prom-client with a registry of our own: tunnels by
 * path, punches by outcome and their durations, bytes carried, and the process's memory
 * and CPU. The HTTP side and its bounds: common/metrics-http.ts.
 *
 * Who can read them: whoever reaches the address, hence loopback by default. They hold
 * counts only: no peer names, keys or addresses (a label per peer would also let the
 * number of series grow with the peers). Who can make us work: a scrape reads the live
 * tunnels' counters (at most the tunnels we hold); a punch is one counter bump and one
 * histogram observation.
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client'
import { MetricsEndpoint } from '../common/metrics-http.js'
import { formatEndpoint, parseEndpoint, type Endpoint } from '../protocol/endpoint.js'
import { NatdError } from '../protocol/errors.js'
import type { Logger } from '../protocol/log.js'
import { PATH_KINDS, type PathKind } from '../protocol/tunnel-snapshot.js'
import type { PunchOutcome, TunnelManager } from '../tunnel/manager.js'
import type { Tunnel } from '../tunnel/tunnel.js'

/** Punch durations (s): a LAN or easy-NAT punch takes tens of ms, birthday punching up to seconds, the open timeout 15 s. */
const PUNCH_BUCKETS_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15]

/** Where `--metrics PORT` listens: loopback, so only this host's users read it unless a host is named. */
export const METRICS_DEFAULT_HOST = '127.0.0.1'

/** `--metrics PORT` or `--metrics HOST:PORT` (`[V6]:PORT`); RangeError for anything else. */
export function parseMetricsAddress(text: string): Endpoint {
  return /^\d+$/.test(text) ? parseEndpoint(`${METRICS_DEFAULT_HOST}:${text}`) : parseEndpoint(text)
}

/** What a scrape reads from the agent's live tunnels. */
export interface TunnelFigures {
  path: PathKind
  bytesIn: number
  bytesOut: number
}

export class AgentMetrics {
  readonly registry = new Registry()
  private readonly punches: Counter<'via' | 'outcome'>
  private readonly punchSeconds: Histogram<'path'>
  private readonly endpoint = new MetricsEndpoint(this.registry)
  /** Bytes of tunnels that have closed (the live ones are read at scrape time). */
  private closedIn = 0
  private closedOut = 0

  constructor(tunnels: () => TunnelFigures[]) {
    const registers = [this.registry]
    collectDefaultMetrics({ register: this.registry, prefix: 'natd_' })
    new Gauge({
      name: 'natd_tunnels',
      help: 'tunnels up, by path',
      labelNames: ['path'],
      registers,
      collect() {
        const counts = new Map<string, number>(PATH_KINDS.map((p) => [p, 0]))
        for (const t of tunnels()) counts.set(t.path, (counts.get(t.path) ?? 0) + 1)
        for (const [path, n] of counts) this.set({ path }, n)
      }
    })
    this.punches = new Counter({ name: 'natd_punches_total', help: 'punches (opens, accepted introductions, resumes, upgrades) by the path asked for and outcome: the path got, or the error code', labelNames: ['via', 'outcome'], registers })
    this.punchSeconds = new Histogram({ name: 'natd_punch_seconds', help: 'time from introduction to an authenticated tunnel, by the path it got', labelNames: ['path'], buckets: PUNCH_BUCKETS_S, registers })
    const closed = (): { bytesIn: number; bytesOut: number } => ({ bytesIn: this.closedIn, bytesOut: this.closedOut })
    new Counter({
      name: 'natd_tunnel_bytes_total',
      help: 'bytes carried in tunnels (the multiplexed streams\' payload), by direction',
      labelNames: ['direction'],
      registers,
      collect() {
        // A counter's value is set from totals here: reset and filled at each scrape.
        let { bytesIn, bytesOut } = closed()
        for (const t of tunnels()) {
          bytesIn += t.bytesIn
          bytesOut += t.bytesOut
        }
        this.reset()
        this.inc({ direction: 'in' }, bytesIn)
        this.inc({ direction: 'out' }, bytesOut)
      }
    })
  }

  punched(p: PunchOutcome): void {
    this.punches.inc({ via: p.via, outcome: p.path ?? p.code ?? 'error' })
    if (p.path) this.punchSeconds.observe({ path: p.path }, p.ms / 1000)
  }

  /** A tunnel closed: its bytes stay in the totals. */
  tunnelClosed(t: TunnelFigures): void {
    this.closedIn += t.bytesIn
    this.closedOut += t.bytesOut
  }

  /** The port it serves on, once listening. */
  port = 0

  /** Serves GET /metrics on host:port; resolves with the port bound. */
  async listen(host: string, port: number, log: Logger): Promise<number> {
    this.port = await this.endpoint.listen(host, port, log)
    return this.port
  }

  close(): void {
    this.endpoint.close()
  }
}

/**
 * natd --metrics: counts `tunnels`' punches and closed tunnels' bytes from now on and
 * serves them on `at`. PORT_IN_USE (nothing left listening) when it cannot listen there.
 */
export async function serveAgentMetrics(at: Endpoint, tunnels: TunnelManager, log: Logger): Promise<AgentMetrics> {
  const figures = (t: Tunnel): TunnelFigures => ({ path: t.path, bytesIn: t.mux.bytesIn, bytesOut: t.mux.bytesOut })
  const metrics = new AgentMetrics(() => tunnels.list().map(figures))
  tunnels.on('punched', (p) => metrics.punched(p))
  tunnels.on('down', (t) => metrics.tunnelClosed(figures(t)))
  try {
    const port = await metrics.listen(at.host, at.port, log)
    log.info('metrics listening', { at: formatEndpoint({ host: at.host, port }) })
    return metrics
  } catch (err) {
    metrics.close()
    throw new NatdError('PORT_IN_USE', `cannot serve metrics on ${formatEndpoint(at)}: ${(err as Error).message}`, { cause: err })
  }
}
