/**
 * IPv6 (issue 17): agents gather an IPv6 candidate from the server's IPv6 socket, punch
 * through stateful IPv6 firewalls (no NAT66: ip6tables conntrack drops unsolicited
 * inbound), and prefer IPv6 when both sides have it. Topology: test/lab/lab-ipv6.ts.
 *
 *   server 198.18.0.2 + 2001:db8::2 (--host6) ── inet ──┬── r1 (hard NAT + v6 fw) ── alice  dual
 *                                                       ├── r2 (hard NAT + v6 fw) ── bob    dual
 *                                                       ├── r3 (easy NAT)         ── carol  IPv4 only
 *                                                       ├── r4 (v6 fw)            ── dave   IPv6 only
 *                                                       ├── r5 (v6 fw)            ── erin   IPv6 only
 *                                                       ├── r6 (easy NAT + v6 fw) ── fred   dual
 *                                                       ├── r7 (v6 fw)            ─┬ gina   IPv6 only, no IPv4 address,
 *                                                       │                           └ hank   one LAN (fd00:db8:7::/64)
 *                                                       └── c1 (hard CGN; IPv6 routed) ─┬ r8 (easy NAT + v6 fw) ── ivan  dual
 *                                                                                       └ r9 (v6 fw)            ── jack  IPv6 only
 *
 * alice and bob map per destination on IPv4: without IPv6 they would end on the relay;
 * with it, auto punches TCP over IPv6 (simultaneous open through both firewalls), and
 * UDP over IPv6 when asked for UDP. fred × alice (easy × hard on IPv4) gets TCP over
 * IPv6 too, where IPv4 alone allows only birthday-punched UDP.
 * dave and erin have no IPv4 way out (their routers' IPv4 NAT is never used): only
 * IPv6 can join them. The rows assert the path and its address family, not speed.
 * ivan's ISP shares IPv4 addresses (a CGN that maps per destination) and routes native
 * IPv6: ivan × alice is hard × hard on IPv4 (the relay), direct over IPv6. jack is in
 * the same ISP but IPv6-only (a mobile or DS-Lite-less IPv6-only network: none of the
 * CGN's shared IPv4 reaches him): jack × alice is direct over IPv6; jack × carol
 * (IPv4-only) share no address family, so only the relay joins them, jack reaching the
 * server over IPv6 and carol over IPv4.
 * gina and hank share an IPv6-only LAN: their unique-local addresses make the tunnel
 * `lan`. gina names the server by a name with an A and an AAAA record (its netns hosts
 * file): with no IPv4 address it registers over IPv6.
 * Before the rows, one datagram with hop limit 2 and one with 64 from alice to bob
 * show that udx-native's TTL argument is the IPv6 hop limit: only the second is
 * counted as unsolicited at bob's firewall.
 */
import { execFile } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { labAvailable, type LabSpec } from './lab.js'
import { ROOT, SERVER_PORT, waitFor, withLab, type NatdLab } from './natd-lab.js'

const SPEC: LabSpec = {
  sites: [
    { name: 'alice', nat: 'hard', ip: 'dual' },
    { name: 'bob', nat: 'hard', ip: 'dual' },
    { name: 'carol', nat: 'easy' },
    { name: 'dave', nat: 'easy', ip: 'v6' },
    { name: 'erin', nat: 'easy', ip: 'v6' },
    { name: 'fred', nat: 'easy', ip: 'dual' },
    { name: 'lan6', nat: 'easy', ip: 'v6', hosts: ['gina', 'hank'] },
    { name: 'ivan', nat: 'easy', ip: 'dual', cgn: 'isp' },
    { name: 'jack', nat: 'easy', ip: 'v6', cgn: 'isp' }
  ],
  cgns: [{ name: 'isp', nat: 'hard' }]
}

/** The server's name in gina's hosts file (an A and an AAAA record). */
const SERVER_NAME = 'rendezvous.natd-lab'

interface Opened {
  path: string
  remote: string
}

async function open(n: NatdLab, from: string, to: string, via = 'auto'): Promise<Opened> {
  const r = await n.natctl(from, ['open', to, '--via', via, '--timeout', '20s'], { timeoutMs: 30_000 })
  expect(r.code, `${from} → ${to}: ${r.stderr}`).toBe(0)
  return r.json as Opened
}

/** Closes `from`'s tunnel to `to`, waits until `to` dropped it too, and opens one again `via`. */
async function reopen(n: NatdLab, from: string, to: string, via: string): Promise<Opened> {
  expect((await n.natctl(from, ['close', to])).code).toBe(0)
  await waitFor(async () => ((await n.natctl(to, ['tunnels'])).json as unknown[]).length === 0, 10_000, `${to} drops the tunnel`)
  return open(n, from, to, via)
}

