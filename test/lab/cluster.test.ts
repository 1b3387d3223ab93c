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
import fs from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { labAvailable } from './lab.js'
import { NatdLab, SERVER_PORT, waitFor, withLab } from './natd-lab.js'

const REDIS_PORT = 6390
const DIST_MAIN = path.resolve('dist/rendezvous/main.js')

async function startInstance(n: NatdLab, host: string, keyFile: string): Promise<void> {
  const log = fs.openSync(path.join(n.dir, `rendezvous-${host}.log`), 'a')
  const args = [DIST_MAIN, '--host', host, '--port', String(SERVER_PORT), '--alt-port', '0', '--key-file', keyFile, '--state-dir', path.join(n.dir, `state-${host}`)]
  const proc = n.lab.spawn(n.lab.server.ns, [process.execPath, ...args, '--redis', `redis://127.0.0.1:${REDIS_PORT}`, '--log-level', 'debug'])
  proc.stdout?.on('data', (d: Buffer) => fs.writeSync(log, d))
  proc.stderr?.on('data', (d: Buffer) => fs.writeSync(log, d))
  await waitFor(async () => (await n.lab.exec(n.lab.server.ns, ['ss', '-Hltn', `src ${host}:${SERVER_PORT}`])).stdout.includes(String(SERVER_PORT)), 10_000, `instance on ${host}`)
}

async function online(n: NatdLab, key: string, peer: string): Promise<boolean> {
  return (await n.peers(key)).some((p) => p.name === peer && p.online === true)
}

describe.skipIf(!labAvailable())('several rendezvous instances on Redis', () => {
  it('agents on two instances list each other; easy×easy punches directly, hard×hard relays through the initiator\'s instance', async () => {
    const sites = (['alice', 'bob', 'carol', 'dave'] as const).map((name) => ({ name, nat: name === 'carol' || name === 'dave' ? ('hard' as const) : ('easy' as const), unsolicited: 'drop' as const }))
    await withLab({ sites }, async (n) => {
      const redisDir = path.join(n.dir, 'redis')
      fs.mkdirSync(redisDir)
      n.lab.spawn(n.lab.server.ns, ['/usr/bin/redis-server', '--bind', '127.0.0.1', '--port', String(REDIS_PORT), '--dir', redisDir, '--appendonly', 'yes', '--save', ''])
      await waitFor(async () => (await n.lab.exec(n.lab.server.ns, ['ss', '-Hltn', `sport = :${REDIS_PORT}`])).stdout.includes(String(REDIS_PORT)), 10_000, 'redis-server')
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
})
