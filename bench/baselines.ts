/**
 * What users would run instead of a natd forward (issue 18), as port forwards on the
 * throughput section's NAT pair, each with the same four-process topology as a natd
 * forward (client ─▶ forwarder on alice ─▶ the lab path ─▶ forwarder on bob ─▶ server):
 *
 *   ssh_L           OpenSSH `ssh -L` (Debian openssh-server; defaults, so chacha20-poly1305)
 *                   to an sshd on bob reached through a DNAT rule on bob's router
 *   wireguard_go    Debian's wireguard-go at both ends (UDP through the same DNAT), the
 *                   client connecting to the server over the WireGuard addresses
 *   hyperdht        hyperdht's UDX stream after its own hole punch (no DNAT), forwarded as
 *                   hypertele does (bench/fixtures/hyperdht-peer.ts)
 *
 * Each transfer records the CPU per MiB of every process it crosses, as the natd forwards do.
 * Everything runs inside the lab's namespaces; the lab's teardown kills it (process groups).
 */
import { execFileSync, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { CLK_TCK, cpuTicks } from './proc-stats.ts'
import { ROOT, waitFor, type NatdLab } from '../test/lab/natd-lab.ts'

const FIX = path.join(ROOT, 'bench/fixtures')
const node = process.execPath
/** Ports on bob's side (DNAT'd on bob's router where the baseline needs it). */
const SSHD_PORT = 2222
const WG_PORT = 51820
const WG_SINK_PORT = 6011
const DHT_PORT = 49737
/** Forwarding ports on alice (127.0.0.1); SSH_LOCAL + 1 reaches bob's echo server (bench/fairness.ts). */
export const SSH_LOCAL = 9011
/** bob's echo server on 127.0.0.1, for the fairness row (bench/fairness.ts starts it). */
export const ECHO_PORT = 7002
const DHT_LOCAL = 9021

export interface Baseline {
  key: string
  /** The sending client's command on alice (tcp-sink send …). */
  args: string[]
  /** CPU seconds so far, per role. */
  cpu: Record<string, () => number>
  /** The single processes among those roles, for the kernel's part of their CPU (run.ts). */
  pids?: Record<string, number>
  /** After the lab's teardown: what its processes leave outside the namespaces. */
  cleanup?: () => void
}

/** CPU ticks of a process's children that have exited and been waited for (cutime + cstime). */
function reapedChildTicks(pid: number): number {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ')
    return Number(f[13]) + Number(f[14])
  } catch {
    return 0
  }
}

/** CPU seconds of a process and all its descendants, living or reaped (sshd forks a monitor and a session process per connection, socat a process per connection). */
export function treeCpuS(root: number): number {
  const parent = new Map<number, number>()
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue
    try {
      const s = fs.readFileSync(`/proc/${d}/stat`, 'utf8')
      parent.set(Number(d), Number(s.slice(s.lastIndexOf(')') + 2).split(' ')[1]))
    } catch {
      /* exited meanwhile */
    }
  }
  const inTree = (pid: number): boolean => {
    for (let p: number | undefined = pid; p && p > 1; p = parent.get(p)) if (p === root) return true
    return false
  }
  let ticks = 0
  for (const pid of parent.keys()) if (inTree(pid)) ticks += cpuTicks(pid) + reapedChildTicks(pid)
  return ticks / CLK_TCK
}

const procCpuS = (pid: number) => (): number => cpuTicks(pid) / CLK_TCK

/** Resolves once a fixture prints its first line ("listening"); rejects if it exits first. */
export function ready(p: ChildProcess, what: string, timeoutMs = 20_000): Promise<void> {
  return new Promise((resolve, reject) => {
    let err = ''
    p.stderr?.on('data', (d: Buffer) => (err += d.toString()))
    const t = setTimeout(() => reject(new Error(`${what}: not ready after ${timeoutMs} ms: ${err}`)), timeoutMs)
    p.stdout?.once('data', () => {
      clearTimeout(t)
      resolve()
    })
    p.once('exit', (code) => {
      clearTimeout(t)
      reject(new Error(`${what} exited ${code}: ${err}`))
    })
  })
}

async function listening(n: NatdLab, ns: string, proto: 't' | 'u', port: number, what: string): Promise<void> {
  await waitFor(async () => (await n.lab.exec(ns, ['ss', `-Hln${proto}`, `sport = :${port}`])).stdout.includes(String(port)), 15_000, what)
}

async function must(n: NatdLab, ns: string, cmd: string[]): Promise<void> {
  const r = await n.lab.exec(ns, cmd)
  if (r.code !== 0) throw new Error(`${cmd.join(' ')} failed (${r.code}): ${r.stderr}`)
}