/** Packets bob's router dropped as unsolicited IPv6 inbound (its UNSOLICITED6 chain). */
async function unsolicited6(n: NatdLab, site: string): Promise<number> {
  const r = await n.lab.exec(n.lab.routers[site]!.ns, ['ip6tables', '-L', 'UNSOLICITED6', '-vnx'])
  const line = r.stdout.split('\n').find((l) => /DROP/.test(l))
  return Number(line?.trim().split(/\s+/)[0] ?? NaN)
}

/** One UDX datagram from `host` to `to` with hop limit `ttl` (udx-native's trySend, as the puncher sends). */
function udxSend(n: NatdLab, host: string, to: string, ttl: number): Promise<void> {
  const script = `const UDX = require('udx-native'); const u = new UDX(); const s = u.createSocket({ ipv6Only: true }); s.bind(0, '::'); s.trySend(Buffer.from('x'), 9, ${JSON.stringify(to)}, ${ttl}); setTimeout(() => s.close(), 200)`
  return new Promise((resolve, reject) => {
    execFile('ip', ['netns', 'exec', n.lab.hosts[host]!.ns, process.execPath, '-e', script], { cwd: ROOT, env: { ...process.env, NODE_PATH: path.join(ROOT, 'node_modules') } }, (err) => (err ? reject(err) : resolve()))
  })
}

