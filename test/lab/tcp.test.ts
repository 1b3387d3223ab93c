/**
 * TCP hole punching by simultaneous open through real Linux NAT (issue 4).
 *
 *   server ── inet ──┬── r1 (NAT) ── alice :P ──SYN──▶ ◀──SYN── bob :P ── r2 (NAT) ──┘
 *
 * Both agents connect from their control connection's local port P to each other's
 * public TCP endpoint at once; routers either drop or RST unsolicited SYNs.
 */
import { describe, expect, it } from 'vitest'
import { labAvailable } from './lab.js'
import { linkFor, withLinks } from './grid.js'
import { errorCode, NatdLab, pair, startPair, waitFor, withLab } from './natd-lab.js'

const MiB = 1024 * 1024




interface Opened {
  path: string
  tookMs: number
  transport: string
  error?: { code: string; message: string }
}

async function openVia(n: NatdLab, via: string, timeout = '5s'): Promise<Opened> {
  const r = await n.natctl('alice', ['open', 'bob', '--via', via, '--timeout', timeout])
  return (r.json ?? {}) as Opened
}

async function closeBoth(n: NatdLab): Promise<void> {
  await n.natctl('alice', ['close', 'bob'])
  await waitFor(async () => ((await n.natctl('bob', ['tunnels'])).json as unknown[]).length === 0, 3_000, 'bob drops the tunnel')
}

describe.skipIf(!labAvailable())('TCP hole punching', () => {
  it('routers that drop unsolicited SYNs: --via tcp gives direct-tcp on the first try', async () => {
    await withLab(pair('easy', 'easy', 'drop'), async (n) => {
      await startPair(n)
      const r = await openVia(n, 'tcp')
      expect(r).toMatchObject({ path: 'direct-tcp', transport: 'tcp' })
      expect(r.tookMs).toBeLessThan(1_000)
      await waitFor(async () => ((await n.natctl('bob', ['tunnels'])).json as Array<{ path: string }>).some((t) => t.path === 'direct-tcp'), 3_000, 'bob sees direct-tcp')
      const ping = await n.natctl('alice', ['ping', 'bob', '-c', '1'])
      expect(ping.code).toBe(0)
    })
  }, 60_000)

  // Each open reuses the same two ports (the control connections'), so this also checks
  // that a closed or failed punch leaves nothing behind on the 4-tuple. Each attempt starts
  // once the previous one has ended at both ends: when alice's 5 s open gives up, bob's
  // side keeps punching until its own 15 s accept deadline, and an open started meanwhile
  // collides with it (a known gap: the initiator cannot yet cancel the responder).
  // The sites are 20 ms apart (link emulator), as on the internet: with no delay the two
  // SYNs must cross inside the ~15 µs a router's RST takes, which a loaded 2-core machine
  // cannot schedule reliably (CI: 8 of 10 once, the SYN budget spent in the burst).
  it('routers that answer unsolicited SYNs with RST, 20 ms apart: direct-tcp within 5 s in at least 9 of 10 runs', async () => {
    await withLab(withLinks(pair('easy', 'easy', 'reset'), linkFor(20, 0)), async (n) => {
      await startPair(n)
      const took: number[] = []
      let failures = 0
      const bobDone = (): number => n.log('bob').split('\n').filter((l) => l.includes('"initiator":false') || l.includes('incoming tunnel failed')).length
      for (let i = 0; i < 10; i++) {
        const r = await openVia(n, 'tcp', '5s')
        if (r.path === 'direct-tcp') took.push(r.tookMs)
        else {
          failures++
          process.stdout.write(`TCP punch failed: ${r.error?.message ?? JSON.stringify(r)}\n`)
        }
        await waitFor(() => bobDone() >= i + 1, 16_000, `bob's side of attempt ${i + 1} ended`).catch(() => undefined) // bob may have refused it outright (BUSY)
        await closeBoth(n).catch(() => undefined)
      }
      took.sort((a, b) => a - b)
      process.stdout.write(`TCP punch through RST routers: ${took.length}/10 opened, median ${took[Math.floor(took.length / 2)] ?? '-'} ms, max ${took[took.length - 1] ?? '-'} ms\n`)
      // SYNs each side sent per open that came up (the winner's side of the 'tunnel up' log line).
      const syns = [...(n.log('alice') + n.log('bob')).matchAll(/"transport":"tcp".*?"sent":(\d+)/g)].map((m) => Number(m[1])).sort((a, b) => a - b)
      process.stdout.write(`SYNs per side per open: median ${syns[Math.floor(syns.length / 2)] ?? '-'}, max ${syns[syns.length - 1] ?? '-'}\n`)
      expect(failures).toBeLessThanOrEqual(1)
    })
  }, 240_000)

  it('a forwarded port over direct-tcp carries 64 MiB and 20 concurrent connections intact', async () => {
    await withLab(pair('easy', 'easy', 'drop'), async (n) => {
      await startPair(n)
      expect(await openVia(n, 'tcp')).toMatchObject({ path: 'direct-tcp' })
      await n.startEcho('bob', 7000)
      expect((await n.natctl('bob', ['expose', 'add', '7000'])).code).toBe(0)
      expect((await n.natctl('alice', ['forward', 'add', '9000', 'bob:7000'])).code).toBe(0)
      expect(await n.echo('alice', 9000, 64 * MiB, 1)).toMatchObject({ ok: true })
      expect(await n.echo('alice', 9000, 2 * MiB, 20)).toMatchObject({ ok: true, conns: 20 })
      const t = (await n.natctl('alice', ['tunnels'])).json as Array<{ path: string; bytesOut: number }>
      expect(t).toEqual([expect.objectContaining({ path: 'direct-tcp' })])
      expect(t[0]!.bytesOut).toBeGreaterThan(64 * MiB)
    })
  }, 120_000)

  it('--via auto races UDP and TCP, keeps one path, and natctl tunnels says which', async () => {
    await withLab(pair('easy', 'easy', 'drop'), async (n) => {
      await startPair(n)
      const r = await openVia(n, 'auto')
      expect(['direct-udp', 'direct-tcp']).toContain(r.path)
      const mine = (await n.natctl('alice', ['tunnels'])).json as Array<{ path: string; transport: string }>
      await waitFor(async () => ((await n.natctl('bob', ['tunnels'])).json as unknown[]).length === 1, 3_000, 'bob has the tunnel')
      const theirs = (await n.natctl('bob', ['tunnels'])).json as Array<{ path: string; transport: string }>
      expect(mine).toHaveLength(1)
      // Both sides use the path the initiator chose.
      expect(theirs[0]!.transport).toBe(mine[0]!.transport)
      expect(theirs[0]!.path).toBe(mine[0]!.path)
      const human = await n.natctl('alice', ['tunnels'], { json: false })
      expect(human.stdout).toContain(mine[0]!.path)
    })
  }, 60_000)

  it('a NAT that maps per destination: --via tcp fails cleanly with PUNCH_TIMEOUT and a reason', async () => {
    await withLab(pair('easy', 'hard', 'drop'), async (n) => {
      await startPair(n)
      const r = await n.natctl('alice', ['open', 'bob', '--via', 'tcp', '--timeout', '3s'])
      expect(r.code).toBe(1)
      expect(errorCode(r)).toBe('PUNCH_TIMEOUT')
      expect(r.stderr).toMatch(/no direct TCP path in \d+ ms: \d+ connect attempts/)
      // Nothing half-made: no tunnel, and the agent still works.
      expect((await n.natctl('alice', ['tunnels'])).json).toEqual([])
      expect((await n.status('alice')).registered).toBe(true)
    })
  }, 60_000)
})
