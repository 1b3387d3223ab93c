/*
 * The NAT lab's carrier-grade NAT and moving hosts, probed with plain UDP (no natd):
 *
 *                        ┌── cgnE (easy CGN, hairpin) ── r1 (easy) ann, r2 (easy) ben
 *   server ── inet ──────┼── cgnN (easy CGN, no hairpin) ── r3 (easy) cal, r4 (easy) dan
 *                        ├── cgnS (symmetric CGN) ── r5 (easy) eve
 *                        └── r6 (easy) bob
 *
 * Home routers behind a CGN have 100.64.K.(N+1) on their wan (RFC 6598); what the server
 * sees is the CGN's public address.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLab, labAvailable, type Lab } from './lab.js';
import { startEcho, udpProbe, udpPunch } from './probes.js';

const portOf = (reply: string): number => Number(reply.split(':')[1]);

describe.skipIf(!labAvailable())('NAT lab: carrier-grade NAT and moving hosts', () => {
  let lab: Lab;

  beforeAll(async () => {
    lab = await createLab({
      cgns: [
        { name: 'cgnE', nat: 'easy', hairpin: true },
        { name: 'cgnN', nat: 'easy' },
        { name: 'cgnS', nat: 'hard' },
      ],
      sites: [
        { name: 'ann', nat: 'easy', cgn: 'cgnE' },
        { name: 'ben', nat: 'easy', cgn: 'cgnE' },
        { name: 'cal', nat: 'easy', cgn: 'cgnN' },
        { name: 'dan', nat: 'easy', cgn: 'cgnN' },
        { name: 'eve', nat: 'easy', cgn: 'cgnS' },
        { name: 'bob', nat: 'easy' },
      ],
    });
    const { ip, altIp } = lab.server;
    await startEcho(lab, lab.server.ns, [`${ip}:4000`, `${altIp}:4000`]);
  }, 60_000);

  afterAll(async () => {
    await lab?.teardown();
  });

  it('a host behind home NAT + CGN is seen at the CGN address: one port for every destination behind an easy CGN, one per destination behind a symmetric one', async () => {
    const { ip, altIp } = lab.server;
    expect(lab.routers.ann?.wanIp).toMatch(/^100\.64\.1\.\d+$/);
    expect(lab.hosts.ann?.publicIp).toBe(lab.cgns.cgnE?.wanIp);
    const ann = [await udpProbe(lab, lab.hosts.ann!.ns, ip, 4000, { localPort: 7000 }), await udpProbe(lab, lab.hosts.ann!.ns, altIp, 4000, { localPort: 7000 })];
    expect(ann.map((r) => r.split(':')[0])).toEqual([lab.cgns.cgnE!.wanIp, lab.cgns.cgnE!.wanIp]);
    expect(portOf(ann[0]!)).toBe(portOf(ann[1]!));
    const eve = [await udpProbe(lab, lab.hosts.eve!.ns, ip, 4000, { localPort: 7000 }), await udpProbe(lab, lab.hosts.eve!.ns, altIp, 4000, { localPort: 7000 })];
    expect(eve.map((r) => r.split(':')[0])).toEqual([lab.cgns.cgnS!.wanIp, lab.cgns.cgnS!.wanIp]);
    expect(portOf(eve[0]!)).not.toBe(portOf(eve[1]!));
  });

  it('two sites behind one CGN punch each other at its public address only when it hairpins', async () => {
    const pairUp = async (a: string, b: string): Promise<[string, string]> => {
      const pa = await udpProbe(lab, lab.hosts[a]!.ns, lab.server.ip, 4000, { localPort: 7100 });
      const pb = await udpProbe(lab, lab.hosts[b]!.ns, lab.server.ip, 4000, { localPort: 7100 });
      return Promise.all([udpPunch(lab, lab.hosts[a]!.ns, pb, 7100), udpPunch(lab, lab.hosts[b]!.ns, pa, 7100)]);
    };
    const [annGot, benGot] = await pairUp('ann', 'ben');
    expect(annGot).toMatch(new RegExp(`^got ${lab.cgns.cgnE!.wanIp}:\\d+ punch from 7100$`));
    expect(benGot).toMatch(new RegExp(`^got ${lab.cgns.cgnE!.wanIp}:\\d+ punch from 7100$`));
    expect(await pairUp('cal', 'dan')).toEqual(['timeout', 'timeout']);
  });

  it('renewPort: the router maps the same socket to a new public port', async () => {
    const before = await udpProbe(lab, lab.hosts.bob!.ns, lab.server.ip, 4000, { localPort: 7200 });
    await lab.renewPort('bob');
    const after = await udpProbe(lab, lab.hosts.bob!.ns, lab.server.ip, 4000, { localPort: 7200 });
    expect(after.split(':')[0]).toBe(before.split(':')[0]);
    expect(portOf(after)).not.toBe(portOf(before));
    // And a CGN: its subscribers move with it.
    const viaCgn = await udpProbe(lab, lab.hosts.cal!.ns, lab.server.ip, 4000, { localPort: 7200 });
    await lab.renewPort('cgnN');
    expect(portOf(await udpProbe(lab, lab.hosts.cal!.ns, lab.server.ip, 4000, { localPort: 7200 }))).not.toBe(portOf(viaCgn));
  });

  it('renumber: the router comes back with a new public address', async () => {
    const old = lab.routers.bob!.wanIp;
    const ip = await lab.renumber('bob');
    expect(ip).not.toBe(old);
    expect(lab.hosts.bob?.publicIp).toBe(ip);
    expect((await udpProbe(lab, lab.hosts.bob!.ns, lab.server.ip, 4000)).split(':')[0]).toBe(ip);
    const cgnIp = await lab.renumber('cgnS');
    expect((await udpProbe(lab, lab.hosts.eve!.ns, lab.server.ip, 4000)).split(':')[0]).toBe(cgnIp);
  });

  it('outage: nothing crosses the link while dark, everything after', async () => {
    const dark = lab.outage('dan', 2500);
    await new Promise((r) => setTimeout(r, 200));
    expect(await udpProbe(lab, lab.hosts.dan!.ns, lab.server.ip, 4000, { timeoutMs: 1000 })).toBe('timeout');
    await dark;
    expect((await udpProbe(lab, lab.hosts.dan!.ns, lab.server.ip, 4000)).split(':')[0]).toBe(lab.cgns.cgnN!.wanIp);
  });

  it('moveHost: ann leaves the CGN site for bob’s LAN and is seen at bob’s public address', async () => {
    const h = await lab.moveHost('ann', 'bob');
    expect(h.site).toBe('bob');
    expect(h.ip).toMatch(/^10\.6\.0\.\d+$/);
    expect(lab.hosts.ann?.publicIp).toBe(lab.routers.bob!.wanIp);
    expect((await udpProbe(lab, lab.hosts.ann!.ns, lab.server.ip, 4000)).split(':')[0]).toBe(lab.routers.bob!.wanIp);
  });
});