describe.skipIf(!labAvailable())('IPv6: candidates, stateful firewalls, preference', () => {
  it('dual×dual → direct TCP over IPv6 (UDP when asked), whatever the IPv4 NATs; IPv6-only×IPv6-only → direct; IPv4-only×dual → IPv4 as before; hop limit 2 never reaches the peer\'s firewall', async () => {
    await withLab(SPEC, async (n) => {
      const server6 = n.lab.server.ip6!
      await n.startServer(['--host6', server6])
      // gina and hank: no IPv4 address at all (an IPv6-only LAN); gina names the server
      // by a name with an A and an AAAA record, in her namespace's hosts file.
      for (const h of ['gina', 'hank']) await n.lab.exec(n.lab.hosts[h]!.ns, ['ip', '-4', 'addr', 'flush', 'dev', 'eth0'])
      const netnsEtc = path.join('/etc/netns', n.lab.hosts.gina!.ns)
      const madeEtcNetns = !fs.existsSync('/etc/netns')
      fs.mkdirSync(netnsEtc, { recursive: true })
      try {
        fs.writeFileSync(path.join(netnsEtc, 'hosts'), `${n.lab.server.ip} ${SERVER_NAME}\n${server6} ${SERVER_NAME}\n`)
        // Three at a time: nine agents one after the other took most of the test's time on a
        // loaded machine (~4 s each), all nine at once could miss startAgent's 10 s for the API socket.
        const starts: Array<[string, string | undefined]> = [
          ...['alice', 'bob', 'carol', 'fred', 'ivan'].map((h): [string, undefined] => [h, undefined]),
          ...['dave', 'erin', 'hank', 'jack'].map((h): [string, string] => [h, `[${server6}]:${SERVER_PORT}`]),
          ['gina', `${SERVER_NAME}:${SERVER_PORT}`]
        ]
        for (let i = 0; i < starts.length; i += 3) await Promise.all(starts.slice(i, i + 3).map(([h, server]) => n.startAgent(h, server ? { server } : {})))
        await Promise.all(starts.map(([h]) => n.waitRegistered(h, 60_000)))
      } finally {
        fs.rmSync(netnsEtc, { recursive: true, force: true })
        // /etc/netns goes too when we made it and nothing else is in it (a parallel run's may be).
        if (madeEtcNetns) fs.rmdir('/etc/netns', () => undefined)
      }
      expect(String((await n.status('gina')).publicUdp)).toMatch(new RegExp(`^\\[${n.lab.hosts.gina!.ip6!}\\]:\\d+$`))
      // The IPv6 candidate reaches the server with the first answered heartbeats (2 s apart).
      await waitFor(() => ['alice', 'bob', 'fred', 'ivan'].every((h) => /"ipv6 endpoint"/.test(n.log(h))), 15_000, 'alice, bob, fred and ivan learn their IPv6 endpoints')
      // natctl status shows it ([addr]:port); carol (IPv4 only) has none
      expect(String((await n.status('alice')).publicUdp6)).toMatch(new RegExp(`^\\[${n.lab.hosts.alice!.ip6!}\\]:\\d+$`))
      expect((await n.status('carol')).publicUdp6).toBeNull()

      // Hop limit 2 (udx-native sets IPV6_UNICAST_HOPS like IP_TTL): it leaves alice's
      // firewall and dies at inet, so bob's firewall never sees it; a full one is dropped there.
      const bob6 = n.lab.hosts.bob!.ip6!
      const before = await unsolicited6(n, 'bob')
      await udxSend(n, 'alice', bob6, 2)
      await new Promise((r) => setTimeout(r, 500))
      expect(await unsolicited6(n, 'bob')).toBe(before)
      await udxSend(n, 'alice', bob6, 64)
      await waitFor(async () => (await unsolicited6(n, 'bob')) > before, 10_000, 'the full-hop datagram is dropped as unsolicited at bob\'s firewall')

      // dual×dual, hard×hard on IPv4: both have IPv6, so auto punches UDP and TCP over
      // IPv6 (path-plan.ts) and prefers TCP: through both firewalls, not the relay.
      const ab = await open(n, 'alice', 'bob')
      expect(ab.path).toBe('direct-tcp')
      expect(ab.remote).toBe(`[${bob6}]:${ab.remote.split(']:')[1]}`)
      // --via udp: UDP over IPv6, through both firewalls.
      const abUdp = await reopen(n, 'alice', 'bob', 'udp')
      expect(abUdp.path).toBe('direct-udp')
      expect(abUdp.remote.startsWith(`[${bob6}]:`)).toBe(true)

      // dual×dual, easy×hard on IPv4: TCP over IPv6 as well.
      const fa = await open(n, 'fred', 'alice')
      expect(fa.path).toBe('direct-tcp')
      expect(fa.remote.startsWith(`[${n.lab.hosts.alice!.ip6!}]:`)).toBe(true)

      // Dual-stack behind a hard CGN × dual behind a hard NAT: IPv6 direct, not the relay.
      const ia = await open(n, 'ivan', 'alice')
      expect(ia.path).toBe('direct-tcp')
      expect(ia.remote.startsWith(`[${n.lab.hosts.alice!.ip6!}]:`)).toBe(true)

      // IPv6-only behind the CGN × dual behind a hard NAT: direct over IPv6 (its firewall
      // and alice's), the CGN's shared IPv4 out of the picture.
      const alice6 = n.lab.hosts.alice!.ip6!
      expect(String((await n.status('jack')).publicUdp)).toMatch(new RegExp(`^\\[${n.lab.hosts.jack!.ip6!}\\]:\\d+$`))
      const ja = await open(n, 'jack', 'alice')
      expect(ja.path).toBe('direct-tcp')
      expect(ja.remote.startsWith(`[${alice6}]:`)).toBe(true)
      // IPv6-only behind the CGN × IPv4-only: no family in common, the relay (jack's side over IPv6).
      const cj = await open(n, 'carol', 'jack')
      expect(cj.path).toBe('relay')
      expect((await n.natctl('jack', ['ping', 'carol', '-c', '1'])).code).toBe(0)

      // IPv6-only × IPv6-only: only IPv6 can join them. Their NAT check sees no NAT (the
      // server sees their own addresses), so auto punches TCP too, over IPv6 as their
      // control connections are; UDP alone punches through both firewalls as well.
      const erin6 = n.lab.hosts.erin!.ip6!
      const de = await open(n, 'dave', 'erin')
      expect(de.path).toMatch(/^direct-(udp|tcp)$/)
      expect(de.remote.startsWith(`[${erin6}]:`)).toBe(true)
      const deUdp = await reopen(n, 'dave', 'erin', 'udp')
      expect(deUdp.path).toBe('direct-udp')
      expect(deUdp.remote.startsWith(`[${erin6}]:`)).toBe(true)

      // Two hosts of one IPv6-only LAN: lan, over their unique-local addresses.
      const gh = await open(n, 'gina', 'hank')
      expect(gh.path).toBe('lan')
      expect(gh.remote.startsWith(`[${n.lab.hosts.hank!.ula!}]:`)).toBe(true)

      // IPv4-only × dual: IPv4 as before (easy × hard: birthday punching).
      const ca = await open(n, 'carol', 'alice')
      expect(ca.path).toBe('direct-udp')
      expect(ca.remote.startsWith(`${n.lab.hosts.alice!.publicIp}:`)).toBe(true)

      // natctl tunnels shows the IPv6 path as [addr]:port.
      const tunnels = (await n.natctl('alice', ['tunnels'])).json as Array<{ peer: string; remote: string }>
      expect(tunnels.find((t) => t.peer === 'bob')?.remote).toBe(abUdp.remote)
    })
  }, 240_000)
})
