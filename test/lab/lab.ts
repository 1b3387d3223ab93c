/*
 * NAT lab: a tiny internet built from network namespaces, for NAT-traversal tests.
 *
 *   ┌───────────────────────┐
 *   │ $id-srv   (server)    │  eth0: 198.18.0.2/24 (ip) + 198.18.0.3/24 (altIp)
 *   └──────────┬────────────┘
 *              │ eth0 ⇄ srv                      [ $id-ls: link emulator, if serverLink ]
 *   ┌──────────┴─────────────────────────────────────────────────────────┐
 *   │ $id-inet  (router, no NAT, no conntrack)  srv: 198.18.0.1/24       │
 *   │                                            wN:  198.18.N.1/24      │
 *   └──────────┬───────────────────────────────────────┬─────────────────┘
 *              │ w1 ⇄ wan  [ $id-l1 ]                  │ w2 ⇄ eth0
 *   ┌──────────┴────────────┐                 ┌────────┴──────────────┐
 *   │ $id-r1  (NAT router)  │                 │ $id-h2-1 (public host)│
 *   │  wan: 198.18.1.2/24   │                 │  eth0: 198.18.2.2/24  │
 *   │  lan: 10.1.0.1/24     │ (bridge)        └───────────────────────┘
 *   └──────────┬────────────┘
 *              │ hM ⇄ eth0   (one veth per host, enslaved to the lan bridge)
 *   ┌──────────┴────────────┐
 *   │ $id-h1-M  (host)      │  eth0: 10.1.0.(M+1)/24, default via 10.1.0.1
 *   └───────────────────────┘
 *
 * Carrier-grade NAT (LabSpec.cgns, RFC 6598): CGN K (1-based) is numbered M = sites + K
 * on inet (198.18.M.2 on its wan); the home routers of its sites hang off its `inner`
 * bridge with 100.64.K.(N+1)/24 on their wan, default via 100.64.K.1:
 *
 *   inet ── wM ⇄ wan [$id-cK: CGN] inner (bridge) ── sN ⇄ wan [$id-rN: home NAT] lan ── hosts
 *
 * Site N (1-based, in LabSpec order) owns 198.18.N.0/24 (its WAN link to inet) and
 * 10.N.0.0/24 (its LAN). `inet` is a real router, so host → router A → inet → router B
 * → host is three forwarding hops: a UDP probe sent with TTL 2 dies at inet after it
 * has opened the sender's own NAT mapping, without reaching the peer's NAT. Behind a CGN
 * it dies at the CGN: the CGN's mapping opens with the first probe at full TTL.
 *
 * A site, CGN or the server given a `link` gets a link emulator (test/lab/link-emulator.ts)
 * in a namespace of its own between it and its upstream: delay, jitter, loss, reordering.
 *
 * Namespace names are `nl<6 hex>-<role>` (≤ 15 chars). Everything runs through
 * `ip netns exec`; nothing touches the root namespace's network configuration.
 */
