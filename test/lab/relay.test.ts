/**
 * The relay, through real Linux NAT (issue 5): when both NATs map per destination no
 * direct path exists, and the rendezvous server relays the tunnel's ciphertext.
 *
 *   server (relay) ── inet ──┬── r1 (hard) ── alice
 *                            └── r2 (hard) ── bob
 */
import fs from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { describe, expect, it } from 'vitest'
import { labAvailable } from './lab.js'
import { errorCode, NatdLab, pair, startPair, waitFor, withLab } from './natd-lab.js'

const MiB = 1024 * 1024




async function forward(n: NatdLab): Promise<void> {
  await n.startEcho('bob', 7000)
  expect((await n.natctl('bob', ['expose', 'add', '7000'])).code).toBe(0)
  expect((await n.natctl('alice', ['forward', 'add', '9000', 'bob:7000'])).code).toBe(0)
}

const MARKER = 'NATD-PLAINTEXT-MARKER-5f3a9c'

describe.skipIf(!labAvailable())('relay', () => {
  it('hard×hard: auto goes straight to the relay; 64 MiB cross intact; a capture on the server shows none of the plaintext', async () => {
    await withLab(pair('hard', 'hard'), async (n) => {
      await startPair(n)
      const opened = await n.natctl('alice', ['open', 'bob'])
      expect(opened.code, opened.stderr).toBe(0)
      const o = opened.json as { path: string; tookMs: number }
      expect(o.path).toBe('relay')
      expect(o.tookMs).toBeLessThan(1_000)
      await forward(n)
      expect(await n.echo('alice', 9000, 64 * MiB, 1, 180_000)).toMatchObject({ ok: true })

      // Plaintext with a known marker through the forward while the server host captures.
      const pcap = path.join(n.dir, 'relay.pcap')
      const capture = n.lab.spawn(n.lab.server.ns, ['tcpdump', '-i', 'any', '-s', '0', '-U', '-w', pcap, 'tcp', 'port', '3478'])
      await waitFor(() => fs.existsSync(pcap), 5_000, 'tcpdump started')
      await sleep(300)
      const send = `
        const net = require('node:net'); const s = net.connect({ port: 9000, host: '127.0.0.1', allowHalfOpen: true });
        const line = Buffer.from('${MARKER} hello from alice\\n'); let got = 0;
        s.on('connect', () => { for (let i = 0; i < 20000; i++) s.write(line); s.end(); });
        s.on('data', (d) => (got += d.length)); s.on('end', () => { console.log(got === line.length * 20000 ? 'echoed' : 'short ' + got); });`
      const r = await n.lab.exec(n.lab.hosts.alice!.ns, [process.execPath, '-e', send], { timeoutMs: 60_000 })
      expect(r.stdout).toContain('echoed')
      await sleep(500)
      capture.kill('SIGINT')
      await new Promise((resolve) => capture.once('exit', resolve))
      const bytes = fs.readFileSync(pcap)
      expect(bytes.length).toBeGreaterThan(20000 * (MARKER.length + 18)) // the capture saw the relayed bytes
      expect(bytes.includes(Buffer.from(MARKER))).toBe(false)
      expect(bytes.includes(Buffer.from('hello from alice'))).toBe(false)
    })
  }, 240_000)

  it('--via relay forces the relay between peers that could punch', async () => {
    await withLab(pair('easy', 'easy'), async (n) => {
      await startPair(n)
      const r = await n.natctl('alice', ['open', 'bob', '--via', 'relay'])
      expect(r.code, r.stderr).toBe(0)
      expect((r.json as { path: string; remote: string }).path).toBe('relay')
      expect((r.json as { path: string; remote: string }).remote).toBe(`${n.lab.server.ip}:3478`)
      expect((await n.natctl('alice', ['ping', 'bob', '-c', '1'])).code).toBe(0)
      await waitFor(async () => ((await n.natctl('bob', ['tunnels'])).json as Array<{ path: string }>).some((t) => t.path === 'relay'), 3_000, 'bob sees the relay')
    })
  }, 60_000)

  it('a relay limit ends the tunnel with RELAY_LIMIT on both sides', async () => {
    await withLab(pair('hard', 'hard'), async (n) => {
      await startPair(n, { serverArgs: ['--relay-max-bytes', '2MiB'] })
      expect(((await n.natctl('alice', ['open', 'bob'])).json as { path: string }).path).toBe('relay')
      await forward(n)
      const r = await n.echo('alice', 9000, 8 * MiB, 1)
      expect(r.ok).toBe(false)
      await waitFor(async () => ((await n.natctl('alice', ['tunnels'])).json as unknown[]).length === 0, 5_000, 'alice drops the tunnel')
      await waitFor(async () => ((await n.natctl('bob', ['tunnels'])).json as unknown[]).length === 0, 5_000, 'bob drops the tunnel')
      expect(n.log('alice')).toMatch(/RELAY_LIMIT/)
      expect(n.log('bob')).toMatch(/RELAY_LIMIT/)
      expect(n.log('rendezvous')).toMatch(/RELAY_LIMIT/)
    })
  }, 60_000)

  it('a relayed tunnel over its time limit ends with RELAY_LIMIT', async () => {
    await withLab(pair('hard', 'hard'), async (n) => {
      await startPair(n, { serverArgs: ['--relay-max-seconds', '2s'] })
      expect(((await n.natctl('alice', ['open', 'bob'])).json as { path: string }).path).toBe('relay')
      const took = await waitFor(async () => ((await n.natctl('alice', ['tunnels'])).json as unknown[]).length === 0, 6_000, 'the relay ends the tunnel')
      expect(took).toBeGreaterThan(1_000)
      expect(n.log('alice')).toMatch(/RELAY_LIMIT/)
    })
  }, 60_000)

  it('a relayed tunnel moves to a direct path when the NAT in the way becomes easy, and a transfer across the switch completes intact', async () => {
    await withLab(pair('hard', 'hard'), async (n) => {
      // A slow relay, so the transfer is still running when the path changes.
      await startPair(n, { serverArgs: ['--relay-rate', '2MiB'] })
      expect(((await n.natctl('alice', ['open', 'bob'])).json as { path: string }).path).toBe('relay')
      await forward(n)
      const transfer = n.echo('alice', 9000, 48 * MiB, 1, 180_000)
      await sleep(2_000)
      // New flows get the easy NAT; UDP state is flushed (the agent's UDP mapping is made
      // again, the easy way), TCP flows keep theirs: a full flush would change the relayed
      // connection's public port and the server would reset it.
      await n.lab.setNat('bob', 'easy', { flush: false })
      await n.lab.exec(n.lab.routers.bob!.ns, ['conntrack', '-D', '-p', 'udp'])
      const took = await waitFor(async () => ((await n.natctl('alice', ['tunnels'])).json as Array<{ path: string }>)[0]?.path === 'direct-udp', 40_000, 'the tunnel moves to direct-udp')
      process.stdout.write(`relay -> direct-udp ${took} ms after the NAT became easy\n`)
      await waitFor(async () => ((await n.natctl('bob', ['tunnels'])).json as Array<{ path: string }>)[0]?.path === 'direct-udp', 5_000, 'bob moves too')
      expect(await transfer).toMatchObject({ ok: true })
      // One tunnel throughout: no new tunnel was opened, it changed path.
      expect(n.log('alice').match(/"message":"tunnel up"/g)?.length).toBe(1)
      expect(n.log('alice')).toMatch(/path upgraded/)
    })
  }, 240_000)

  it('a server started with --no-relay refuses, and open says why', async () => {
    await withLab(pair('hard', 'hard'), async (n) => {
      await startPair(n, { serverArgs: ['--no-relay'] })
      const r = await n.natctl('alice', ['open', 'bob', '--timeout', '4s'])
      expect(r.code).toBe(1)
      expect(errorCode(r)).toBe('UNSUPPORTED_PATH')
      expect(r.stderr).toMatch(/does not relay/) // and the user is told why
    })
  }, 60_000)
})