/** The DNAT rules on bob's router the baselines need (run.ts's openPorts). */
export const BASELINE_PORTS: Array<{ proto: 'tcp' | 'udp'; port: number }> = [
  { proto: 'tcp', port: SSHD_PORT },
  { proto: 'udp', port: WG_PORT }
]

async function sshL(n: NatdLab, bobWan: string, server: number, bytes: number): Promise<Baseline> {
  const dir = path.join(n.dir, 'ssh')
  fs.mkdirSync(dir, { recursive: true })
  fs.mkdirSync('/run/sshd', { recursive: true }) // sshd's privilege-separation directory
  for (const k of ['host_key', 'user_key']) execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', path.join(dir, k)])
  fs.copyFileSync(path.join(dir, 'user_key.pub'), path.join(dir, 'authorized_keys'))
  const config = [
    `Port ${SSHD_PORT}`,
    `HostKey ${dir}/host_key`,
    `PidFile ${dir}/sshd.pid`,
    `AuthorizedKeysFile ${dir}/authorized_keys`,
    'StrictModes no', // the keys live under /tmp
    'PermitRootLogin prohibit-password',
    'PasswordAuthentication no',
    'KbdInteractiveAuthentication no',
    'UsePAM no',
    'AllowTcpForwarding yes'
  ]
  fs.writeFileSync(path.join(dir, 'sshd_config'), config.join('\n') + '\n')
  const bob = n.lab.hosts.bob!.ns
  const sshd = n.lab.spawn(bob, ['/usr/sbin/sshd', '-D', '-e', '-f', path.join(dir, 'sshd_config')])
  await listening(n, bob, 't', SSHD_PORT, 'sshd')
  const alice = n.lab.hosts.alice!.ns
  const ssh = n.lab.spawn(alice, ['ssh', '-F', '/dev/null', '-N', '-i', path.join(dir, 'user_key'), '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null', '-o', 'ExitOnForwardFailure=yes', '-L', `127.0.0.1:${SSH_LOCAL}:127.0.0.1:7001`, '-L', `127.0.0.1:${SSH_LOCAL + 1}:127.0.0.1:${ECHO_PORT}`, '-p', String(SSHD_PORT), `root@${bobWan}`])
  await listening(n, alice, 't', SSH_LOCAL, 'ssh -L')
  return {
    key: 'ssh_L',
    args: [node, path.join(FIX, 'tcp-sink.ts'), 'send', '127.0.0.1', String(SSH_LOCAL), String(bytes)],
    cpu: { ssh_alice: procCpuS(ssh.pid!), sshd_bob: () => treeCpuS(sshd.pid!), server: procCpuS(server) }
  }
}

async function wireguardGo(n: NatdLab, bobWan: string, bytes: number): Promise<Baseline> {
  const dir = path.join(n.dir, 'wg')
  fs.mkdirSync(dir, { recursive: true })
  const keys = { alice: '', bob: '' }
  const pubs = { alice: '', bob: '' }
  for (const side of ['alice', 'bob'] as const) {
    keys[side] = path.join(dir, `${side}.key`)
    const priv = execFileSync('wg', ['genkey'], { encoding: 'utf8' })
    fs.writeFileSync(keys[side], priv, { mode: 0o600 })
    pubs[side] = execFileSync('wg', ['pubkey'], { input: priv, encoding: 'utf8' }).trim()
  }
  // One UAPI socket per interface name in /var/run/wireguard, shared by every namespace: names unique per lab.
  const ifName = (side: 'alice' | 'bob'): string => `wg${n.lab.id}${side[0]}`
  const procs: Record<string, number> = {}
  const ip = { alice: '10.99.0.1', bob: '10.99.0.2' }
  for (const side of ['alice', 'bob'] as const) {
    const ns = n.lab.hosts[side]!.ns
    const dev = ifName(side)
    procs[side] = n.lab.spawn(ns, ['wireguard-go', '-f', dev], { env: { ...process.env, LOG_LEVEL: 'error' } }).pid!
    await waitFor(() => fs.existsSync(`/var/run/wireguard/${dev}.sock`), 10_000, `wireguard-go ${dev}`)
    const other = side === 'alice' ? 'bob' : 'alice'
    const peer = side === 'alice' ? ['endpoint', `${bobWan}:${WG_PORT}`, 'persistent-keepalive', '25'] : []
    await must(n, ns, ['wg', 'set', dev, 'private-key', keys[side], 'listen-port', String(side === 'bob' ? WG_PORT : WG_PORT + 1), 'peer', pubs[other], 'allowed-ips', `${ip[other]}/32`, ...peer])
    await must(n, ns, ['ip', 'addr', 'add', `${ip[side]}/24`, 'dev', dev])
    await must(n, ns, ['ip', 'link', 'set', dev, 'up'])
  }
  const sink = n.lab.spawn(n.lab.hosts.bob!.ns, [node, path.join(FIX, 'tcp-sink.ts'), 'serve', String(WG_SINK_PORT), '--any'], { cwd: ROOT })
  await ready(sink, 'wireguard sink')
  return {
    key: 'wireguard_go',
    args: [node, path.join(FIX, 'tcp-sink.ts'), 'send', ip.bob, String(WG_SINK_PORT), String(bytes)],
    cpu: { wg_alice: procCpuS(procs.alice!), wg_bob: procCpuS(procs.bob!), server: procCpuS(sink.pid!) },
    pids: { wg_alice: procs.alice!, wg_bob: procs.bob! },
    // The teardown's SIGKILL leaves wireguard-go's UAPI sockets behind.
    cleanup: () => {
      for (const side of ['alice', 'bob'] as const) fs.rmSync(`/var/run/wireguard/${ifName(side)}.sock`, { force: true })
    }
  }
}

