/**
 * npm run demo: a rendezvous server and two agents, each behind its own NAT router, in
 * the NAT lab (network namespaces; needs root). Without root it runs the same on
 * loopback. It shows what a user would type and what natctl answers.
 *
 *   server 198.18.0.2 ── inet ──┬── NAT ── alice
 *                               └── NAT ── bob
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { createLab, labAvailable } from '../test/lab/lab.ts'
import { NatdLab, DIST, ROOT } from '../test/lab/natd-lab.ts'

const bold = (s: string): string => (process.stdout.isTTY ? `\x1b[1m${s}\x1b[0m` : s)

function say(text: string): void {
  process.stdout.write(`\n${bold('# ' + text)}\n`)
}

function natctl(socket: string, who: string, args: string[]): string {
  process.stdout.write(`${bold(`${who}$ natctl ${args.join(' ')}`)}\n`)
  const out = execFileSync(process.execPath, [path.join(DIST, 'cli/main.js'), '--socket', socket, ...args], { encoding: 'utf8' })
  process.stdout.write(out)
  return out
}

async function waitRegistered(socket: string): Promise<void> {
  for (let i = 0; i < 150; i++) {
    try {
      const s = JSON.parse(execFileSync(process.execPath, [path.join(DIST, 'cli/main.js'), '--socket', socket, '--json', 'status'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })) as { registered: boolean }
      if (s.registered) return
    } catch {
      // not up yet
    }
    await sleep(100)
  }
  throw new Error(`agent on ${socket} did not register`)
}

async function inLab(): Promise<void> {
  say('building the NAT lab: a server host, an internet router, two NAT routers (iptables MASQUERADE), two hosts')
  const lab = await createLab({ sites: [{ name: 'alice', nat: 'easy' }, { name: 'bob', nat: 'easy' }] })
  const n = new NatdLab(lab)
  let failed = true
  try {
    say(`natd-rendezvous on ${lab.server.ip} (the only host with a public address)`)
    await n.startServer()
    say(`natd on alice (${lab.hosts.alice!.ip}, behind NAT ${lab.routers.alice!.wanIp}) and bob (${lab.hosts.bob!.ip}, behind NAT ${lab.routers.bob!.wanIp})`)
    const alice = await n.startAgent('alice')
    const bob = await n.startAgent('bob')
    await waitRegistered(alice.socket)
    await waitRegistered(bob.socket)
    natctl(alice.socket, 'alice', ['status'])
    natctl(alice.socket, 'alice', ['peers'])
    natctl(bob.socket, 'bob', ['peers'])
    failed = false
  } finally {
    await n.teardown(failed)
  }
}

async function onLoopback(): Promise<void> {
  say('not root: running on loopback (no NAT between the agents; run as root for the NAT lab)')
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-demo-'))
  const procs: ChildProcess[] = []
  const port = 20000 + Math.floor(Math.random() * 30000)
  const start = (args: string[], log: string): void => {
    const p = spawn(process.execPath, args, { cwd: ROOT, stdio: ['ignore', fs.openSync(path.join(dir, log), 'a'), fs.openSync(path.join(dir, log), 'a')] })
    procs.push(p)
  }
  try {
    start([path.join(DIST, 'rendezvous/main.js'), '--host', '127.0.0.1', '--port', String(port), '--alt-port', String(port + 1)], 'rendezvous.log')
    await sleep(500)
    for (const name of ['alice', 'bob']) {
      start([path.join(DIST, 'daemon/main.js'), '--name', name, '--server', `127.0.0.1:${port}`, '--state-dir', path.join(dir, name), '--socket', path.join(dir, `${name}.sock`), '--heartbeat', '2s'], `${name}.log`)
    }
    await waitRegistered(path.join(dir, 'alice.sock'))
    await waitRegistered(path.join(dir, 'bob.sock'))
    natctl(path.join(dir, 'alice.sock'), 'alice', ['status'])
    natctl(path.join(dir, 'alice.sock'), 'alice', ['peers'])
    natctl(path.join(dir, 'bob.sock'), 'bob', ['peers'])
  } finally {
    for (const p of procs) p.kill('SIGTERM')
    await sleep(300)
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

if (labAvailable()) await inLab()
else await onLoopback()
say('done: everything the demo started has been stopped and removed')
