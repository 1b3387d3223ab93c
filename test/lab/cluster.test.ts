/**
 * Two natd-rendezvous instances sharing one registry in Redis (issue 16), through real
 * Linux NAT. Both instances run on the server host, one per address, with one key (one
 * deployment); redis-server runs on that host's loopback, started and killed here.
 *
 *                          ┌ instance A 198.18.0.2:3478 ┐
 *   server host (ns) ──────┤                            ├── redis-server 127.0.0.1:6390
 *                          └ instance B 198.18.0.3:3478 ┘
 *        │ inet
 *        ├── r-alice (easy) ── alice ──▶ A        ├── r-carol (hard) ── carol ──▶ A
 *        └── r-bob   (easy) ── bob   ──▶ B        └── r-dave  (hard) ── dave  ──▶ B
 *
 * alice↔bob must punch directly; carol↔dave (both NATs map per destination) must relay,
 * through A (the initiator's instance), which dave is told to dial by the introduction.
 */
import type { ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { labAvailable } from './lab.js'
import { NatdLab, SERVER_PORT, waitFor, withLab } from './natd-lab.js'

const REDIS_PORT = 6390
const DIST_MAIN = path.resolve('dist/rendezvous/main.js')

/** An instance on host:port of the server host, logging to rendezvous-HOST[-PORT].log. */
async function startInstance(n: NatdLab, host: string, keyFile: string, port = SERVER_PORT): Promise<ChildProcess> {
  const tag = port === SERVER_PORT ? host : `${host}-${port}`
  const log = fs.openSync(path.join(n.dir, `rendezvous-${tag}.log`), 'a')
  const args = [DIST_MAIN, '--host', host, '--port', String(port), '--alt-port', '0', '--key-file', keyFile, '--state-dir', path.join(n.dir, `state-${tag}`)]
  const proc = n.lab.spawn(n.lab.server.ns, [process.execPath, ...args, '--redis', `redis://127.0.0.1:${REDIS_PORT}`, '--log-level', 'debug'])
  proc.stdout?.on('data', (d: Buffer) => fs.writeSync(log, d))
  proc.stderr?.on('data', (d: Buffer) => fs.writeSync(log, d))
  await waitFor(async () => (await n.lab.exec(n.lab.server.ns, ['ss', '-Hltn', `src ${host}:${port}`])).stdout.includes(String(port)), 10_000, `instance on ${host}:${port}`)
  return proc
}

/** redis-server on the server host's loopback (append-only file in the lab's dir, so a restart keeps the bindings). */
async function startRedis(n: NatdLab): Promise<ChildProcess> {
  const redisDir = path.join(n.dir, 'redis')
  fs.mkdirSync(redisDir, { recursive: true })
  const proc = n.lab.spawn(n.lab.server.ns, ['/usr/bin/redis-server', '--bind', '127.0.0.1', '--port', String(REDIS_PORT), '--dir', redisDir, '--appendonly', 'yes', '--appendfsync', 'always', '--save', ''])
  await waitFor(async () => (await n.lab.exec(n.lab.server.ns, ['ss', '-Hltn', `sport = :${REDIS_PORT}`])).stdout.includes(String(REDIS_PORT)), 10_000, 'redis-server')
  return proc
}

async function kill(proc: ChildProcess): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return
  const exited = new Promise((resolve) => proc.once('exit', resolve))
  proc.kill('SIGKILL')
  await exited
}

/** The instance an agent registered with last (its log's `registered` lines name its home). */
function homeOf(n: NatdLab, key: string): string | undefined {
  const lines = n.log(key).split('\n').filter((l) => l.includes('"message":"registered"'))
  return lines.length ? (JSON.parse(lines.at(-1)!) as { home?: string }).home : undefined
}

