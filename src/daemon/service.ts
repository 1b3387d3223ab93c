/**
 * `natd install-service` and `natd uninstall-service`: put the systemd units, the natd
 * user (sysusers.d), the /etc/natd permissions (tmpfiles.d) and the config templates in
 * place, under a root directory (`--prefix`, `/` by default; tests use a temp dir).
 *
 *   systemd/natd.service            → PREFIX/etc/systemd/system/natd.service
 *   systemd/natd-rendezvous.service → PREFIX/etc/systemd/system/natd-rendezvous.service
 *   systemd/natd.sysusers           → PREFIX/etc/sysusers.d/natd.conf
 *   systemd/natd.tmpfiles           → PREFIX/etc/tmpfiles.d/natd.conf
 *   (template)                      → PREFIX/etc/natd/natd.json, rendezvous.env (never overwritten)
 *
 * The units' ExecStart= is rewritten to the node and the natd that run the install, so the
 * service runs exactly what the user installed. main.ts prints the report.
 */
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { NatdError } from '../protocol/errors.js'
import { DEFAULT_CONFIG_FILE } from './config.js'

/** The repository / npm package root: this file is src/daemon/service.ts or dist/daemon/service.js. */
export const PACKAGE_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')

export const UNITS = ['natd.service', 'natd-rendezvous.service'] as const
const UNIT_DIR = 'etc/systemd/system'
const SYSUSERS_FILE = 'etc/sysusers.d/natd.conf'
const TMPFILES_FILE = 'etc/tmpfiles.d/natd.conf'
const CONFIG_DIR = 'etc/natd'
const STATE_DIRS = ['var/lib/natd', 'var/lib/natd-rendezvous']
export const SERVICE_USER = 'natd'
/** The units' ProtectHome=yes hides these from the service: it could not run a natd installed there. */
const HIDDEN_BY_PROTECT_HOME = ['/home', '/root', '/run/user']

/** The agent's config file as installed: fill in name and server (docs/SERVICE.md). */
export const CONFIG_TEMPLATE =
  JSON.stringify(
    {
      '//': 'natd service configuration (docs/SERVICE.md). "server": "host:port#KEY" pins the server key (natd-rendezvous --print-key on the server shows it); without #KEY the first key seen is pinned. Apply changes: systemctl reload natd (forwards, exposes, logLevel) or restart natd (the rest).',
      name: '',
      server: '',
      secretFile: null,
      forwards: [],
      exposes: []
    },
    null,
    2
  ) + '\n'

/** natd-rendezvous's options, as an EnvironmentFile= for natd-rendezvous.service. */
export const RENDEZVOUS_ENV_TEMPLATE = `# natd-rendezvous options (natd-rendezvous --help). Apply: systemctl restart natd-rendezvous
# Example: NATD_RENDEZVOUS_ARGS="--port 3478 --alt-port 3479 --secret-file /etc/natd/secret"
NATD_RENDEZVOUS_ARGS="--port 3478 --alt-port 3479"
`

export interface ServiceOptions {
  /** Root to install under ("/" for the real system). */
  prefix: string
  /** Directory holding the `natd` and `natd-rendezvous` executables to run instead of node + dist/. */
  bin?: string | undefined
  /** The node to run (default: this one). */
  node?: string
  /** Where dist/ and systemd/ are (default: this package). */
  packageRoot?: string
}

/** What the install/uninstall did, and what the user should do next. */
export interface ServiceReport {
  wrote: string[]
  kept: string[]
  removed: string[]
  warnings: string[]
  next: string[]
}

/** How commands run (tests inject a fake). Returns null when the command does not exist. */
export type CommandRunner = (cmd: string, args: string[]) => { code: number; output: string } | null

