/**
 * One host behind each NAT kind the lab builds, for tests that compare a verdict per kind
 * (natctl netcheck, the stock STUN clients):
 *
 *   server ── inet ──┬── r1 easy (MASQUERADE) ──────────── alice
 *                    ├── r2 hard (MASQUERADE --random-fully) bob
 *                    ├── (no NAT) ─────────────────────────── carol
 *                    └── r4 full (DNAT/SNAT 1:1) ──────────── dave
 */
import type { LabSpec } from './lab.js'

export const EACH_NAT_KIND: LabSpec = {
  sites: [
    { name: 'alice', nat: 'easy' },
    { name: 'bob', nat: 'hard' },
    { name: 'carol', nat: 'public' },
    { name: 'dave', nat: 'full' }
  ]
}
export const EACH_NAT_KIND_HOSTS = ['alice', 'bob', 'carol', 'dave'] as const
export type NatKindHost = (typeof EACH_NAT_KIND_HOSTS)[number]
