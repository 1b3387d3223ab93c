/**
 * natd as a system service (issue 7), in the NAT lab: the units that `natd install-service`
 * writes, their ExecStart= command lines run as user natd the way systemd would (uid/gid
 * natd, UMask, no new privileges, no capabilities, StateDirectory= and RuntimeDirectory=
 * made with the units' modes and passed as $STATE_DIRECTORY / $RUNTIME_DIRECTORY).
 *
 *   server ── inet ──┬── r1 (easy NAT) ── alice: natd (user natd), forwards from natd.json
 *     natd-rendezvous │
 *     (user natd)     └── r2 (easy NAT) ── bob:   natd (user natd), echo :7000 exposed in natd.json
 *
 *   natctl as natdmember (in group natd): works.  natctl as natdoutsider: permission denied.
 *
 * There is no systemd here (PID 1 is not systemd), so this runs what the units would run;
 * docs/SERVICE.md says what only a real systemd host shows. Users this test creates are
 * removed at the end; namespaces and processes go in `finally` as in the other lab tests.
 */
import { execFile, execFileSync, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createLab, labAvailable, type LabSpec } from './lab.js'
import { DIST, errorCode, NatdLab, SERVER_PORT, waitFor } from './natd-lab.js'

const MiB = 1024 * 1024
const ECHO_PORT = 7000
const FWD_PORT = 9000
const FWD_PORT_2 = 9001
const SERVICE_USER = 'natd'
const MEMBER = 'natdmember'
const OUTSIDER = 'natdoutsider'
/** systemd's PATH for services (systemd.exec(5), "Environment variables in spawned processes"). */
const SYSTEMD_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

const easyPair: LabSpec = { sites: [{ name: 'alice', nat: 'easy' }, { name: 'bob', nat: 'easy' }] }

// ---------------------------------------------------------------------------- users

const createdUsers: string[] = []

function exists(kind: 'passwd' | 'group', name: string): boolean {
  try {
    execFileSync('getent', [kind, name], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}

/** Marks the accounts this test makes, so a run that died before cleaning up is cleaned up by the next. */
const TEST_GECOS = 'natd lab test (test/lab/service.test.ts)'

function ensureUser(name: string, args: string[]): void {
  if (exists('passwd', name)) {
    const gecos = execFileSync('getent', ['passwd', name], { encoding: 'utf8' }).split(':')[4]
    if (gecos === TEST_GECOS) createdUsers.push(name)
    return
  }
  execFileSync('useradd', [...args, '--comment', TEST_GECOS, name], { stdio: 'pipe' })
  createdUsers.push(name)
}

function setupUsers(): void {
  // As systemd-sysusers would from systemd/natd.sysusers.
  ensureUser(SERVICE_USER, ['--system', '--user-group', '--home-dir', '/var/lib/natd', '--no-create-home', '--shell', '/usr/sbin/nologin'])
  ensureUser(MEMBER, ['--no-create-home', '--shell', '/usr/sbin/nologin', '--groups', SERVICE_USER])
  ensureUser(OUTSIDER, ['--no-create-home', '--shell', '/usr/sbin/nologin'])
  const groups = (user: string): string[] => execFileSync('id', ['-nG', user], { encoding: 'utf8' }).trim().split(/\s+/)
  if (!groups(MEMBER).includes(SERVICE_USER)) throw new Error(`${MEMBER} exists but is not in group ${SERVICE_USER}: fix or remove it`)
  if (groups(OUTSIDER).includes(SERVICE_USER)) throw new Error(`${OUTSIDER} exists and is in group ${SERVICE_USER}: fix or remove it`)
}

function removeUsers(): void {
  for (const name of createdUsers.reverse()) {
    try {
      execFileSync('userdel', [name], { stdio: 'pipe' })
    } catch {
      /* best effort */
    }
    if (exists('group', name)) {
      try {
        execFileSync('groupdel', [name], { stdio: 'pipe' })
      } catch {
        /* best effort */
      }
    }
  }
  createdUsers.length = 0
}

function uidOf(name: string): number {
  return Number(execFileSync('id', ['-u', name], { encoding: 'utf8' }).trim())
}

function gidOf(name: string): number {
  return Number(execFileSync('getent', ['group', name], { encoding: 'utf8' }).split(':')[2])
}

// ---------------------------------------------------------------------------- units

type Unit = Map<string, string>

/** The [Service] and [Unit] settings of a unit file (the last value of each key). */
function parseUnit(text: string): Unit {
  const unit: Unit = new Map()
  for (const line of text.split('\n')) {
    const m = /^([A-Za-z]+)=(.*)$/.exec(line)
    if (m) unit.set(m[1]!, m[2]!)
  }
  return unit
}

/** An ExecStart= command line as argv: quotes, `$VAR` word-splitting from the EnvironmentFile, `$$`, `%%`. */
function execArgv(line: string, env: Record<string, string>): string[] {
  const out: string[] = []
  for (const m of line.matchAll(/"((?:[^"\\]|\\.)*)"|(\S+)/g)) {
    if (m[1] !== undefined) out.push(m[1].replace(/\\(.)/g, '$1').replaceAll('$$', '$').replaceAll('%%', '%'))
    else if (/^\$[A-Z_]+$/.test(m[2]!)) out.push(...(env[m[2]!.slice(1)] ?? '').split(/\s+/).filter(Boolean))
    else out.push(m[2]!.replaceAll('$$', '$').replaceAll('%%', '%'))
  }
  return out
}

