// natd --metrics (src/daemon/agent-metrics.ts): a scrape over real loopback HTTP shows
// the tunnels by path, the punches by outcome with their durations, and the bytes of
// live and closed tunnels; anything but GET /metrics is 404; PORT alone means loopback.
import { afterEach, describe, expect, it } from 'vitest'
import { AgentMetrics, parseMetricsAddress, type TunnelFigures } from '../../../src/daemon/agent-metrics.js'
import { silentLogger } from '../../../src/protocol/log.js'

const open: AgentMetrics[] = []
afterEach(() => {
  for (const m of open.splice(0)) m.close()
})

async function scrape(m: AgentMetrics, path = '/metrics'): Promise<{ status: number; text: string }> {
  const res = await fetch(`http://127.0.0.1:${m.port}${path}`)
  return { status: res.status, text: await res.text() }
}

describe('natd --metrics', () => {
  it('counts tunnels by path, punches by outcome and duration, and the bytes of live and closed tunnels', async () => {
    const live: TunnelFigures[] = [
      { path: 'direct-udp', bytesIn: 1_000, bytesOut: 200 },
      { path: 'direct-udp', bytesIn: 10, bytesOut: 20 },
      { path: 'relay', bytesIn: 5, bytesOut: 7 }
    ]
    const m = new AgentMetrics(() => live)
    open.push(m)
    await m.listen('127.0.0.1', 0, silentLogger)
    m.punched({ via: 'auto', path: 'direct-udp', code: null, ms: 30 })
    m.punched({ via: 'auto', path: 'direct-udp', code: null, ms: 700 })
    m.punched({ via: 'udp', path: null, code: 'PUNCH_TIMEOUT', ms: 15_000 })
    m.punched({ via: 'relay', path: 'relay', code: null, ms: 20 })

    const first = await scrape(m)
    expect(first.status).toBe(200)
    let text = first.text
    expect(text).toContain('natd_tunnels{path="direct-udp"} 2')
    expect(text).toContain('natd_tunnels{path="relay"} 1')
    expect(text).toContain('natd_tunnels{path="direct-tcp"} 0')
    expect(text).toContain('natd_punches_total{via="auto",outcome="direct-udp"} 2')
    expect(text).toContain('natd_punches_total{via="udp",outcome="PUNCH_TIMEOUT"} 1')
    expect(text).toContain('natd_punch_seconds_bucket{le="0.05",path="direct-udp"} 1')
    expect(text).toContain('natd_punch_seconds_bucket{le="1",path="direct-udp"} 2')
    expect(text).toContain('natd_punch_seconds_count{path="relay"} 1')
    expect(text).not.toContain('natd_punch_seconds_count{path="null"}') // failures have no path
    expect(text).toContain('natd_tunnel_bytes_total{direction="in"} 1015')
    expect(text).toContain('natd_tunnel_bytes_total{direction="out"} 227')
    expect(text).toMatch(/^natd_process_resident_memory_bytes \d+/m)

    // The relayed tunnel closes: its bytes stay in the totals, the gauge drops.
    m.tunnelClosed(live.pop()!)
    live[0]!.bytesIn += 500
    ;({ text } = await scrape(m))
    expect(text).toContain('natd_tunnels{path="relay"} 0')
    expect(text).toContain('natd_tunnel_bytes_total{direction="in"} 1515')
    expect(text).toContain('natd_tunnel_bytes_total{direction="out"} 227')

    expect((await scrape(m, '/')).status).toBe(404)
    expect((await fetch(`http://127.0.0.1:${m.port}/metrics`, { method: 'POST' })).status).toBe(404)
  })

  it('--metrics PORT listens on loopback; HOST:PORT where told; anything else is refused', () => {
    expect(parseMetricsAddress('9101')).toEqual({ host: '127.0.0.1', port: 9101 })
    expect(parseMetricsAddress('10.0.0.5:9101')).toEqual({ host: '10.0.0.5', port: 9101 })
    expect(parseMetricsAddress('[::1]:9101')).toEqual({ host: '::1', port: 9101 })
    for (const bad of ['', 'localhost', '70000', 'a:b']) expect(() => parseMetricsAddress(bad), bad).toThrow(RangeError)
  })
})
