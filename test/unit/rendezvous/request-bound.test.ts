// Requests in flight on one control connection (tcp-gate.ts MAX_REQUESTS_IN_FLIGHT,
// control.ts LOOKUP_PACE_MS; review 9 #2), against a RendezvousServer in this process over
// loopback. With several instances LIST and LOOKUP answer after the shared registry does;
// a cluster stub here answers when the test says, so what the server asks of it, and
// when, is seen exactly. Without one, every request is answered at once, in order.
import { setTimeout as sleep } from 'node:timers/promises'
import { afterEach, describe, expect, it } from 'vitest'
import type { Endpoint } from '../../../src/protocol/endpoint.js'
import { generateKeyPair, randomBytes } from '../../../src/protocol/identity.js'
import { silentLogger } from '../../../src/protocol/log.js'
import { decode, encode, type Message, type PeerRecord } from '../../../src/protocol/rendezvous.js'
import type { Cluster, RemotePeer } from '../../../src/rendezvous/cluster.js'
import { LOOKUP_PACE_MS } from '../../../src/rendezvous/control.js'
import { RendezvousServer } from '../../../src/rendezvous/server.js'
import { MAX_REQUESTS_IN_FLIGHT } from '../../../src/rendezvous/tcp-gate.js'
import { FakeClock } from '../helpers.js'
import { HOST, registerTcp, sockets, type TcpPeer } from './fake-agent.js'
import { startOnFreePort } from './start-server.js'

const SERVER_KEY = generateKeyPair()
const running: RendezvousServer[] = []

afterEach(async () => {
  for (const s of sockets.splice(0)) s.close()
  for (const s of running.splice(0)) await s.stop()
})

/** The shared registry as the server sees it: LIST and LOOKUP answer when the test resolves them. */
class HeldCluster implements Cluster {
  readonly instance = 'stub'
  readonly healthy = true
  advertise: Endpoint = { host: HOST, port: 0 }
  readonly lists: ((records: PeerRecord[]) => void)[] = []
  lookups = 0
  async start(): Promise<void> {}
  async stop(): Promise<void> {}
  async claimName(): Promise<void> {}
  async releaseName(): Promise<boolean> {
    return true
  }
  online(): void {}
  offline(): void {}
  async find(): Promise<RemotePeer | undefined> {
    return undefined
  }
  async lookup(): Promise<RemotePeer | undefined> {
    this.lookups++
    return undefined
  }
  list(): Promise<PeerRecord[]> {
    return new Promise((resolve) => this.lists.push(resolve))
  }
  async introduce(): Promise<boolean> {
    return false
  }
}

async function startServer(cluster: Cluster | null, clock?: FakeClock): Promise<number> {
  const { server, port } = await startOnFreePort(
    (port) => new RendezvousServer({ host: HOST, port, altPort: 0, peerTimeoutMs: 30_000, heartbeatMs: 20_000 }, { log: silentLogger, keyPair: SERVER_KEY, cluster, clock, timers: clock })
  )
  running.push(server)
  return port
}

async function register(port: number, name: string): Promise<TcpPeer> {
  const { peer, reply } = await registerTcp(port, generateKeyPair(), name)
  if (reply.type !== 'register-ack') throw new Error(`${name} not registered: ${JSON.stringify(reply)}`)
  return peer
}

/** Every answer `peer` is sent from now on, in order (peer events left out). */
function record(peer: TcpPeer): Message[] {
  const got: Message[] = []
  peer.session!.on('data', (f: Buffer) => {
    const m = decode(f)
    if (m.type !== 'peer-event') got.push(m)
  })
  return got
}

async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 200 && !cond(); i++) await sleep(10)
  if (!cond()) throw new Error(`never: ${what}`)
}

describe('requests in flight on a control connection', () => {
  it('one instance: pipelined LIST, LOOKUP and PING are answered at once and in the order sent', async () => {
    const port = await startServer(null)
    const bob = await register(port, 'bob')
    const mallory = await register(port, 'mallory')
    const got = record(mallory)
    const want: string[] = []
    for (let i = 1; i <= 200; i++) {
      mallory.send(encode({ type: 'list', reqId: 4 * i }))
      mallory.send(encode({ type: 'lookup', reqId: 4 * i + 1, publicKey: randomBytes(32) }))
      mallory.send(encode({ type: 'ping', seq: i }))
      mallory.send(encode({ type: 'lookup', reqId: 4 * i + 3, publicKey: bob.session!.publicKey! }))
      want.push(`peers ${4 * i}: 1`, `peers ${4 * i + 1}: 0`, `pong ${i}`, `peers ${4 * i + 3}: 1`)
    }
    await until(() => got.length >= want.length, 'every answer')
    expect(got.map((m) => (m.type === 'peers' ? `peers ${m.reqId}: ${m.peers.length}` : m.type === 'pong' ? `pong ${m.seq}` : m.type))).toEqual(want)
  })

  it(`several instances: at most ${MAX_REQUESTS_IN_FLIGHT} LISTs wait on the shared registry at once; the rest are read as answers go out, none refused`, async () => {
    const cluster = new HeldCluster()
    const port = await startServer(cluster)
    const mallory = await register(port, 'mallory')
    const got = record(mallory)
    for (let reqId = 1; reqId <= 20; reqId++) mallory.send(encode({ type: 'list', reqId }))
    let peak = 0
    for (let answered = 0; answered < 20; ) {
      await until(() => cluster.lists.length === Math.min(MAX_REQUESTS_IN_FLIGHT, 20 - answered), 'the next LISTs read')
      await sleep(50) // and no more
      peak = Math.max(peak, cluster.lists.length)
      expect(cluster.lists.length).toBeLessThanOrEqual(MAX_REQUESTS_IN_FLIGHT)
      const waiting = cluster.lists.splice(0)
      for (const answer of waiting) answer([])
      answered += waiting.length
      await until(() => got.length === answered, 'their answers')
    }
    expect(peak).toBe(MAX_REQUESTS_IN_FLIGHT)
    expect(got.map((m) => (m.type === 'peers' ? m.reqId : m.type))).toEqual(Array.from({ length: 20 }, (_, i) => i + 1))
    expect(mallory.socket.destroyed).toBe(false)
  })

  it(`several instances: LOOKUPs of keys held elsewhere reach the shared registry one per ${LOOKUP_PACE_MS} ms per connection; another connection is not held back`, async () => {
    const clock = new FakeClock(Date.now())
    const cluster = new HeldCluster()
    const port = await startServer(cluster, clock)
    const mallory = await register(port, 'mallory')
    const alice = await register(port, 'alice')
    const got = record(mallory)
    for (let reqId = 1; reqId <= 10; reqId++) mallory.send(encode({ type: 'lookup', reqId, publicKey: randomBytes(32) }))
    await until(() => got.length === 1, 'the first answer')
    await sleep(100)
    expect(cluster.lookups).toBe(1) // the others wait their turn: no time has passed

    alice.send({ type: 'lookup', reqId: 1, publicKey: randomBytes(32) })
    expect(await alice.waitFor((m) => m.type === 'peers' && m.reqId === 1)).toMatchObject({ peers: [] })
    expect(cluster.lookups).toBe(2) // alice's own turn

    for (let step = 1; step <= 9; step++) {
      clock.advance(LOOKUP_PACE_MS)
      await until(() => got.length === step + 1, `answer ${step + 1}`)
      expect(cluster.lookups).toBe(step + 2)
    }
    expect(got.map((m) => (m.type === 'peers' ? m.reqId : m.type))).toEqual(Array.from({ length: 10 }, (_, i) => i + 1))
  })
})