/** KEY=VALUE lines of an EnvironmentFile= (double quotes removed). */
function parseEnvFile(text: string): Record<string, string> {
  const env: Record<string, string> = {}
  for (const line of text.split('\n')) {
    const m = /^([A-Z_]+)=(?:"(.*)"|(.*))$/.exec(line)
    if (m) env[m[1]!] = m[2] ?? m[3] ?? ''
  }
  return env
}

interface Installed {
  prefix: string
  natd: Unit
  rendezvous: Unit
  rendezvousEnv: Record<string, string>
}

function installUnits(base: string): Installed {
  const prefix = path.join(base, 'root')
  execFileSync(process.execPath, [path.join(DIST, 'daemon/main.js'), 'install-service', '--prefix', prefix], { stdio: 'pipe' })
  const units = path.join(prefix, 'etc/systemd/system')
  return {
    prefix,
    natd: parseUnit(fs.readFileSync(path.join(units, 'natd.service'), 'utf8')),
    rendezvous: parseUnit(fs.readFileSync(path.join(units, 'natd-rendezvous.service'), 'utf8')),
    rendezvousEnv: parseEnvFile(fs.readFileSync(path.join(prefix, 'etc/natd/rendezvous.env'), 'utf8'))
  }
}

interface ServiceProc {
  name: string
  proc: ChildProcess
  stateDir: string
  runtimeDir: string
  socket: string
  configFile: string
  logFile: string
}

/**
 * Runs a unit's command line as systemd would: in the lab host's namespace, as the unit's
 * User=/Group= with its supplementary groups, its UMask=, no new privileges, an empty
 * capability bounding set, and the directories it declares made with their modes.
 */
