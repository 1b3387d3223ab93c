// The abuse suite, several rendezvous instances on Redis (review 9 #2): a registered
// stranger pipelines thousands of LISTs or LOOKUPs on its control connection. Before,
// each started its own Redis round at once (the gate's backlog counts only answers
// already written, and these answer after Redis): 5,000 LISTs put ~5,000 rounds in
// flight, every command of the instance timed out, and an honest introduction to an agent
// on the other instance failed with PEER_UNKNOWN. Now a connection has at most
// MAX_REQUESTS_IN_FLIGHT requests in the works, LISTs share one Redis read per
// LIST_CACHE_MS, and LOOKUPs that ask Redis are paced per connection (LOOKUP_PACE_MS).
//
//   mallory, alice ──TCP──▶ instance A (in process) ─┐
//   40 honest agents ─TCP──▶ instance B (in process) ─┴──▶ redis-server 127.0.0.1:random (temp dir)
//
// Redis's own counters (INFO commandstats) say what reached it: SRANDMEMBER only from a
// LIST's read (one per remote instance), HMGET only from a find or LOOKUP.
import { spawn, type ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { generateKeyPair, randomBytes, type KeyPair } from '../../src/protocol/identity.js'
import { silentLogger } from '../../src/protocol/log.js'
import { decode, encode, type Message } from '../../src/protocol/rendezvous.js'
import { LOOKUP_PACE_MS } from '../../src/rendezvous/control.js'
import { RedisCluster } from '../../src/rendezvous/redis-cluster.js'
import { LIST_CACHE_MS } from '../../src/rendezvous/redis-list.js'
import { RendezvousServer } from '../../src/rendezvous/server.js'
import { MAX_REQUESTS_IN_FLIGHT } from '../../src/rendezvous/tcp-gate.js'
import { randInt } from '../unit/helpers.js'
import { HOST, registerTcp, sockets, type TcpPeer } from '../unit/rendezvous/fake-agent.js'
import { startOnFreePort } from '../unit/rendezvous/start-server.js'
import { recordAbuse } from './record.js'

const REDIS_SERVER = '/usr/bin/redis-server'
const SERVER_KEY = generateKeyPair()
const RELAY = { maxBytes: 1 << 20, maxSeconds: 60, rate: 1 << 20, maxTunnels: 4 }
/** Agents registered on the other instance (what a LIST reads from Redis). */
const REMOTE_AGENTS = 40
/** Requests the stranger pipelines in one go. */
const FLOOD = 5_000
/** How long the LOOKUP flood is watched. */
const LOOKUP_WATCH_MS = 2_000

let redisDir = ''
let redisPort = 0
let redis: ChildProcess | null = null
const running: RendezvousServer[] = []

/** One inline command to our Redis; its whole reply (a status line, or a bulk string's body). */
function redisAsk(command: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: HOST, port: redisPort }, () => s.write(`${command}\r\n`))
    let got = ''
    const done = (err: Error | null, reply = ''): void => {
      clearTimeout(timer)
      s.destroy()
      if (err) reject(err)
      else resolve(reply)
    }
    const timer = setTimeout(() => done(new Error(`redis: no answer to ${command}`)), 2_000)
    s.on('data', (d) => {
      got += d.toString()
      const eol = got.indexOf('\r\n')
      if (eol < 0) return
      if (!got.startsWith('$')) return done(null, got.slice(0, eol))
      const body = got.slice(eol + 2)
      if (Buffer.byteLength(body) >= Number(got.slice(1, eol))) done(null, body)
    })
    s.on('error', (err) => done(err))
  })
}

/** How many times Redis ran `command` since the last CONFIG RESETSTAT. */
async function calls(command: string): Promise<number> {
  const stats = await redisAsk('INFO commandstats')
  return Number(new RegExp(`cmdstat_${command}:calls=(\\d+)`).exec(stats)?.[1] ?? 0)
}

beforeAll(async () => {
  if (!fs.existsSync(REDIS_SERVER)) throw new Error(`${REDIS_SERVER} is missing: apt-get install redis-server (scripts/dev.sh does)`)
  redisDir = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-abuse-redis-'))
  redisPort = randInt(Math.random, 20_000, 59_999)
  redis = spawn(REDIS_SERVER, ['--bind', HOST, '--port', String(redisPort), '--dir', redisDir, '--save', ''], { stdio: 'ignore' })
  for (let i = 0; i < 50; i++) {
    if ((await redisAsk('PING').catch(() => '')) === '+PONG') return
    await sleep(100)
  }
  throw new Error('redis-server did not start')
})

