/*
 * The lab's link emulator (test/lab/link-emulator.ts, linkem.c) measured from outside:
 * ping across two emulated links sees the RTT configured, the jitter, the loss and the
 * reordering, and the emulator dies with its lab.
 *
 *   alice 10.1.0.2 ── r1 (easy) ══[ l1: linkem ]══ inet ══[ l2: linkem ]══ erin 198.18.2.2 (public)
 *
 * RTT alice ⇄ erin = 2 × (delay on l1 + delay on l2). The delay is a floor (a frame is
 * never released early); above it we allow RTT_SLACK_MS for a loaded 2-core machine.
 */
import { execFile } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createLab, labAvailable, type Lab } from './lab.js'

// Scheduling noise on the shared machine (up to 8 labs on 2 cores): the median may sit this much above the configured RTT.
const RTT_SLACK_MS = 10

/** RTTs of `count` pings, in the order the replies arrived, with their sequence numbers. */
async function ping(lab: Lab, count: number, intervalS: number): Promise<{ rtts: number[]; seqs: number[]; sent: number; received: number }> {
  const r = await lab.exec(lab.hosts.alice!.ns, ['ping', '-n', '-c', String(count), '-i', String(intervalS), '-W', '1', lab.hosts.erin!.ip], { timeoutMs: 60_000 })
  const replies = [...r.stdout.matchAll(/icmp_seq=(\d+) ttl=\d+ time=([\d.]+) ms/g)]
  const summary = /(\d+) packets transmitted, (\d+) received/.exec(r.stdout)
  if (!summary) throw new Error(`ping failed (${r.code}): ${r.stdout} ${r.stderr}`)
  return { rtts: replies.map((m) => Number(m[2])), seqs: replies.map((m) => Number(m[1])), sent: Number(summary[1]), received: Number(summary[2]) }
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!

describe.skipIf(!labAvailable())('link emulator (delay, jitter, loss, reordering)', () => {
  let lab: Lab

  beforeAll(async () => {
    lab = await createLab({ sites: [{ name: 'alice', nat: 'easy', link: { delayMs: 20 } }, { name: 'erin', nat: 'public', link: { delayMs: 30 } }] })
    await ping(lab, 2, 0.2) // ARP on each link, so it does not count in the RTTs below
  }, 60_000)

  afterAll(async () => {
    await lab?.teardown()
  })

  it('ping measures the configured RTT: 100 ms (20 + 30 ms one way), then 20 ms after setLink', async () => {
    const slow = await ping(lab, 20, 0.05)
    expect(slow.received).toBe(20)
    expect(Math.min(...slow.rtts)).toBeGreaterThanOrEqual(99.9)
    expect(median(slow.rtts)).toBeLessThanOrEqual(100 + RTT_SLACK_MS)
    await lab.setLink('alice', { delayMs: 5 })
    await lab.setLink('erin', { delayMs: 5 })
    const fast = await ping(lab, 20, 0.05)
    expect(Math.min(...fast.rtts)).toBeGreaterThanOrEqual(19.9)
    expect(median(fast.rtts)).toBeLessThanOrEqual(20 + RTT_SLACK_MS)
    process.stdout.write(`linkem RTT: configured 100 → median ${median(slow.rtts)} ms; configured 20 → median ${median(fast.rtts)} ms\n`)
  })

  it('jitter ±8 ms on one link spreads the RTT over 100 ± 16 ms', async () => {
    await lab.setLink('alice', { delayMs: 20, jitterMs: 8 })
    await lab.setLink('erin', { delayMs: 30 })
    const { rtts } = await ping(lab, 40, 0.05)
    expect(Math.min(...rtts)).toBeGreaterThanOrEqual(100 - 16 - 0.1)
    expect(median(rtts)).toBeLessThanOrEqual(100 + RTT_SLACK_MS)
    // Two uniform draws of ±8 ms: a standard deviation of ~4.6 ms; without jitter it is well under 1.
    const mean = rtts.reduce((a, b) => a + b, 0) / rtts.length
    const sd = Math.sqrt(rtts.reduce((a, b) => a + (b - mean) ** 2, 0) / rtts.length)
    expect(sd).toBeGreaterThan(2)
  })

  it('10% loss each way on one link loses ~19% of pings (within 4 standard deviations), counted by the emulator', async () => {
    await lab.setLink('alice', { delayMs: 1, lossPercent: 10 })
    await lab.setLink('erin', { delayMs: 1 })
    const before = await lab.linkStats('alice')
    const n = 400
    const r = await ping(lab, n, 0.005)
    const after = await lab.linkStats('alice')
    const lostFrac = 1 - r.received / r.sent
    const p = 1 - 0.9 * 0.9
    const sd = Math.sqrt((p * (1 - p)) / r.sent)
    expect(lostFrac).toBeGreaterThan(p - 4 * sd)
    expect(lostFrac).toBeLessThan(p + 4 * sd)
    // The emulator's own count for the requests (up): 10% of what it read.
    const rx = after.up.rx - before.up.rx
    const lost = after.up.lost - before.up.lost
    const sdUp = Math.sqrt(rx * 0.1 * 0.9)
    expect(Math.abs(lost - rx * 0.1)).toBeLessThan(4 * sdUp)
    process.stdout.write(`linkem loss: ${(lostFrac * 100).toFixed(1)}% of ${r.sent} pings lost (expected ${(p * 100).toFixed(1)}%); up: ${lost} of ${rx} frames\n`)
  })

  it('reordering: a burst of 300 datagrams arrives out of order with reorderPercent 20, in order without', async () => {
    // Datagrams that arrive after one numbered higher: a burst's held frames may all land
    // together after the rest, which is one descent between neighbours but ~60 overtaken.
    const overtaken = (seqs: number[]): number => {
      let max = -1
      let n = 0
      for (const s of seqs) {
        if (s < max) n++
        else max = s
      }
      return n
    }
    await lab.setLink('alice', { delayMs: 1 })
    await lab.setLink('erin', { delayMs: 1 })
    const inOrder = await udpBurst(lab, 300)
    await lab.setLink('alice', { delayMs: 1, reorderPercent: 20 })
    const mixed = await udpBurst(lab, 300)
    expect(overtaken(inOrder)).toBe(0)
    // 20% of 300 held 2 ms past the rest: ~60 overtaken (σ ≈ 7) when the burst reaches the emulator inside those 2 ms.
    expect(overtaken(mixed)).toBeGreaterThan(20)
    expect((await lab.linkStats('alice')).up.reordered).toBeGreaterThan(0)
  })
})

// Receives datagrams holding a sequence number and prints their order once 500 ms pass without one.
const SEQ_SINK = `
const s = require('node:dgram').createSocket('udp4');
const seqs = []; let t;
s.on('message', (m) => { seqs.push(m.readUInt32BE(0)); clearTimeout(t); t = setTimeout(() => { console.log(JSON.stringify(seqs)); process.exit(0); }, 500); });
s.bind(Number(process.argv[1]), () => console.log('ready'));`
// Sends N datagrams numbered 0..N-1 back to back, all in one event-loop turn: the burst
// must reach the emulator well inside REORDER_EXTRA (2 ms) for a held frame to be
// overtaken, also on a loaded machine (a burst spread over turns missed that in CI).
const SEQ_SEND = `
const [ip, port, n] = process.argv.slice(1);
const s = require('node:dgram').createSocket('udp4');
s.connect(Number(port), ip, () => {
  for (let i = 0; i < Number(n); i++) { const b = Buffer.alloc(64); b.writeUInt32BE(i); s.send(b); }
  setTimeout(() => process.exit(0), 200);
});`

/** The order in which erin received a burst of `n` numbered datagrams from alice. */
async function udpBurst(lab: Lab, n: number): Promise<number[]> {
  const sink = lab.spawn(lab.hosts.erin!.ns, ['node', '-e', SEQ_SINK, '5600'])
  let out = ''
  const done = new Promise<number[]>((resolve, reject) => {
    sink.stdout?.setEncoding('utf8').on('data', (d: string) => {
      out += d
      const m = /^(\[.*\])$/m.exec(out)
      if (m) resolve(JSON.parse(m[1]!) as number[])
    })
    sink.once('exit', (code) => setTimeout(() => reject(new Error(`sink exited ${code}: ${out}`)), 100))
  })
  while (!out.includes('ready')) await new Promise((r) => setTimeout(r, 20))
  const r = await lab.exec(lab.hosts.alice!.ns, ['node', '-e', SEQ_SEND, lab.hosts.erin!.ip, '5600', String(n)])
  if (r.code !== 0) throw new Error(`sender failed: ${r.stderr}`)
  return done
}

describe.skipIf(!labAvailable())('link emulator lifetime', () => {
  it('dies with its lab when the test process dies from a throw: no linkem left, namespaces removed', async () => {
    const labTs = fileURLToPath(new URL('./lab.ts', import.meta.url))
    const script = `
      import { execFileSync } from 'node:child_process';
      import { createLab } from ${JSON.stringify(labTs)};
      const lab = await createLab({ sites: [{ name: 'a', nat: 'easy', link: { delayMs: 50 } }] });
      const pids = execFileSync('ip', ['netns', 'pids', 'nl' + lab.id + '-l1'], { encoding: 'utf8' }).trim().split(/\\s+/).map(Number);
      console.log(JSON.stringify({ id: lab.id, pids }));
      throw new Error('boom');`
    const { stdout, code } = await new Promise<{ stdout: string; code: number | null }>((resolve) => {
      execFile(process.execPath, ['--input-type=module', '-e', script], (err, out) => resolve({ stdout: out, code: err ? ((err as { code?: number }).code ?? null) : 0 }))
    })
    expect(code).not.toBe(0)
    const { id, pids } = JSON.parse(stdout) as { id: string; pids: number[] }
    expect(pids.length).toBe(1) // the emulator was running in the link's namespace
    const alive = (pid: number): boolean => {
      try {
        process.kill(pid, 0)
        return true
      } catch {
        return false
      }
    }
    // SIGKILLed, then reaped by init a moment later.
    for (let i = 0; i < 50 && pids.some(alive); i++) await new Promise((r) => setTimeout(r, 100))
    expect(pids.filter(alive)).toEqual([])
    const left = await new Promise<string>((resolve) => execFile('ip', ['netns', 'list'], (_e, out) => resolve(out)))
    expect(left.split('\n').filter((l) => l.startsWith(`nl${id}-`))).toEqual([])
  }, 60_000)
})
