/**
 * npm run demo: a rendezvous server and two agents, each behind its own NAT router, in
 * the NAT lab (network namespaces; needs root), then a tunnel and a forwarded port.
 * Without root it runs the same steps on loopback. It shows what a user would type and
 * what natctl answers.
 *
 *   server 198.18.0.2 ── inet ──┬── NAT ── alice   natctl forward add 8080 bob:8000
 *                               └── NAT ── bob     natctl expose add 8000 (a web server)
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { createLab, labAvailable } from '../test/lab/lab.ts'
import { NatdLab, DIST, ROOT } from '../test/lab/natd-lab.ts'

const bold = (s: string): string => (process.stdout.isTTY ? `\x1b[1m${s}\x1b[0m` : s)
const say = (text: string): void => void process.stdout.write(`\n${bold('# ' + text)}\n`)

/** Where the two agents run: in lab namespaces, or side by side on loopback. */
interface Stage {
  socket(who: string): string
  /** Runs a command on `who`'s machine (its network namespace in the lab). */
  run(who: string, argv: string[]): string
  /** Starts a long-running command on `who`'s machine. */
  start(who: string, argv: string[]): void
}

function natctl(stage: Stage, who: string, args: string[]): string {
  process.stdout.write(`${bold(`${who}$ natctl ${args.join(' ')}`)}\n`)
  const out = execFileSync(process.execPath, [path.join(DIST, 'cli/main.js'), '--socket', stage.socket(who), ...args], { encoding: 'utf8' })
  process.stdout.write(out)
  return out
}

async function waitRegistered(stage: Stage, who: string): Promise<void> {
  for (let i = 0; i < 150; i++) {
    try {
      const s = JSON.parse(execFileSync(process.execPath, [path.join(DIST, 'cli/main.js'), '--socket', stage.socket(who), '--json', 'status'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })) as { registered: boolean }
      if (s.registered) return
    } catch {
      // not up yet
    }
    await sleep(100)
  }
  throw new Error(`${who} did not register`)
}

/** The steps a user would take once both agents run. */
async function tour(stage: Stage): Promise<void> {
  await waitRegistered(stage, 'alice')
  await waitRegistered(stage, 'bob')
  say('both agents registered; each sees the other (and the NAT address it hides behind)')
  natctl(stage, 'alice', ['status'])
  natctl(stage, 'alice', ['peers'])
  natctl(stage, 'bob', ['peers'])

  say('alice opens a tunnel to bob: the server introduces them, both punch, Noise authenticates both keys')
  natctl(stage, 'alice', ['open', 'bob'])
  natctl(stage, 'alice', ['ping', 'bob', '-c', '3'])

  say('bob runs a web server on 127.0.0.1:8000 and exposes it to alice (nothing is reachable until exposed)')
  stage.start('bob', [process.execPath, '-e', "require('node:http').createServer((q, s) => s.end('hello from bob, ' + new Date().toISOString() + '\\n')).listen(8000, '127.0.0.1')"])
  natctl(stage, 'bob', ['expose', 'add', '8000', '--allow', 'alice'])

  say('alice forwards her local port 8080 to bob:8000 and fetches the page through the tunnel')
  natctl(stage, 'alice', ['forward', 'add', '8080', 'bob:8000'])
  await sleep(300)
  process.stdout.write(`${bold('alice$ curl http://127.0.0.1:8080/')}\n`)
  process.stdout.write(stage.run('alice', [process.execPath, '-e', "fetch('http://127.0.0.1:8080/').then((r) => r.text()).then((t) => process.stdout.write(t))"]))
  natctl(stage, 'alice', ['tunnels'])
}

async function inLab(): Promise<void> {
  say('building the NAT lab: a server host, an internet router, two NAT routers (iptables MASQUERADE), two hosts')
  const lab = await createLab({ sites: [{ name: 'alice', nat: 'easy' }, { name: 'bob', nat: 'easy' }] })
  const n = new NatdLab(lab)
  let failed = true
  try {
    say(`natd-rendezvous on ${lab.server.ip}, the only host with a public address`)
    await n.startServer()
    const server = n.pinnedServer
    say(`natd on alice (${lab.hosts.alice!.ip} behind NAT ${lab.routers.alice!.wanIp}) and bob (${lab.hosts.bob!.ip} behind NAT ${lab.routers.bob!.wanIp}), pinning the server's key: --server ${server}`)
    await n.startAgent('alice', { extra: ['--server', server] })
    await n.startAgent('bob', { extra: ['--server', server] })
    await tour({
      socket: (who) => n.agents[who]!.socket,
      run: (who, argv) => execFileSync('ip', ['netns', 'exec', lab.hosts[who]!.ns, ...argv], { encoding: 'utf8' }),
      start: (who, argv) => void lab.spawn(lab.hosts[who]!.ns, argv)
    })
    failed = false
  } finally {
    await n.teardown(failed)
  }
}

async function onLoopback(): Promise<void> {
  say('not root: running on loopback (no NAT between the agents; run as root for the NAT lab)')
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-demo-'))
  const procs: ChildProcess[] = []
  const start = (argv: string[], log = 'service.log'): void => {
    const fd = fs.openSync(path.join(dir, log), 'a')
    procs.push(spawn(argv[0]!, argv.slice(1), { cwd: ROOT, stdio: ['ignore', fd, fd] }))
  }
  const port = 20000 + Math.floor(Math.random() * 30000)
  try {
    start([process.execPath, path.join(DIST, 'rendezvous/main.js'), '--host', '127.0.0.1', '--port', String(port), '--alt-port', String(port + 1), '--state-dir', path.join(dir, 'rendezvous')], 'rendezvous.log')
    await sleep(500)
    for (const name of ['alice', 'bob']) {
      start([process.execPath, path.join(DIST, 'daemon/main.js'), '--name', name, '--server', `127.0.0.1:${port}`, '--state-dir', path.join(dir, name), '--socket', path.join(dir, `${name}.sock`), '--heartbeat', '2s'], `${name}.log`)
    }
    await tour({
      socket: (who) => path.join(dir, `${who}.sock`),
      run: (_who, argv) => execFileSync(argv[0]!, argv.slice(1), { encoding: 'utf8' }),
      start: (_who, argv) => start(argv)
    })
  } finally {
    for (const p of procs) p.kill('SIGTERM')
    await sleep(300)
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

if (labAvailable()) await inLab()
else await onLoopback()
say('done: everything the demo started has been stopped and removed')