export const runCommand: CommandRunner = (cmd, args) => {
  const r = spawnSync(cmd, args, { encoding: 'utf8' })
  if ((r.error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT') return null
  return { code: r.status ?? 1, output: `${r.stdout ?? ''}${r.stderr ?? ''}`.trim() }
}

/** Quotes one argument for a unit's command line (systemd.service(5) "Command lines"). */
export function quoteExecArg(arg: string): string {
  const escaped = arg.replaceAll('%', '%%').replaceAll('$', '$$$$')
  if (/^[A-Za-z0-9_@%$+=:,./-]+$/.test(escaped)) return escaped
  return `"${escaped.replaceAll('\\', '\\\\').replaceAll('"', '\\"')}"`
}

/** The command each unit runs, as argv (before the unit's own arguments). */
export function execCommands(opts: ServiceOptions): Record<(typeof UNITS)[number], string[]> {
  if (opts.bin) {
    const dir = path.resolve(opts.bin)
    const cmds = { 'natd.service': [path.join(dir, 'natd')], 'natd-rendezvous.service': [path.join(dir, 'natd-rendezvous')] }
    for (const [file] of Object.values(cmds)) {
      try {
        fs.accessSync(file!, fs.constants.X_OK)
      } catch {
        throw new NatdError('INVALID_ARGUMENT', `--bin: ${file} is not an executable`)
      }
    }
    return cmds
  }
  const root = opts.packageRoot ?? PACKAGE_ROOT
  const script = (p: string): string => {
    const file = path.join(root, 'dist', p)
    if (!fs.existsSync(file)) throw new NatdError('INVALID_ARGUMENT', `${file} is missing: build natd first (npm run build)`)
    return fs.realpathSync(file)
  }
  const node = fs.realpathSync(opts.node ?? process.execPath)
  return { 'natd.service': [node, script('daemon/main.js')], 'natd-rendezvous.service': [node, script('rendezvous/main.js')] }
}

/** The unit template with ExecStart='s program (the first two words of the template's, node and script) replaced. */
export function renderUnit(template: string, command: string[], packageRoot: string): string {
  let found = false
  const out = template
    .split('\n')
    .map((line) => {
      if (line.startsWith('Documentation=file://')) return `Documentation=file://${path.join(packageRoot, 'docs', 'SERVICE.md')}`
      const m = /^ExecStart=\S+ \S+\/dist\/(?:daemon|rendezvous)\/main\.js(.*)$/.exec(line)
      if (!m) return line
      found = true
      return `ExecStart=${command.map(quoteExecArg).join(' ')}${m[1]}`
    })
    .join('\n')
  if (!found) throw new NatdError('INTERNAL', 'unit template without ExecStart=NODE …/dist/…/main.js')
  return out
}

function within(prefix: string, rel: string): string {
  return path.join(path.resolve(prefix), rel)
}

function writeFile(file: string, text: string, mode: number): void {
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o755 })
  const tmp = `${file}.natd-tmp`
  fs.writeFileSync(tmp, text, { mode })
  fs.chmodSync(tmp, mode)
  fs.renameSync(tmp, file)
}

/** The gid of group natd in PREFIX/etc/group, or null. */
export function serviceGid(prefix: string): number | null {
  try {
    const line = fs.readFileSync(within(prefix, 'etc/group'), 'utf8').split('\n').find((l) => l.startsWith(`${SERVICE_USER}:`))
    const gid = Number(line?.split(':')[2])
    return line && Number.isInteger(gid) ? gid : null
  } catch {
    return null
  }
}

/** True when systemd is the running init (sd_booted(3)), so systemctl works. */
function booted(prefix: string): boolean {
  return path.resolve(prefix) === '/' && fs.existsSync('/run/systemd/system')
}

/** Throws when a path is where the units' ProtectHome=yes hides it from the service. */
export function checkVisibleToService(paths: string[]): void {
  for (const p of paths) {
    const hidden = HIDDEN_BY_PROTECT_HOME.find((dir) => p === dir || p.startsWith(`${dir}/`))
    if (hidden) {
      throw new NatdError(
        'INVALID_ARGUMENT',
        `${p} is under ${hidden}, which the service cannot see (ProtectHome=yes): install natd system-wide first (npm pack; sudo npm install -g ./natd-*.tgz), or pass --bin DIR`
      )
    }
  }
}

