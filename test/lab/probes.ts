// UDP probes for NAT-lab tests: an echo that tells each sender its address as seen
// there, and a one-shot request through a chosen local port and TTL.
import type { ChildProcess } from 'node:child_process';
import type { Lab } from './lab.ts';

// UDP echo: binds every ip:port given, answers each datagram with the sender's
// address as seen here, and logs it ("got ip:port") so tests can see what arrived.
export const ECHO = `
const dgram = require('node:dgram');
const binds = process.argv.slice(1);
let bound = 0;
for (const b of binds) {
  const [ip, port] = b.split(':');
  const s = dgram.createSocket('udp4');
  s.on('message', (_m, r) => { console.log('got ' + r.address + ':' + r.port); s.send(r.address + ':' + r.port, r.port, r.address); });
  s.bind(Number(port), ip, () => { if (++bound === binds.length) console.log('ready'); });
}`;

// One UDP request to ip:port from localPort (0 = any) with the given TTL, resent every
// 100 ms. Prints the reply, "timeout", or "refused" (ICMP port unreachable: the socket
// is connected so the kernel reports it).
export const UDP_PROBE = `
const [ip, port, localPort, ttl, timeoutMs] = process.argv.slice(1);
const s = require('node:dgram').createSocket('udp4');
const done = (text) => { console.log(text); process.exit(0); };
s.on('message', (m) => done(String(m)));
s.on('error', (e) => done(e.code === 'ECONNREFUSED' ? 'refused' : 'error ' + e.code));
s.bind(Number(localPort), () => s.connect(Number(port), ip, () => {
  s.setTTL(Number(ttl));
  const send = () => s.send('probe');
  send();
  setInterval(send, 100);
}));
setTimeout(() => done('timeout'), Number(timeoutMs));`;

export interface Echo {
  child: ChildProcess;
  lines: string[];
}

export async function startEcho(lab: Lab, ns: string, binds: string[]): Promise<Echo> {
  const child = lab.spawn(ns, ['node', '-e', ECHO, ...binds]);
  const lines: string[] = [];
  await new Promise<void>((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`echo in ${ns} exited with ${code}`)));
    child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
      lines.push(...chunk.split('\n').filter(Boolean));
      if (lines.includes('ready')) resolve();
    });
  });
  return { child, lines };
}

export interface ProbeOpts {
  localPort?: number;
  ttl?: number;
  timeoutMs?: number;
}

export async function udpProbe(lab: Lab, ns: string, ip: string, port: number, o: ProbeOpts = {}): Promise<string> {
  const args = [ip, port, o.localPort ?? 0, o.ttl ?? 64, o.timeoutMs ?? 1000].map(String);
  const r = await lab.exec(ns, ['node', '-e', UDP_PROBE, ...args]);
  if (r.code !== 0) throw new Error(`udp probe failed: ${r.stderr}`);
  return r.stdout.trim();
}


// Hole punching by hand: from localPort, sends to ip:port every 100 ms and prints the
// first datagram that comes back as "got <sender ip:port> <text>", or "timeout".
const PUNCH = `
const [ip, port, localPort, timeoutMs] = process.argv.slice(1);
const s = require('node:dgram').createSocket('udp4');
const done = (text) => { console.log(text); setTimeout(() => process.exit(0), 300); };
let got = false;
s.on('message', (m, r) => { if (!got) { got = true; done('got ' + r.address + ':' + r.port + ' ' + m); } });
s.on('error', () => undefined);
s.bind(Number(localPort), () => { const send = () => s.send('punch from ' + localPort, Number(port), ip); send(); setInterval(send, 100); });
setTimeout(() => { if (!got) done('timeout'); }, Number(timeoutMs));`;

export async function udpPunch(lab: Lab, ns: string, to: string, localPort: number, timeoutMs = 3000): Promise<string> {
  const [ip, port] = to.split(':');
  const r = await lab.exec(ns, ['node', '-e', PUNCH, ip ?? '', port ?? '', String(localPort), String(timeoutMs)]);
  if (r.code !== 0) throw new Error(`udp punch failed: ${r.stderr}`);
  return r.stdout.trim();
}