afterAll(() => {
  redis?.kill('SIGKILL')
  fs.rmSync(redisDir, { recursive: true, force: true })
})

afterEach(async () => {
  for (const s of sockets.splice(0)) s.close()
  for (const s of running.splice(0)) await s.stop()
  expect(await redisAsk('FLUSHALL')).toBe('+OK') // each case starts from an empty registry
})

async function startInstance(): Promise<{ port: number; cluster: RedisCluster }> {
  let cluster!: RedisCluster
  const { server, port } = await startOnFreePort((port) => {
    cluster = new RedisCluster({ url: `redis://${HOST}:${redisPort}`, advertise: { host: HOST, port } }, { log: silentLogger })
    return new RendezvousServer({ host: HOST, port, altPort: 0, peerTimeoutMs: 30_000, heartbeatMs: 20_000, relay: RELAY }, { log: silentLogger, keyPair: SERVER_KEY, cluster })
  })
  running.push(server)
  return { port, cluster }
}

async function register(port: number, name: string, kp: KeyPair = generateKeyPair()): Promise<TcpPeer> {
  const { peer, reply } = await registerTcp(port, kp, name)
  if (reply.type !== 'register-ack') throw new Error(`${name} not registered: ${JSON.stringify(reply)}`)
  return peer
}

/** Counts `peer`'s PEERS answers as they come (its inbox would hold thousands). */
function countAnswers(peer: TcpPeer): { answered: number } {
  const count = { answered: 0 }
  peer.session!.on('data', (f: Buffer) => {
    if (decode(f).type === 'peers') count.answered++
  })
  return count
}

/** The agent's answer to request `reqId`: INTRODUCTION, PEERS or ERROR. */
function answerTo(peer: TcpPeer, reqId: number, timeoutMs = 10_000): Promise<Message> {
  return peer.waitFor((m) => (m.type === 'introduction' || m.type === 'peers' || m.type === 'error') && m.reqId === reqId, timeoutMs)
}

