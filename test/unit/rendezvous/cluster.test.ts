// Several natd-rendezvous instances sharing one registry in Redis (src/rendezvous/
// redis-cluster.ts), over loopback, with a real redis-server this file starts and stops:
//
//   fake agents ──TCP──▶ instance A (in process) ─┐
//               ──TCP──▶ instance B (in process) ─┼──▶ redis-server 127.0.0.1:random
//               ──TCP──▶ instance C (dist/, a child process we SIGKILL) ─┘   (appendonly, temp dir)
import { spawn, type ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { createClient } from '@redis/client'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { generateKeyPair, peerId } from '../../../src/protocol/identity.js'
import { silentLogger } from '../../../src/protocol/log.js'
import type { Message } from '../../../src/protocol/rendezvous.js'
import { RedisCluster, INSTANCE_REFRESH_MS, INSTANCE_TTL_MS } from '../../../src/rendezvous/redis-cluster.js'
import { LIST_CACHE_MS } from '../../../src/rendezvous/redis-list.js'
import { RendezvousServer } from '../../../src/rendezvous/server.js'
import { randInt } from '../helpers.js'
import { HOST, registerTcp, sockets, type TcpPeer } from './fake-agent.js'
import { startOnFreePort } from './start-server.js'

const REDIS_SERVER = '/usr/bin/redis-server'
const SERVER_KEY = generateKeyPair() // one deployment, one key: agents pin it across instances
const RELAY = { maxBytes: 1 << 20, maxSeconds: 60, rate: 1 << 20, maxTunnels: 4 }
const DIST_MAIN = path.resolve('dist/rendezvous/main.js')

let redisDir = ''
let redisPort = 0
let redis: ChildProcess | null = null
const running: RendezvousServer[] = []
const children: ChildProcess[] = []

async function startRedis(): Promise<void> {
  const proc = spawn(REDIS_SERVER, ['--bind', HOST, '--port', String(redisPort), '--dir', redisDir, '--appendonly', 'yes', '--appendfsync', 'always', '--save', ''], { stdio: 'ignore' })
  redis = proc
  for (let i = 0; i < 50; i++) {
    if (await pingRedis()) return
    await sleep(100)
  }
  throw new Error('redis-server did not start')
}

/** One inline command to our Redis; true when it answered `+want`. */
function redisSays(command: string, want: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: HOST, port: redisPort }, () => s.write(`${command}\r\n`))
    s.once('data', (d) => {
      s.destroy()
      resolve(d.toString().startsWith(`+${want}`))
    })
    s.once('error', () => resolve(false))
  })
}

const pingRedis = (): Promise<boolean> => redisSays('PING', 'PONG')

/** A client of our Redis for the test's own reads and writes (closed by the caller). */
async function testClient() {
  const c = createClient({ url: `redis://${HOST}:${redisPort}` })
  c.on('error', () => undefined)
  await c.connect()
  return c
}

function killRedis(): void {
  redis?.kill('SIGKILL')
  redis = null
}

beforeAll(async () => {
  if (!fs.existsSync(REDIS_SERVER)) throw new Error(`${REDIS_SERVER} is missing: apt-get install redis-server (scripts/dev.sh does)`)
  redisDir = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-redis-'))
  redisPort = randInt(Math.random, 20_000, 59_999)
  await startRedis()
})

afterAll(() => {
  killRedis()
  fs.rmSync(redisDir, { recursive: true, force: true })
})

afterEach(async () => {
  for (const s of sockets.splice(0)) s.close()
  for (const c of children.splice(0)) c.kill('SIGKILL')
  for (const s of running.splice(0)) await s.stop()
  if (!redis) await startRedis()
  expect(await redisSays('FLUSHALL', 'OK')).toBe(true) // each case starts from an empty registry
})

/** An instance in this process, sharing the registry in our Redis. */
async function startInstance(): Promise<{ server: RendezvousServer; port: number; cluster: RedisCluster }> {
  let cluster!: RedisCluster
  const { server, port } = await startOnFreePort((port) => {
    cluster = new RedisCluster({ url: `redis://${HOST}:${redisPort}`, advertise: { host: HOST, port } }, { log: silentLogger })
    return new RendezvousServer({ host: HOST, port, altPort: 0, peerTimeoutMs: 30_000, heartbeatMs: 20_000, relay: RELAY }, { log: silentLogger, keyPair: SERVER_KEY, cluster })
  })
  running.push(server)
  return { server, port, cluster }
}

