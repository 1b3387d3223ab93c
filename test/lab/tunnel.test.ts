/**
 * Punched UDP tunnels, forwarding and exposing through real Linux NAT (issue 3).
 *
 *   server ── inet ──┬── r1 (NAT kind A) ── alice ── forward 127.0.0.1:9000 ─┐
 *                    └── r2 (NAT kind B) ── bob   ── echo server :7000  ◀─────┘ (tunnel)
 *
 * Same-LAN pair: alice and bob are two hosts behind one router.
 */
import { describe, expect, it } from 'vitest'
import { NAMES_POLL_MS } from '../../src/rendezvous/file-name-store.js'
import { labAvailable, type LabSpec, type NatKind } from './lab.js'
import { errorCode, NatdLab, pair, startPair, waitFor, withLab } from './natd-lab.js'

const MiB = 1024 * 1024
const ECHO_PORT = 7000
const FWD_PORT = 9000
// Real-clock timings, shortened for the lab (daemon defaults: TUNNEL_DEAD_MS 15 s, keepalive
// 5 s at most). Same code paths, same ratio: about three keepalives per dead-peer time.
const LAB_TUNNEL_DEAD_MS = 3_000
const LAB_HEARTBEAT = '1s'
// A migrating tunnel gives up after 90 s by default; here after 3 s (read by natd, which
// the harness spawns with our environment).
const LAB_GIVE_UP_MS = 3_000
process.env.NATD_TEST_TUNNEL_GIVE_UP_MS = String(LAB_GIVE_UP_MS)




async function open(n: NatdLab, from: string, to: string): Promise<{ path: string; tookMs: number; remote: string }> {
  // These are the UDP path's tests: `auto` may pick direct-tcp, which tcp.test.ts covers.
  const r = await n.natctl(from, ['open', to, '--via', 'udp'])
  if (r.code !== 0) throw new Error(`natctl open ${to} failed (${r.code}): ${r.stderr}`)
  return r.json as { path: string; tookMs: number; remote: string }
}

async function forwardAndExpose(n: NatdLab): Promise<void> {
  await n.startEcho('bob', ECHO_PORT)
  expect((await n.natctl('bob', ['expose', 'add', String(ECHO_PORT), '--allow', 'alice'])).code).toBe(0)
  expect((await n.natctl('alice', ['forward', 'add', String(FWD_PORT), `bob:${ECHO_PORT}`])).code).toBe(0)
}

const MATRIX: Array<{ a: NatKind; b: NatKind; path: string; sameLan?: boolean }> = [
  { a: 'easy', b: 'easy', path: 'direct-udp' },
  { a: 'easy', b: 'full', path: 'direct-udp' },
  { a: 'public', b: 'easy', path: 'direct-udp' },
  { a: 'easy', b: 'easy', path: 'lan', sameLan: true }
]

