/**
 * The NAT grid, as users run it: `natctl open PEER` (no --via, so `auto`) for each pair of
 * NAT kinds, and the path it gives. The per-transport tests (tunnel, tcp, hard-nat,
 * relay) force a path with --via; this one asserts what `auto` picks.
 *
 *                        ┌── r1 (easy)   ── alice
 *                        ├── r2 (easy)   ── bob
 *                        ├── r3 (hard)   ── carol
 *   server ── inet ──────┼── r4 (hard)   ── dave
 *   (rendezvous, relay)  ├── erin (public: no NAT)
 *                        ├── r6 (full cone) ── frank
 *                        ├── r7 (easy)   ──┬── gina     (one LAN)
 *                        │                 └── hank
 *                        ├── r8 (easy, RST) ── ivan
 *                        └── r9 (easy, RST) ── judy
 *
 * Routers r1-r7 drop unsolicited packets, so a TCP punch lands within ~10 ms of UDP and
 * `auto` keeps the faster direct-tcp (AUTO_TCP_GRACE_MS, src/tunnel/manager.ts) when
 * neither NAT maps per destination. r8 and r9 answer unsolicited SYNs with RST: TCP takes
 * ~0.3 s there, past the grace, and UDP is kept. One lab serves every pair: each open is
 * its own tunnel.
 */
import { describe, expect, it } from 'vitest'
import { labAvailable, type LabSpec } from './lab.js'
import { waitFor, withLab, type NatdLab } from './natd-lab.js'

const SPEC: LabSpec = {
  sites: [
    { name: 'alice', nat: 'easy' },
    { name: 'bob', nat: 'easy' },
    { name: 'carol', nat: 'hard' },
    { name: 'dave', nat: 'hard' },
    { name: 'erin', nat: 'public' },
    { name: 'frank', nat: 'full' },
    { name: 'home', nat: 'easy', hosts: ['gina', 'hank'] },
    { name: 'ivan', nat: 'easy', unsolicited: 'reset' },
    { name: 'judy', nat: 'easy', unsolicited: 'reset' }
  ]
}

/**
 * Initiator, responder, what they are, and the path `natctl open` gives. Through routers
 * that answer unsolicited SYNs with RST, TCP lands a moment before or after UDP (the
 * initiator waits AUTO_TCP_GRACE_MS for it), so either direct path is right there.
 */
const GRID: Array<{ from: string; to: string; pair: string; path: string | string[] }> = [
  { from: 'alice', to: 'bob', pair: 'easy×easy', path: 'direct-tcp' },
  { from: 'alice', to: 'carol', pair: 'easy×hard', path: 'direct-udp' },
  { from: 'dave', to: 'bob', pair: 'hard×easy', path: 'direct-udp' },
  { from: 'carol', to: 'dave', pair: 'hard×hard', path: 'relay' },
  { from: 'erin', to: 'alice', pair: 'public×easy', path: 'direct-tcp' },
  { from: 'erin', to: 'carol', pair: 'public×hard', path: 'direct-udp' },
  { from: 'frank', to: 'bob', pair: 'full cone×easy', path: 'direct-tcp' },
  { from: 'gina', to: 'hank', pair: 'same LAN', path: 'lan' },
  { from: 'ivan', to: 'judy', pair: 'easy×easy, RST routers', path: ['direct-udp', 'direct-tcp'] }
]

async function tunnelPath(n: NatdLab, key: string, peer: string): Promise<string | undefined> {
  const r = await n.natctl(key, ['tunnels'])
  return (r.json as Array<{ peer: string; path: string }>).find((t) => t.peer === peer)?.path
}

describe.skipIf(!labAvailable())('the NAT grid: what `natctl open PEER` gives each pair', () => {
  it(`auto picks ${GRID.map((g) => `${g.pair} → ${[g.path].flat().join(' or ')}`).join(', ')}; both sides agree and the tunnel carries a ping`, async () => {
    await withLab(SPEC, async (n) => {
      await n.startServer()
      const hosts = Object.keys(n.lab.hosts)
      for (const h of hosts) await n.startAgent(h)
      for (const h of hosts) await n.waitRegistered(h)
      const got: Record<string, string> = {}
      for (const g of GRID) {
        const r = await n.natctl(g.from, ['open', g.to])
        expect(r.code, `${g.pair}: ${r.stderr}`).toBe(0)
        got[g.pair] = (r.json as { path: string }).path
        await waitFor(async () => (await tunnelPath(n, g.to, g.from)) === got[g.pair], 3_000, `${g.to} sees the tunnel from ${g.from}`)
        expect((await n.natctl(g.from, ['ping', g.to, '-c', '1'])).code, `${g.pair}: ping`).toBe(0)
      }
      process.stdout.write(`auto grid: ${JSON.stringify(got)}\n`)
      const want = (g: (typeof GRID)[number]): string => ([g.path].flat().includes(got[g.pair]!) ? got[g.pair]! : [g.path].flat().join(' or '))
      expect(got).toEqual(Object.fromEntries(GRID.map((g) => [g.pair, want(g)])))
    })
  }, 120_000)
})