function startUnit(n: NatdLab, unit: Unit, ns: string, name: string, argv: string[], dirs: { state?: string; runtime?: string }): ServiceProc {
  const user = unit.get('User')!
  const group = unit.get('Group')!
  const env: Record<string, string> = {
    PATH: SYSTEMD_PATH,
    LANG: 'C.UTF-8',
    HOME: '/var/lib/natd',
    USER: user,
    LOGNAME: user,
    SHELL: '/usr/sbin/nologin',
    INVOCATION_ID: randomBytes(16).toString('hex')
  }
  const own = (dir: string, mode: string): void => {
    fs.mkdirSync(dir, { recursive: true })
    fs.chownSync(dir, uidOf(user), gidOf(group))
    fs.chmodSync(dir, parseInt(mode, 8))
  }
  if (dirs.state) {
    own(dirs.state, unit.get('StateDirectoryMode') ?? '0755')
    env.STATE_DIRECTORY = dirs.state
  }
  if (dirs.runtime) {
    own(dirs.runtime, unit.get('RuntimeDirectoryMode') ?? '0755')
    env.RUNTIME_DIRECTORY = dirs.runtime
  }
  const umask = unit.get('UMask') ?? '0022'
  const setpriv = ['setpriv', '--reuid', user, '--regid', group, '--init-groups', '--no-new-privs', '--inh-caps=-all', '--bounding-set=-all', '--']
  const logFile = path.join(n.dir, `svc-${name}.log`)
  const log = fs.openSync(logFile, 'a')
  const proc = n.lab.spawn(ns, ['sh', '-c', `umask ${umask} && exec "$@"`, 'sh', ...setpriv, ...argv], { env, cwd: '/' })
  proc.stdout?.on('data', (d: Buffer) => fs.writeSync(log, d))
  proc.stderr?.on('data', (d: Buffer) => fs.writeSync(log, d))
  const configFile = argv[argv.indexOf('--config') + 1] ?? ''
  return { name, proc, stateDir: dirs.state ?? '', runtimeDir: dirs.runtime ?? '', socket: dirs.runtime ? path.join(dirs.runtime, 'natd.sock') : '', configFile, logFile }
}

interface Natctl {
  code: number
  stdout: string
  stderr: string
  json: unknown
}

/** natctl as a local user, with a login-like environment. */
function natctlAs(user: string, socket: string, args: string[]): Promise<Natctl> {
  const argv = ['--reuid', user, '--regid', user, '--init-groups', '--', process.execPath, path.join(DIST, 'cli/main.js'), '--socket', socket, '--json', ...args]
  const env = { PATH: SYSTEMD_PATH, HOME: '/nonexistent', USER: user, LOGNAME: user }
  return new Promise((resolve) => {
    execFile('setpriv', argv, { env, timeout: 15_000 }, (err, stdout, stderr) => {
      let json: unknown = null
      try {
        json = JSON.parse(stdout)
      } catch {
        // not JSON
      }
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 124) : 0, stdout, stderr, json })
    })
  })
}

// ---------------------------------------------------------------------------- the service lab

class ServiceLab {
  readonly base: string
  readonly installed: Installed
  readonly agents: Record<string, ServiceProc> = {}

  constructor(readonly n: NatdLab) {
    // Like /etc, /var/lib and /run: every user may traverse the parents.
    this.base = path.join(n.dir, 'system')
    fs.mkdirSync(this.base, { recursive: true })
    fs.chmodSync(n.dir, 0o755)
    fs.chmodSync(this.base, 0o755)
    this.installed = installUnits(this.base)
  }

  get serverAddr(): string {
    return `${this.n.lab.server.ip}:${SERVER_PORT}`
  }

  /** natd-rendezvous.service's ExecStart=, with its EnvironmentFile=, as user natd on the server host. */
  async startServer(): Promise<void> {
    const argv = execArgv(this.installed.rendezvous.get('ExecStart')!, this.installed.rendezvousEnv)
    expect(argv.slice(-4)).toEqual(['--port', String(SERVER_PORT), '--alt-port', String(SERVER_PORT + 1)])
    startUnit(this.n, this.installed.rendezvous, this.n.lab.server.ns, 'rendezvous', argv, { state: path.join(this.base, 'var-lib-natd-rendezvous') })
    await waitFor(async () => (await this.n.lab.exec(this.n.lab.server.ns, ['ss', '-Hlun', `sport = :${SERVER_PORT}`])).stdout.includes(String(SERVER_PORT)), 10_000, 'natd-rendezvous listening')
  }

