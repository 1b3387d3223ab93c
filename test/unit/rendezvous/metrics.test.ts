// natd-rendezvous --metrics (src/rendezvous/metrics.ts): a scrape over real loopback HTTP
// shows what the server did (registrations by outcome, agents connected, introductions,
// STUN requests, memory); anything but GET /metrics is 404.
import dgram from 'node:dgram'
import { afterEach, describe, expect, it } from 'vitest'
import { generateKeyPair } from '../../../src/protocol/identity.js'
import { silentLogger } from '../../../src/protocol/log.js'
import { encodeBindingRequest } from '../../../src/protocol/stun.js'
import { PromMetrics } from '../../../src/rendezvous/metrics.js'
import { RendezvousServer } from '../../../src/rendezvous/server.js'
import { randInt } from '../helpers.js'
import { HOST, registerTcp, sockets } from './fake-agent.js'

const cleanup: (() => Promise<void> | void)[] = []
afterEach(async () => {
  for (const s of sockets.splice(0)) s.close()
  for (const c of cleanup.splice(0)) await c()
})

async function start(): Promise<{ port: number; scrape: (path?: string) => Promise<{ status: number; text: string }> }> {
  for (let attempt = 0; ; attempt++) {
    const port = randInt(Math.random, 20_000, 59_999)
    const metrics: PromMetrics = new PromMetrics({ agentsConnected: () => server.agentsConnected, relayTunnels: () => 0, relayBytes: () => 0, redisHealthy: () => null })
    const server: RendezvousServer = new RendezvousServer({ host: HOST, port, altPort: 0, peerTimeoutMs: 30_000, heartbeatMs: 20_000 }, { log: silentLogger, keyPair: generateKeyPair(), metrics })
    try {
      await server.start()
    } catch (err) {
      await server.stop()
      if (attempt > 10) throw err
      continue
    }
    const at = await metrics.listen(HOST, 0, silentLogger)
    cleanup.push(() => server.stop(), () => metrics.close())
    const scrape = async (path = '/metrics'): Promise<{ status: number; text: string }> => {
      const res = await fetch(`http://${HOST}:${at}${path}`)
      return { status: res.status, text: await res.text() }
    }
    return { port, scrape }
  }
}

describe('natd-rendezvous --metrics', () => {
  it('counts registrations by outcome, connected agents, introductions and STUN requests; only GET /metrics answers', async () => {
    const { port, scrape } = await start()
    const alice = await registerTcp(port, generateKeyPair(), 'alice')
    await registerTcp(port, generateKeyPair(), 'bob')
    expect((await registerTcp(port, generateKeyPair(), 'alice')).reply).toMatchObject({ type: 'error', code: 'NAME_TAKEN' })
    alice.peer.send({ type: 'introduce', reqId: 1, target: 'bob', via: 'udp' })
    await alice.peer.waitFor((m) => m.type === 'introduction')
    alice.peer.send({ type: 'introduce', reqId: 2, target: 'nobody', via: 'udp' })
    await alice.peer.waitFor((m) => m.type === 'error')
    const udp = dgram.createSocket('udp4')
    await new Promise<void>((resolve) => udp.send(encodeBindingRequest(Buffer.alloc(12, 7)), port, HOST, () => resolve()))
    udp.close()
    await new Promise((resolve) => setTimeout(resolve, 100))

    const { status, text } = await scrape()
    expect(status).toBe(200)
    expect(text).toContain('natd_rendezvous_registrations_total{outcome="ok"} 2')
    expect(text).toContain('natd_rendezvous_registrations_total{outcome="refused"} 1')
    expect(text).toContain('natd_rendezvous_agents_connected 2')
    expect(text).toContain('natd_rendezvous_introductions_total{outcome="local"} 1')
    expect(text).toContain('natd_rendezvous_introductions_total{outcome="refused"} 1')
    expect(text).toContain('natd_rendezvous_stun_requests_total 1')
    expect(text).toMatch(/natd_rendezvous_process_resident_memory_bytes \d+/)
    expect((await scrape('/')).status).toBe(404)
  })
})
