/**
 * Stock STUN clients against natd-rendezvous through real Linux NAT (issue 17): Debian's
 * RFC 3489 `stun` client names each NAT kind from natd-rendezvous's old-style answers,
 * turnutils_natdiscovery's mapping-lifetime probe (RESPONSE-PORT = the first socket's
 * public port) comes back through every NAT, and turnutils_stunclient's RESPONSE-PORT and
 * PADDING requests complete where nothing filters (no NAT, full cone).
 *
 *            natd-rendezvous 198.18.0.2:3478/3479 + --alt-host 198.18.0.3:3478/3479
 *   server ── inet ──┬── r1 easy (MASQUERADE) ──────────── alice
 *                    ├── r2 hard (MASQUERADE --random-fully) bob
 *                    ├── (no NAT) ─────────────────────────── carol
 *                    └── r4 full (DNAT/SNAT 1:1) ──────────── dave
 */
import fs from 'node:fs'
import { describe, expect, it } from 'vitest'
import { labAvailable } from './lab.js'
import { EACH_NAT_KIND, EACH_NAT_KIND_HOSTS, type NatKindHost } from './nat-kinds.js'
import { SERVER_PORT, withLab } from './natd-lab.js'

const STUN_RFC3489 = '/usr/bin/stun'
const STUNCLIENT = '/usr/bin/turnutils_stunclient'
const NATDISCOVERY = '/usr/bin/turnutils_natdiscovery'
/** A stock client that gets its answers is done in ~1–2 s; one waiting for a lost answer never ends. */
const CLIENT_TIMEOUT_MS = 15_000

const SITES = EACH_NAT_KIND
const HOSTS = EACH_NAT_KIND_HOSTS

/**
 * The vovida client's verdict (RFC 3489 §10.1 as it implements it) for each NAT kind:
 * easy MASQUERADE filters by address and port, the hard NAT maps per destination, the
 * 1:1 NAT lets everything in.
 */
const RFC3489_VERDICT: Record<NatKindHost, RegExp> = {
  alice: /Primary: Independent Mapping, Port Dependent Filter/,
  bob: /Primary: Dependent Mapping/,
  carol: /Primary: Open/,
  dave: /Primary: Independent Mapping, Independent Filter/
}

const installed = [STUN_RFC3489, STUNCLIENT, NATDISCOVERY].every((f) => fs.existsSync(f))

describe.skipIf(!labAvailable() || !installed)('stock STUN clients through NAT', () => {
  it("Debian's stun, turnutils_natdiscovery -t and turnutils_stunclient get their answers", async () => {
    await withLab(SITES, async (n) => {
      const { ip, altIp } = n.lab.server
      await n.startServer(['--host', ip, '--alt-host', altIp])
      const seen: Record<string, string> = {}
      await Promise.all(
        HOSTS.map(async (h) => {
          const ns = n.lab.hosts[h]!.ns
          const classic = await n.lab.exec(ns, [STUN_RFC3489, `${ip}:${SERVER_PORT}`], { timeoutMs: CLIENT_TIMEOUT_MS })
          const verdict = /Primary: .*/.exec(classic.stdout + classic.stderr)?.[0] ?? `no verdict (exit ${classic.code})`
          seen[h] = verdict
          expect(verdict, `${h}: stun`).toMatch(RFC3489_VERDICT[h])
          // RFC 5780 §4.6: the second request, from a new socket, asks for the answer at the
          // first socket's public port; it comes back only through that live mapping.
          const life = await n.lab.exec(ns, [NATDISCOVERY, '-t', '-T', '1', '-p', String(SERVER_PORT), ip], { timeoutMs: CLIENT_TIMEOUT_MS })
          expect(life.code, `${h}: natdiscovery -t\n${life.stdout}`).toBe(0)
          expect(life.stdout, `${h}: natdiscovery -t`).toContain('RFC 5780 response 2')
          expect(life.stdout, `${h}: natdiscovery -t`).not.toContain('timeout')
        })
      )
      // turnutils_stunclient asks for its second answer at its local port + 1, a port no
      // NAT has mapped: it can only complete where nothing filters (as against coturn).
      for (const h of ['carol', 'dave'] as const) {
        const r = await n.lab.exec(n.lab.hosts[h]!.ns, [STUNCLIENT, '-p', String(SERVER_PORT), ip], { timeoutMs: CLIENT_TIMEOUT_MS })
        expect(r.code, `${h}: turnutils_stunclient\n${r.stdout}`).toBe(0)
        expect(r.stdout, h).toContain('RFC 5780 response 3')
      }
      process.stdout.write(`stun (RFC 3489) verdicts: ${JSON.stringify(seen)}\n`)
    })
  }, 120_000)
})
