/**
 * GET /metrics over HTTP for a prom-client registry: natd-rendezvous --metrics and natd
 * --metrics serve theirs through this.
 *
 * Who can make us work: whoever reaches the address. A scrape serializes a few dozen
 * series; connections are capped (MAX_SCRAPE_CONNS) and a request that has not arrived
 * whole in SCRAPE_TIMEOUT_MS is closed; anything but GET /metrics is 404.
 */
import http from 'node:http'
import type { Registry } from 'prom-client'
import type { Logger } from '../protocol/log.js'

/** Scrapers at once (Prometheus uses one; a few more for people with curl). */
export const MAX_SCRAPE_CONNS = 8
/** A scrape request must arrive whole within this. */
export const SCRAPE_TIMEOUT_MS = 5_000

export class MetricsEndpoint {
  private server: http.Server | null = null

  constructor(private readonly registry: Registry) {}

  /** Serves GET /metrics on host:port; resolves with the port bound. */
  async listen(host: string, port: number, log: Logger): Promise<number> {
    const server = http.createServer((req, res) => {
      if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') {
        res.writeHead(404).end()
        return
      }
      this.registry
        .metrics()
        .then((text) => res.writeHead(200, { 'content-type': this.registry.contentType }).end(text))
        .catch((err: Error) => {
          log.warn('metrics failed', { err: err.message })
          res.writeHead(500).end()
        })
    })
    server.maxConnections = MAX_SCRAPE_CONNS
    server.headersTimeout = SCRAPE_TIMEOUT_MS
    server.requestTimeout = SCRAPE_TIMEOUT_MS
    this.server = server
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen({ host, port }, () => resolve())
    })
    // After listening, an error (EMFILE on accept) must not take the process down.
    server.on('error', (err) => log.warn('metrics server error', { err: err.message }))
    const addr = server.address()
    return typeof addr === 'object' && addr ? addr.port : port
  }

  close(): void {
    this.server?.close()
    this.server?.closeAllConnections()
  }
}