export function installService(opts: ServiceOptions, run: CommandRunner = runCommand): ServiceReport {
  const report: ServiceReport = { wrote: [], kept: [], removed: [], warnings: [], next: [] }
  const root = opts.packageRoot ?? PACKAGE_ROOT
  const prefix = opts.prefix
  const commands = execCommands(opts)
  checkVisibleToService(Object.values(commands).flat())

  const put = (rel: string, text: string, mode: number): void => {
    const file = within(prefix, rel)
    writeFile(file, text, mode)
    report.wrote.push(file)
  }
  for (const unit of UNITS) put(path.join(UNIT_DIR, unit), renderUnit(fs.readFileSync(path.join(root, 'systemd', unit), 'utf8'), commands[unit], root), 0o644)
  put(SYSUSERS_FILE, fs.readFileSync(path.join(root, 'systemd/natd.sysusers'), 'utf8'), 0o644)
  put(TMPFILES_FILE, fs.readFileSync(path.join(root, 'systemd/natd.tmpfiles'), 'utf8'), 0o644)

  // The user and group natd, then /etc/natd's ownership (tmpfiles fixes it on every boot too).
  const rootArgs = path.resolve(prefix) === '/' ? [] : [`--root=${path.resolve(prefix)}`]
  const sysusers = run('systemd-sysusers', [...rootArgs, within(prefix, SYSUSERS_FILE)])
  if (sysusers === null) {
    report.warnings.push(`systemd-sysusers is missing: create the user yourself (useradd --system --user-group --home-dir /var/lib/natd --shell /usr/sbin/nologin ${SERVICE_USER})`)
  } else if (sysusers.code !== 0) {
    report.warnings.push(`systemd-sysusers failed: ${sysusers.output}`)
  }
  const gid = serviceGid(prefix)
  const configDir = within(prefix, CONFIG_DIR)
  fs.mkdirSync(configDir, { recursive: true, mode: 0o750 })
  const templates: Array<[string, string]> = [
    [path.join(configDir, path.basename(DEFAULT_CONFIG_FILE)), CONFIG_TEMPLATE],
    [path.join(configDir, 'rendezvous.env'), RENDEZVOUS_ENV_TEMPLATE]
  ]
  for (const [file, text] of templates) {
    if (fs.existsSync(file)) {
      report.kept.push(file)
      continue
    }
    fs.writeFileSync(file, text, { mode: 0o640, flag: 'wx' })
    report.wrote.push(file)
  }
  fs.chmodSync(configDir, 0o750)
  if (gid === null) {
    report.warnings.push(`no group ${SERVICE_USER} yet: ${configDir} stays root-only until it exists (then run systemd-tmpfiles --create ${TMPFILES_FILE})`)
  } else {
    for (const file of [configDir, ...templates.map(([f]) => f)]) {
      try {
        fs.chownSync(file, 0, gid)
      } catch (err) {
        report.warnings.push(`cannot give ${file} to group ${SERVICE_USER}: ${(err as Error).message}`)
      }
    }
  }
  const tmpfiles = run('systemd-tmpfiles', ['--create', ...rootArgs, within(prefix, TMPFILES_FILE)])
  if (tmpfiles && tmpfiles.code !== 0) report.warnings.push(`systemd-tmpfiles failed: ${tmpfiles.output}`)

  if (booted(prefix)) {
    const reload = run('systemctl', ['daemon-reload'])
    if (reload && reload.code !== 0) report.warnings.push(`systemctl daemon-reload failed: ${reload.output}`)
  }
  const config = path.join(configDir, path.basename(DEFAULT_CONFIG_FILE))
  report.next.push(
    `set "name" and "server" in ${config} ("host:port#KEY", with the key natd-rendezvous --print-key shows on the server)`,
    'start it now and at every boot: sudo systemctl enable --now natd',
    `let a user drive it with natctl: sudo usermod -aG ${SERVICE_USER} USER (then log in again)`,
    'on the rendezvous host instead: edit /etc/natd/rendezvous.env, then sudo systemctl enable --now natd-rendezvous'
  )
  return report
}

export function uninstallService(opts: { prefix: string; purge: boolean }, run: CommandRunner = runCommand): ServiceReport {
  const report: ServiceReport = { wrote: [], kept: [], removed: [], warnings: [], next: [] }
  const prefix = opts.prefix
  if (booted(prefix)) {
    const stop = run('systemctl', ['disable', '--now', ...UNITS])
    if (stop && stop.code !== 0) report.warnings.push(`systemctl disable --now failed: ${stop.output}`)
  }
  for (const rel of [...UNITS.map((u) => path.join(UNIT_DIR, u)), SYSUSERS_FILE, TMPFILES_FILE]) {
    const file = within(prefix, rel)
    if (fs.existsSync(file)) {
      fs.rmSync(file)
      report.removed.push(file)
    }
  }
  const kept = [CONFIG_DIR, ...STATE_DIRS].map((rel) => within(prefix, rel)).filter((dir) => fs.existsSync(dir))
  if (opts.purge) {
    for (const dir of kept) {
      fs.rmSync(dir, { recursive: true, force: true })
      report.removed.push(dir)
    }
  } else {
    report.kept.push(...kept)
    if (kept.length) report.next.push(`configuration and state kept (the agent's key pair is its identity, the server's its key and the names it bound); remove them too with: natd uninstall-service --purge`)
  }
  if (booted(prefix)) run('systemctl', ['daemon-reload'])
  report.next.push(`the user ${SERVICE_USER} stays (files may still belong to it); remove it by hand: userdel ${SERVICE_USER}`)
  return report
}
