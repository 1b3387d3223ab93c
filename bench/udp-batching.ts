/**
 * What one datagram costs on the throughput section's path, and what sending them in batches
 * would save (issue 18). natd's and hyperdht's UDP data plane is udx-native, which sends and
 * receives one ≤ 1500-byte datagram per syscall; on this path each one also crosses two NAT
 * routers' netfilter in the sender's own system time (veth hands the packet on within the
 * sending call). This measures that floor with no UDX and no JS at all:
 *
 *   alice ── r1 (easy NAT) ── inet ── r2 (easy NAT, DNAT :7100-7101 → bob) ── bob
 *
 * `per_datagram`: 1472-byte datagrams (UDX's size), one send() each; `gso`: the same datagrams
 * 44 per send() with UDP_SEGMENT (the kernel keeps them one packet through the namespaces and
 * the NATs), received with UDP_GRO (several datagrams per recv). CPU per MiB sent (sender) and
 * received (receiver), user and kernel apart (bench/fixtures/udp-batch.py). The receiver may
 * not keep up (no congestion control): its figure is per MiB it got.
 *
 *   node bench/udp-batching.ts [--mib N] [--reps N] [--json FILE]      (root: network namespaces)
 */
import fs from 'node:fs'
import path from 'node:path'
import { createLab, labAvailable } from '../test/lab/lab.ts'
import { ROOT } from '../test/lab/natd-lab.ts'
import { ready } from './baselines.ts'

const argv = process.argv.slice(2)
const opt = (name: string): string | undefined => (argv.includes(name) ? argv[argv.indexOf(name) + 1] : undefined)
const MIB = Number(opt('--mib')) || 256
const REPS = Number(opt('--reps')) || 3
const FIXTURE = path.join(ROOT, 'bench/fixtures/udp-batch.py')
const PORT = 7100

if (!labAvailable()) {
  console.error('bench/udp-batching.ts needs root: it builds the NAT lab from network namespaces')
  process.exit(2)
}
const lab = await createLab({ sites: [{ name: 'alice', nat: 'easy' }, { name: 'bob', nat: 'easy' }] })
const results: Record<string, Array<{ send: unknown; recv: unknown }>> = { per_datagram: [], gso: [] }
try {
  const r2 = lab.routers.bob!
  const bob = lab.hosts.bob!
  for (const port of [PORT, PORT + 1]) {
    await lab.exec(r2.ns, ['iptables', '-t', 'nat', '-I', 'PREROUTING', '-i', 'wan', '-p', 'udp', '--dport', String(port), '-j', 'DNAT', '--to-destination', bob.ip])
    await lab.exec(r2.ns, ['iptables', '-I', 'FORWARD', '-p', 'udp', '-d', bob.ip, '--dport', String(port), '-j', 'ACCEPT'])
  }
  for (let i = 0; i < REPS; i++) {
    for (const [key, port, sendFlags, recvFlags] of [['per_datagram', PORT, [], []], ['gso', PORT + 1, ['--gso'], ['--gro']]] as const) {
      const recv = lab.spawn(bob.ns, ['python3', FIXTURE, 'recv', String(port), ...recvFlags])
      let out = ''
      recv.stdout!.on('data', (d: Buffer) => (out += d.toString()))
      await ready(recv, `receiver ${key}`)
      const sent = await lab.exec(lab.hosts.alice!.ns, ['python3', FIXTURE, 'send', r2.wanIp, String(port), String(MIB), ...sendFlags], { timeoutMs: 300_000 })
      // The receiver ends on the end marker or 5 s after its last datagram; past 30 s it is stuck.
      await new Promise<void>((resolve) => {
        if (recv.exitCode !== null) return resolve()
        const t = setTimeout(() => {
          recv.kill('SIGKILL')
          resolve()
        }, 30_000)
        recv.once('exit', () => {
          clearTimeout(t)
          resolve()
        })
      })
      const last = (s: string): unknown => {
        try {
          return JSON.parse(s.trim().split('\n').pop()!)
        } catch {
          return { failed: s.slice(0, 300) }
        }
      }
      results[key]!.push({ send: last(sent.stdout || sent.stderr), recv: last(out) })
      process.stderr.write(`${key}: ${JSON.stringify(results[key]!.at(-1))}\n`)
    }
  }
} finally {
  await lab.teardown()
}
const out = { mib: MIB, reps: REPS, datagram_bytes: 1472, gso_segments: 44, results }
console.log(JSON.stringify(out, null, 2))
const json = opt('--json')
if (json) fs.writeFileSync(json, JSON.stringify(out, null, 2) + '\n')
