/**
 * Faults for the roaming tests (issue #15), made on a lab site's NAT router with what
 * lab.ts exports (exec in the router's namespace): a router that comes back with another
 * public port or another public address, and a WAN link that goes dark.
 *
 *   host ── lan ── router ── wan (198.18.N.2, + 198.18.N.3 after newPublicAddress) ── inet
 *
 * Each fault flushes or blocks only that router's state; lab.setNat() puts the site's
 * normal NAT back when a test needs it.
 */
import type { Lab } from './lab.js'

/** The NAT chain lab.ts fills (`NL-POST` in the nat table); we refill it. */
const NAT_CHAIN = 'NL-POST'

function router(lab: Lab, site: string): { ns: string; wanIp: string } {
  const r = lab.routers[site]
  if (!r) throw new Error(`site ${site} has no router`)
  return r
}

async function must(lab: Lab, ns: string, cmd: string[]): Promise<void> {
  const r = await lab.exec(ns, cmd)
  if (r.code !== 0) throw new Error(`${cmd.join(' ')} failed (${r.code}): ${r.stderr.trim()}`)
}

async function setMasquerade(lab: Lab, ns: string, rules: string[][]): Promise<void> {
  await must(lab, ns, ['iptables', '-t', 'nat', '-F', NAT_CHAIN])
  for (const rule of rules) await must(lab, ns, ['iptables', '-t', 'nat', '-A', NAT_CHAIN, ...rule])
  // Every mapping goes: the next packet of every flow gets a new one (a router reboot).
  await lab.exec(ns, ['conntrack', '-F'])
}

/**
 * The router comes back mapping to other public ports (20000-29999, where the port-
 * preserving MASQUERADE kept the host's own): every flow, the agent's and the
 * tunnel's, appears from a new port.
 */
export async function newPublicPort(lab: Lab, site: string): Promise<void> {
  const { ns } = router(lab, site)
  await setMasquerade(lab, ns, [
    ['-o', 'wan', '-p', 'udp', '-j', 'MASQUERADE', '--to-ports', '20000-29999'],
    ['-o', 'wan', '-p', 'tcp', '-j', 'MASQUERADE', '--to-ports', '20000-29999'],
    ['-o', 'wan', '-j', 'MASQUERADE']
  ])
}

/** The router comes back with another public address (a second one on its WAN, 198.18.N.3): every flow appears from it. */
export async function newPublicAddress(lab: Lab, site: string): Promise<string> {
  const { ns, wanIp } = router(lab, site)
  const other = wanIp.replace(/\.2$/, '.3')
  const has = await lab.exec(ns, ['ip', '-4', 'addr', 'show', 'dev', 'wan'])
  if (!has.stdout.includes(`${other}/`)) await must(lab, ns, ['ip', 'addr', 'add', `${other}/24`, 'dev', 'wan'])
  await setMasquerade(lab, ns, [['-o', 'wan', '-j', 'SNAT', '--to-source', other]])
  return other
}

/** Everything across the router's WAN link is dropped (both ways) until `restore()`; conntrack is kept. */
export async function darkWan(lab: Lab, site: string): Promise<{ restore: () => Promise<void> }> {
  const { ns } = router(lab, site)
  const rules = [
    ['FORWARD', '-i', 'wan'],
    ['FORWARD', '-o', 'wan'],
    ['INPUT', '-i', 'wan'],
    ['OUTPUT', '-o', 'wan']
  ]
  for (const [chain, ...match] of rules) await must(lab, ns, ['iptables', '-I', chain!, '1', ...match, '-j', 'DROP'])
  let restored = false
  return {
    restore: async () => {
      if (restored) return
      restored = true
      for (const [chain, ...match] of rules) await must(lab, ns, ['iptables', '-D', chain!, ...match, '-j', 'DROP'])
    }
  }
}