describe.skipIf(!labAvailable())('punched UDP tunnels', () => {
  for (const unsolicited of ['drop', 'reset'] as const) {
    for (const m of MATRIX) {
      const title = m.sameLan ? `same LAN (${unsolicited})` : `${m.a}×${m.b} (${unsolicited})`
      it(`${title}: open --via udp gives ${m.path} well under a second (auto-grid.test.ts: what plain open gives); a forward carries 64 MiB and 20 concurrent connections intact`, async () => {
        const spec: LabSpec = m.sameLan ? { sites: [{ name: 'home', nat: 'easy', unsolicited, hosts: ['alice', 'bob'] }] } : pair(m.a, m.b, unsolicited)
        await withLab(spec, async (n) => {
          await startPair(n)
          const opened = await open(n, 'alice', 'bob')
          expect(opened.path).toBe(m.path)
          expect(opened.tookMs).toBeLessThan(500)
          if (m.path === 'lan') expect(opened.remote).toMatch(new RegExp(`^${n.lab.hosts.bob!.ip}:`))
          // Both sides see the tunnel, with the same path.
          await waitFor(async () => ((await n.natctl('bob', ['tunnels'])).json as Array<{ peer: string; path: string }>).some((t) => t.peer === 'alice' && t.path === m.path), 3_000, 'bob sees the tunnel')
          const peers = await n.peers('alice')
          expect(peers.find((p) => p.name === 'bob')?.tunnel).toBe(m.path)
          await forwardAndExpose(n)
          const big = await n.echo('alice', FWD_PORT, 64 * MiB, 1)
          expect(big).toMatchObject({ ok: true })
          const many = await n.echo('alice', FWD_PORT, 2 * MiB, 20)
          expect(many).toMatchObject({ ok: true, conns: 20 })
          // Still the one tunnel: every connection shared it.
          expect(n.log('alice').match(/"message":"tunnel up"/g)?.length).toBe(1)
        })
      }, 120_000)
    }
  }

  it('with 5% random loss on one WAN link a 64 MiB transfer still matches', async () => {
    await withLab(pair('easy', 'easy', 'drop'), async (n) => {
      await startPair(n)
      await n.lab.setLoss('bob', 5)
      await forwardAndExpose(n)
      const r = await n.echo('alice', FWD_PORT, 64 * MiB, 1, 240_000)
      expect(r).toMatchObject({ ok: true })
    })
  }, 300_000)

  it('a forward to a port the peer has not exposed is refused; exposing it makes the same command work', async () => {
    await withLab(pair('easy', 'easy', 'drop'), async (n) => {
      await startPair(n)
      await n.startEcho('bob', ECHO_PORT)
      expect((await n.natctl('alice', ['forward', 'add', String(FWD_PORT), `bob:${ECHO_PORT}`])).code).toBe(0)
      const refused = await n.echo('alice', FWD_PORT, 1024, 1)
      expect(refused.ok).toBe(false)
      await waitFor(() => /NOT_EXPOSED/.test(n.log('alice')) && /NOT_EXPOSED/.test(n.log('bob')), 3_000, 'NOT_EXPOSED logged on both sides')
      // Exposed to someone else only: still refused.
      expect((await n.natctl('bob', ['expose', 'add', String(ECHO_PORT), '--allow', 'carol'])).code).toBe(1) // PEER_UNKNOWN: no key known for carol
      expect((await n.natctl('bob', ['expose', 'add', String(ECHO_PORT), '--allow', 'c'.repeat(51) + 'q'])).code).toBe(0)
      expect((await n.echo('alice', FWD_PORT, 1024, 1)).ok).toBe(false)
      expect((await n.natctl('bob', ['expose', 'add', String(ECHO_PORT), '--allow', 'alice'])).code).toBe(0)
      expect(await n.echo('alice', FWD_PORT, 1024 * 1024, 1)).toMatchObject({ ok: true })
    })
  }, 60_000)

  // Keepalives (every 700 ms here) must beat a 2 s conntrack UDP timeout; were they to
  // fail, the tunnel would be silent, declared dead after LAB_TUNNEL_DEAD_MS and punched
  // again well within the idle time (a second "tunnel up", a new `since`).
  const IDLE_MS = 16_000
  it(`an idle tunnel survives ${IDLE_MS / 1000} s (8 conntrack timeouts of 2 s, 5 dead-peer times), without a new punch`, async () => {
    await withLab(pair('easy', 'easy', 'drop'), async (n) => {
      await n.lab.setUdpTimeout('alice', 2)
      await n.lab.setUdpTimeout('bob', 2)
      await startPair(n, { heartbeat: '700ms', tunnelDeadMs: LAB_TUNNEL_DEAD_MS })
      await forwardAndExpose(n)
      const first = await open(n, 'alice', 'bob')
      const since = ((await n.natctl('alice', ['tunnels'])).json as Array<{ since: string }>)[0]!.since
      await new Promise((r) => setTimeout(r, IDLE_MS))
      expect(await n.echo('alice', FWD_PORT, 4 * MiB, 1)).toMatchObject({ ok: true })
      const after = (await n.natctl('alice', ['tunnels'])).json as Array<{ since: string; remote: string }>
      expect(after).toHaveLength(1)
      expect(after[0]!.since).toBe(since)
      expect(after[0]!.remote).toBe(first.remote)
      expect(n.log('alice').match(/"message":"tunnel up"/g)?.length).toBe(1)
      expect(n.log('bob').match(/"message":"tunnel up"/g)?.length).toBe(1)
    })
  }, 120_000)

  it('restarting the daemon brings the forwards back', async () => {
    await withLab(pair('easy', 'easy', 'drop'), async (n) => {
      await startPair(n)
      await forwardAndExpose(n)
      expect(await n.echo('alice', FWD_PORT, MiB, 1)).toMatchObject({ ok: true })
      await n.restartAgent('alice')
      await n.waitRegistered('alice')
      const ls = (await n.natctl('alice', ['forward', 'ls'])).json as Array<{ localPort: number; peer: string; remotePort: number }>
      expect(ls).toEqual([expect.objectContaining({ localPort: FWD_PORT, peer: 'bob', remotePort: ECHO_PORT })])
      // The tunnel opens on the first connection.
      expect(await n.echo('alice', FWD_PORT, MiB, 1)).toMatchObject({ ok: true })
    })
  }, 60_000)

  it('a peer presenting another key under a pinned name is refused with KEY_MISMATCH', async () => {
    await withLab(pair('easy', 'easy', 'drop'), async (n) => {
      await startPair(n)
      expect((await open(n, 'alice', 'bob')).path).toBe('direct-udp')
      expect((await n.natctl('alice', ['close', 'bob'])).code).toBe(0)
      // bob's machine is replaced: same name, new key (a new state dir). The server keeps
      // the name bound to the old key until the operator frees it.
      await n.stopAgent('bob')
      expect(await n.rendezvousNames(['rm', 'bob'])).toMatchObject({ code: 0 })
      await new Promise((r) => setTimeout(r, NAMES_POLL_MS + 1_000)) // the running server picks it up
      await n.startAgent('bob', { stateDir: `${n.dir}/bob-new-state` })
      await n.waitRegistered('bob')
      const r = await n.natctl('alice', ['open', 'bob'])
      expect(r.code).toBe(4)
      expect(errorCode(r)).toBe('KEY_MISMATCH')
      expect(r.stderr).toMatch(/KEY_MISMATCH/)
      expect(n.log('alice')).toMatch(/KEY_MISMATCH/)
      // alice checks the new ID with bob's owner and pins it out of band.
      const newId = ((await n.natctl('bob', ['status'])).json as { id: string }).id
      expect((await n.natctl('alice', ['trust', 'bob', newId])).code).toBe(4) // another ID is pinned: needs --replace
      expect((await n.natctl('alice', ['trust', 'bob', newId, '--replace'])).code).toBe(0)
      expect((await open(n, 'alice', 'bob')).path).toBe('direct-udp')
    })
  }, 60_000)

  it('closing a tunnel is seen by the peer at once; a dead peer\'s tunnel migrates within the dead-peer time (15 s by default, 3 s here) and closes after the give-up time (90 s by default, 3 s here)', async () => {
    await withLab(pair('easy', 'easy', 'drop'), async (n) => {
      await startPair(n, { heartbeat: LAB_HEARTBEAT, tunnelDeadMs: LAB_TUNNEL_DEAD_MS })
      await open(n, 'alice', 'bob')
      expect((await n.natctl('alice', ['close', 'bob'])).code).toBe(0)
      await waitFor(async () => ((await n.natctl('bob', ['tunnels'])).json as unknown[]).length === 0, 2_000, 'bob drops the closed tunnel')
      await open(n, 'alice', 'bob')
      // Flush the NAT state and silence bob: alice must notice on her own.
      await n.stopAgent('bob', 'SIGKILL')
      const state = async (): Promise<string[]> => ((await n.natctl('alice', ['tunnels'])).json as Array<{ state: string }>).map((t) => t.state)
      const took = await waitFor(async () => (await state()).includes('migrating'), LAB_TUNNEL_DEAD_MS + 7_000, 'alice notices the dead path')
      // Noticed by the silence (not at once, as a goodbye would be), and soon after it: an
      // unanswered keepalive (WAITING_SILENT_MS, 2 s) or the dead-peer time, whichever first.
      expect(took).toBeGreaterThan(1_000)
      expect(took).toBeLessThan(LAB_TUNNEL_DEAD_MS + 5_000)
      await waitFor(async () => (await state()).length === 0, LAB_GIVE_UP_MS + 7_000, 'alice gives up')
      expect(n.log('alice')).toMatch(/tunnel migrating/)
      expect(n.log('alice')).toMatch(/no path for 3\.0s/)
    })
  }, 60_000)
})
