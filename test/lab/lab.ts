/*
 * NAT lab: a tiny internet built from network namespaces, for NAT-traversal tests.
 *
 *   ┌───────────────────────┐
 *   │ $id-srv   (server)    │  eth0: 198.18.0.2/24 (ip) + 198.18.0.3/24 (altIp)
 *   └──────────┬────────────┘
 *              │ eth0 ⇄ srv
 *   ┌──────────┴─────────────────────────────────────────────────────────┐
 *   │ $id-inet  (router, no NAT, no conntrack)  srv: 198.18.0.1/24       │
 *   │                                            wN:  198.18.N.1/24      │
 *   └──────────┬───────────────────────────────────────┬─────────────────┘
 *              │ w1 ⇄ wan                              │ w2 ⇄ eth0
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
 * Site N (1-based, in LabSpec order) owns 198.18.N.0/24 (its WAN link to inet) and
 * 10.N.0.0/24 (its LAN). `inet` is a real router, so host → router A → inet → router B
 * → host is three forwarding hops: a UDP probe sent with TTL 2 dies at inet after it
 * has opened the sender's own NAT mapping, without reaching the peer's NAT.
 *
 * Namespace names are `nl<6 hex>-<role>` (≤ 15 chars). Everything runs through
 * `ip netns exec`; nothing touches the root namespace's network configuration.
 */
