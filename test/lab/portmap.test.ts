/**
 * Port mapping through a real gateway (issue 17): `natctl netcheck` names the protocols a
 * lab router running Debian's miniupnpd offers; natd's PortMapper (src/portmap) asks it
 * for a UDP mapping by PCP and by NAT-PMP (and the agent by UPnP IGD, from a router
 * that speaks only that), and a datagram from the internet then reaches
 * the host through it — which the router's firewall drops without the mapping. Then the
 * agent's own mappings: shown by `natctl status`, offered to peers as a candidate (a hard
 * NAT whose gateway only forwards inbound still gets a direct path from a hard peer),
 * mapped again when the gateway restarts; and the TCP port mapped, so direct TCP reaches
 * a hard NAT whose gateway maps.
 *
 *   server 198.18.0.2 (STUN for miniupnpd's ext_perform_stun; sends the test datagram)
 *   ── inet ─┬─ wan 198.18.1.2 [r1: NAT + miniupnpd, PCP/NAT-PMP on 10.1.0.1:5351] ── alice 10.1.0.2
 *            └─ wan 198.18.2.2 [r2: NAT]                                           ── bob 10.2.0.2
 */
import type { ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { labAvailable, type Lab } from './lab.js'
import { MINIUPNPD, startMiniupnpd } from './miniupnpd.js'
import { DIST, ROOT, waitFor, withLab } from './natd-lab.js'

const CLIENT = path.join(ROOT, 'test/lab/fixtures/portmap-client.ts')
const INTERNAL_PORT = 41641

interface ClientLine {
  probe?: { pcp: boolean; natPmp: boolean; externalIp: string | null }
  mapping?: { via: string; protocol: string; internalPort: number; external: { host: string; port: number }; lifetimeS: number }
}

/** From the server's namespace: one datagram to `to`, and whether a "pong" came back within 2 s. */
async function pingFromInternet(lab: Lab, to: string): Promise<boolean> {
  const [host, port] = to.split(':')
  const script = `const s=require('dgram').createSocket('udp4');s.on('message',m=>{console.log(String(m));process.exit(0)});s.send('ping',${Number(port)},'${host}');setTimeout(()=>process.exit(3),2000)`
  const r = await lab.exec(lab.server.ns, [process.execPath, '-e', script], { timeoutMs: 10_000 })
  return r.code === 0 && r.stdout.includes('pong')
}

describe.skipIf(!labAvailable() || !fs.existsSync(MINIUPNPD))('port mapping (PCP, NAT-PMP) through miniupnpd', () => {
  it('PCP and NAT-PMP: the gateway maps our UDP port, a datagram from the internet comes in through it, and goes after unmap', async () => {
    await withLab({ sites: [{ name: 'alice', nat: 'easy' }] }, async (n) => {
      const { ip, altIp } = n.lab.server
      await n.startServer(['--host', ip, '--alt-host', altIp])
      const router = await startMiniupnpd(n.lab, 'alice', 1, n.dir)
      let routerLog = ''
      router.stdout?.on('data', (d: Buffer) => (routerLog += d.toString()))
      router.stderr?.on('data', (d: Buffer) => (routerLog += d.toString()))
      await waitFor(() => /Port forwarding is now enabled/.test(routerLog) && /Listening for NAT-PMP\/PCP/.test(routerLog), 15_000, 'miniupnpd ready')
      const alice = n.lab.hosts.alice!
      const wanIp = n.lab.routers.alice!.wanIp
      // natctl netcheck names what the gateway offers (it asks; it maps nothing).
      await n.startAgent('alice')
      await n.waitRegistered('alice')
      const check = await n.natctl('alice', ['netcheck'])
      expect(check.code, check.stderr).toBe(0)
      expect((check.json as { portMapping: unknown }).portMapping).toEqual({ gateway: '10.1.0.1', pcp: true, natPmp: true, upnp: true, externalIp: wanIp })
      const human = await n.natctl('alice', ['netcheck'], { json: false })
      expect(human.stdout).toContain(`* PortMapping: PCP, NAT-PMP, UPnP (gateway 10.1.0.1, external ${wanIp})`)
      for (const [via, port] of [['pcp', INTERNAL_PORT], ['nat-pmp', INTERNAL_PORT + 1]] as const) {
        // Without a mapping the router drops it.
        expect(await pingFromInternet(n.lab, `${wanIp}:${port}`), `${via}: before`).toBe(false)
        const client = n.lab.spawn(alice.ns, [process.execPath, CLIENT, DIST, '10.1.0.1', alice.ip, String(port), via])
        let out = ''
        client.stdout?.on('data', (d: Buffer) => (out += d.toString()))
        await waitFor(() => /"mapping"|"error"/.test(out), 15_000, `${via}: a mapping or an error`)
        const lines = out.trim().split('\n').map((l) => JSON.parse(l) as ClientLine)
        expect(lines[0]!.probe, out).toMatchObject({ pcp: true, natPmp: true, externalIp: wanIp })
        const mapping = lines[1]!.mapping!
        expect(mapping, `${out}\n${routerLog}`).toMatchObject({ via, protocol: 'udp', internalPort: port, external: { host: wanIp } })
        expect(mapping.lifetimeS).toBeGreaterThan(0)
        expect(await pingFromInternet(n.lab, `${mapping.external.host}:${mapping.external.port}`), `${via}: through the mapping`).toBe(true)
        await waitFor(() => /"unmapped"|"error"/.test(out), 15_000, `${via}: unmap`)
        expect(out).toContain('"unmapped":true')
        expect(await pingFromInternet(n.lab, `${mapping.external.host}:${mapping.external.port}`), `${via}: after unmap`).toBe(false)
      }
    })
  }, 90_000)

  // A gateway that only forwards inbound (miniupnpd with its POSTROUTING chain unhooked):
  // alice's outbound traffic still leaves from a new port per destination, so her NAT
  // check finds it hard, and without the mapped candidate bob (hard too) would get the
  // relay. With it, bob probes alice's mapped port and alice answers through it.
  it('a hard NAT whose gateway maps: status shows it, peers get the mapped endpoint and punch to it (hard×hard → direct UDP); mapped again when the gateway restarts', async () => {
    await withLab({ sites: [{ name: 'alice', nat: 'hard' }, { name: 'bob', nat: 'hard' }] }, async (n) => {
      const { ip, altIp } = n.lab.server
      await n.startServer(['--host', ip, '--alt-host', altIp])
      let routerLog = ''
      const startRouter = async (): Promise<ChildProcess> => {
        const r = await startMiniupnpd(n.lab, 'alice', 1, n.dir, { snat: false })
        const ready = routerLog.length
        r.stdout?.on('data', (d: Buffer) => (routerLog += d.toString()))
        r.stderr?.on('data', (d: Buffer) => (routerLog += d.toString()))
        await waitFor(() => /Port forwarding is now enabled/.test(routerLog.slice(ready)) && /Listening for NAT-PMP\/PCP/.test(routerLog.slice(ready)), 15_000, 'miniupnpd ready')
        return r
      }
      let router = await startRouter()
      const wanIp = n.lab.routers.alice!.wanIp
      // The gateway is asked every 2 s here (PORTMAP_CHECK_MS, 2 min, is what users get).
      await n.startAgent('alice', { env: { NATD_TEST_PORTMAP_CHECK_MS: '2000' } })
      await n.startAgent('bob', { extra: ['--no-port-mapping'] })
      await n.waitRegistered('alice')
      await n.waitRegistered('bob')
      const alice = await n.status('alice')
      const mapping = alice.portMapping as { state: string; via: string; udp: string; tcp: string | null; gateway: string; expiresInMs: number }
      expect(mapping, routerLog).toMatchObject({ state: 'mapped', via: 'pcp', gateway: '10.1.0.1' })
      expect(mapping.udp.startsWith(`${wanIp}:`)).toBe(true)
      expect(mapping.tcp?.startsWith(`${wanIp}:`)).toBe(true)
      expect(mapping.expiresInMs).toBeGreaterThan(3_600_000)
      expect(alice.nat).toBe('hard') // the mapping does not change how her other traffic leaves
      expect((await n.status('bob')).portMapping).toMatchObject({ state: 'off' })
      const human = await n.natctl('alice', ['status'], { json: false })
      expect(human.stdout).toContain(`port map:    PCP ${mapping.udp} (udp)`)
      // The server offers alice's mapped endpoint to her peers.
      const seen = (await n.peers('bob')).find((p) => p.name === 'alice')!
      expect(seen.lan as string[]).toContain(mapping.udp)
      const open = await n.natctl('bob', ['open', 'alice'])
      expect(open.code, `${open.stderr}\n${routerLog}`).toBe(0)
      expect(open.json).toMatchObject({ path: 'direct-udp', remote: mapping.udp })
      expect((await n.natctl('bob', ['ping', 'alice', '-c', '1'])).code).toBe(0)
      expect((await n.natctl('bob', ['close', 'alice'])).code).toBe(0)

      // The gateway restarts and forgets every mapping; its epoch starts again at 0.
      router.kill('SIGTERM')
      await new Promise((resolve) => router.once('exit', resolve))
      router = await startRouter()
      await waitFor(() => n.log('alice').includes('the gateway lost or changed our mapping: mapping again'), 20_000, 'alice maps again after the restart')
      await waitFor(async () => ((await n.status('alice')).portMapping as { state: string }).state === 'mapped', 10_000, 'alice mapped again')
      const again = await n.natctl('bob', ['open', 'alice'])
      expect(again.code, `${again.stderr}\n${routerLog}`).toBe(0)
      expect((again.json as { path: string }).path).toBe('direct-udp')
    })
  }, 120_000)

  // miniupnpd as Debian ships it also sends a mapped port's outbound traffic from the
  // mapped port. The agent maps its TCP port before it opens its control connection, so
  // the server and peers see that one port, and a simultaneous open reaches it.
  it('the TCP port mapped too: direct TCP to a hard NAT whose gateway maps', async () => {
    await withLab({ sites: [{ name: 'alice', nat: 'hard' }, { name: 'bob', nat: 'easy' }] }, async (n) => {
      const { ip, altIp } = n.lab.server
      await n.startServer(['--host', ip, '--alt-host', altIp])
      let routerLog = ''
      const router = await startMiniupnpd(n.lab, 'alice', 1, n.dir)
      router.stdout?.on('data', (d: Buffer) => (routerLog += d.toString()))
      router.stderr?.on('data', (d: Buffer) => (routerLog += d.toString()))
      await waitFor(() => /Port forwarding is now enabled/.test(routerLog) && /Listening for NAT-PMP\/PCP/.test(routerLog), 15_000, 'miniupnpd ready')
      await n.startAgent('alice')
      await n.startAgent('bob')
      await n.waitRegistered('alice')
      await n.waitRegistered('bob')
      const alice = await n.status('alice')
      const mapping = alice.portMapping as { state: string; tcp: string | null }
      expect(mapping, routerLog).toMatchObject({ state: 'mapped' })
      expect(alice.publicTcp).toBe(mapping.tcp) // the control connection leaves from the mapped port
      const open = await n.natctl('bob', ['open', 'alice', '--via', 'tcp'])
      expect(open.code, `${open.stderr}\n${routerLog}`).toBe(0)
      expect(open.json).toMatchObject({ path: 'direct-tcp', remote: mapping.tcp })
      expect((await n.natctl('bob', ['ping', 'alice', '-c', '1'])).code).toBe(0)
    })
  }, 90_000)

  // A router that speaks only UPnP IGD (NAT-PMP and PCP off), and only forwards inbound
  // (its POSTROUTING chain unhooked): alice's NAT stays hard, and bob (hard too) reaches
  // her only through the endpoint UPnP mapped. The agent finds UPnP when PCP and NAT-PMP
  // are silent, maps by AddAnyPortMapping (miniupnpd is an IGD:2), and removes it at stop.
  it('a hard NAT whose gateway speaks only UPnP: netcheck shows UPnP, status the UPnP mapping, hard×hard → direct UDP to it; removed at stop', async () => {
    await withLab({ sites: [{ name: 'alice', nat: 'hard' }, { name: 'bob', nat: 'hard' }] }, async (n) => {
      const { ip, altIp } = n.lab.server
      await n.startServer(['--host', ip, '--alt-host', altIp])
      let routerLog = ''
      const router = await startMiniupnpd(n.lab, 'alice', 1, n.dir, { natpmp: false, snat: false })
      router.stdout?.on('data', (d: Buffer) => (routerLog += d.toString()))
      router.stderr?.on('data', (d: Buffer) => (routerLog += d.toString()))
      await waitFor(() => /Port forwarding is now enabled/.test(routerLog) && /HTTP listening on port/.test(routerLog), 15_000, 'miniupnpd ready')
      const wanIp = n.lab.routers.alice!.wanIp
      await n.startAgent('alice')
      await n.startAgent('bob', { extra: ['--no-port-mapping'] })
      await n.waitRegistered('alice')
      await n.waitRegistered('bob')
      const check = await n.natctl('alice', ['netcheck'])
      expect(check.code, check.stderr).toBe(0)
      expect((check.json as { portMapping: unknown }).portMapping, routerLog).toEqual({ gateway: '10.1.0.1', pcp: false, natPmp: false, upnp: true, externalIp: wanIp })
      const human = await n.natctl('alice', ['netcheck'], { json: false })
      expect(human.stdout).toContain(`* PortMapping: UPnP (gateway 10.1.0.1, external ${wanIp})`)
      const alice = await n.status('alice')
      const mapping = alice.portMapping as { state: string; via: string; udp: string; tcp: string | null; gateway: string; expiresInMs: number }
      expect(mapping, routerLog).toMatchObject({ state: 'mapped', via: 'upnp', gateway: '10.1.0.1' })
      expect(mapping.udp.startsWith(`${wanIp}:`)).toBe(true)
      expect(mapping.tcp?.startsWith(`${wanIp}:`)).toBe(true)
      expect(mapping.expiresInMs).toBeGreaterThan(3_600_000)
      expect(alice.nat).toBe('hard')
      expect((await n.natctl('alice', ['status'], { json: false })).stdout).toContain(`port map:    UPnP ${mapping.udp} (udp)`)
      const open = await n.natctl('bob', ['open', 'alice'])
      expect(open.code, `${open.stderr}\n${routerLog}`).toBe(0)
      expect(open.json).toMatchObject({ path: 'direct-udp', remote: mapping.udp })
      expect((await n.natctl('bob', ['ping', 'alice', '-c', '1'])).code).toBe(0)
      // At stop, natd deletes both mappings: the router's DNAT rules go.
      const udpPort = mapping.udp.split(':')[1]!
      const rules = async (): Promise<string> => (await n.lab.exec(n.lab.routers.alice!.ns, ['iptables-legacy', '-t', 'nat', '-S', 'MINIUPNPD'])).stdout
      expect(await rules()).toContain(`--dport ${udpPort}`)
      await n.stopAgent('alice')
      expect(await rules()).not.toMatch(/--dport/)
    })
  }, 90_000)

  // Some routers answer an SSDP search only when it comes to the group 239.255.255.250,
  // not to their own address. Here the router drops every search to its own address (an
  // nft rule ahead of miniupnpd), so only the multicast one reaches it; a counting rule
  // shows the searches to the group arrived with TTL 2 (UDA 1.1), so they die at the
  // router: multicast stays on the site's LAN.
  it('a gateway that answers SSDP only to the multicast group: UPnP found and the port mapped (unicast search dropped, group search at TTL 2)', async () => {
    await withLab({ sites: [{ name: 'alice', nat: 'easy' }] }, async (n) => {
      const { ip, altIp } = n.lab.server
      await n.startServer(['--host', ip, '--alt-host', altIp])
      const routerNs = n.lab.routers.alice!.ns
      for (const rule of [
        ['iptables', '-I', 'INPUT', '1', '-i', 'lan', '-p', 'udp', '-d', '10.1.0.1', '--dport', '1900', '-j', 'DROP'],
        ['iptables', '-I', 'INPUT', '1', '-i', 'lan', '-p', 'udp', '-d', '239.255.255.250', '--dport', '1900', '-m', 'ttl', '--ttl-eq', '2', '-j', 'ACCEPT']
      ]) {
        const r = await n.lab.exec(routerNs, rule)
        expect(r.code, r.stderr).toBe(0)
      }
      let routerLog = ''
      const router = await startMiniupnpd(n.lab, 'alice', 1, n.dir, { natpmp: false })
      router.stdout?.on('data', (d: Buffer) => (routerLog += d.toString()))
      router.stderr?.on('data', (d: Buffer) => (routerLog += d.toString()))
      await waitFor(() => /Port forwarding is now enabled/.test(routerLog) && /HTTP listening on port/.test(routerLog), 15_000, 'miniupnpd ready')
      const wanIp = n.lab.routers.alice!.wanIp
      await n.startAgent('alice')
      await n.waitRegistered('alice')
      const mapping = (await n.status('alice')).portMapping as { state: string; via: string; udp: string }
      expect(mapping, routerLog).toMatchObject({ state: 'mapped', via: 'upnp' })
      expect(mapping.udp.startsWith(`${wanIp}:`)).toBe(true)
      const check = await n.natctl('alice', ['netcheck'])
      expect(check.code, check.stderr).toBe(0)
      expect((check.json as { portMapping: unknown }).portMapping, routerLog).toEqual({ gateway: '10.1.0.1', pcp: false, natPmp: false, upnp: true, externalIp: wanIp })
      // Both kinds of search came: the unicast ones were dropped, the group's had TTL 2.
      const counts = (await n.lab.exec(routerNs, ['iptables', '-L', 'INPUT', '-v', '-x', '-n'])).stdout
      const packets = (target: string, dst: string): number => Number(new RegExp(`^\\s*(\\d+)\\s+\\d+\\s+${target}\\s.*\\s${dst.replace(/\./g, '\\.')}\\s`, 'm').exec(counts)?.[1] ?? 0)
      expect(packets('DROP', '10.1.0.1'), counts).toBeGreaterThan(0)
      expect(packets('ACCEPT', '239.255.255.250'), counts).toBeGreaterThan(0)
    })
  }, 90_000)

  // Skipped four times; the history, in short: three Node starts at once starved the 2
  // shared cores in CI (starts are serial here, START_TIMEOUT_MS 30 s); carol's fsync of
  // config.json on the event loop stalled 29 s (nothing is written on the loop before
  // registration now: daemon/config.ts LEARNT_FILE); a `natctl status` to alice went
  // unanswered 30 s (natctl's proof file now made asynchronously, sockets on tmpfs, both
  // sides traced: natd-lab.ts RUN_ROOT). Last (3 of 4 CI runs): bob's open failed
  // PUNCH_TIMEOUT. miniupnpd also sends the mapped port's outbound traffic from the mapped
  // port, so alice looks easy and her mapped endpoint is her public one; that mapping was
  // dropped as a duplicate of it, and bob (hard) searched for alice with 256 TTL-2 birthday
  // sockets while she sprayed his NAT: it only landed while both event loops were free.
  // Now a mapping equal to the public endpoint is kept, bob probes it at full TTL from his
  // agent socket and neither side searches (path-plan.ts, punch.ts Candidate.mapped).
  // It failed in CI for a reason outside natd: carol's miniupnpd, refusing every port, logged
  // one line per port for a PCP request, and those went to /dev/console (miniupnpd.ts).
  it('hard×hard where one router maps → direct UDP to the mapped endpoint; where the gateway refuses → relay, as before', { timeout: 180_000 }, async () => {
    // alice and carol sit behind hard NATs running miniupnpd; carol's refuses every mapping.
    await withLab({ sites: [{ name: 'alice', nat: 'hard' }, { name: 'bob', nat: 'hard' }, { name: 'carol', nat: 'hard' }] }, async (n) => {
      const { ip, altIp } = n.lab.server
      await n.startServer(['--host', ip, '--alt-host', altIp])
      let logs = ''
      for (const [site, num, rules] of [['alice', 1, undefined], ['carol', 3, ['deny 0-65535 0.0.0.0/0 0-65535']]] as const) {
        const r = await startMiniupnpd(n.lab, site, num, n.dir, rules ? { rules: [...rules] } : {})
        r.stdout?.on('data', (d: Buffer) => (logs += d.toString()))
        r.stderr?.on('data', (d: Buffer) => (logs += d.toString()))
      }
      await waitFor(() => (logs.match(/Port forwarding is now enabled/g) ?? []).length === 2, 15_000, 'both miniupnpd ready')
      // One by one: three Node starts at once starved the 2 shared cores in CI (an agent took
      // over 10 s to listen while the other lab files ran).
      // Both sides of every API call traced (natctl's steps in its stderr, natd's in its log):
      // a call that goes unanswered then shows where it stopped.
      n.natctlEnv.NATCTL_DEBUG = '1'
      for (const h of ['alice', 'bob', 'carol']) await n.startAgent(h, { env: { NATD_TRACE_API: '1' } })
      for (const h of ['alice', 'bob', 'carol']) await n.waitRegistered(h)
      // The mapping makes alice's tunnel port endpoint-independent: her start-up check finds an easy NAT.
      const alice = await n.status('alice')
      expect(alice.nat, logs).toBe('easy')
      const mapped = (alice.portMapping as { state: string; udp: string }).udp
      expect(alice.portMapping, logs).toMatchObject({ state: 'mapped' })
      expect((await n.status('carol')).nat).toBe('hard')
      const direct = await n.natctl('bob', ['open', 'alice'])
      expect(direct.code, direct.stderr).toBe(0)
      expect(direct.json, `${direct.stdout}\n${logs}`).toMatchObject({ path: 'direct-udp', remote: mapped })
      process.stderr.write(`3-site port mapping: bob → alice ${(direct.json as { path: string }).path} in ${(direct.json as { tookMs: number }).tookMs} ms\n`)
      expect((await n.natctl('bob', ['ping', 'alice', '-c', '1'])).code).toBe(0)
      const relayed = await n.natctl('bob', ['open', 'carol'])
      expect(relayed.code, relayed.stderr).toBe(0)
      expect((relayed.json as { path: string }).path).toBe('relay')
    })
  }) // 20–36 s at load average 9–12 (2026-12-06); 65–136 s for the whole vitest run at load 12–21
})