  /** Writes an agent's natd.json from the installed template: root:natd 0640 in a root:natd 0750 directory, as /etc/natd. */
  writeConfig(name: string, settings: Record<string, unknown>): string {
    const dir = path.join(this.base, `etc-${name}`)
    fs.mkdirSync(dir, { recursive: true })
    fs.chownSync(dir, 0, gidOf(SERVICE_USER))
    fs.chmodSync(dir, 0o750)
    const file = path.join(dir, 'natd.json')
    const template = JSON.parse(fs.readFileSync(path.join(this.installed.prefix, 'etc/natd/natd.json'), 'utf8')) as Record<string, unknown>
    fs.writeFileSync(file, JSON.stringify({ ...template, ...settings }, null, 2))
    fs.chownSync(file, 0, gidOf(SERVICE_USER))
    fs.chmodSync(file, 0o640)
    return file
  }

  editConfig(name: string, edit: (c: Record<string, unknown>) => void): void {
    const file = this.agents[name]!.configFile
    const c = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>
    edit(c)
    fs.writeFileSync(file, JSON.stringify(c, null, 2))
  }

  /** natd.service's ExecStart= as user natd on a lab host, with its own natd.json and directories. */
  async startAgent(name: string, settings: Record<string, unknown> = {}): Promise<ServiceProc> {
    const host = this.n.lab.hosts[name]!
    const configFile = this.writeConfig(name, { name, server: this.serverAddr, heartbeat: '2s', logLevel: 'debug', ...settings })
    const argv = execArgv(this.installed.natd.get('ExecStart')!, {}).map((a) => (a === '/etc/natd/natd.json' ? configFile : a))
    expect(argv).toContain(configFile)
    const a = startUnit(this.n, this.installed.natd, host.ns, name, argv, { state: path.join(this.base, `var-lib-${name}`), runtime: path.join(this.base, `run-${name}`) })
    this.agents[name] = a
    await waitFor(() => fs.existsSync(a.socket) || a.proc.exitCode !== null, 10_000, `${name} API socket`)
    if (a.proc.exitCode !== null) throw new Error(`natd ${name} exited ${a.proc.exitCode}: ${fs.readFileSync(a.logFile, 'utf8')}`)
    return a
  }

  natctl(name: string, args: string[], user = MEMBER): Promise<Natctl> {
    return natctlAs(user, this.agents[name]!.socket, args)
  }

  async json<T>(name: string, args: string[]): Promise<T> {
    const r = await this.natctl(name, args)
    if (r.code !== 0) throw new Error(`natctl ${args.join(' ')} on ${name} failed (${r.code}): ${r.stderr}`)
    return r.json as T
  }

  async waitRegistered(name: string): Promise<void> {
    await waitFor(async () => (await this.json<{ registered: boolean }>(name, ['status'])).registered, 15_000, `${name} registered`)
  }

  log(name: string): string {
    return fs.readFileSync(this.agents[name]!.logFile, 'utf8')
  }

  signal(name: string, sig: NodeJS.Signals): void {
    this.agents[name]!.proc.kill(sig)
  }
}

async function withServiceLab(fn: (s: ServiceLab) => Promise<void>): Promise<void> {
  const n = new NatdLab(await createLab(easyPair))
  let failed = true
  try {
    await fn(new ServiceLab(n))
    failed = false
  } finally {
    await n.teardown(failed)
  }
}

function mode(p: string): number {
  return fs.statSync(p).mode & 0o777
}

// ---------------------------------------------------------------------------- tests