import { execFile, execFileSync, spawn as spawnChild, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { appendFileSync } from 'node:fs';
import { constants as osConstants } from 'node:os';

export type NatKind = 'easy' | 'hard' | 'full' | 'public';
export type Unsolicited = 'drop' | 'reset';
export interface SiteSpec {
  name: string;
  nat: NatKind;
  unsolicited?: Unsolicited;
  hosts?: string[];
}
export interface LabSpec {
  sites: SiteSpec[];
}
export interface Host {
  name: string;
  ns: string;
  ip: string;
  publicIp: string;
  site: string;
}
export interface ExecResult {
  stdout: string;
  stderr: string;
  /** exit status; 124 when killed by timeoutMs (like timeout(1)), 128+n when killed by signal n */
  code: number;
}
export interface Lab {
  id: string;
  server: { ns: string; ip: string; altIp: string };
  /** The internet router between the sites and the server: where an on-path attacker sits. */
  inetNs: string;
  hosts: Record<string, Host>;
  routers: Record<string, { ns: string; wanIp: string }>;
  exec(ns: string, cmd: string[], opts?: { timeoutMs?: number }): Promise<ExecResult>;
  spawn(ns: string, cmd: string[], opts?: { env?: NodeJS.ProcessEnv; cwd?: string }): ChildProcess;
  /** Swaps the router's NAT rule; flushes its conntrack unless `flush: false` (then flows already mapped keep their mapping). */
  setNat(site: string, nat: NatKind, opts?: { flush?: boolean }): Promise<void>;
  setLoss(site: string, percent: number): Promise<void>;
  setUdpTimeout(site: string, seconds: number): Promise<void>;
  flushConntrack(site: string): Promise<void>;
  teardown(): Promise<void>;
}

const SERVER_IP = '198.18.0.2';
const SERVER_ALT_IP = '198.18.0.3';
// Two digits each keep `nl123456-h99-99` at the 15-char IFNAMSIZ-ish limit of ns names.
const MAX_SITES = 99;
const MAX_HOSTS = 99;

// Chains we own, so setNat/setLoss can flush and refill them without touching
// anything else someone may have added to the builtin chains.
const CH_PRE = 'NL-PRE';
const CH_POST = 'NL-POST';
const CH_FWD = 'NL-FWD';
const CH_IN = 'NL-IN';
const lossChain = (n: number): string => `NL-LOSS${n}`;

interface SiteState {
  spec: SiteSpec;
  n: number; // 1-based site number → subnets 198.18.n.0/24 and 10.n.0.0/24
  nat: NatKind;
  unsolicited: Unsolicited;
  routerNs: string | undefined; // undefined for 'public'
  hostIps: string[];
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

function natRules(site: SiteState): string[] {
  const lanHost = site.hostIps[0];
  const wanIp = `198.18.${site.n}.2`;
  switch (site.nat) {
    case 'easy':
      // Linux MASQUERADE keeps the source port unless it collides: endpoint-independent mapping.
      return [`-A ${CH_POST} -o wan -j MASQUERADE`];
    case 'hard':
      // A fresh random port for every new conntrack entry: endpoint-dependent mapping.
      return [`-A ${CH_POST} -o wan -j MASQUERADE --random-fully`];
    case 'full':
      // 1:1 NAT: everything arriving on wan goes to the one host, whoever sent it.
      return [
        `-A ${CH_PRE} -i wan -j DNAT --to-destination ${lanHost}`,
        `-A ${CH_POST} -o wan -s ${lanHost} -j SNAT --to-source ${wanIp}`,
      ];
    case 'public':
      throw new Error('public sites have no router');
  }
}

function filterRules(site: SiteState): string[] {
  // With a `reset` policy the router behaves like a host with closed ports.
  const reject = (chain: string): string[] =>
    site.unsolicited === 'reset'
      ? [
          `-A ${chain} -i wan -p tcp -j REJECT --reject-with tcp-reset`,
          `-A ${chain} -i wan -p udp -j REJECT --reject-with icmp-port-unreachable`,
        ]
      : [];
  return [
    // The lan is a bridge and br_netfilter may hand bridged frames to iptables: let them be.
    `-A ${CH_FWD} -i lan -o lan -j ACCEPT`,
    `-A ${CH_FWD} -i lan -o wan -j ACCEPT`,
    `-A ${CH_FWD} -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT`,
    ...(site.nat === 'full' ? [`-A ${CH_FWD} -i wan -m conntrack --ctstate DNAT -j ACCEPT`] : []),
    ...reject(CH_FWD),
    `-A ${CH_FWD} -i wan -j DROP`,
    // Unsolicited packets to the WAN address itself are local delivery (INPUT), not FORWARD.
    `-A ${CH_IN} -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT`,
    ...reject(CH_IN),
    `-A ${CH_IN} -i wan -j DROP`,
  ];
}

/** iptables-restore input for a router. `initial` also creates the jumps from builtin chains. */
function routerRuleset(site: SiteState, initial: boolean): string {
  // Declaring a user chain (`:NAME - [0:0]`) flushes it, even under --noflush.
  return [
    '*nat',
    `:${CH_PRE} - [0:0]`,
    `:${CH_POST} - [0:0]`,
    ...(initial ? [`-A PREROUTING -j ${CH_PRE}`, `-A POSTROUTING -j ${CH_POST}`] : []),
    ...natRules(site),
    'COMMIT',
    '*filter',
    `:${CH_FWD} - [0:0]`,
    `:${CH_IN} - [0:0]`,
    ...(initial ? [`-A FORWARD -j ${CH_FWD}`, `-A INPUT -j ${CH_IN}`] : []),
    ...filterRules(site),
    'COMMIT',
    '',
  ].join('\n');
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
  readonly server: { ns: string; ip: string; altIp: string };
  readonly hosts: Record<string, Host> = {};
  readonly routers: Record<string, { ns: string; wanIp: string }> = {};
  readonly namespaces: string[] = [];
  private readonly sites = new Map<string, SiteState>();
  private readonly children = new Set<ChildProcess>();
  readonly inetNs: string;
  private tearingDown: Promise<void> | undefined;

  constructor(spec: LabSpec) {
    this.id = randomBytes(3).toString('hex');
    const p = `nl${this.id}`;
    this.inetNs = `${p}-inet`;
    this.server = { ns: `${p}-srv`, ip: SERVER_IP, altIp: SERVER_ALT_IP };
    this.namespaces.push(this.inetNs, this.server.ns);

    if (spec.sites.length === 0 || spec.sites.length > MAX_SITES) throw new Error(`need 1..${MAX_SITES} sites`);
    spec.sites.forEach((s, i) => {
      const n = i + 1;
      const hostNames = s.hosts ?? [s.name];
      if (this.sites.has(s.name)) throw new Error(`duplicate site ${s.name}`);
      if (hostNames.length === 0 || hostNames.length > MAX_HOSTS) throw new Error(`site ${s.name}: need 1..${MAX_HOSTS} hosts`);
      if ((s.nat === 'full' || s.nat === 'public') && hostNames.length !== 1)
        throw new Error(`site ${s.name}: '${s.nat}' takes exactly one host`);
      const routerNs = s.nat === 'public' ? undefined : `${p}-r${n}`;
      const wanIp = `198.18.${n}.2`;
      const site: SiteState = { spec: s, n, nat: s.nat, unsolicited: s.unsolicited ?? 'drop', routerNs, hostIps: [] };
      if (routerNs) {
        this.routers[s.name] = { ns: routerNs, wanIp };
        this.namespaces.push(routerNs);
      }
      hostNames.forEach((name, j) => {
        if (this.hosts[name]) throw new Error(`duplicate host ${name}`);
        const ns = `${p}-h${n}-${j + 1}`;
        const ip = routerNs ? `10.${n}.0.${j + 2}` : wanIp;
        site.hostIps.push(ip);
        this.hosts[name] = { name, ns, ip, publicIp: wanIp, site: s.name };
        this.namespaces.push(ns);
      });
      this.sites.set(s.name, site);
    });
  }

  async build(): Promise<void> {
    // 1. All namespaces and veth pairs in one `ip -batch`; each veth end is created
    //    directly inside its namespace, so nothing ever appears in the root namespace.
    const batch: string[] = this.namespaces.map((ns) => `netns add ${ns}`);
    const veth = (a: string, nsA: string, b: string, nsB: string): void => {
      batch.push(`link add name ${a} netns ${nsA} type veth peer name ${b} netns ${nsB}`);
    };
    veth('eth0', this.server.ns, 'srv', this.inetNs);

    // 2. Per-namespace config, collected here and applied in parallel below.
    const ipCmds = new Map<string, string[]>(this.namespaces.map((ns) => [ns, ['link set lo up']]));
    const add = (ns: string, ...lines: string[]): void => void ipCmds.get(ns)?.push(...lines);
    const tasks: Array<() => Promise<unknown>> = [];
    // ICMP rate limiting would make REJECT / TTL-exceeded answers flaky under test load.
    const routerSysctls = ['net.ipv4.ip_forward=1', 'net.ipv4.icmp_ratelimit=0'];
    tasks.push(() => nsRun(this.inetNs, ['sysctl', '-qw', ...routerSysctls]));

    add(this.server.ns, `addr add ${SERVER_IP}/24 dev eth0`, `addr add ${SERVER_ALT_IP}/24 dev eth0`, 'link set eth0 up', 'route add default via 198.18.0.1');
    add(this.inetNs, 'addr add 198.18.0.1/24 dev srv', 'link set srv up');

    const mangle = ['*mangle'];
    for (const site of this.sites.values()) {
      const { n, routerNs } = site;
      const wNet = `198.18.${n}`;
      add(this.inetNs, `addr add ${wNet}.1/24 dev w${n}`, `link set w${n} up`);
      mangle.push(`:${lossChain(n)} - [0:0]`, `-A PREROUTING -i w${n} -j ${lossChain(n)}`, `-A POSTROUTING -o w${n} -j ${lossChain(n)}`);
      const hostNss = site.spec.hosts ?? [site.spec.name];
      if (!routerNs) {
        const h = this.host(hostNss[0] ?? '');
        veth('eth0', h.ns, `w${n}`, this.inetNs);
        add(h.ns, `addr add ${h.ip}/24 dev eth0`, 'link set eth0 up', `route add default via ${wNet}.1`);
        continue;
      }
      veth('wan', routerNs, `w${n}`, this.inetNs);
      batch.push(`link add name lan netns ${routerNs} type bridge`);
      add(routerNs, `addr add ${wNet}.2/24 dev wan`, 'link set wan up', `addr add 10.${n}.0.1/24 dev lan`, 'link set lan up', `route add default via ${wNet}.1`);
      hostNss.forEach((name, j) => {
        const h = this.host(name);
        veth('eth0', h.ns, `h${j + 1}`, routerNs);
        add(routerNs, `link set h${j + 1} master lan`, `link set h${j + 1} up`);
        add(h.ns, `addr add ${h.ip}/24 dev eth0`, 'link set eth0 up', `route add default via 10.${n}.0.1`);
      });
      tasks.push(() => nsRun(routerNs, ['sysctl', '-qw', ...routerSysctls]));
      tasks.push(() => nsRun(routerNs, ['iptables-restore'], routerRuleset(site, true)));
    }
    mangle.push('COMMIT', '');
    tasks.push(() => nsRun(this.inetNs, ['iptables-restore'], mangle.join('\n')));
    for (const [ns, lines] of ipCmds) tasks.push(() => run('ip', ['-n', ns, '-batch', '-'], lines.join('\n') + '\n'));

    await run('ip', ['-batch', '-'], batch.join('\n') + '\n');
    await Promise.all(tasks.map((t) => t()));
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
    await nsRun(ns, ['iptables-restore', '--noflush'], routerRuleset(site, false));
    // Old mappings would otherwise keep the previous NAT behaviour alive.
    if (opts.flush !== false) await this.flushConntrack(siteName);
  }

  async setLoss(siteName: string, percent: number): Promise<void> {
    const { n } = this.site(siteName);
    if (!(percent >= 0 && percent <= 100)) throw new Error(`loss must be 0..100, got ${percent}`);
    // Applied on inet's side of the site's WAN link, i.e. "on the wire": outbound
    // packets are lost after the site's NAT created its mapping, inbound before it.
    const rules = [`*mangle`, `:${lossChain(n)} - [0:0]`];
    if (percent > 0) rules.push(`-A ${lossChain(n)} -m statistic --mode random --probability ${percent / 100} -j DROP`);
    rules.push('COMMIT', '');
    await nsRun(this.inetNs, ['iptables-restore', '--noflush'], rules.join('\n'));
  }

  async setUdpTimeout(siteName: string, seconds: number): Promise<void> {
    const ns = this.routerNs(siteName);
    const s = Math.max(1, Math.round(seconds));
    // Existing entries keep their current deadline until their next packet.
    await nsRun(ns, ['sysctl', '-qw', `net.netfilter.nf_conntrack_udp_timeout=${s}`, `net.netfilter.nf_conntrack_udp_timeout_stream=${s}`]);
  }

  async flushConntrack(siteName: string): Promise<void> {
    await nsRun(this.routerNs(siteName), ['conntrack', '-F']);
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
