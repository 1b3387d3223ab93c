/**
 * `natctl netcheck` through real Linux NAT (issue 5): the mapping and filtering verdicts
 * for each NAT kind, checked against a stock RFC 5780 client (coturn's
 * turnutils_natdiscovery against coturn's turnserver on the same two server addresses),
 * and the verdict refresh that tells the server when the NAT changed.
 *
 *            natd-rendezvous 198.18.0.2:3478/3479 + --alt-host 198.18.0.3:3478/3479
 *            turnserver      198.18.0.2:3490/3491 +            198.18.0.3:3490/3491
 *   server ── inet ──┬── r1 easy (MASQUERADE) ──────────── alice
 *                    ├── r2 hard (MASQUERADE --random-fully) bob
 *                    ├── (no NAT) ─────────────────────────── carol
 *                    └── r4 full (DNAT/SNAT 1:1) ──────────── dave
 */
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { labAvailable } from './lab.js'
import { EACH_NAT_KIND, EACH_NAT_KIND_HOSTS, type NatKindHost } from './nat-kinds.js'
import { DIST, NatdLab, waitFor, withLab } from './natd-lab.js'

const TURNSERVER = '/usr/bin/turnserver'
const NATDISCOVERY = '/usr/bin/turnutils_natdiscovery'
/** coturn's ports: apart from natd-rendezvous's 3478/3479, so both run at once. */
const COTURN_PORT = 3490
const COTURN_ALT_PORT = 3491


interface Verdicts {
  mapping: string
  filtering: string
}

/** "NAT with Address and Port Dependent Filtering!" → "address-and-port-dependent". */
function behaviour(text: string, what: 'Mapping' | 'Filtering'): string {
  if (what === 'Mapping' && /No NAT!/.test(text)) return 'none'
  const m = new RegExp(`NAT with (.+?) ${what}!`).exec(text)
  return m ? m[1]!.toLowerCase().replace(/ and /g, '-and-').replace(/ /g, '-') : 'unknown'
}

/** turnutils_natdiscovery -m -f, split into its mapping and filtering sections. */
function parseNatdiscovery(out: string): Verdicts {
  const [mapping = '', filtering = ''] = out.split('-= Filtering Behavior Discovery =-')
  return { mapping: behaviour(mapping, 'Mapping'), filtering: behaviour(filtering, 'Filtering') }
}

const SITES = EACH_NAT_KIND
const HOSTS = EACH_NAT_KIND_HOSTS

/** What each NAT kind is (RFC 4787), what natd must say and what its agent punches by. */
const EXPECTED: Record<NatKindHost, Verdicts & { nat: string; portPreserved: boolean }> = {
  alice: { mapping: 'endpoint-independent', filtering: 'address-and-port-dependent', nat: 'easy', portPreserved: true },
  bob: { mapping: 'address-and-port-dependent', filtering: 'address-and-port-dependent', nat: 'hard', portPreserved: false },
  carol: { mapping: 'none', filtering: 'endpoint-independent', nat: 'none', portPreserved: true },
  dave: { mapping: 'endpoint-independent', filtering: 'endpoint-independent', nat: 'easy', portPreserved: true }
}

interface Netcheck extends Verdicts {
  udp: boolean
  tcp: boolean
  nat: string
  previousNat: string
  natChanged: boolean
  portPreserved: boolean
  publicUdp: string
  serverOtherAddress: string | null
  portMapping: { gateway: string | null; pcp: boolean; natPmp: boolean; upnp: boolean; externalIp: string | null }
}

async function netcheck(n: NatdLab, key: string): Promise<Netcheck> {
  const r = await n.natctl(key, ['netcheck'])
  expect(r.code, r.stderr).toBe(0)
  return r.json as Netcheck
}