describe('abuse: LIST and LOOKUP floods on a Redis deployment (review 9 #2)', () => {
  it(`${FLOOD} pipelined LISTs from one stranger: at most ${MAX_REQUESTS_IN_FLIGHT} in the works, one Redis read per ${LIST_CACHE_MS} ms, and honest introductions across instances still work`, async () => {
    const a = await startInstance()
    const b = await startInstance()
    for (let i = 0; i < REMOTE_AGENTS; i++) await register(b.port, `honest${i}`)
    const alice = await register(a.port, 'alice')
    // B's records reach Redis in its next flush: LIST until alice sees them all.
    for (let reqId = 100; ; reqId++) {
      alice.send({ type: 'list', reqId })
      const m = await answerTo(alice, reqId)
      if (m.type === 'peers' && m.peers.filter((p) => p.online).length >= REMOTE_AGENTS) break
      await sleep(200)
    }
    alice.send({ type: 'introduce', reqId: 1, target: 'honest0', via: 'udp' })
    expect((await answerTo(alice, 1)).type).toBe('introduction')

    let inFlight = 0
    let peak = 0
    const list = a.cluster.list.bind(a.cluster)
    a.cluster.list = async (max: number) => {
      peak = Math.max(peak, ++inFlight)
      try {
        return await list(max)
      } finally {
        inFlight--
      }
    }
    const mallory = await register(a.port, 'mallory')
    const count = countAnswers(mallory)
    await sleep(LIST_CACHE_MS) // alice's last LIST's read is no longer fresh
    expect(await redisAsk('CONFIG RESETSTAT')).toBe('+OK')
    const started = Date.now()
    for (let reqId = 1; reqId <= FLOOD; reqId++) mallory.send(encode({ type: 'list', reqId }))
    await sleep(200)
    alice.send({ type: 'introduce', reqId: 2, target: 'honest1', via: 'udp' }) // during the flood
    const during = await answerTo(alice, 2)
    for (let i = 0; i < 1_200 && count.answered < FLOOD; i++) await sleep(50)
    const seconds = (Date.now() - started) / 1000
    const reads = await calls('srandmember') // one per LIST read (one remote instance holds agents)

    console.log(`${FLOOD} LISTs: ${count.answered} answered in ${seconds.toFixed(1)} s, ${peak} in the works at once, ${reads} Redis reads; alice's introduction during the flood: ${during.type === 'error' ? `error ${(during as { code: string }).code}` : during.type}`)
    expect(during).toMatchObject({ type: 'introduction', peer: { name: 'honest1' } })
    expect(count.answered).toBe(FLOOD) // held back, never refused
    expect(peak).toBeLessThanOrEqual(MAX_REQUESTS_IN_FLIGHT)
    expect(reads).toBeLessThanOrEqual(Math.ceil((seconds * 1000) / LIST_CACHE_MS) + 1)
    expect(mallory.socket.destroyed).toBe(false)
    recordAbuse({ row: `LISTs pipelined by one registered agent on a Redis deployment (${FLOOD})`, metric: 'LISTs in the works at once', before: '4,977-5,000', now: peak, unit: 'requests', bound: `≤ ${MAX_REQUESTS_IN_FLIGHT} per connection (MAX_REQUESTS_IN_FLIGHT)` })
    recordAbuse({ row: `LISTs pipelined by one registered agent on a Redis deployment (${FLOOD})`, metric: 'Redis reads (SRANDMEMBER + HGET per record)', before: '5,000 rounds at once, 4,985-5,000 timed out', now: `${reads} in ${seconds.toFixed(1)} s`, unit: 'rounds', bound: `≤ 1 per ${LIST_CACHE_MS} ms per instance, shared by every LIST` })
    recordAbuse({ row: `LISTs pipelined by one registered agent on a Redis deployment (${FLOOD})`, metric: 'honest introduction to an agent on the other instance, during the flood', before: 'PEER_UNKNOWN', now: during.type, unit: '', bound: 'introduced' })
  }, 90_000)

  it(`${FLOOD} pipelined LOOKUPs of unknown keys: paced to one Redis read per ${LOOKUP_PACE_MS} ms on that connection; another agent's LOOKUP is answered meanwhile`, async () => {
    const a = await startInstance()
    const b = await startInstance()
    const bobKp = generateKeyPair()
    const alice = await register(a.port, 'alice')
    await register(b.port, 'bob', bobKp)
    for (let reqId = 100; ; reqId++) {
      alice.send({ type: 'lookup', reqId, publicKey: bobKp.publicKey })
      const m = await answerTo(alice, reqId)
      if (m.type === 'peers' && m.peers.length === 1) break
      await sleep(200)
    }
    const mallory = await register(a.port, 'mallory')
    const count = countAnswers(mallory)
    const lookups = Array.from({ length: FLOOD }, (_, i) => encode({ type: 'lookup', reqId: i + 1, publicKey: randomBytes(32) }))
    expect(await redisAsk('CONFIG RESETSTAT')).toBe('+OK')
    const started = Date.now()
    for (const lookup of lookups) mallory.send(lookup)
    await sleep(LOOKUP_WATCH_MS / 2)
    alice.send({ type: 'lookup', reqId: 1, publicKey: bobKp.publicKey }) // during the flood
    const during = await answerTo(alice, 1)
    await sleep(Math.max(0, started + LOOKUP_WATCH_MS - Date.now()))
    const reads = await calls('hmget') // one per LOOKUP that asks Redis (alice's included)
    const seconds = (Date.now() - started) / 1000

    console.log(`${FLOOD} LOOKUPs: ${reads} Redis reads and ${count.answered} answers in ${seconds.toFixed(1)} s; alice's LOOKUP meanwhile: ${during.type === 'peers' ? `${during.peers.length} record` : during.type}`)
    expect(during).toMatchObject({ type: 'peers', peers: [{ name: 'bob' }] })
    expect(count.answered).toBeGreaterThan(0) // paced, not refused
    expect(mallory.socket.destroyed).toBe(false)
    expect(reads).toBeLessThanOrEqual(Math.floor((seconds * 1000) / LOOKUP_PACE_MS) + 2)
    recordAbuse({ row: `LOOKUPs of unknown keys pipelined by one registered agent on a Redis deployment (${FLOOD})`, metric: 'Redis reads', before: '5,000 in flight at once', now: `${reads} in ${seconds.toFixed(1)} s`, unit: 'reads', bound: `≤ 1 per ${LOOKUP_PACE_MS} ms per connection (LOOKUP_PACE_MS), ≤ ${MAX_REQUESTS_IN_FLIGHT} waiting` })
  }, 60_000)
})
