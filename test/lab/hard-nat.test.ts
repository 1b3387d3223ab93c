/**
 * NATs that map per destination ("hard": MASQUERADE --random-fully), through real Linux
 * NAT: the NAT check's verdict, birthday punching, and the clear failure when both
 * sides are hard (issues 4 and 5).
 *
 *   server ── inet ──┬── r1 (easy) ── alice
 *                    └── r2 (hard) ── bob     bob: 256 sockets, TTL-2 probes to alice;
 *                                             alice: probes to random ports of r2
 */
import { describe, expect, it } from 'vitest'
import { labAvailable, type LabSpec } from './lab.js'
import { errorCode, pair, startPair, waitFor, withLab } from './natd-lab.js'




describe.skipIf(!labAvailable())('hard NAT: verdicts and birthday punching', () => {
  it('the NAT check names easy, hard and public correctly, and peers see the verdict', async () => {
    const spec: LabSpec = { sites: [{ name: 'alice', nat: 'easy' }, { name: 'bob', nat: 'hard' }, { name: 'carol', nat: 'public' }, { name: 'dave', nat: 'full' }] }
    await withLab(spec, async (n) => {
      await n.startServer()
      for (const h of ['alice', 'bob', 'carol', 'dave']) await n.startAgent(h)
      for (const h of ['alice', 'bob', 'carol', 'dave']) await n.waitRegistered(h)
      expect((await n.status('alice')).nat).toBe('easy')
      expect((await n.status('bob')).nat).toBe('hard')
      expect((await n.status('carol')).nat).toBe('none')
      expect((await n.status('dave')).nat).toBe('easy')
      const peers = await n.peers('alice')
      expect(Object.fromEntries(peers.map((p) => [p.name, p.nat]))).toEqual({ bob: 'hard', carol: 'none', dave: 'easy' })
    })
  }, 60_000)

  for (const [a, b] of [['easy', 'hard'], ['hard', 'easy']] as const) {
    it(`${a}×${b}: open gets direct-udp by birthday punching, median under 3 s over 10 runs`, async () => {
      await withLab(pair(a, b), async (n) => {
        await startPair(n)
        const took: number[] = []
        for (let i = 0; i < 10; i++) {
          const r = await n.natctl('alice', ['open', 'bob', '--via', 'udp', '--timeout', '10s'])
          expect(r.code, r.stderr).toBe(0)
          const j = r.json as { path: string; tookMs: number }
          expect(j.path).toBe('direct-udp')
          took.push(j.tookMs)
          await n.natctl('alice', ['close', 'bob'])
          await waitFor(async () => ((await n.natctl('bob', ['tunnels'])).json as unknown[]).length === 0, 3_000, 'bob drops the tunnel')
        }
        took.sort((x, y) => x - y)
        const median = took[5]!
        process.stdout.write(`birthday punching ${a}×${b}: ${took.join(', ')} ms (median ${median} ms)\n`)
        expect(median).toBeLessThan(3_000)
        expect(n.log('alice') + n.log('bob')).toMatch(/"strategy":"(birthday|spray)"/)
      })
    }, 180_000)
  }

  it('easy×hard: a forward over the birthday-punched path carries data; --via tcp fails cleanly and --via auto still gets a path', async () => {
    await withLab(pair('easy', 'hard'), async (n) => {
      await startPair(n)
      const tcp = await n.natctl('alice', ['open', 'bob', '--via', 'tcp', '--timeout', '3s'])
      expect(tcp.code).toBe(1)
      expect(errorCode(tcp)).toBe('PUNCH_TIMEOUT')
      const auto = await n.natctl('alice', ['open', 'bob', '--via', 'auto'])
      expect(auto.code, auto.stderr).toBe(0)
      expect((auto.json as { path: string }).path).toBe('direct-udp')
      await n.startEcho('bob', 7000)
      expect((await n.natctl('bob', ['expose', 'add', '7000'])).code).toBe(0)
      expect((await n.natctl('alice', ['forward', 'add', '9000', 'bob:7000'])).code).toBe(0)
      expect(await n.echo('alice', 9000, 16 * 1024 * 1024, 4)).toMatchObject({ ok: true })
    })
  }, 90_000)

  it('after a network change the agent checks its NAT again and its peers see the new verdict', async () => {
    await withLab(pair('easy', 'easy'), async (n) => {
      await startPair(n)
      expect((await n.status('alice')).nat).toBe('easy')
      // The server goes away while alice's network changes under her (her router turns hard).
      await n.killServer()
      await n.lab.setNat('alice', 'hard')
      await n.startServer()
      await n.waitRegistered('alice', 15_000)
      await waitFor(async () => (await n.status('alice')).nat === 'hard', 10_000, 'alice re-checks her NAT')
      await waitFor(async () => (await n.peers('bob')).some((p) => p.name === 'alice' && p.nat === 'hard'), 10_000, 'bob sees alice as hard')
    })
  }, 60_000)

  it('hard×hard: no spraying; open fails at once saying both NATs map per destination', async () => {
    await withLab(pair('hard', 'hard'), async (n) => {
      await startPair(n)
      const started = Date.now()
      const r = await n.natctl('alice', ['open', 'bob', '--via', 'udp', '--timeout', '10s'])
      expect(r.code).toBe(1)
      expect(Date.now() - started).toBeLessThan(3_000)
      expect(r.stderr).toMatch(/both NATs map per destination/)
      expect(errorCode(r)).toBe('UNSUPPORTED_PATH')
    })
  }, 60_000)
})