describe.skipIf(!labAvailable())('natd as a system service', () => {
  beforeAll(() => setupUsers())
  afterAll(() => removeUsers())

  it('runs as user natd with the units\' directories; natctl works for group natd and is refused to anyone else', async () => {
    await withServiceLab(async (s) => {
      const unit = s.installed.natd
      expect(unit.get('User')).toBe(SERVICE_USER)
      expect(unit.get('StateDirectoryMode')).toBe('0700')
      await s.startServer()
      const alice = await s.startAgent('alice')
      await s.waitRegistered('alice')

      // Who runs it, and with what: uid and gid natd, no capabilities, no new privileges.
      const status = fs.readFileSync(`/proc/${alice.proc.pid}/status`, 'utf8')
      expect(status).toMatch(new RegExp(`^Uid:\\s+${uidOf(SERVICE_USER)}\\s`, 'm'))
      expect(status).toMatch(new RegExp(`^Gid:\\s+${gidOf(SERVICE_USER)}\\s`, 'm'))
      expect(status).toMatch(/^CapEff:\s+0+$/m)
      expect(status).toMatch(/^CapBnd:\s+0+$/m)
      expect(status).toMatch(/^NoNewPrivs:\s+1$/m)

      // State 0700 and its files 0600, all natd's; socket 0660 group natd in the runtime dir.
      const natdUid = uidOf(SERVICE_USER)
      expect(mode(alice.stateDir)).toBe(0o700)
      expect(fs.statSync(alice.stateDir).uid).toBe(natdUid)
      for (const f of ['config.json', 'identity.json']) {
        const st = fs.statSync(path.join(alice.stateDir, f))
        expect([f, st.mode & 0o777, st.uid]).toEqual([f, 0o600, natdUid])
      }
      expect(mode(alice.runtimeDir)).toBe(parseInt(unit.get('RuntimeDirectoryMode')!, 8))
      const sock = fs.statSync(alice.socket)
      expect(sock.isSocket()).toBe(true)
      expect(sock.mode & 0o777).toBe(0o660)
      expect(sock.gid).toBe(gidOf(SERVICE_USER))

      // A member of group natd drives it; anyone else is told what to do.
      const member = await s.natctl('alice', ['status'])
      expect(member.code).toBe(0)
      expect(member.json).toMatchObject({ name: 'alice', registered: true })
      // It proved its uid to natd (another user) through natd's proof directory beside the socket.
      const proofDir = path.join(path.dirname(alice.socket), 'proof')
      expect([fs.statSync(proofDir).mode & 0o7777, fs.statSync(proofDir).uid]).toEqual([0o1733, natdUid])
      expect(fs.readdirSync(proofDir)).toEqual([])
      expect(s.log('alice')).not.toContain('uid proof')
      const outsider = await s.natctl('alice', ['status'], OUTSIDER)
      expect([outsider.code, errorCode(outsider)]).toEqual([1, 'PERMISSION_DENIED'])
      expect(outsider.stderr).toBe(`natctl: permission denied on ${alice.socket}: add yourself to group natd\n`)
      // JSON lines without colour when not on a TTY, one per event.
      const lines = s.log('alice').trim().split('\n')
      expect(lines.every((l) => l.startsWith('{') && !l.includes('\u001b['))).toBe(true)
    })
  }, 60_000)

  it('SIGTERM says goodbye: the peer drops the tunnel within a second, the agent exits 0', async () => {
    await withServiceLab(async (s) => {
      await s.startServer()
      await s.startAgent('alice')
      const bob = await s.startAgent('bob')
      await s.waitRegistered('alice')
      await s.waitRegistered('bob')
      const opened = await s.json<{ path: string }>('alice', ['open', 'bob'])
      expect(opened.path).toMatch(/^direct-/)
      await waitFor(async () => (await s.json<unknown[]>('bob', ['tunnels'])).length === 1, 3_000, 'bob sees the tunnel')

      const exited = new Promise<{ code: number | null; ms: number }>((resolve) => {
        const t0 = Date.now()
        bob.proc.once('exit', (code) => resolve({ code, ms: Date.now() - t0 }))
      })
      s.signal('bob', 'SIGTERM')
      const took = await waitFor(async () => (await s.json<unknown[]>('alice', ['tunnels'])).length === 0, 1_000, 'alice drops the tunnel to bob')
      expect(took).toBeLessThan(1_000)
      const exit = await exited
      expect(exit.code).toBe(0)
      expect(exit.ms).toBeLessThan(3_000)
      process.stderr.write(`SIGTERM: alice's natctl tunnels empty after ${took} ms, bob exited 0 after ${exit.ms} ms\n`)
      // Deregistered: the server told alice at once, not after its peer timeout.
      await waitFor(async () => !(await s.json<Array<{ name: string; online: boolean }>>('alice', ['peers'])).some((p) => p.name === 'bob' && p.online), 2_000, 'bob offline at alice')
      // The socket is gone, so natctl says natd is not running.
      const after = await s.natctl('bob', ['status'])
      expect(after.code).toBe(3)
    })
  }, 60_000)

  it('SIGHUP applies a forward added to natd.json while a transfer through an existing forward runs on, intact', async () => {
    await withServiceLab(async (s) => {
      await s.startServer()
      await s.n.startEcho('bob', ECHO_PORT)
      // Forwards and exposes declared in the config files, not made with natctl.
      // Allow lists hold keys: bob's file names alice by her ID (a bare name would admit
      // nobody until pinned), so alice starts first.
      await s.startAgent('alice', { forwards: [{ localPort: FWD_PORT, peer: 'bob', remotePort: ECHO_PORT }] })
      const aliceId = (await s.json<{ id: string }>('alice', ['status'])).id
      await s.startAgent('bob', { exposes: [{ port: ECHO_PORT, allow: [{ name: 'alice', id: aliceId }] }] })
      await s.waitRegistered('alice')
      await s.waitRegistered('bob')
      expect(await s.json('alice', ['forward', 'ls'])).toEqual([expect.objectContaining({ localPort: FWD_PORT, peer: 'bob', remotePort: ECHO_PORT })])
      expect(await s.n.echo('alice', FWD_PORT, MiB, 1)).toMatchObject({ ok: true })
      const [tunnel] = await s.json<Array<{ since: string }>>('alice', ['tunnels'])

      // A long transfer through the existing forward…
      const t0 = Date.now()
      const transfer = s.n.echo('alice', FWD_PORT, 256 * MiB, 1, 240_000).then((r) => ({ ...r, endedAt: Date.now() }))
      await waitFor(async () => (await s.json<Array<{ localPort: number; connections: number }>>('alice', ['forward', 'ls'])).some((f) => f.localPort === FWD_PORT && f.connections === 1), 5_000, 'the transfer is under way')
      // …then a second forward in natd.json, and SIGHUP.
      s.editConfig('alice', (c) => void (c.forwards as unknown[]).push({ localPort: FWD_PORT_2, peer: 'bob', remotePort: ECHO_PORT }))
      const hupAt = Date.now()
      s.signal('alice', 'SIGHUP')
      await waitFor(() => s.log('alice').includes('"message":"config reloaded"'), 3_000, 'alice reloads')
      const ls = await s.json<Array<{ localPort: number; connections: number }>>('alice', ['forward', 'ls'])
      expect(ls.map((f) => f.localPort).sort()).toEqual([FWD_PORT, FWD_PORT_2])
      expect(ls.find((f) => f.localPort === FWD_PORT)?.connections).toBe(1)
      expect(await s.n.echo('alice', FWD_PORT_2, MiB, 1)).toMatchObject({ ok: true })

      const done = await transfer
      expect(done).toMatchObject({ ok: true })
      expect(done.endedAt).toBeGreaterThan(hupAt) // it really ran across the reload
      process.stderr.write(`256 MiB echo: ${done.endedAt - t0} ms, SIGHUP at +${hupAt - t0} ms\n`)
      // The same tunnel all along.
      const after = await s.json<Array<{ since: string }>>('alice', ['tunnels'])
      expect(after).toHaveLength(1)
      expect(after[0]!.since).toBe(tunnel!.since)
      expect(s.log('alice').match(/"message":"tunnel up"/g)?.length).toBe(1)

      // A broken file on SIGHUP changes nothing and says why.
      fs.writeFileSync(s.agents.alice!.configFile, '{"name": "alice", "forwards": [{"localPort": "x"}]}')
      s.signal('alice', 'SIGHUP')
      await waitFor(() => s.log('alice').includes('"message":"config not reloaded, the running config stays"'), 3_000, 'alice refuses the bad file')
      expect(s.log('alice')).toContain('\\"forwards[0].localPort\\" must be a port number')
      expect((await s.json<unknown[]>('alice', ['forward', 'ls'])).length).toBe(2)
    })
  }, 300_000)
})


