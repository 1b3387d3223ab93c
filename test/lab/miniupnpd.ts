/**
 * A lab NAT router that also answers port-mapping requests: Debian's miniupnpd 2.3.1
 * (package miniupnpd-iptables) in the router's namespace, serving NAT-PMP, PCP and UPnP
 * IGD on the LAN bridge and adding its DNAT rules in its own MINIUPNPD chains, which are
 * consulted before the lab's NL-* chains.
 *
 *   server 198.18.0.2:3478 (STUN, --alt-host) ◀── ext_perform_stun ──┐
 *   ── inet ── wan 198.18.N.2 [rN: lab NAT + miniupnpd] lan 10.N.0.1 ── host 10.N.0.2
 *
 * The lab's addresses are in 198.18.0.0/15, which miniupnpd treats as reserved: it
 * refuses to map ("external IP is reserved") unless it learns its external address by
 * STUN (`ext_perform_stun`), and with STUN it maps only when its own NAT test finds no
 * filtering in front of it — here there is none (the router's wan is the public side).
 */
import fs from 'node:fs'
import path from 'node:path'
import type { ChildProcess } from 'node:child_process'
import type { Lab } from './lab.js'

export const MINIUPNPD = '/usr/sbin/miniupnpd'

export interface MiniupnpdOptions {
  /** 'yes': NAT-PMP and PCP on UDP 5351 (miniupnpd serves both on one switch). */
  natpmp?: boolean
  upnp?: boolean
  /** Permission rules; default: the site's LAN may map ports 1024-65535. */
  rules?: string[]
  /**
   * false: miniupnpd's MINIUPNPD-POSTROUTING chain is not hooked, so a mapped port's
   * outbound traffic is NATed by the lab's rules as any other (a hard NAT: another port
   * per destination): a gateway that only forwards inbound, as many PCP/NAT-PMP
   * routers do. Default true (miniupnpd as Debian ships it).
   */
  snat?: boolean
}

/**
 * The chains miniupnpd-iptables expects (its iptables_init.sh). It speaks libiptc, the
 * legacy x_tables backend, while the lab's rules are iptables-nft: the kernel runs both,
 * and a packet must pass both. So the legacy side holds miniupnpd's chains, and two nft
 * rules ahead of the lab's NL-* chains let through what miniupnpd opened: packets it
 * DNATed (its mappings) and the STUN answers to its own NAT test.
 */
function legacyChains(snat: boolean): string {
  return [
    '*nat',
    ':MINIUPNPD - [0:0]',
    ':MINIUPNPD-POSTROUTING - [0:0]',
    '-A PREROUTING -i wan -j MINIUPNPD',
    ...(snat ? ['-A POSTROUTING -o wan -j MINIUPNPD-POSTROUTING'] : []),
    'COMMIT',
    '*mangle',
    ':MINIUPNPD - [0:0]',
    '-A PREROUTING -i wan -j MINIUPNPD',
    'COMMIT',
    '*filter',
    ':MINIUPNPD - [0:0]',
    '-A FORWARD -i wan ! -o wan -j MINIUPNPD',
    '-A INPUT -i wan -j MINIUPNPD',
    'COMMIT',
    ''
  ].join('\n')
}

function nftHooks(stunHosts: string[], wanIp: string): string[][] {
  return [
    ['iptables', '-I', 'FORWARD', '1', '-i', 'wan', '-m', 'conntrack', '--ctstate', 'DNAT', '-j', 'ACCEPT'],
    // The router's own traffic (miniupnpd's STUN test) leaves unNATed, as from any router's
    // public address; a hard router's MASQUERADE --random-fully would otherwise make the
    // test find a symmetric NAT upstream and turn port forwarding off.
    ['iptables', '-t', 'nat', '-I', 'POSTROUTING', '1', '-o', 'wan', '-s', wanIp, '-j', 'ACCEPT'],
    ...stunHosts.map((h) => ['iptables', '-I', 'INPUT', '1', '-i', 'wan', '-p', 'udp', '-s', h, '-j', 'ACCEPT'])
  ]
}

/**
 * Starts miniupnpd on `site`'s router (site number `n`, 1-based as in the lab); the lab
 * kills it at teardown. Resolves once it listens on UDP 5351 (or its HTTP port).
 */
export async function startMiniupnpd(lab: Lab, site: string, n: number, dir: string, o: MiniupnpdOptions = {}): Promise<ChildProcess> {
  const router = lab.routers[site]
  if (!router) throw new Error(`site ${site} has no router`)
  const restore = await lab.exec(router.ns, ['sh', '-c', `printf '%s' '${legacyChains(o.snat !== false)}' | iptables-legacy-restore --noflush`])
  if (restore.code !== 0) throw new Error(`miniupnpd chains: ${restore.stderr}`)
  for (const cmd of nftHooks([lab.server.ip, lab.server.altIp], router.wanIp)) {
    const r = await lab.exec(router.ns, cmd)
    if (r.code !== 0) throw new Error(`${cmd.join(' ')}: ${r.stderr}`)
  }
  const conf = path.join(dir, `miniupnpd-${site}.conf`)
  fs.writeFileSync(
    conf,
    [
      'ext_ifname=wan',
      `listening_ip=lan`,
      'port=0',
      `enable_natpmp=${o.natpmp === false ? 'no' : 'yes'}`,
      `enable_upnp=${o.upnp === false ? 'no' : 'yes'}`,
      'secure_mode=yes',
      'system_uptime=no',
      `uuid=3d3cec3a-8cf0-11e0-98ee-001a6bd2d0${String(n).padStart(2, '0')}`,
      'ext_perform_stun=yes',
      `ext_stun_host=${lab.server.ip}`,
      'ext_stun_port=3478',
      `lease_file=${path.join(dir, `miniupnpd-${site}.leases`)}`,
      ...(o.rules ?? [`allow 1024-65535 10.${n}.0.0/24 1024-65535`, 'deny 0-65535 0.0.0.0/0 0-65535']),
      ''
    ].join('\n')
  )
  // miniupnpd logs through syslog too, and with no /dev/log glibc writes each line to
  // /dev/console. A gateway whose rules refuse every port logs one line per port it tries
  // for a PCP request (~65,000, ~800 a second): console writes at that rate held both
  // cores of a 2-core VM in the kernel, so natctl and natd stood still 25-30 s (issue 17).
  // `ip netns exec` gives the command a mount namespace of its own: /dev/console is
  // /dev/null there; the lines still reach the test on stderr (-d).
  const cmd = `mount --bind /dev/null /dev/console && exec "$0" "$@"`
  return lab.spawn(router.ns, ['sh', '-c', cmd, MINIUPNPD, '-d', '-4', '-f', conf, '-P', path.join(dir, `miniupnpd-${site}.pid`)])
}