import { execFile, execFileSync, spawn as spawnChild, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { appendFileSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { cgnRuleset, darkChain, lossChain, routerRuleset, type NatKind, type Unsolicited } from './lab-rules.ts';
import { LinkEmulator, linkemBinary, validateLink, type LinkSpec, type LinkStats } from './link-emulator.ts';
import { cgnIp6, cgnSiteIp6, coreIp6, firewall6, hostIp6, hostUla, ROUTER_SYSCTLS_6, SERVER_IP6, siteIp6, type SiteIp } from './lab-ipv6.ts';

export type { NatKind, Unsolicited } from './lab-rules.ts';
export type { LinkSpec, LinkStats } from './link-emulator.ts';
export type { SiteIp } from './lab-ipv6.ts';

export interface SiteSpec {
  name: string;
  nat: NatKind;
  unsolicited?: Unsolicited;
  hosts?: string[];
  /** The site's router sits behind this CGN (LabSpec.cgns) instead of on the internet. */
  cgn?: string;
  /** Emulated link between the site (its router, or its public host) and its upstream. */
  link?: LinkSpec;
  /** IPv4 only (default), dual-stack, or IPv6 only (test/lab/lab-ipv6.ts), behind a CGN too (its IPv6 routed, its shared IPv4 not used). */
  ip?: SiteIp;
}
export interface CgnSpec {
  name: string;
  /** 'easy': one public port per inside endpoint (port-preserving); 'hard': one per destination. */
  nat: 'easy' | 'hard';
  /** Sites behind it reach each other through its public address (easy CGNs only). */
  hairpin?: boolean;
  link?: LinkSpec;
}
export interface LabSpec {
  sites: SiteSpec[];
  cgns?: CgnSpec[];
  /** Emulated link between the rendezvous server and the internet. */
  serverLink?: LinkSpec;
}
export interface Host {
  name: string;
  ns: string;
  ip: string;
  publicIp: string;
  site: string;
  /** Its IPv6 address (a 'dual' or 'v6' site). */
  ip6?: string;
  /** Its unique-local IPv6 address (a 'dual' or 'v6' site with a router). */
  ula?: string;
}
export interface ExecResult {
  stdout: string;
  stderr: string;
  /** exit status; 124 when killed by timeoutMs (like timeout(1)), 128+n when killed by signal n */
  code: number;
}
export interface Lab {
  id: string;
  /** `ip6`: the server's IPv6 address when a site has IPv6. */
  server: { ns: string; ip: string; altIp: string; ip6?: string };
  /** The internet router between the sites and the server: where an on-path attacker sits. */
  inetNs: string;
  hosts: Record<string, Host>;
  /** Each site's router; `wanIp` is a 100.64 address for a site behind a CGN. */
  routers: Record<string, { ns: string; wanIp: string }>;
  cgns: Record<string, { ns: string; wanIp: string; innerIp: string }>;
  exec(ns: string, cmd: string[], opts?: { timeoutMs?: number }): Promise<ExecResult>;
  spawn(ns: string, cmd: string[], opts?: { env?: NodeJS.ProcessEnv; cwd?: string }): ChildProcess;
  /** Swaps the router's NAT rule; flushes its conntrack unless `flush: false` (then flows already mapped keep their mapping). */
  setNat(site: string, nat: NatKind, opts?: { flush?: boolean }): Promise<void>;
  /** Random loss on a site's (or CGN's) link, both directions, with iptables (see setLink for the emulator's). */
  setLoss(site: string, percent: number): Promise<void>;
  setUdpTimeout(site: string, seconds: number): Promise<void>;
  flushConntrack(site: string): Promise<void>;
  /** Changes an emulated link (a site, a CGN or 'server' whose spec had a `link`). */
  setLink(name: string, link: LinkSpec): Promise<void>;
  linkStats(name: string): Promise<LinkStats>;
  /** Drops everything on a site's or CGN's link (both ways) while `dark`; nothing else changes. */
  setDark(name: string, dark: boolean): Promise<void>;
  /** The link goes dark for `ms`, then comes back. */
  outage(name: string, ms: number): Promise<void>;
  /**
   * The router (a site's or a CGN) comes back with new public ports: its NAT maps into
   * another range and its conntrack is flushed, so every flow gets a new public port.
   */
  renewPort(name: string): Promise<void>;
  /** The router (a site on the internet, or a CGN) comes back with a new public address; returns it. */
  renumber(name: string): Promise<string>;
  /** The host leaves its LAN and joins another site's (Wi-Fi → LTE): new address, same namespace and processes. */
  moveHost(host: string, toSite: string): Promise<Host>;
  teardown(): Promise<void>;
}

const SERVER_IP = '198.18.0.2';
const SERVER_ALT_IP = '198.18.0.3';
// Two digits each keep `nl123456-h99-99` at the 15-char IFNAMSIZ-ish limit of ns names;
// CGNs take numbers after the sites' (198.18.M), so sites + CGNs share the limit.
const MAX_SITES = 99;
const MAX_HOSTS = 99;
// Public ports of the home router of site N behind a CGN: a block of its own (RFC 7422
// deterministic NAT), so an easy CGN that preserves ports can hairpin by port.
const CGN_BLOCK_BASE = 10_000;
const CGN_BLOCK_SIZE = 500;
// renewPort moves a router's mappings into one of these in turn: below Linux's ephemeral
// range (32768–60999), so a preserved source port never lands back on the old one.
const RENEW_RANGES = ['10000-19999', '20000-29999'];
// A CGN's renewed ranges stay clear of its subscribers' blocks (10000–59499), which it would preserve.
const CGN_RENEW_RANGES = ['60000-62499', '62500-64999'];

/** Where a site, CGN or the server meets its upstream: the iptables matches for loss and darkness, and its emulator. */
interface Edge {
  n: number; // chain number (the site's or CGN's number; 0 for the server)
  ns: string; // upstream namespace holding the chains: inet, or the CGN
  inMatch: string; // packets from the attachment, as seen upstream
  outMatch: string; // packets to it
  linkNs?: string;
  link?: LinkSpec;
  emulator?: LinkEmulator;
}

interface CgnState {
  spec: CgnSpec;
  k: number;
  m: number; // its number on inet
  ns: string;
  wanIp: string;
  innerIp: string;
  portGen: number;
  addrGen: number;
  sites: SiteState[];
  edge: Edge;
}

interface SiteState {
  spec: SiteSpec;
  n: number; // 1-based site number → subnets 198.18.n.0/24 and 10.n.0.0/24
  nat: NatKind;
  unsolicited: Unsolicited;
  routerNs: string | undefined; // undefined for 'public'
  wanIp: string;
  hostIps: string[];
  nextHost: number; // index of the next host veth (hN) on the lan bridge
  cgn: CgnState | undefined;
  portGen: number;
  addrGen: number;
  edge: Edge;
}

/** Run a root-namespace tool (only `ip`, never anything that changes root networking). */
function run(cmd: string, args: string[], input?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = execFile(cmd, args, { maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${args.join(' ')} failed: ${stderr.trim() || err.message}`));
      else resolve(stdout);
    });
    if (input !== undefined) child.stdin?.end(input);
  });
}

/** Run a command inside a namespace, failing loudly. */
function nsRun(ns: string, args: string[], input?: string): Promise<string> {
  return run('ip', ['netns', 'exec', ns, ...args], input);
}

function blockOf(n: number): [number, number] {
  const lo = CGN_BLOCK_BASE + (n - 1) * CGN_BLOCK_SIZE;
  return [lo, lo + CGN_BLOCK_SIZE - 1];
}

/** The public ports a site's router maps into, after `portGen` renewals. */
function sitePorts(site: SiteState): string | undefined {
  if (site.cgn) {
    // Halves of its block in turn, so hairpinning still knows the owner.
    const [lo, hi] = blockOf(site.n);
    const mid = lo + CGN_BLOCK_SIZE / 2;
    return site.portGen === 0 ? `${lo}-${hi}` : site.portGen % 2 ? `${lo}-${mid - 1}` : `${mid}-${hi}`;
  }
  return site.portGen === 0 ? undefined : RENEW_RANGES[(site.portGen - 1) % RENEW_RANGES.length];
}

function siteRules(site: SiteState, initial: boolean): string {
  return routerRuleset({ nat: site.nat, unsolicited: site.unsolicited, wanIp: site.wanIp, lanHost: site.hostIps[0] ?? '', ports: sitePorts(site) }, initial);
}

function cgnRules(c: CgnState, initial: boolean): string {
  // Renewed ports break the port-preserving hairpin: a renewed CGN hairpins no more.
  const hairpin = c.spec.hairpin && c.portGen === 0 ? c.sites.map((s) => ({ ip: s.wanIp, ports: blockOf(s.n).join(':') })) : undefined;
  const ports = c.portGen === 0 ? undefined : CGN_RENEW_RANGES[(c.portGen - 1) % CGN_RENEW_RANGES.length];
  return cgnRuleset({ nat: c.spec.nat, wanIp: c.wanIp, innerNet: `100.64.${c.k}.0/24`, hairpin, ports }, initial);
}

// Labs still alive, for the last-resort synchronous cleanup when the process exits.
const liveLabs = new Set<LabImpl>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const lab of liveLabs) lab.teardownSync();
  });
}

function killGroup(child: ChildProcess): void {
  // Only signal children that are still running, so a recycled pid is never hit.
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-child.pid, 'SIGKILL'); // detached → own process group: grandchildren too
  } catch {
    try {
      child.kill('SIGKILL');
    } catch {
      /* already gone */
    }
  }
}

function killPids(text: string): void {
  for (const pid of text.split(/\s+/).filter(Boolean).map(Number)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
  }
}

class LabImpl implements Lab {
  readonly id: string;
  readonly server: { ns: string; ip: string; altIp: string; ip6?: string };
  readonly hosts: Record<string, Host> = {};
  readonly routers: Record<string, { ns: string; wanIp: string }> = {};
  readonly cgns: Record<string, { ns: string; wanIp: string; innerIp: string }> = {};
  readonly namespaces: string[] = [];
  private readonly sites = new Map<string, SiteState>();
  private readonly cgnStates = new Map<string, CgnState>();
  private readonly serverEdge: Edge;
  private readonly children = new Set<ChildProcess>();
  readonly inetNs: string;
  private readonly prefix: string;
  private tearingDown: Promise<void> | undefined;

  constructor(spec: LabSpec) {
    this.id = randomBytes(3).toString('hex');
    const p = (this.prefix = `nl${this.id}`);
    this.inetNs = `${p}-inet`;
    this.server = { ns: `${p}-srv`, ip: SERVER_IP, altIp: SERVER_ALT_IP, ...(spec.sites.some((s) => (s.ip ?? 'v4') !== 'v4') ? { ip6: SERVER_IP6 } : {}) };
    this.namespaces.push(this.inetNs, this.server.ns);
    this.serverEdge = this.edge(0, this.inetNs, '-i srv', '-o srv', spec.serverLink);

    const cgnSpecs = spec.cgns ?? [];
    if (spec.sites.length === 0 || spec.sites.length + cgnSpecs.length > MAX_SITES) throw new Error(`need 1..${MAX_SITES} sites and CGNs`);
    cgnSpecs.forEach((c, i) => {
      if (this.cgnStates.has(c.name) || spec.sites.some((s) => s.name === c.name)) throw new Error(`duplicate site or CGN ${c.name}`);
      if (c.hairpin && c.nat !== 'easy') throw new Error(`CGN ${c.name}: hairpinning needs an easy (port-preserving) CGN`);
      const k = i + 1;
      const m = spec.sites.length + k;
      const ns = `${p}-c${k}`;
      this.namespaces.push(ns);
      const state: CgnState = { spec: c, k, m, ns, wanIp: `198.18.${m}.2`, innerIp: `100.64.${k}.1`, portGen: 0, addrGen: 0, sites: [], edge: this.edge(m, this.inetNs, `-i w${m}`, `-o w${m}`, c.link) };
      this.cgnStates.set(c.name, state);
      this.cgns[c.name] = { ns, wanIp: state.wanIp, innerIp: state.innerIp };
    });
    spec.sites.forEach((s, i) => {
      const n = i + 1;
      const hostNames = s.hosts ?? [s.name];
      if (this.sites.has(s.name)) throw new Error(`duplicate site ${s.name}`);
      if (hostNames.length === 0 || hostNames.length > MAX_HOSTS) throw new Error(`site ${s.name}: need 1..${MAX_HOSTS} hosts`);
      if ((s.nat === 'full' || s.nat === 'public') && hostNames.length !== 1) throw new Error(`site ${s.name}: '${s.nat}' takes exactly one host`);
      const cgn = s.cgn === undefined ? undefined : this.cgnStates.get(s.cgn);
      if (s.cgn !== undefined && !cgn) throw new Error(`site ${s.name}: no CGN ${s.cgn}`);
      if (cgn && s.nat === 'public') throw new Error(`site ${s.name}: a public host cannot sit behind a CGN`);
      const routerNs = s.nat === 'public' ? undefined : `${p}-r${n}`;
      const wanIp = cgn ? `100.64.${cgn.k}.${n + 1}` : `198.18.${n}.2`;
      const edge = cgn ? this.edge(n, cgn.ns, `-i inner -s ${wanIp}`, `-o inner -d ${wanIp}`, s.link) : this.edge(n, this.inetNs, `-i w${n}`, `-o w${n}`, s.link);
      const site: SiteState = { spec: s, n, nat: s.nat, unsolicited: s.unsolicited ?? 'drop', routerNs, wanIp, hostIps: [], nextHost: 1, cgn, portGen: 0, addrGen: 0, edge };
      cgn?.sites.push(site);
      if (routerNs) {
        this.routers[s.name] = { ns: routerNs, wanIp };
        this.namespaces.push(routerNs);
      }
      for (const name of hostNames) {
        if (this.hosts[name]) throw new Error(`duplicate host ${name}`);
        const j = site.nextHost++;
        const ns = `${p}-h${n}-${j}`;
        const ip = routerNs ? `10.${n}.0.${j + 1}` : wanIp;
        site.hostIps.push(ip);
        this.hosts[name] = { name, ns, ip, publicIp: cgn ? cgn.wanIp : wanIp, site: s.name, ...((s.ip ?? 'v4') !== 'v4' ? { ip6: hostIp6(n, j - 1, !!routerNs), ...(routerNs ? { ula: hostUla(n, j - 1) } : {}) } : {}) };
        this.namespaces.push(ns);
      }
      this.sites.set(s.name, site);
    });
  }

  private edge(n: number, ns: string, inMatch: string, outMatch: string, link: LinkSpec | undefined): Edge {
    if (link) validateLink(link);
    const linkNs = link ? `${this.prefix}-l${n === 0 ? 's' : n}` : undefined;
    if (linkNs) this.namespaces.push(linkNs);
    return { n, ns, inMatch, outMatch, linkNs, link };
  }

  async build(): Promise<void> {
    // 1. All namespaces and veth pairs in one `ip -batch`; each veth end is created
    //    directly inside its namespace, so nothing ever appears in the root namespace.
    const batch: string[] = this.namespaces.map((ns) => `netns add ${ns}`);
    const veth = (a: string, nsA: string, b: string, nsB: string): void => {
      batch.push(`link add name ${a} netns ${nsA} type veth peer name ${b} netns ${nsB}`);
    };
    // 2. Per-namespace config, collected here and applied in parallel below.
    const ipCmds = new Map<string, string[]>(this.namespaces.map((ns) => [ns, ['link set lo up']]));
    const add = (ns: string, ...lines: string[]): void => void ipCmds.get(ns)?.push(...lines);
    const tasks: Array<() => Promise<unknown>> = [];
    const mangle = new Map<string, string[]>(); // per upstream namespace: loss and dark chains
    /** Joins `down` (its device) to `up` (its device), through a link emulator's namespace if the edge has one. */
    const uplink = (e: Edge, downNs: string, downDev: string, upDev: string): void => {
      const rules = mangle.get(e.ns) ?? mangle.set(e.ns, []).get(e.ns)!;
      if (e.n > 0) {
        for (const ch of [lossChain(e.n), darkChain(e.n)]) rules.push(`:${ch} - [0:0]`, `-A PREROUTING ${e.inMatch} -j ${ch}`, `-A POSTROUTING ${e.outMatch} -j ${ch}`);
      }
      if (!e.linkNs) return veth(downDev, downNs, upDev, e.ns);
      veth(downDev, downNs, 'a', e.linkNs);
      veth('b', e.linkNs, upDev, e.ns);
      add(e.linkNs, 'link set dev a up', 'link set dev b up');
      const linkNs = e.linkNs;
      tasks.push(() => nsRun(linkNs, ['sysctl', '-qw', 'net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1']));
      // linkem forwards wire frames: the senders into its namespace must finish checksums
      // and segmentation themselves (a frame read from a packet socket carries no offload state).
      for (const [ns, dev] of [[downNs, downDev], [e.ns, upDev]] as const) tasks.push(() => nsRun(ns, ['ethtool', '-K', dev, 'tx', 'off', 'gso', 'off', 'tso', 'off']).catch((err: Error) => {
        throw new Error(`${err.message} (ethtool is in scripts/dev.sh APT_PACKAGES)`);
      }));
    };
    // ICMP rate limiting would make REJECT / TTL-exceeded answers flaky under test load.
    const routerSysctls = ['net.ipv4.ip_forward=1', 'net.ipv4.icmp_ratelimit=0'];
    tasks.push(() => nsRun(this.inetNs, ['sysctl', '-qw', ...routerSysctls]));

    // IPv6 lines go after every link is up (a route's gateway must be on a link that is).
    const late: Array<[string, string[]]> = [];
    if (this.server.ip6) {
      const core = coreIp6();
      late.push([this.server.ns, core.server], [this.inetNs, core.inet]);
      tasks.push(() => nsRun(this.inetNs, ['sysctl', '-qw', ...ROUTER_SYSCTLS_6]));
    }
    uplink(this.serverEdge, this.server.ns, 'eth0', 'srv');
    add(this.server.ns, `addr add ${SERVER_IP}/24 dev eth0`, `addr add ${SERVER_ALT_IP}/24 dev eth0`, 'link set eth0 up', 'route add default via 198.18.0.1');
    add(this.inetNs, 'addr add 198.18.0.1/24 dev srv', 'link set srv up');

    for (const c of this.cgnStates.values()) {
      add(this.inetNs, `addr add 198.18.${c.m}.1/24 dev w${c.m}`, `link set w${c.m} up`);
      uplink(c.edge, c.ns, 'wan', `w${c.m}`);
      batch.push(`link add name inner netns ${c.ns} type bridge`);
      add(c.ns, `addr add ${c.wanIp}/24 dev wan`, 'link set wan up', `addr add ${c.innerIp}/24 dev inner`, 'link set inner up', `route add default via 198.18.${c.m}.1`);
      tasks.push(() => nsRun(c.ns, ['sysctl', '-qw', ...routerSysctls, 'net.ipv4.conf.all.promote_secondaries=1']));
      if ([...this.sites.values()].some((s) => s.cgn === c && (s.spec.ip ?? 'v4') !== 'v4')) {
        // Native IPv6 beside the shared IPv4 (lab-ipv6.ts): routed plainly.
        const v6 = cgnIp6(c.m);
        late.push([this.inetNs, v6.inet], [c.ns, v6.cgn]);
        tasks.push(() => nsRun(c.ns, ['sysctl', '-qw', ...ROUTER_SYSCTLS_6]));
      }
      tasks.push(() => nsRun(c.ns, ['iptables-restore'], cgnRules(c, true)));
    }

    for (const site of this.sites.values()) {
      const { n, routerNs, cgn } = site;
      const gw = cgn ? cgn.innerIp : `198.18.${n}.1`;
      const upDev = cgn ? `s${n}` : `w${n}`;
      if (cgn) add(cgn.ns, `link set ${upDev} master inner`, `link set ${upDev} up`);
      else add(this.inetNs, `addr add ${gw}/24 dev ${upDev}`, `link set ${upDev} up`);
      const hostNames = site.spec.hosts ?? [site.spec.name];
      const ip = site.spec.ip ?? 'v4';
      const v6 = ip === 'v4' ? null : siteIp6(n, !!routerNs, hostNames.length);
      const v4Route = (line: string): string[] => (ip === 'v6' ? [] : [line]); // an IPv6-only host has no IPv4 way out
      if (v6 && cgn) {
        const up = cgnSiteIp6(n, cgn.m);
        late.push([this.inetNs, up.inet], [cgn.ns, up.cgn]);
        hostNames.forEach((name, j) => late.push([this.host(name).ns, v6.hosts[j]!]));
      } else if (v6) {
        late.push([this.inetNs, v6.inet]);
        hostNames.forEach((name, j) => late.push([this.host(name).ns, v6.hosts[j]!]));
      }
      if (!routerNs) {
        const h = this.host(hostNames[0] ?? '');
        uplink(site.edge, h.ns, 'eth0', upDev);
        add(h.ns, `addr add ${h.ip}/24 dev eth0`, 'link set eth0 up', ...v4Route(`route add default via ${gw}`));
        continue;
      }
      if (v6) {
        late.push([routerNs, v6.router]);
        tasks.push(() => nsRun(routerNs, ['sysctl', '-qw', ...ROUTER_SYSCTLS_6]));
        tasks.push(() => nsRun(routerNs, ['ip6tables-restore'], firewall6(site.unsolicited)));
      }
      uplink(site.edge, routerNs, 'wan', upDev);
      batch.push(`link add name lan netns ${routerNs} type bridge`);
      add(routerNs, `addr add ${site.wanIp}/24 dev wan`, 'link set wan up', `addr add 10.${n}.0.1/24 dev lan`, 'link set lan up', `route add default via ${gw}`);
      hostNames.forEach((name, j) => {
        const h = this.host(name);
        veth('eth0', h.ns, `h${j + 1}`, routerNs);
        add(routerNs, `link set h${j + 1} master lan`, `link set h${j + 1} up`);
        add(h.ns, `addr add ${h.ip}/24 dev eth0`, 'link set eth0 up', ...v4Route(`route add default via 10.${n}.0.1`));
      });
      tasks.push(() => nsRun(routerNs, ['sysctl', '-qw', ...routerSysctls, 'net.ipv4.conf.all.promote_secondaries=1']));
      tasks.push(() => nsRun(routerNs, ['iptables-restore'], siteRules(site, true)));
    }
    for (const [ns, rules] of mangle) tasks.push(() => nsRun(ns, ['iptables-restore', '--noflush'], ['*mangle', ...rules, 'COMMIT', ''].join('\n')));
    for (const [ns, lines] of late) add(ns, ...lines);
    for (const [ns, lines] of ipCmds) tasks.push(() => run('ip', ['-n', ns, '-batch', '-'], lines.join('\n') + '\n'));

    const edges = this.edges().filter((e) => e.linkNs);
    const bin = edges.length ? linkemBinary() : undefined;
    await run('ip', ['-batch', '-'], batch.join('\n') + '\n');
    await Promise.all(tasks.map((t) => t()));
    for (const e of edges) e.emulator = await LinkEmulator.start(this.spawn(e.linkNs!, [await bin!, 'a', 'b']), e.link!);
  }

  private edges(): Edge[] {
    return [this.serverEdge, ...[...this.cgnStates.values()].map((c) => c.edge), ...[...this.sites.values()].map((s) => s.edge)];
  }

  private host(name: string): Host {
    const h = this.hosts[name];
    if (!h) throw new Error(`no host ${name}`);
    return h;
  }

  private site(name: string): SiteState {
    const s = this.sites.get(name);
    if (!s) throw new Error(`no site ${name} in lab ${this.id}`);
    return s;
  }

  /** A site's or CGN's edge, or the server's ('server'). */
  private edgeOf(name: string): Edge {
    if (name === 'server') return this.serverEdge;
    const e = this.cgnStates.get(name)?.edge ?? this.sites.get(name)?.edge;
    if (!e) throw new Error(`no site or CGN ${name} in lab ${this.id}`);
    return e;
  }

  private routerNs(name: string): string {
    const ns = this.site(name).routerNs;
    if (!ns) throw new Error(`site ${name} is public: it has no router`);
    return ns;
  }

  private checkNs(ns: string): void {
    // Refuse anything outside this lab, above all the root namespace.
    if (!this.namespaces.includes(ns)) throw new Error(`${ns} is not a namespace of lab ${this.id}`);
    if (this.tearingDown) throw new Error(`lab ${this.id} is torn down`);
  }

  async exec(ns: string, cmd: string[], opts: { timeoutMs?: number } = {}): Promise<ExecResult> {
    this.checkNs(ns); // async, so a bad namespace is a rejection like any other failure
    const timeout = opts.timeoutMs ?? 30_000;
    return await new Promise((resolve) => {
      execFile('ip', ['netns', 'exec', ns, ...cmd], { timeout, killSignal: 'SIGKILL', maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
        let code = 0;
        if (err) {
          const e = err as NodeJS.ErrnoException & { killed?: boolean; signal?: NodeJS.Signals | null };
          if (typeof e.code === 'number') code = e.code;
          else if (e.killed) code = 124;
          else if (e.signal) code = 128 + (osConstants.signals[e.signal] ?? 0);
          else code = 127; // could not start at all
        }
        resolve({ stdout, stderr, code });
      });
    });
  }

  spawn(ns: string, cmd: string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string } = {}): ChildProcess {
    this.checkNs(ns);
    // `ip netns exec` execs the command in place, so child.pid is the command itself.
    const child = spawnChild('ip', ['netns', 'exec', ns, ...cmd], {
      env: opts.env ?? process.env,
      cwd: opts.cwd,
      stdio: 'pipe',
      detached: true, // own process group, so teardown can kill its descendants too
    });
    this.children.add(child);
    child.once('exit', () => this.children.delete(child));
    return child;
  }

  async setNat(siteName: string, nat: NatKind, opts: { flush?: boolean } = {}): Promise<void> {
    const site = this.site(siteName);
    const ns = this.routerNs(siteName);
    if (nat === 'public') throw new Error(`cannot turn router site ${siteName} into 'public'`);
    if (nat === 'full' && site.hostIps.length !== 1) throw new Error(`site ${siteName}: 'full' takes exactly one host`);
    site.nat = nat;
    await nsRun(ns, ['iptables-restore', '--noflush'], siteRules(site, false));
    // Old mappings would otherwise keep the previous NAT behaviour alive.
    if (opts.flush !== false) await this.flushConntrack(siteName);
  }

  async setLoss(name: string, percent: number): Promise<void> {
    const e = this.edgeOf(name);
    if (e.n === 0) throw new Error('setLoss: the server has no loss chain (give it a serverLink and use setLink)');
    if (!(percent >= 0 && percent <= 100)) throw new Error(`loss must be 0..100, got ${percent}`);
    // Applied upstream of the site's link, i.e. "on the wire": outbound packets are lost
    // after the site's NAT created its mapping, inbound before it.
    const rules = [`*mangle`, `:${lossChain(e.n)} - [0:0]`];
    if (percent > 0) rules.push(`-A ${lossChain(e.n)} -m statistic --mode random --probability ${percent / 100} -j DROP`);
    rules.push('COMMIT', '');
    await nsRun(e.ns, ['iptables-restore', '--noflush'], rules.join('\n'));
  }

  async setUdpTimeout(siteName: string, seconds: number): Promise<void> {
    const ns = this.routerNs(siteName);
    const s = Math.max(1, Math.round(seconds));
    // Existing entries keep their current deadline until their next packet.
    await nsRun(ns, ['sysctl', '-qw', `net.netfilter.nf_conntrack_udp_timeout=${s}`, `net.netfilter.nf_conntrack_udp_timeout_stream=${s}`]);
  }

  async flushConntrack(name: string): Promise<void> {
    const ns = this.cgnStates.get(name)?.ns ?? this.routerNs(name);
    await nsRun(ns, ['conntrack', '-F']);
  }

  private emulator(name: string): LinkEmulator {
    const em = this.edgeOf(name).emulator;
    if (!em) throw new Error(`${name} has no emulated link: give it a \`link\` in the LabSpec`);
    return em;
  }

  async setLink(name: string, link: LinkSpec): Promise<void> {
    this.emulator(name).set(link);
  }

  linkStats(name: string): Promise<LinkStats> {
    return this.emulator(name).stats();
  }

  async setDark(name: string, dark: boolean): Promise<void> {
    const e = this.edgeOf(name);
    if (e.n === 0) throw new Error('setDark: not for the server (kill the rendezvous instead)');
    const rules = ['*mangle', `:${darkChain(e.n)} - [0:0]`, ...(dark ? [`-A ${darkChain(e.n)} -j DROP`] : []), 'COMMIT', ''];
    await nsRun(e.ns, ['iptables-restore', '--noflush'], rules.join('\n'));
  }

  async outage(name: string, ms: number): Promise<void> {
    await this.setDark(name, true);
    try {
      await sleep(ms);
    } finally {
      if (!this.tearingDown) await this.setDark(name, false);
    }
  }

  async renewPort(name: string): Promise<void> {
    const c = this.cgnStates.get(name);
    if (c) {
      c.portGen++;
      await nsRun(c.ns, ['iptables-restore', '--noflush'], cgnRules(c, false));
      await nsRun(c.ns, ['conntrack', '-F']);
      return;
    }
    const site = this.site(name);
    site.portGen++;
    await nsRun(this.routerNs(name), ['iptables-restore', '--noflush'], siteRules(site, false));
    await this.flushConntrack(name);
  }

  async renumber(name: string): Promise<string> {
    const c = this.cgnStates.get(name);
    const site = c ? undefined : this.site(name);
    if (site?.cgn) throw new Error(`site ${name} is behind CGN ${site.cgn.spec.name}: renumber the CGN`);
    const ns = c ? c.ns : this.routerNs(name);
    const num = c ? c.m : site!.n;
    const gen = c ? ++c.addrGen : ++site!.addrGen;
    const old = c ? c.wanIp : site!.wanIp;
    if (gen > 200) throw new Error(`${name}: out of addresses`);
    const ip = `198.18.${num}.${2 + gen}`;
    // The new address first, so promote_secondaries keeps the default route when the old one goes.
    await run('ip', ['-n', ns, '-batch', '-'], [`addr add ${ip}/24 dev wan`, `addr del ${old}/24 dev wan`, `route replace default via 198.18.${num}.1`, ''].join('\n'));
    if (c) {
      c.wanIp = ip;
      this.cgns[name]!.wanIp = ip;
      for (const s of c.sites) for (const h of Object.values(this.hosts)) if (h.site === s.spec.name) h.publicIp = ip;
      await nsRun(ns, ['iptables-restore', '--noflush'], cgnRules(c, false));
    } else {
      site!.wanIp = ip;
      this.routers[name]!.wanIp = ip;
      for (const h of Object.values(this.hosts)) if (h.site === name) h.publicIp = ip;
      await nsRun(ns, ['iptables-restore', '--noflush'], siteRules(site!, false));
    }
    await nsRun(ns, ['conntrack', '-F']);
    return ip;
  }

  async moveHost(hostName: string, toSite: string): Promise<Host> {
    const h = this.host(hostName);
    const from = this.site(h.site);
    const to = this.site(toSite);
    if (!from.routerNs) throw new Error(`${hostName} is the public site ${from.spec.name}'s only host: it cannot leave`);
    if (!to.routerNs || to.nat === 'full') throw new Error(`site ${toSite}: hosts can only move to a NATed LAN that is not 'full'`);
    if (to === from) throw new Error(`${hostName} is already at ${toSite}`);
    const j = to.nextHost++;
    if (j > MAX_HOSTS) throw new Error(`site ${toSite}: no room for another host`);
    const ip = `10.${to.n}.0.${j + 1}`;
    // Gone from the old LAN (the old veth pair dies with its end), then on the new one.
    await run('ip', ['-n', h.ns, 'link', 'del', 'eth0']);
    await run('ip', ['link', 'add', 'name', 'eth0', 'netns', h.ns, 'type', 'veth', 'peer', 'name', `h${j}`, 'netns', to.routerNs]);
    await run('ip', ['-n', to.routerNs, '-batch', '-'], `link set h${j} master lan\nlink set h${j} up\n`);
    await run('ip', ['-n', h.ns, '-batch', '-'], `addr add ${ip}/24 dev eth0\nlink set eth0 up\nroute add default via 10.${to.n}.0.1\n`);
    to.hostIps.push(ip);
    h.ip = ip;
    h.site = toSite;
    h.publicIp = to.cgn ? to.cgn.wanIp : to.wanIp;
    return { ...h };
  }

  teardown(): Promise<void> {
    this.tearingDown ??= this.doTeardown();
    return this.tearingDown;
  }

  private async doTeardown(): Promise<void> {
    liveLabs.delete(this);
    const exits = [...this.children].map(
      (c) => new Promise<void>((resolve) => {
        if (c.exitCode !== null || c.signalCode !== null) return resolve();
        c.once('exit', () => resolve());
        setTimeout(resolve, 1000).unref();
      }),
    );
    for (const c of this.children) killGroup(c);
    await Promise.all(exits);
    // Anything else still living in our namespaces (exec leftovers, daemons) goes too.
    await Promise.all(this.namespaces.map(async (ns) => killPids(await run('ip', ['netns', 'pids', ns]).catch(() => ''))));
    // -force: keep going past namespaces that never got created.
    await run('ip', ['-force', '-batch', '-'], this.namespaces.map((ns) => `netns del ${ns}`).join('\n') + '\n').catch(() => undefined);
  }

  /** Last resort from process.on('exit'): no event loop, so everything synchronous. */
  teardownSync(): void {
    liveLabs.delete(this);
    for (const c of this.children) killGroup(c);
    for (const ns of this.namespaces) {
      try {
        killPids(execFileSync('ip', ['netns', 'pids', ns], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }));
      } catch {
        /* namespace already gone */
      }
    }
    try {
      const input = this.namespaces.map((ns) => `netns del ${ns}`).join('\n') + '\n';
      execFileSync('ip', ['-force', '-batch', '-'], { input, stdio: ['pipe', 'ignore', 'ignore'] });
    } catch {
      /* best effort */
    }
  }
}

export async function createLab(spec: LabSpec): Promise<Lab> {
  const lab = new LabImpl(spec);
  installExitHook();
  liveLabs.add(lab);
  // npm test checks that every namespace a run made is gone at its end (scripts/test.sh):
  // this run's, not those of another lab running on the same machine.
  if (process.env.NATD_LAB_LEDGER) appendFileSync(process.env.NATD_LAB_LEDGER, lab.namespaces.map((ns) => `${ns}\n`).join(''));
  try {
    await lab.build();
  } catch (err) {
    await lab.teardown();
    throw err;
  }
  return lab;
}

let available: boolean | undefined;
/** Root, and namespaces can really be created (a container may list but not add them). */
export function labAvailable(): boolean {
  if (available !== undefined) return available;
  available = false;
  if (process.platform !== 'linux' || process.getuid?.() !== 0) return available;
  const probe = `nl${randomBytes(3).toString('hex')}-probe`;
  try {
    execFileSync('iptables', ['--version'], { stdio: 'ignore' });
    execFileSync('conntrack', ['--version'], { stdio: 'ignore' });
    execFileSync('ip', ['netns', 'add', probe], { stdio: 'ignore' });
    available = true;
    execFileSync('ip', ['netns', 'del', probe], { stdio: 'ignore' });
  } catch {
    /* unavailable */
  }
  return available;
}
