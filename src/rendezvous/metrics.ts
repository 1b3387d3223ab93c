/**
 * Prometheus metrics of one natd-rendezvous instance (`--metrics HOST:PORT`, off by
 * default), through prom-client with a registry of our own (never the global one).
 *
 * Who can read them: whoever reaches HOST:PORT, so bind it to a private or loopback
 * address. They hold counts only (no names, keys or addresses). The HTTP side and its
 * bounds: common/metrics-http.ts.
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client'
import { MetricsEndpoint } from '../common/metrics-http.js'
import type { Logger } from '../protocol/log.js'

export type RegistrationOutcome = 'ok' | 'refused'
export type IntroductionOutcome = 'local' | 'remote' | 'refused'

/** What the server reports (udp-sockets.ts, registration.ts and introductions.ts call these; each is a counter bump). */
export interface ServerMetrics {
  registration(outcome: RegistrationOutcome): void
  introduction(outcome: IntroductionOutcome): void
  stunRequest(): void
  /** A Redis request finished (or failed) after `ms`. */
  redis(ms: number, ok: boolean): void
}

/** Read at scrape time (no bookkeeping on hot paths). */
export interface ServerGauges {
  agentsConnected(): number
  relayTunnels(): number
  relayBytes(): number
  redisHealthy(): number | null
}

export class PromMetrics implements ServerMetrics {
  readonly registry = new Registry()
  private readonly registrations: Counter<'outcome'>
  private readonly introductions: Counter<'outcome'>
  private readonly stun: Counter
  private readonly redisSeconds: Histogram<'ok'>
  private readonly endpoint = new MetricsEndpoint(this.registry)

  constructor(gauges: ServerGauges) {
    const registers = [this.registry]
    collectDefaultMetrics({ register: this.registry, prefix: 'natd_rendezvous_' }) // memory, CPU, event loop lag
    this.registrations = new Counter({ name: 'natd_rendezvous_registrations_total', help: 'REGISTER requests by outcome', labelNames: ['outcome'], registers })
    this.introductions = new Counter({ name: 'natd_rendezvous_introductions_total', help: 'INTRODUCE requests: local (both agents here), remote (the target on another instance), refused', labelNames: ['outcome'], registers })
    this.stun = new Counter({ name: 'natd_rendezvous_stun_requests_total', help: 'STUN Binding requests answered or not', registers })
    this.redisSeconds = new Histogram({ name: 'natd_rendezvous_redis_seconds', help: 'Redis request latency (ok="false": failed or timed out)', labelNames: ['ok'], buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1], registers })
    const gauge = (name: string, help: string, read: () => number | null): void => {
      new Gauge({
        name,
        help,
        registers,
        collect() {
          const v = read()
          if (v !== null) this.set(v)
        }
      })
    }
    gauge('natd_rendezvous_agents_connected', 'agents holding a control connection to this instance (online here)', gauges.agentsConnected)
    gauge('natd_rendezvous_relay_tunnels', 'relayed tunnels running on this instance', gauges.relayTunnels)
    let relayed = 0
    new Counter({
      name: 'natd_rendezvous_relay_bytes_total',
      help: 'payload bytes relayed since start',
      registers,
      collect() {
        const now = gauges.relayBytes()
        if (now > relayed) this.inc(now - relayed)
        relayed = now
      }
    })
    gauge('natd_rendezvous_redis_up', '1 when the shared registry answered its last request, 0 when not (absent without --redis)', gauges.redisHealthy)
  }

  registration(outcome: RegistrationOutcome): void {
    this.registrations.inc({ outcome })
  }

  introduction(outcome: IntroductionOutcome): void {
    this.introductions.inc({ outcome })
  }

  stunRequest(): void {
    this.stun.inc()
  }

  redis(ms: number, ok: boolean): void {
    this.redisSeconds.observe({ ok: ok ? 'true' : 'false' }, ms / 1000)
  }

  /** Serves GET /metrics on host:port; resolves with the port bound. */
  listen(host: string, port: number, log: Logger): Promise<number> {
    return this.endpoint.listen(host, port, log)
  }

  close(): void {
    this.endpoint.close()
  }
}
