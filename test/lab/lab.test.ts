// Proves the NAT lab behaves like the NATs natd has to get through.
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLab, labAvailable, type Lab } from './lab.js';
import { startEcho, udpProbe, type Echo } from './probes.js';

// One TCP connect: prints "connected", "refused" or "timeout".
const TCP_PROBE = `
const [ip, port, timeoutMs] = process.argv.slice(1);
const c = require('node:net').connect(Number(port), ip);
const done = (text) => { console.log(text); process.exit(0); };
c.on('connect', () => done('connected'));
c.on('error', (e) => done(e.code === 'ECONNREFUSED' ? 'refused' : 'error ' + e.code));
setTimeout(() => done('timeout'), Number(timeoutMs));`;

async function tcpProbe(lab: Lab, ns: string, ip: string, port: number, timeoutMs: number): Promise<string> {
  const r = await lab.exec(ns, ['node', '-e', TCP_PROBE, ip, String(port), String(timeoutMs)]);
  if (r.code !== 0) throw new Error(`tcp probe failed: ${r.stderr}`);
  return r.stdout.trim();
}

const portOf = (reply: string): number => Number(reply.split(':')[1]);

function labNamespaces(id: string): Promise<string[]> {
  return new Promise((resolve, reject) =>
    execFile('ip', ['netns', 'list'], (err, stdout) => {
      if (err) reject(err);
      else resolve(stdout.split('\n').map((l) => l.split(' ')[0] ?? '').filter((n) => n.startsWith(`nl${id}-`)));
    }),
  );
}

