/**
 * The first-probe TTL each kind of site learns (src/tunnel/hop-check.ts), and the punch
 * it makes possible: an easy home NAT behind a symmetric CGN against an easy NAT gets
 * direct-udp by birthday punching, as hard×easy does (docs/BENCHMARKS.md, 2026-12-05:
 * it got the relay while the birthday probes left with TTL 2 and died at the CGN).
 *
 *                        ┌── r1 (easy) ── alice      server 2 routers away → TTL 2
 *                        ├── r2 (easy) ── bob
 *   server ── inet ──────┼── r3 (hard) ── carol      2 routers → TTL 2
 *                        ├── erin (public)           1 router  → TTL 2 (never below)
 *                        ├── cgnE (easy CGN) ── r (easy) ── ann   3 routers → TTL 3
 *                        └── cgnS (symmetric CGN) ── r (easy) ── eve   3 routers → TTL 3
 *
 * No delay here; test/lab/grid-conditions.test.ts opens the same pair at 100 ms RTT.
 */
import { describe, expect, it } from 'vitest'
import { labAvailable, type LabSpec } from './lab.js'
import { waitFor, withLab } from './natd-lab.js'

const SPEC: LabSpec = {
  cgns: [
    { name: 'cgnE', nat: 'easy' },
    { name: 'cgnS', nat: 'hard' }
  ],
  sites: [
    { name: 'alice', nat: 'easy' },
    { name: 'bob', nat: 'easy' },
    { name: 'carol', nat: 'hard' },
    { name: 'erin', nat: 'public' },
    { name: 'ann', nat: 'easy', cgn: 'cgnE' },
    { name: 'eve', nat: 'easy', cgn: 'cgnS' }
  ]
}

const EXPECTED_TTL = { alice: 2, bob: 2, carol: 2, erin: 2, ann: 3, eve: 3 }

describe.skipIf(!labAvailable())('first-probe TTL: learnt per site, and a symmetric CGN × easy punched', () => {
  it('each site learns the TTL that clears its own NATs (2 behind one, 3 behind home NAT + CGN); easy behind a symmetric CGN × easy gets direct-udp', async () => {
    await withLab(SPEC, async (n) => {
      await n.startServer()
      const hosts = Object.keys(EXPECTED_TTL)
      for (const h of hosts) await n.startAgent(h)
      for (const h of hosts) await n.waitRegistered(h, 30_000)
      const learnt: Record<string, unknown> = {}
      for (const h of hosts) learnt[h] = (await n.status(h)).firstProbeTtl
      process.stdout.write(`first-probe TTL: ${JSON.stringify(learnt)}\n`)
      expect(learnt).toEqual(EXPECTED_TTL)
      expect((await n.status('eve')).nat).toBe('hard')
      const r = await n.natctl('eve', ['open', 'bob'])
      expect(r.code, r.stderr).toBe(0)
      expect((r.json as { path: string }).path).toBe('direct-udp')
      await waitFor(async () => ((await n.natctl('bob', ['tunnels'])).json as Array<{ peer: string; path: string }>).some((t) => t.peer === 'eve' && t.path === 'direct-udp'), 5_000, 'bob sees the direct-udp tunnel from eve')
      expect((await n.natctl('eve', ['ping', 'bob', '-c', '1'])).code).toBe(0)
    })
  }, 120_000)
})
