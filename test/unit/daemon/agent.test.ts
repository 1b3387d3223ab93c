// daemon/agent.ts wired together, in process and without root: an Agent against an
// in-process rendezvous server on loopback (port mapping off, so nothing is sent beyond
// 127.0.0.1). It registers (holding the server's control connection), answers status
// over its Unix-socket API, and stop() lets go of everything it took: the registration,
// the UDP port, the API socket and its timers. (Paths between agents are the NAT lab's.)
import dgram from 'node:dgram'
import net from 'node:net'
import fs from 'node:fs'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { Agent } from '../../../src/daemon/agent.js'
import { StateStore, type AgentConfig } from '../../../src/daemon/config.js'
import { ApiClient } from '../../../src/ipc/client.js'
import type { StatusResult } from '../../../src/ipc/schema.js'
import { generateKeyPair, peerId } from '../../../src/protocol/identity.js'
import { silentLogger } from '../../../src/protocol/log.js'
import { RendezvousServer } from '../../../src/rendezvous/server.js'
import { FakeClock, freePort, tempDirs } from '../helpers.js'
import { startOnFreePort } from '../rendezvous/start-server.js'
import { until } from '../tunnel/pipe.js'

const SERVER_KEY = generateKeyPair()
/** Registration takes a few round trips on loopback; generous for a loaded machine. */
const REGISTER_WAIT_MS = 15_000

/** UDP and TCP share the port (and the alternate is port + 1), so port 0 cannot be used: try free ones. */
function startServer(): Promise<{ server: RendezvousServer; port: number }> {
  return startOnFreePort((port) => new RendezvousServer({ host: '127.0.0.1', port, altPort: port + 1, peerTimeoutMs: 30_000, heartbeatMs: 20_000 }, { log: silentLogger, keyPair: SERVER_KEY }))
}

/** Whether UDP `port` on 0.0.0.0 can be bound now (the agent bound it there). */
function udpFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = dgram.createSocket('udp4')
    s.once('error', () => s.close(() => resolve(false)))
    s.bind(port, '0.0.0.0', () => s.close(() => resolve(true)))
  })
}

/** Whether TCP `port` on 127.0.0.1 can be bound now. */
function tcpFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer()
    s.once('error', () => resolve(false))
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)))
  })
}

/** Handles and timers Node counts for this process, by kind. */
function resources(): Record<string, number> {
  const n: Record<string, number> = {}
  for (const r of process.getActiveResourcesInfo()) n[r] = (n[r] ?? 0) + 1
  return n
}

describe('Agent', () => {
  const tempDir = tempDirs('natd-agent-')
  const cleanup: Array<() => Promise<void>> = []

  afterEach(async () => {
    for (const f of cleanup.splice(0).reverse()) await f().catch(() => undefined)
  })

  it('registers with a loopback server, answers status over its API, and stop() releases what it took', async () => {
    const { server, port } = await startServer()
    cleanup.push(() => server.stop())
    const dir = tempDir()
    const socketPath = path.join(dir, 'natd.sock')
    const config: AgentConfig = { name: 'alice', server: `127.0.0.1:${port}#${peerId(SERVER_KEY.publicKey)}`, heartbeatMs: 20_000, port: 0, logLevel: 'info', secretFile: null, inbox: null, portMapping: false }
    const keyPair = generateKeyPair()
    const store = new StateStore(path.join(dir, 'state'))
    const forwardPort = await freePort()
    store.setForwards([{ localPort: forwardPort, bind: '127.0.0.1', peer: 'bob', remotePort: 80 }])
    // Every timer of the agent's runs on this clock, which never moves by itself (registering
    // on loopback needs no retransmission or deadline), so stop() can be seen to clear them.
    const clock = new FakeClock(Date.now())
    const before = resources()
    const agent = new Agent({ config, socketPath, secretKey: null }, { store, keyPair, log: silentLogger, clock })
    let stopped = false
    cleanup.push(async () => {
      if (!stopped) await agent.stop()
    })
    await agent.start()
    const udpPort = agent.localPort
    expect(udpPort).toBeGreaterThan(0)
    expect(await udpFree(udpPort)).toBe(false)
    expect(await tcpFree(forwardPort)).toBe(false) // the stored forward came back

    await until(() => agent.status().registered && server.agentsConnected === 1, 'the registration', REGISTER_WAIT_MS)
    const api = new ApiClient(socketPath)
    await api.connect()
    let status: StatusResult
    try {
      status = await api.call('status', {})
    } finally {
      api.close()
    }
    expect(status).toMatchObject({
      name: 'alice',
      id: agent.id,
      serverState: 'registered',
      registered: true,
      serverKey: { id: peerId(SERVER_KEY.publicKey), pinned: 'flag' },
      publicUdp: `127.0.0.1:${udpPort}`,
      localUdpPort: udpPort,
      tunnels: 0,
      portMapping: { state: 'off' }
    })

    await agent.stop()
    stopped = true
    expect(agent.status().registered).toBe(false)
    await until(() => server.agentsConnected === 0, 'the server to see the agent go', REGISTER_WAIT_MS)
    expect(fs.existsSync(socketPath)).toBe(false)
    expect(await udpFree(udpPort)).toBe(true)
    expect(await tcpFree(forwardPort)).toBe(true)
    // No timer of the agent's outlives it: once the deadlines still racing a finished step have
    // passed (the control connection's 5 s handshake and register deadlines, raced rather
    // than cleared: issue #14 item 4), nothing is left, and no interval re-arms.
    clock.advance(60_000)
    expect(clock.pending).toBe(0)
    // Nothing of the agent's keeps the process alive: no more handles or timers of any kind than before it started.
    const leaked = (): string[] => Object.entries(resources()).flatMap(([kind, n]) => (n > (before[kind] ?? 0) ? [`${kind} ${before[kind] ?? 0} -> ${n}`] : []))
    await until(() => leaked().length === 0, 'the agent\'s handles to close', 5_000).catch(() => expect(leaked()).toEqual([]))
  })
})