async function hyperdht(n: NatdLab, server: number, bytes: number): Promise<Baseline> {
  const boot = `${n.lab.server.ip}:${DHT_PORT}`
  const seed = randomBytes(32).toString('hex')
  const fixture = path.join(FIX, 'hyperdht-peer.ts')
  const testnet = n.lab.spawn(n.lab.server.ns, [node, fixture, 'testnet', n.lab.server.ip, String(DHT_PORT)], { cwd: ROOT })
  await ready(testnet, 'hyperdht testnet')
  const serve = n.lab.spawn(n.lab.hosts.bob!.ns, [node, fixture, 'serve', boot, seed, '7001'], { cwd: ROOT })
  await ready(serve, 'hyperdht serve')
  const forward = n.lab.spawn(n.lab.hosts.alice!.ns, [node, fixture, 'forward', boot, seed, String(DHT_LOCAL)], { cwd: ROOT })
  await ready(forward, 'hyperdht forward', 60_000)
  return {
    key: 'hyperdht',
    args: [node, path.join(FIX, 'tcp-sink.ts'), 'send', '127.0.0.1', String(DHT_LOCAL), String(bytes)],
    cpu: { dht_alice: procCpuS(forward.pid!), dht_bob: procCpuS(serve.pid!), server: procCpuS(server) },
    pids: { dht_alice: forward.pid!, dht_bob: serve.pid! }
  }
}

/**
 * Starts every baseline the machine can run (a missing tool is reported, not fatal: the
 * bench still measures natd). `server` is the pid of the tcp-sink on bob's 127.0.0.1:7001.
 */
export async function startBaselines(n: NatdLab, bobWan: string, server: number, bytes: number, only: string[] | null): Promise<{ baselines: Baseline[]; skipped: Record<string, string> }> {
  const baselines: Baseline[] = []
  const skipped: Record<string, string> = {}
  const all: Array<[string, () => Promise<Baseline>]> = [
    ['ssh_L', () => sshL(n, bobWan, server, bytes)],
    ['wireguard_go', () => wireguardGo(n, bobWan, bytes)],
    ['hyperdht', () => hyperdht(n, server, bytes)]
  ]
  for (const [key, start] of all) {
    if (only && !only.includes(key)) continue
    try {
      baselines.push(await start())
    } catch (err) {
      skipped[key] = (err as Error).message.slice(0, 300)
      process.stderr.write(`baseline ${key} skipped: ${skipped[key]}\n`)
    }
  }
  return { baselines, skipped }
}

/** natd's forwards against the baselines: MB/s ratios (medians) and CPU-bound ratios (sums of CPU per MiB). */
export function baselineRatios(med: (k: string) => number, cpuTotal: (k: string) => number): Record<string, Record<string, number>> {
  const pairs: Array<[string, string, string]> = [
    ['direct_tcp_vs_ssh_L', 'forward_direct_tcp', 'ssh_L'],
    ['direct_udp_vs_hyperdht', 'forward_direct_udp', 'hyperdht'],
    ['direct_udp_vs_wireguard_go', 'forward_direct_udp', 'wireguard_go'],
    ['direct_tcp_vs_wireguard_go', 'forward_direct_tcp', 'wireguard_go'],
    ['relay_vs_ssh_L', 'forward_relay', 'ssh_L']
  ]
  const r2 = (x: number): number => Math.round(x * 100) / 100
  const mbps: Record<string, number> = {}
  const cpu: Record<string, number> = {}
  for (const [name, a, b] of pairs) {
    mbps[name] = r2(med(a) / med(b))
    cpu[name] = r2(cpuTotal(b) / cpuTotal(a))
  }
  return { MBps: mbps, cpu_bound: cpu }
}
