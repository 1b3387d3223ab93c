/*
 * The NAT lab's iptables rules (test/lab/lab.ts builds the namespaces): a site's router
 * (home NAT) and a carrier-grade NAT (CGN) in front of several home routers.
 */
export type NatKind = 'easy' | 'hard' | 'full' | 'public';
export type Unsolicited = 'drop' | 'reset';

// Chains we own, so rules can be flushed and refilled without touching anything else
// someone may have added to the builtin chains.
export const CH_PRE = 'NL-PRE';
export const CH_POST = 'NL-POST';
export const CH_FWD = 'NL-FWD';
export const CH_IN = 'NL-IN';
export const lossChain = (n: number): string => `NL-LOSS${n}`;
export const darkChain = (n: number): string => `NL-DARK${n}`;

export interface RouterRules {
  nat: NatKind;
  unsolicited: Unsolicited;
  wanIp: string;
  /** The LAN's first host (the one a 'full' router forwards everything to). */
  lanHost: string;
  /** Public ports the router maps into ('lo-hi'); undefined: Linux keeps the source port when it can. */
  ports: string | undefined;
}

/**
 * MASQUERADE/SNAT with an optional port range (iptables takes --to-ports only with -p
 * tcp/udp, so those get their own rule; ICMP and the rest follow without a range).
 */
function snat(target: string, ports: string | undefined, extra = ''): string[] {
  if (!ports) return [`-A ${CH_POST} -o wan -j ${target}${extra}`];
  const withPorts = target.startsWith('SNAT') ? `${target}:${ports}` : `${target} --to-ports ${ports}`;
  return [...['udp', 'tcp'].map((p) => `-A ${CH_POST} -o wan -p ${p} -j ${withPorts}${extra}`), `-A ${CH_POST} -o wan -j ${target}${extra}`];
}

function natRules(r: RouterRules): string[] {
  switch (r.nat) {
    case 'easy':
      // Linux MASQUERADE reuses a source's mapping for every destination (find_appropriate_src)
      // and keeps the source port unless it collides: endpoint-independent mapping.
      return snat('MASQUERADE', r.ports);
    case 'hard':
      // A fresh random port for every new conntrack entry: endpoint-dependent mapping.
      return snat('MASQUERADE', r.ports, ' --random-fully');
    case 'full':
      // 1:1 NAT: everything arriving on wan goes to the one host, whoever sent it.
      return [`-A ${CH_PRE} -i wan -j DNAT --to-destination ${r.lanHost}`, ...snat(`SNAT --to-source ${r.wanIp}`, r.ports).map((l) => l.replace(`-o wan -`, `-o wan -s ${r.lanHost} -`))];
    case 'public':
      throw new Error('public sites have no router');
  }
}

function filterRules(r: RouterRules): string[] {
  // With a `reset` policy the router behaves like a host with closed ports.
  const reject = (chain: string): string[] =>
    r.unsolicited === 'reset'
      ? [`-A ${chain} -i wan -p tcp -j REJECT --reject-with tcp-reset`, `-A ${chain} -i wan -p udp -j REJECT --reject-with icmp-port-unreachable`]
      : [];
  return [
    // The lan is a bridge and br_netfilter may hand bridged frames to iptables: let them be.
    `-A ${CH_FWD} -i lan -o lan -j ACCEPT`,
    `-A ${CH_FWD} -i lan -o wan -j ACCEPT`,
    `-A ${CH_FWD} -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT`,
    ...(r.nat === 'full' ? [`-A ${CH_FWD} -i wan -m conntrack --ctstate DNAT -j ACCEPT`] : []),
    ...reject(CH_FWD),
    `-A ${CH_FWD} -i wan -j DROP`,
    // Unsolicited packets to the WAN address itself are local delivery (INPUT), not FORWARD.
    `-A ${CH_IN} -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT`,
    ...reject(CH_IN),
    `-A ${CH_IN} -i wan -j DROP`,
  ];
}

/** iptables-restore input. `initial` also creates the jumps from the builtin chains. */
function ruleset(nat: string[], filter: string[], initial: boolean): string {
  // Declaring a user chain (`:NAME - [0:0]`) flushes it, even under --noflush.
  return [
    '*nat',
    `:${CH_PRE} - [0:0]`,
    `:${CH_POST} - [0:0]`,
    ...(initial ? [`-A PREROUTING -j ${CH_PRE}`, `-A POSTROUTING -j ${CH_POST}`] : []),
    ...nat,
    'COMMIT',
    '*filter',
    `:${CH_FWD} - [0:0]`,
    `:${CH_IN} - [0:0]`,
    ...(initial ? [`-A FORWARD -j ${CH_FWD}`, `-A INPUT -j ${CH_IN}`] : []),
    ...filter,
    'COMMIT',
    '',
  ].join('\n');
}

export function routerRuleset(r: RouterRules, initial: boolean): string {
  return ruleset(natRules(r), filterRules(r), initial);
}

export interface CgnRules {
  nat: 'easy' | 'hard';
  wanIp: string;
  /** Its inside network (RFC 6598 shared address space), e.g. 100.64.1.0/24. */
  innerNet: string;
  /** Hairpinning: each home router's wan address and the CGN ports it owns ('lo:hi'). */
  hairpin: Array<{ ip: string; ports: string }> | undefined;
  ports: string | undefined;
}

/**
 * A carrier-grade NAT: MASQUERADE out of `wan` (port-preserving 'easy', or per destination
 * with --random-fully), unsolicited inbound dropped. Each home router behind it maps into
 * a block of ports of its own (RFC 7422 style), so an easy CGN's public port tells which
 * subscriber owns it: that is what hairpinning needs (a packet from inside to the CGN's
 * public address:port is sent back in to the owner, its source rewritten to the sender's
 * public mapping). Without hairpinning such packets are dropped, as by many real CGNs.
 */
export function cgnRuleset(c: CgnRules, initial: boolean): string {
  const nat: string[] = [];
  for (const h of c.hairpin ?? [])
    for (const p of ['udp', 'tcp']) nat.push(`-A ${CH_PRE} -i inner -d ${c.wanIp} -p ${p} --dport ${h.ports} -j DNAT --to-destination ${h.ip}`);
  // The hairpinned packet leaves as if from the sender's public mapping (find_appropriate_src reuses it).
  if (c.hairpin) nat.push(`-A ${CH_POST} -o inner -s ${c.innerNet} -m conntrack --ctstate DNAT -j SNAT --to-source ${c.wanIp}`);
  nat.push(...snat('MASQUERADE', c.ports, c.nat === 'hard' ? ' --random-fully' : ''));
  const filter = [
    `-A ${CH_FWD} -i inner -o wan -j ACCEPT`,
    ...(c.hairpin ? [`-A ${CH_FWD} -i inner -o inner -m conntrack --ctstate DNAT,ESTABLISHED,RELATED -j ACCEPT`] : []),
    `-A ${CH_FWD} -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT`,
    `-A ${CH_FWD} -j DROP`,
    `-A ${CH_IN} -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT`,
    `-A ${CH_IN} -i wan -j DROP`,
    // From inside to the CGN's own public address: nowhere (no hairpin, or a port nobody owns).
    `-A ${CH_IN} -i inner -d ${c.wanIp} -j DROP`,
  ];
  return ruleset(nat, filter, initial);
}