describe.skipIf(!labAvailable())('natctl netcheck', () => {
  it('names each NAT kind like coturn\'s RFC 5780 client does: mapping, filtering, verdict, port preservation', async (ctx) => {
    await withLab(SITES, async (n) => {
      const { ip, altIp } = n.lab.server
      await n.startServer(['--host', ip, '--alt-host', altIp])
      for (const h of HOSTS) await n.startAgent(h)
      for (const h of HOSTS) await n.waitRegistered(h)

      const natd = Object.fromEntries(await Promise.all(HOSTS.map(async (h) => [h, await netcheck(n, h)] as const)))
      const table: Record<string, unknown> = {}
      for (const h of HOSTS) {
        const r = natd[h]!
        table[h] = { natdMapping: r.mapping, natdFiltering: r.filtering, nat: r.nat, portPreserved: r.portPreserved }
        expect(r, h).toMatchObject({ udp: true, tcp: true, serverOtherAddress: `${altIp}:3479`, ...EXPECTED[h] })
        expect(r.publicUdp.split(':')[0], h).toBe(n.lab.hosts[h]!.publicIp)
        // The lab's plain routers (and inet, carol's gateway) answer none of PCP, NAT-PMP and UPnP.
        expect(r.portMapping, h).toEqual({ gateway: h === 'carol' ? '198.18.3.1' : `10.${HOSTS.indexOf(h) + 1}.0.1`, pcp: false, natPmp: false, upnp: false, externalIp: null })
        expect(r.natChanged, `${h}: the start-up check already had it right`).toBe(false)
        expect((await n.status(h)).nat).toBe(EXPECTED[h].nat)
      }

      const human = await n.natctl('alice', ['netcheck'], { json: false })
      expect(human.code, human.stderr).toBe(0)
      expect(human.stdout).toMatch(/^Report:\n/)
      expect(human.stdout).toContain('* UDP: true')
      expect(human.stdout).toContain(`* IPv4: yes, ${natd.alice!.publicUdp}`)
      expect(human.stdout).toContain('* Mapping: endpoint-independent')
      expect(human.stdout).toContain('* Filtering: address-and-port-dependent')
      expect(human.stdout).toContain('* NAT: easy')
      expect(human.stdout).toContain('* PortMapping: none (no PCP, NAT-PMP or UPnP) (gateway 10.1.0.1)')

      if (!fs.existsSync(TURNSERVER) || !fs.existsSync(NATDISCOVERY)) {
        process.stdout.write(`netcheck verdicts (coturn not installed, no comparison): ${JSON.stringify(table)}\n`)
        ctx.skip(`${TURNSERVER} or ${NATDISCOVERY} is missing (Debian package coturn): natd's verdicts checked, no comparison`)
      }
      // -c /dev/null: Debian's /etc/turnserver.conf says no-rfc5780. Two -L addresses and
      // an alternate port are what RFC 5780 needs; STUN only (no TLS, no auth, no CLI).
      n.lab.spawn(n.lab.server.ns, [
        TURNSERVER, '-c', '/dev/null', '-L', ip, '-L', altIp, '-p', String(COTURN_PORT), '--alt-listening-port', String(COTURN_ALT_PORT),
        '--no-auth', '--no-tls', '--no-dtls', '--no-cli', '--no-tcp-relay', '--log-file', '/dev/null', '--no-stdout-log',
        '--userdb', path.join(n.dir, 'turndb'), '--pidfile', path.join(n.dir, 'turnserver.pid')
      ])
      await waitFor(async () => (await n.lab.exec(n.lab.server.ns, ['ss', '-Hlun', `sport = :${COTURN_ALT_PORT}`])).stdout.includes(altIp), 10_000, 'turnserver listening')
      // -L: bind the host's own address, so the tool can tell "No NAT!" (it compares it with the reflexive address).
      const coturn = Object.fromEntries(
        await Promise.all(
          HOSTS.map(async (h) => {
            const host = n.lab.hosts[h]!
            const r = await n.lab.exec(host.ns, [NATDISCOVERY, '-m', '-f', '-L', host.ip, '-p', String(COTURN_PORT), ip], { timeoutMs: 60_000 })
            expect(r.code, `${h}: ${r.stdout}${r.stderr}`).toBe(0)
            return [h, parseNatdiscovery(r.stdout)] as const
          })
        )
      )
      for (const h of HOSTS) {
        Object.assign(table[h] as object, { coturnMapping: coturn[h]!.mapping, coturnFiltering: coturn[h]!.filtering })
        expect(coturn[h], `${h}: coturn`).toEqual({ mapping: EXPECTED[h].mapping, filtering: EXPECTED[h].filtering })
        expect({ mapping: natd[h]!.mapping, filtering: natd[h]!.filtering }, `${h}: natd agrees with coturn`).toEqual(coturn[h])
      }
      process.stdout.write(`netcheck verdicts, natd and coturn:\n${JSON.stringify(table, null, 1)}\n`)
    })
  }, 120_000)

  it('a NAT that changed: netcheck refreshes the verdict and the server tells peers', async () => {
    await withLab({ sites: [{ name: 'alice', nat: 'easy' }, { name: 'bob', nat: 'easy' }] }, async (n) => {
      await n.startServer(['--host', n.lab.server.ip, '--alt-host', n.lab.server.altIp])
      await n.startAgent('alice')
      await n.startAgent('bob')
      await n.waitRegistered('alice')
      await n.waitRegistered('bob')
      expect((await n.status('alice')).nat).toBe('easy')
      await n.lab.setNat('alice', 'hard')
      const r = await netcheck(n, 'alice')
      expect(r).toMatchObject({ mapping: 'address-and-port-dependent', nat: 'hard' })
      // The swap resets alice's control connection and she checks again after registering
      // anew, so she may have noticed before netcheck ran; if not, netcheck is what noticed.
      if (r.natChanged) expect(r.previousNat).toBe('easy')
      expect((await n.status('alice')).nat).toBe('hard')
      await waitFor(async () => (await n.peers('bob')).find((p) => p.name === 'alice')?.nat === 'hard', 5_000, 'bob sees alice as hard')
      const again = await netcheck(n, 'alice')
      expect(again).toMatchObject({ nat: 'hard', natChanged: false })
    })
  }, 60_000)

  it('natd-rendezvous refuses --alt-host beside a wildcard --host, with a clear message', () => {
    const r = spawnSync(process.execPath, [path.join(DIST, 'rendezvous/main.js'), '--alt-host', '198.18.0.3'], { encoding: 'utf8', timeout: 10_000 })
    expect(r.status).toBe(2)
    expect(r.stderr).toMatch(/--alt-host needs --host to be one specific address/)
  })
})