const ECHO_PORT = 7000
const FWD_PORT = 9000
/** The forwarded connection across the kill: long enough to span it (the relay's byte limit is far above). */
const PACED_BYTES_PER_S = 256 * 1024
const PACED_BYTES = 8 * PACED_BYTES_PER_S
/** Lab timings for the relay-loss case: a dead path noticed in 3 s; the tunnel looks for a new one for up to 60 s. */
const RELAY_LOST_DEAD_MS = 3_000
const RELAY_LOST_GIVE_UP_MS = 60_000

/** A paced, echoed, sha256-checked connection from `host` to its local `port` (test/lab/fixtures/paced-echo-client.ts). */
function pacedEcho(n: NatdLab, host: string, port: number, bytes: number, perS: number): Promise<{ ok: boolean; error: string | null; received: number; maxGapMs: number; maxGapEndedAt: number }> {
  const child = n.lab.spawn(n.lab.hosts[host]!.ns, [process.execPath, path.resolve('test/lab/fixtures/paced-echo-client.ts'), String(port), String(bytes), String(perS)])
  let out = ''
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()))
  return new Promise((resolve, reject) => child.once('exit', (code) => {
    try {
      resolve(JSON.parse(out) as Awaited<ReturnType<typeof pacedEcho>>)
    } catch {
      reject(new Error(`paced echo client exited ${code}: ${out}`))
    }
  }))
}

async function online(n: NatdLab, key: string, peer: string): Promise<boolean> {
  return (await n.peers(key)).some((p) => p.name === peer && p.online === true)
}