describe.skipIf(!labAvailable())('NAT lab (needs root and ip netns)', () => {
  let lab: Lab;
  let serverEcho: Echo;

  beforeAll(async () => {
    lab = await createLab({
      sites: [
        { name: 'easy', nat: 'easy' },
        { name: 'hard', nat: 'hard' },
        { name: 'rst', nat: 'easy', unsolicited: 'reset' },
        { name: 'full', nat: 'full' },
        { name: 'pub', nat: 'public' },
      ],
    });
    const { ip, altIp } = lab.server;
    serverEcho = await startEcho(lab, lab.server.ns, [`${ip}:4000`, `${ip}:4001`, `${altIp}:4000`]);
  });

  afterAll(async () => {
    // Also runs when tests fail; `lab` is unset only if createLab itself threw (it cleans up then).
    await lab?.teardown();
  });

  it('(a) every host reaches both server addresses, seen as its public address', async () => {
    const { ip, altIp } = lab.server;
    await Promise.all(
      Object.values(lab.hosts).flatMap((h) =>
        [ip, altIp].map(async (dst) => {
          const reply = await udpProbe(lab, h.ns, dst, 4000);
          expect(reply.split(':')[0], `${h.name} → ${dst}`).toBe(h.publicIp);
        }),
      ),
    );
    expect(lab.hosts.easy?.publicIp).toBe(lab.routers.easy?.wanIp);
    expect(lab.hosts.pub?.publicIp).toBe(lab.hosts.pub?.ip);
    expect(serverEcho.lines.some((l) => l.startsWith(`got ${lab.routers.easy?.wanIp}:`))).toBe(true);
  });

  it('(b) easy NAT preserves the source port, hard NAT picks one per destination', async () => {
    const { ip, altIp } = lab.server;
    const dests: Array<[string, number]> = [[ip, 4000], [ip, 4001], [altIp, 4000]];
    const observed = async (host: string, localPort: number): Promise<number[]> => {
      const ns = lab.hosts[host]?.ns ?? '';
      const ports: number[] = [];
      // Sequential on purpose: each probe reuses the same local port.
      for (const [dst, port] of dests) ports.push(portOf(await udpProbe(lab, ns, dst, port, { localPort })));
      return ports;
    };
    expect(await observed('easy', 40000)).toEqual([40000, 40000, 40000]);
    const hard = await observed('hard', 40000);
    expect(new Set(hard).size, `hard ports ${hard.join(',')}`).toBeGreaterThan(1);
  });

  it('(c) unsolicited UDP dies at easy NAT, passes full cone; a TTL-2 probe stops at inet', async () => {
    const easyWan = lab.routers.easy?.wanIp ?? '';
    const fullWan = lab.routers.full?.wanIp ?? '';
    const [easyEcho, fullEcho] = await Promise.all([
      startEcho(lab, lab.hosts.easy?.ns ?? '', ['0.0.0.0:5000']),
      startEcho(lab, lab.hosts.full?.ns ?? '', ['0.0.0.0:5000']),
    ]);

    expect(await udpProbe(lab, lab.server.ns, easyWan, 5000, { timeoutMs: 400 })).toBe('timeout');
    expect(easyEcho.lines.filter((l) => l.startsWith('got'))).toEqual([]);
    // Full cone: the server's first packet goes straight through to the host.
    expect(await udpProbe(lab, lab.server.ns, fullWan, 5000)).toMatch(/^198\.18\.0\.2:\d+$/);

    // host easy → router easy (TTL 2→1) → inet (1→0: dropped) — never reaches router full.
    const fromEasy = (l: string): boolean => l.startsWith(`got ${easyWan}:`);
    expect(await udpProbe(lab, lab.hosts.easy?.ns ?? '', fullWan, 5000, { localPort: 41000, ttl: 2, timeoutMs: 400 })).toBe('timeout');
    expect(fullEcho.lines.filter(fromEasy)).toEqual([]);
    expect(await udpProbe(lab, lab.hosts.easy?.ns ?? '', fullWan, 5000, { localPort: 41000 })).toBe(`${easyWan}:41000`);
    expect(fullEcho.lines.filter(fromEasy).length).toBeGreaterThan(0);
  });

  it('(d) reset policy answers unsolicited TCP with RST and UDP with ICMP; drop stays silent', async () => {
    const rstWan = lab.routers.rst?.wanIp ?? '';
    const easyWan = lab.routers.easy?.wanIp ?? '';
    const t0 = Date.now();
    expect(await tcpProbe(lab, lab.server.ns, rstWan, 8080, 2000)).toBe('refused');
    expect(Date.now() - t0).toBeLessThan(1500); // node startup + one RTT, far from the timeout
    expect(await tcpProbe(lab, lab.server.ns, easyWan, 8080, 800)).toBe('timeout');
    expect(await udpProbe(lab, lab.server.ns, rstWan, 5001, { timeoutMs: 800 })).toBe('refused');
    expect(await udpProbe(lab, lab.server.ns, easyWan, 5001, { timeoutMs: 400 })).toBe('timeout');
  });

  it('(e) teardown kills spawned processes and removes every namespace; idempotent', async () => {
    const small = await createLab({ sites: [{ name: 'a', nat: 'hard', hosts: ['a1', 'a2'] }] });
    const sleeper = small.spawn(small.hosts.a1?.ns ?? '', ['sleep', '60']);
    const exited = new Promise<unknown>((resolve) => sleeper.once('exit', (_c, signal) => resolve(signal)));
    expect(await labNamespaces(small.id)).toHaveLength(5); // inet, srv, r1 and two hosts
    await small.teardown();
    await small.teardown();
    expect(await exited).toBe('SIGKILL');
    expect(await labNamespaces(small.id)).toEqual([]);
    await expect(small.exec(small.server.ns, ['true'])).rejects.toThrow(/torn down/);
  });

  it('(e) the exit hook cleans up when a test process dies from a throw', async () => {
    const labTs = fileURLToPath(new URL('./lab.ts', import.meta.url));
    // A child node process builds a lab, starts a sleeper in it, then dies of an uncaught throw.
    const script = `
      import { createLab } from ${JSON.stringify(labTs)};
      const lab = await createLab({ sites: [{ name: 'a', nat: 'easy' }] });
      const c = lab.spawn(lab.hosts.a.ns, ['sleep', '60']);
      await new Promise((r) => c.once('spawn', r));
      console.log(JSON.stringify({ id: lab.id, pid: c.pid }));
      throw new Error('boom');`;
    const { stdout, code } = await new Promise<{ stdout: string; code: number | null }>((resolve) => {
      execFile(process.execPath, ['--input-type=module', '-e', script], (err, out) =>
        resolve({ stdout: out, code: err ? ((err as { code?: number }).code ?? null) : 0 }),
      );
    });
    expect(code).not.toBe(0);
    const { id, pid } = JSON.parse(stdout) as { id: string; pid: number };
    expect(await labNamespaces(id)).toEqual([]);
    expect(isAlive(pid)).toBe(false);
  });

  it('(f) setLoss 100 blocks the WAN link, 0 restores it', async () => {
    const ns = lab.hosts.easy?.ns ?? '';
    await lab.setLoss('easy', 100);
    expect(await udpProbe(lab, ns, lab.server.ip, 4000, { timeoutMs: 500 })).toBe('timeout');
    await lab.setLoss('easy', 0);
    expect(await udpProbe(lab, ns, lab.server.ip, 4000)).toMatch(/^198\.18\.1\.2:/);
  });

  it('setNat swaps the NAT mid-test; setUdpTimeout sets the router sysctls', async () => {
    const ns = lab.hosts.hard?.ns ?? '';
    await lab.setNat('hard', 'easy');
    expect(portOf(await udpProbe(lab, ns, lab.server.ip, 4001, { localPort: 42000 }))).toBe(42000);
    await lab.setNat('hard', 'hard');
    await lab.setUdpTimeout('hard', 7);
    const r = await lab.exec(lab.routers.hard?.ns ?? '', ['sysctl', '-n', 'net.netfilter.nf_conntrack_udp_timeout', 'net.netfilter.nf_conntrack_udp_timeout_stream']);
    expect(r.stdout.split('\n').filter(Boolean)).toEqual(['7', '7']);
    await expect(lab.setUdpTimeout('pub', 7)).rejects.toThrow(/public/);
  });
});

function isAlive(pid: number): boolean {
  // A killed process may linger as a zombie until its (foreign) parent reaps it.
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}