/** An instance as the operator runs it (dist/), in a child process this test can SIGKILL. */
async function spawnInstance(): Promise<number> {
  const port = randInt(Math.random, 20_000, 59_999)
  const keyFile = path.join(redisDir, `key-${port}.json`)
  fs.writeFileSync(keyFile, JSON.stringify({ publicKey: SERVER_KEY.publicKey.toString('hex'), secretKey: Buffer.from(SERVER_KEY.secretKey).toString("hex") }), { mode: 0o600 })
  const args = [DIST_MAIN, '--host', HOST, '--port', String(port), '--alt-port', '0', '--key-file', keyFile, '--state-dir', path.join(redisDir, `state-${port}`), '--redis', `redis://${HOST}:${redisPort}`, '--log-level', 'warn']
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'inherit'] })
  children.push(child)
  for (let i = 0; i < 100; i++) {
    try {
      const probe = await registerTcp(port, generateKeyPair(), `probe${port}`)
      probe.peer.close()
      return port
    } catch {
      await sleep(100)
    }
  }
  throw new Error('the spawned instance did not start')
}

/** `natd-rendezvous names …` as the operator runs it (dist/). */
async function names(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [DIST_MAIN, 'names', ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
  children.push(child)
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
  const code = await new Promise<number>((resolve) => child.once('close', (c) => resolve(c ?? -1)))
  return { code, stdout, stderr }
}

async function register(port: number, name: string, kp = generateKeyPair()): Promise<TcpPeer> {
  const { peer, reply } = await registerTcp(port, kp, name)
  if (reply.type !== 'register-ack') throw new Error(`${name} not registered: ${JSON.stringify(reply)}`)
  return peer
}

/** LIST until `pred` holds (records cross instances in the next flush). */
async function listUntil(agent: TcpPeer, pred: (names: string[]) => boolean, timeoutMs = 5_000): Promise<string[]> {
  const deadline = Date.now() + timeoutMs
  for (let reqId = 1; ; reqId++) {
    agent.send({ type: 'list', reqId })
    const m = await agent.waitFor((x) => x.type === 'peers' && x.reqId === reqId)
    const names = m.type === 'peers' ? m.peers.filter((p) => p.online).map((p) => p.name) : []
    if (pred(names) || Date.now() > deadline) return names
    await sleep(200)
  }
}

function isEvent(event: 'up' | 'down', name: string): (m: Message) => boolean {
  return (m) => m.type === 'peer-event' && m.event === event && m.peer.name === name
}

describe('several instances on Redis', () => {
  it('agents on different instances list each other, hear each other come and go, and are introduced with the relay named', async () => {
    const a = await startInstance()
    const b = await startInstance()
    const alice = await register(a.port, 'alice')
    const bobKp = generateKeyPair()
    const bob = await register(b.port, 'bob', bobKp)
    await alice.waitFor(isEvent('up', 'bob'), 5_000)
    expect(await listUntil(alice, (n) => n.includes('bob'))).toEqual(['bob'])
    expect(await listUntil(bob, (n) => n.includes('alice'))).toEqual(['alice'])

    // by name, and by full peer ID
    for (const [reqId, target] of [[7, 'bob'], [8, peerId(bobKp.publicKey)]] as const) {
      alice.send({ type: 'introduce', reqId, target, via: 'auto' })
      const mine = await alice.waitFor((m) => m.type === 'introduction' || m.type === 'error')
      const theirs = await bob.waitFor((m) => m.type === 'introduction')
      if (mine.type !== 'introduction' || theirs.type !== 'introduction') throw new Error(`not introduced: ${JSON.stringify(mine)}`)
      expect(mine).toMatchObject({ reqId, initiator: true, peer: { name: 'bob' } })
      expect(theirs).toMatchObject({ initiator: false, peer: { name: 'alice' }, relay: { host: HOST, port: a.port } })
      expect(Buffer.from(theirs.introId).equals(Buffer.from(mine.introId))).toBe(true)
      expect(Buffer.from(theirs.punchKey).equals(Buffer.from(mine.punchKey))).toBe(true)
    }
    // the relay permit waits on A, the instance bob was told to dial
    expect(a.server.relay!.permits).toBeGreaterThan(0)

    bob.send({ type: 'bye' })
    await alice.waitFor(isEvent('down', 'bob'), 5_000)
    alice.send({ type: 'introduce', reqId: 9, target: 'bob', via: 'udp' })
    expect(await alice.waitFor((m) => m.type === 'error' && m.reqId === 9)).toMatchObject({ code: 'PEER_UNKNOWN' })
  })

  it('an agent that registers with another instance has moved: its old instance lets go of it, and introductions follow it', async () => {
    const a = await startInstance()
    const b = await startInstance()
    const alice = await register(a.port, 'alice')
    const bobKp = generateKeyPair()
    const bobOnA = await register(a.port, 'bob', bobKp)
    const bobOnB = await register(b.port, 'bob', bobKp) // failed over (its connection to A not yet seen dead)
    expect(await bobOnA.closedWithin(5_000)).toBe(true)
    alice.send({ type: 'introduce', reqId: 4, target: 'bob', via: 'udp' })
    expect(await alice.waitFor((m) => (m.type === 'introduction' || m.type === 'error') && m.reqId === 4)).toMatchObject({ type: 'introduction', peer: { name: 'bob' } })
    await bobOnB.waitFor((m) => m.type === 'introduction')
    expect(await listUntil(alice, (n) => n.includes('bob'))).toEqual(['bob'])
  })

  it('a name is bound deployment-wide: another key gets NAME_TAKEN on another instance, online or not', async () => {
    const a = await startInstance()
    const b = await startInstance()
    const carol = await register(a.port, 'carol')
    const thief = await registerTcp(b.port, generateKeyPair(), 'carol')
    expect(thief.reply).toMatchObject({ type: 'error', code: 'NAME_TAKEN' })
    carol.send({ type: 'bye' })
    await carol.closedWithin()
    const again = await registerTcp(b.port, generateKeyPair(), 'carol')
    expect(again.reply).toMatchObject({ type: 'error', code: 'NAME_TAKEN' })
  })

  it('natd-rendezvous names ls/rm --redis: the deployment\'s bindings; rm frees an offline holder\'s name for any key on any instance, refuses while it is online', async () => {
    const a = await startInstance()
    const b = await startInstance()
    const carolKp = generateKeyPair()
    const carol = await register(a.port, 'carol', carolKp)
    const dave = await register(b.port, 'dave')
    await carol.waitFor(isEvent('up', 'dave'), 5_000) // records written (the up event goes out with them)
    const url = `redis://${HOST}:${redisPort}`
    const ls = await names(['ls', '--json', '--redis', url])
    expect(ls.code).toBe(0)
    const rows = JSON.parse(ls.stdout) as { name: string; id: string; boundAt: string; lastSeenAt: string }[]
    expect(rows.map((r) => r.name)).toEqual(['carol', 'dave'])
    expect(rows[0]).toMatchObject({ id: peerId(carolKp.publicKey), boundAt: expect.stringMatching(/^\d{4}-/) as string })
    expect((await names(['ls', '--redis', url])).stdout).toMatch(/^NAME +PEER ID +BOUND +LAST SEEN\ncarol +[a-z2-7]{52} .*\ndave +[a-z2-7]{52} /)

    const online = await names(['rm', 'carol', '--redis', url])
    expect(online.code).toBe(1)
    expect(online.stderr).toContain('online on instance')
    carol.send({ type: 'bye' })
    await carol.closedWithin()
    await dave.waitFor(isEvent('down', 'carol'), 5_000)
    const rm = await names(['rm', 'carol', '--redis', url])
    expect(rm).toMatchObject({ code: 0, stdout: `released carol (was bound to ${peerId(carolKp.publicKey)}); every instance sees it at once\n` })
    expect((JSON.parse((await names(['ls', '--json', '--redis', url])).stdout) as { name: string }[]).map((r) => r.name)).toEqual(['dave'])
    // Free deployment-wide: another key takes it, on the other instance (NAME_TAKEN before the rm: see above).
    expect((await registerTcp(b.port, generateKeyPair(), 'carol')).reply).toMatchObject({ type: 'register-ack' })
    expect((await names(['rm', 'nobody', '--redis', url])).code).toBe(1)
    const down = await names(['ls', '--redis', `redis://${HOST}:1`])
    expect(down.code).toBe(1)
    expect(down.stderr).toContain('Redis at redis://127.0.0.1:1')
  }, 90_000) // seven CLI runs: a node start-up each, seconds on a loaded machine

  it(`an instance killed with SIGKILL: its agents go down for the others within ${(INSTANCE_TTL_MS + INSTANCE_REFRESH_MS) / 1000} s, and may register elsewhere`, async () => {
    const a = await startInstance()
    const cPort = await spawnInstance()
    const alice = await register(a.port, 'alice')
    const daveKp = generateKeyPair()
    await register(cPort, 'dave', daveKp)
    await alice.waitFor(isEvent('up', 'dave'), 5_000)
    children[0]!.kill('SIGKILL')
    const started = Date.now()
    await alice.waitFor(isEvent('down', 'dave'), INSTANCE_TTL_MS + 2 * INSTANCE_REFRESH_MS + 2_000)
    expect(Date.now() - started).toBeLessThan(INSTANCE_TTL_MS + 2 * INSTANCE_REFRESH_MS + 2_000)
    // dave re-homes on A with the same key and name (the deployment's one server key)
    await register(a.port, 'dave', daveKp)
    expect(await listUntil(alice, (n) => n.includes('dave'))).toContain('dave')
  }, 60_000)

  it('Redis killed: each instance serves the agents it holds; restarted: the registry is whole again and names held', async () => {
    const a = await startInstance()
    const b = await startInstance()
    const eveKp = generateKeyPair()
    const alice = await register(a.port, 'alice')
    const eve = await register(b.port, 'eve', eveKp)
    const aliceLocal = await register(a.port, 'frank')
    expect(await listUntil(alice, (n) => n.includes('eve'))).toContain('eve')

    killRedis()
    await sleep(200)
    // a known agent registers again on its instance; a new name waits for Redis
    eve.close()
    await register(b.port, 'eve', eveKp)
    expect((await registerTcp(b.port, generateKeyPair(), 'newcomer')).reply).toMatchObject({ type: 'error', code: 'TIMEOUT' })
    // introductions between agents of one instance go on; LIST shows this instance's agents
    // (once the last shared read, LIST_CACHE_MS, is stale)
    alice.send({ type: 'introduce', reqId: 3, target: 'frank', via: 'udp' })
    expect(await alice.waitFor((m) => m.type === 'introduction' && m.reqId === 3)).toMatchObject({ peer: { name: 'frank' } })
    await aliceLocal.waitFor((m) => m.type === 'introduction')
    expect(await listUntil(alice, (n) => !n.includes('eve'), LIST_CACHE_MS + 2_000)).toEqual(['frank'])

    await startRedis()
    // records rewritten on reconnect: alice sees eve again; eve's name still refuses a stranger
    expect(await listUntil(alice, (n) => n.includes('eve'), 10_000)).toContain('eve')
    expect((await registerTcp(a.port, generateKeyPair(), 'eve')).reply).toMatchObject({ type: 'error', code: 'NAME_TAKEN' })
    expect((await registerTcp(a.port, generateKeyPair(), 'newcomer')).reply).toMatchObject({ type: 'register-ack' })
  }, 30_000)

  /** alice on instance A, bob on B, who has heard alice come up; `k`: alice's key in hex. */
  async function aliceOnAHeardByBob(): Promise<{ a: Awaited<ReturnType<typeof startInstance>>; bob: TcpPeer; k: string }> {
    const a = await startInstance()
    const b = await startInstance()
    const aliceKp = generateKeyPair()
    await register(a.port, 'alice', aliceKp)
    const bob = await register(b.port, 'bob')
    await bob.waitFor(isEvent('up', 'alice'), 5_000)
    return { a, bob, k: Buffer.from(aliceKp.publicKey).toString('hex') }
  }

  it('registrations\' connection stalled longer than the instance TTL (Redis slow under load): the instance key never lapses, the others never hear its agents go down', async () => {
    const { a, bob, k } = await aliceOnAHeardByBob()
    // Every command of A's bulk connection waits behind a BLPOP (its 1 s timeout rejects it; Redis keeps the connection blocked).
    const wedgeS = Math.ceil((INSTANCE_TTL_MS + INSTANCE_REFRESH_MS) / 1000) + 1 // past the expiry and a reaper round
    const bulk = (a.cluster as unknown as { client: { blPop(key: string, timeout: number): Promise<unknown> } }).client
    void bulk.blPop('natd:test:wedge', wedgeS).catch(() => undefined)
    const c = await testClient()
    try {
      let lapsed = 0
      const until = Date.now() + wedgeS * 1000 + 1_000
      while (Date.now() < until) {
        if ((await c.exists(`natd:instance:${a.cluster.instance}`)) !== 1) lapsed++
        await sleep(250)
      }
      expect(lapsed).toBe(0)
      expect(await c.hGet(`natd:peer:${k}`, 'inst')).toBe(a.cluster.instance)
    } finally {
      await c.close()
    }
    await expect(bob.waitFor(isEvent('down', 'alice'), 0)).rejects.toThrow()
    expect(await listUntil(bob, (n) => n.includes('alice'))).toContain('alice')
  }, 60_000)

  it('an instance taken for gone while alive (key expired, records reaped, "down" sent) puts its key and records back at once, and the others hear its agents up again', async () => {
    const { a, bob, k } = await aliceOnAHeardByBob()
    const inst = a.cluster.instance
    const c = await testClient()
    try {
      // What another instance's reaper does to an instance whose key lapsed.
      const rec = JSON.parse((await c.hGet(`natd:peer:${k}`, 'rec'))!) as object
      await c.del([`natd:instance:${inst}`, `natd:peer:${k}`, `natd:agents:${inst}`])
      await c.sRem('natd:instances', inst)
      await c.publish('natd:events', JSON.stringify({ e: 'down', from: inst, peers: [{ ...rec, s: 0 }] }))
      await bob.waitFor(isEvent('down', 'alice'), 5_000)
      // A is alive: within a beat it writes everything back and says so.
      await bob.waitFor(isEvent('up', 'alice'), 10_000)
      expect(await c.exists(`natd:instance:${inst}`)).toBe(1)
      expect(await c.sIsMember('natd:instances', inst)).toBeTruthy()
      expect(await c.hGet(`natd:peer:${k}`, 'inst')).toBe(inst)
      expect(await c.sIsMember(`natd:agents:${inst}`, k)).toBeTruthy()
    } finally {
      await c.close()
    }
    bob.send({ type: 'introduce', reqId: 5, target: 'alice', via: 'udp' })
    expect(await bob.waitFor((m) => (m.type === 'introduction' || m.type === 'error') && m.reqId === 5)).toMatchObject({ type: 'introduction', peer: { name: 'alice' } })
  }, 30_000)

  it('a refresh that found the instance taken for gone but whose reply was lost (timed out): the next refresh still puts its records back', async () => {
    const { a, bob, k } = await aliceOnAHeardByBob()
    const inst = a.cluster.instance
    const c = await testClient()
    try {
      // What that refresh left in Redis: the key back, the mark set, a record reaped before it.
      await c.set(`natd:gone:${inst}`, '1')
      await c.del(`natd:peer:${k}`)
      const deadline = Date.now() + 10_000
      while ((await c.hGet(`natd:peer:${k}`, 'inst')) !== inst && Date.now() < deadline) await sleep(200)
      expect(await c.hGet(`natd:peer:${k}`, 'inst')).toBe(inst)
      expect(await c.exists(`natd:gone:${inst}`)).toBe(0)
    } finally {
      await c.close()
    }
    await bob.waitFor(isEvent('up', 'alice'), 5_000)
  }, 30_000)
})