describe.skipIf(!labAvailable())('several rendezvous instances on Redis', () => {
  it('agents on two instances list each other; easy×easy punches directly, hard×hard relays through the initiator\'s instance', async () => {
    const sites = (['alice', 'bob', 'carol', 'dave'] as const).map((name) => ({ name, nat: name === 'carol' || name === 'dave' ? ('hard' as const) : ('easy' as const), unsolicited: 'drop' as const }))
    await withLab({ sites }, async (n) => {
      await startRedis(n)
      const keyFile = path.join(n.dir, 'deployment-key.json')
      const a = n.lab.server.ip
      const b = n.lab.server.altIp
      // One deployment, one key: the first start writes it, the second reads it.
      await startInstance(n, a, keyFile)
      await startInstance(n, b, keyFile)
      const home = { alice: a, bob: b, carol: a, dave: b }
      for (const [name, host] of Object.entries(home)) {
        await n.startAgent(name, { extra: ['--server', `${host}:${SERVER_PORT}`] })
      }
      for (const name of Object.keys(home)) await n.waitRegistered(name)
      await waitFor(() => online(n, 'alice', 'bob'), 10_000, 'bob listed at alice (another instance)')
      await waitFor(() => online(n, 'dave', 'carol'), 10_000, 'carol listed at dave (another instance)')

      const direct = await n.natctl('alice', ['open', 'bob', '--via', 'udp'])
      expect(direct.code, direct.stderr).toBe(0)
      expect((direct.json as { path: string }).path).toBe('direct-udp')

      const relayed = await n.natctl('carol', ['open', 'dave'])
      expect(relayed.code, relayed.stderr).toBe(0)
      expect((relayed.json as { path: string }).path).toBe('relay')
      // Both relay connections landed on A: the relay session is there, and B never saw one.
      const logA = fs.readFileSync(path.join(n.dir, `rendezvous-${a}.log`), 'utf8')
      const logB = fs.readFileSync(path.join(n.dir, `rendezvous-${b}.log`), 'utf8')
      expect(logA).toMatch(/"message":"relaying"/)
      expect(logB).not.toMatch(/"message":"relaying"/)
      const sent = await n.natctl('carol', ['send', 'dave', 'over the relay on A'])
      expect(sent.code, sent.stderr).toBe(0)
    })
  }, 120_000)

  it('a relayed tunnel whose instance is SIGKILLed is re-opened through a live instance: a forwarded connection across it stays intact, on the same tunnel', async () => {
    const sites = (['carol', 'dave'] as const).map((name) => ({ name, nat: 'hard' as const, unsolicited: 'drop' as const }))
    await withLab({ sites }, async (n) => {
      await startRedis(n)
      const keyFile = path.join(n.dir, 'deployment-key.json')
      const A = `${n.lab.server.ip}:${SERVER_PORT}`
      const B = `${n.lab.server.altIp}:${SERVER_PORT}`
      const procs: Record<string, ChildProcess> = { [A]: await startInstance(n, n.lab.server.ip, keyFile), [B]: await startInstance(n, n.lab.server.altIp, keyFile) }
      const env = { NATD_TEST_TUNNEL_GIVE_UP_MS: String(RELAY_LOST_GIVE_UP_MS) }
      await n.startAgent('carol', { extra: ['--server', `${A},${B}`], tunnelDeadMs: RELAY_LOST_DEAD_MS, env })
      await n.startAgent('dave', { extra: ['--server', `${B},${A}`], tunnelDeadMs: RELAY_LOST_DEAD_MS, env })
      await n.waitRegistered('carol')
      await n.waitRegistered('dave')
      await waitFor(() => online(n, 'carol', 'dave'), 10_000, 'dave listed at carol')
      await n.startEcho('dave', ECHO_PORT)
      expect((await n.natctl('dave', ['expose', 'add', String(ECHO_PORT), '--allow', 'carol'])).code).toBe(0)
      expect((await n.natctl('carol', ['forward', 'add', String(FWD_PORT), `dave:${ECHO_PORT}`])).code).toBe(0)
      const opened = await n.natctl('carol', ['open', 'dave'])
      expect(opened.code, opened.stderr).toBe(0)
      const before = (await n.natctl('carol', ['tunnels'])).json as { path: string; since: string }[]
      expect(before).toMatchObject([{ path: 'relay' }])
      // The relay runs on the initiator's home instance: kill that one.
      const relayHome = homeOf(n, 'carol')!
      const relayLog = (): string => fs.readFileSync(path.join(n.dir, `rendezvous-${relayHome.split(':')[0]}.log`), 'utf8')
      expect(relayLog()).toMatch(/"message":"relaying"/)
      const other = relayHome === A ? B : A
      const otherLog = (): string => fs.readFileSync(path.join(n.dir, `rendezvous-${other.split(':')[0]}.log`), 'utf8')
      expect(otherLog()).not.toMatch(/"message":"relaying"/)

      const echo = pacedEcho(n, 'carol', FWD_PORT, PACED_BYTES, PACED_BYTES_PER_S)
      await new Promise((r) => setTimeout(r, 1_500))
      const killedAt = Date.now()
      await kill(procs[relayHome]!)
      const e = await echo
      expect(e, JSON.stringify(e)).toMatchObject({ ok: true, error: null, received: PACED_BYTES })
      const after = (await n.natctl('carol', ['tunnels'])).json as { path: string; since: string; state: string }[]
      expect(after).toEqual([expect.objectContaining({ path: 'relay', state: 'up', since: before[0]!.since })])
      expect(otherLog()).toMatch(/"message":"relaying"/) // re-opened through the live instance
      process.stderr.write(`relayed tunnel re-opened after SIGKILL: the forwarded connection's longest stall ${e.maxGapMs} ms, ended ${e.maxGapEndedAt - killedAt} ms after the kill\n`)
    })
  }, 120_000)

  it('three instances, agents given them in different orders: a SIGKILLed home is left for the next, the direct tunnel stays; Redis killed and restarted: service goes on, names hold', async () => {
    const sites = (['alice', 'bob', 'carol', 'mallory'] as const).map((name) => ({ name, nat: 'easy' as const, unsolicited: 'drop' as const }))
    await withLab({ sites }, async (n) => {
      const redis = await startRedis(n)
      const keyFile = path.join(n.dir, 'deployment-key.json')
      const A = `${n.lab.server.ip}:${SERVER_PORT}`
      const B = `${n.lab.server.altIp}:${SERVER_PORT}`
      const C = `${n.lab.server.ip}:${SERVER_PORT + 10}`
      const procs: Record<string, ChildProcess> = {
        [A]: await startInstance(n, n.lab.server.ip, keyFile),
        [B]: await startInstance(n, n.lab.server.altIp, keyFile),
        [C]: await startInstance(n, n.lab.server.ip, keyFile, SERVER_PORT + 10)
      }
      // Equal RTTs in the lab: ties keep the order given, so alice's home is mostly A and
      // bob's B; on a loaded machine a connect may lag, so the test reads where they are.
      await n.startAgent('alice', { extra: ['--server', `${A},${B},${C}`] })
      await n.startAgent('bob', { extra: ['--server', `${B},${C},${A}`] })
      await n.waitRegistered('alice')
      await n.waitRegistered('bob')
      const home = homeOf(n, 'alice')!
      expect([A, B, C]).toContain(home)
      expect([A, B, C]).toContain(homeOf(n, 'bob'))
      await waitFor(() => online(n, 'alice', 'bob'), 10_000, 'bob listed at alice')
      const opened = await n.natctl('alice', ['open', 'bob', '--via', 'udp'])
      expect(opened.code, opened.stderr).toBe(0)
      const tunnelsUp = (): number => (n.log('alice').match(/"message":"tunnel up"/g) ?? []).length
      const before = tunnelsUp()

      // alice's home dies: she notices (its control connection ends), re-ranks and registers with another.
      await kill(procs[home]!)
      const rehomeMs = await waitFor(() => homeOf(n, 'alice') !== home, 15_000, 'alice re-homed')
      await n.waitRegistered('alice')
      await waitFor(() => online(n, 'bob', 'alice'), 10_000, 'alice online again at bob')
      process.stderr.write(`re-homed after SIGKILL in ${rehomeMs} ms\n`)
      const sent = await n.natctl('alice', ['send', 'bob', 'still direct'])
      expect(sent.code, sent.stderr).toBe(0)
      expect(tunnelsUp()).toBe(before) // the direct tunnel never dropped: no new one was opened
      expect((await n.natctl('alice', ['tunnels'])).json).toMatchObject([{ peer: 'bob', path: 'direct-udp' }])

      // Redis dies: agents keep working on the instances that hold them (re-registration of a known agent, introductions between B's agents).
      await kill(redis)
      const alive = [A, B, C].find((x) => x !== home)!
      await n.startAgent('carol', { extra: ['--server', alive] })
      // C has never seen carol's name bound: it waits for Redis (TIMEOUT), carol retries
      await waitFor(async () => (await n.lastErrorCode('carol')) === 'TIMEOUT', 15_000, 'carol told the shared registry does not answer')
      expect((await n.status('carol')).registered).toBe(false)
      // (an instance lists its own agents while Redis is away: alice moved to bob's home unless a connect lagged)
      if (homeOf(n, 'alice') === homeOf(n, 'bob')) expect(await online(n, 'bob', 'alice')).toBe(true)
      const during = await n.natctl('bob', ['send', 'alice', 'while Redis is down'])
      expect(during.code, during.stderr).toBe(0)

      // Redis back: carol gets her name, lists the agents of B; nobody else can take alice's.
      await startRedis(n)
      await n.waitRegistered('carol', 20_000)
      await waitFor(() => online(n, 'carol', 'alice'), 15_000, 'alice listed at carol after Redis came back')
      await n.startAgent('mallory', { as: 'alice', extra: ['--server', alive] })
      await waitFor(async () => (await n.lastErrorCode('alice@mallory')) === 'NAME_TAKEN', 15_000, 'NAME_TAKEN at the impostor')
    })
  }, 150_000)
})
