#!/usr/bin/env node
/**
 * natd: the agent daemon. The only module that touches `process` (flags, signals, exit).
 *
 *   natd [flags]                 run the agent (SIGTERM/SIGINT stop it, SIGHUP reloads --config)
 *   natd install-service         install the systemd units, the natd user and /etc/natd (service.ts)
 *   natd uninstall-service       remove them (state and config stay unless --purge)
 *   natd release-name            give this agent's name back to the server (the agent must be stopped)
 */
import fs from 'node:fs'
import yargs, { type Argv } from 'yargs'
import { hideBin } from 'yargs/helpers'
import { parseDuration } from '../protocol/duration.js'
import type { Endpoint } from '../protocol/endpoint.js'
import { NatdError, toNatdError } from '../protocol/errors.js'
import { networkSecretKey, parsePeerId } from '../protocol/identity.js'
import type { Logger } from '../protocol/log.js'
import { defaultSocketPath } from '../ipc/schema.js'
import { socketAnswers } from '../ipc/server.js'
import { ControlConnection } from './control-connection.js'
import { parseServerSpec, resolveServer } from './server-address.js'
import { Agent } from './agent.js'
import { parseMetricsAddress } from './agent-metrics.js'
import {
  DEFAULT_CONFIG_FILE,
  defaultConfigFile,
  defaultStateDir,
  mergeConfig,
  readConfigFile,
  resolveConfig,
  StateStore,
  type AgentConfig,
  type ConfigFile,
  type ForwardSpec,
  type Overrides
} from './config.js'
import { createLogger, LOG_LEVELS, type LogLevel, type RootLogger } from '../common/logger.js'
import { installService, uninstallService, type ServiceReport } from './service.js'
import { logStateFiles } from './state-log.js'

/** SIGTERM must finish within this (systemd's stop timeout is far longer; peers want speed). */
const SHUTDOWN_DEADLINE_MS = 3_000
/** Settings SIGHUP cannot change under a running agent: they need a restart. */
const RESTART_KEYS = ['name', 'server', 'heartbeatMs', 'port', 'secretFile', 'inbox', 'portMapping'] as const

interface RunArgs {
  name?: string | undefined
  server?: string | undefined
  'state-dir'?: string | undefined
  socket?: string | undefined
  port?: number | undefined
  heartbeat?: string | undefined
  'secret-file'?: string | undefined
  inbox?: string | undefined
  'port-mapping'?: boolean | undefined
  'log-level'?: string | undefined
  config?: string | undefined
  metrics?: string | undefined
}

function runOptions(y: Argv): Argv<RunArgs> {
  return y
    .option('config', { type: 'string', describe: `config file (default ${DEFAULT_CONFIG_FILE} when it exists and natd runs as root or under systemd); flags override it` })
    .option('name', { type: 'string', describe: 'this agent\'s name on the server' })
    .option('server', { type: 'string', describe: 'rendezvous server HOST[:PORT][#KEY] (port 3478 by default; #KEY pins the server\'s key, as natd-rendezvous --print-key shows it; without it the first key seen is pinned)' })
    .option('state-dir', { type: 'string', describe: 'keys, config and inbox (default $STATE_DIRECTORY, /var/lib/natd as root, else $XDG_STATE_HOME/natd)' })
    .option('socket', { type: 'string', describe: 'local API socket (default $RUNTIME_DIRECTORY/natd.sock, /run/natd/natd.sock as root, else $XDG_RUNTIME_DIR/natd/natd.sock)' })
    .option('port', { type: 'number', describe: 'local UDP and TCP port (default: chosen once, then kept)' })
    .option('heartbeat', { type: 'string', describe: 'heartbeat interval (default 20s)' })
    .option('secret-file', { type: 'string', describe: 'file with the network secret, when the server needs one' })
    .option('inbox', { type: 'string', describe: 'directory received files go to (absolute; default <state dir>/inbox); only set here or in the config file' })
    .option('port-mapping', { type: 'boolean', describe: 'ask the default gateway to map our UDP and TCP ports by PCP or NAT-PMP (default on; --no-port-mapping turns it off)' })
    .option('log-level', { choices: LOG_LEVELS })
    .option('metrics', { type: 'string', describe: 'serve Prometheus metrics (tunnels by path, punches, bytes) at http://[HOST:]PORT/metrics (off by default; PORT alone: 127.0.0.1)' })
}

async function main(): Promise<void> {
  await yargs(hideBin(process.argv))
    // A flag given twice: the last one wins (no flag here takes a list).
    .parserConfiguration({ 'duplicate-arguments-array': false })
    .scriptName('natd')
    .usage('$0 [options]\n\nThe natd agent: registers with a rendezvous server and opens encrypted tunnels to peers.\nFlags are stored in the state directory; later starts need none. Under systemd, see docs/SERVICE.md.')
    .command('$0', 'run the agent', runOptions, (argv) => run(argv))
    .command(
      'install-service',
      'install the systemd units, the natd user and /etc/natd/natd.json (as root)',
      (y) =>
        y
          .option('prefix', { type: 'string', default: '/', describe: 'install under this root directory (for packaging and tests)' })
          .option('bin', { type: 'string', describe: 'directory of the natd and natd-rendezvous executables the units run (default: this node and this natd)' }),
      (argv) => serviceCommand(argv.prefix, () => installService({ prefix: argv.prefix, bin: argv.bin }))
    )
    .command(
      'uninstall-service',
      'remove the units, the sysusers and tmpfiles entries; keep /etc/natd and /var/lib/natd unless --purge',
      (y) =>
        y
          .option('prefix', { type: 'string', default: '/', describe: 'the root directory it was installed under' })
          .option('purge', { type: 'boolean', default: false, describe: 'also remove /etc/natd and /var/lib/natd (the agent\'s key pair and state)' }),
      (argv) => serviceCommand(argv.prefix, () => uninstallService({ prefix: argv.prefix, purge: argv.purge }))
    )
    .command(
      'release-name',
      'give this agent\'s name back to the rendezvous server, so another key may take it (stop natd first)',
      (y) =>
        y
          .option('state-dir', { type: 'string', describe: 'the agent\'s state directory (as for natd)' })
          .option('socket', { type: 'string', describe: 'the agent\'s API socket (to check that it is stopped)' }),
      (argv) => releaseName(argv['state-dir'] ?? defaultStateDir(), argv.socket ?? defaultRunSocket())
    )
    .strict()
    .help()
    .version(false)
    .fail((msg, err) => {
      if (err) throw err
      usage(msg ?? 'bad arguments')
    })
    .parseAsync()
}

function serviceCommand(prefix: string, fn: () => ServiceReport): void {
  if (prefix === '/' && process.getuid?.() !== 0) usage('installing a system service needs root: sudo natd …')
  let report: ServiceReport
  try {
    report = fn()
  } catch (err) {
    fail(toNatdError(err))
  }
  const lines = [
    ...report.wrote.map((f) => `wrote    ${f}`),
    ...report.removed.map((f) => `removed  ${f}`),
    ...report.kept.map((f) => `kept     ${f}`),
    ...report.warnings.map((w) => `warning: ${w}`),
    ...(report.next.length ? ['', 'next:', ...report.next.map((n, i) => `  ${i + 1}. ${n}`)] : [])
  ]
  process.stdout.write(lines.join('\n') + '\n')
}

function defaultRunSocket(): string {
  return process.env.RUNTIME_DIRECTORY ? `${process.env.RUNTIME_DIRECTORY.split(':')[0]}/natd.sock` : defaultSocketPath()
}

/**
 * `natd release-name`: proves our key to the server (the same Noise session and pinned
 * server key as the agent) and asks it to unbind our name. A running agent would take
 * the name again at its next registration, so it must be stopped first.
 */
async function releaseName(stateDir: string, socketPath: string): Promise<void> {
  if (await socketAnswers(socketPath)) usage(`natd is running on ${socketPath}: stop it first (systemctl stop natd), or it takes the name again`)
  if (!fs.existsSync(stateDir)) usage(`no agent state in ${stateDir} (give --state-dir)`)
  let store: StateStore
  try {
    store = new StateStore(stateDir)
  } catch (err) {
    fail(toNatdError(err)) // UNSAFE_STATE
  }
  const config = store.config
  if (!config) usage(`no agent config in ${stateDir}: this agent never ran, so it holds no name`)
  const log = createLogger({ level: 'warn' })
  let control: ControlConnection | null = null
  try {
    const spec = parseServerSpec(config.server)
    const server = await resolveServer(spec)
    const expected = spec.key ?? parsePeerId(store.serverKey(spec.text) ?? '')
    control = await ControlConnection.connect(server, 0, store.loadIdentity(), { expected, howToRepin: `start natd with --server ${spec.text}#<its key> to pin it` }, log)
    await control.request({ type: 'release', reqId: 0, name: config.name })
    process.stdout.write(`released the name ${config.name} on ${spec.text}: another key may take it now\n`)
  } catch (err) {
    fail(toNatdError(err))
  } finally {
    control?.close()
  }
}

/**
 * The lab tests' dead-peer time (ms), so the dead-peer test waits seconds, not
 * TUNNEL_DEAD_MS: the same code, a shorter constant. Not a user setting, and not
 * documented for users; unset, natd uses TUNNEL_DEAD_MS.
 */
const TEST_TUNNEL_DEAD_ENV = 'NATD_TEST_TUNNEL_DEAD_MS'
/**
 * The lab tests' delay (ms) between storing a received message and acknowledging it, so
 * a test can kill the sender while the ACK is due (a lost ACK, on demand). Not a user
 * setting, and not documented for users; unset, natd acknowledges at once.
 */
const TEST_MESSAGE_ACK_DELAY_ENV = 'NATD_TEST_MESSAGE_ACK_DELAY_MS'
/** The same for how long a migrating tunnel looks for a new path (MIGRATE_GIVE_UP_MS, 90 s). */
const TEST_TUNNEL_GIVE_UP_ENV = 'NATD_TEST_TUNNEL_GIVE_UP_MS'
/** The same for how often the gateway is asked whether it lost our port mapping (PORTMAP_CHECK_MS, 2 min). */
const TEST_PORTMAP_CHECK_ENV = 'NATD_TEST_PORTMAP_CHECK_MS'

function testMs(name: string, min: number): number | undefined {
  const raw = process.env[name]
  if (raw === undefined || raw === '') return undefined
  const ms = Number(raw)
  if (!Number.isInteger(ms) || ms < min) usage(`${name} must be a whole number of ms, at least ${min}`)
  return ms
}

async function run(argv: RunArgs): Promise<void> {
  const stateDir = argv['state-dir'] ?? defaultStateDir()
  const socketPath = argv.socket ?? defaultRunSocket()
  if (argv.port !== undefined && (!Number.isInteger(argv.port) || argv.port < 0 || argv.port > 65535)) usage('--port must be 0-65535')
  let heartbeatMs: number | undefined
  try {
    heartbeatMs = argv.heartbeat === undefined ? undefined : parseDuration(argv.heartbeat)
  } catch (err) {
    usage(`--heartbeat: ${(err as Error).message}`)
  }
  let metrics: Endpoint | null = null
  try {
    metrics = argv.metrics === undefined ? null : parseMetricsAddress(argv.metrics)
  } catch (err) {
    usage(`--metrics: ${(err as Error).message}`)
  }
  const flags: Overrides = {
    name: argv.name,
    server: argv.server,
    heartbeatMs,
    port: argv.port,
    logLevel: argv['log-level'] as LogLevel | undefined,
    secretFile: argv['secret-file'],
    inbox: argv.inbox,
    portMapping: argv['port-mapping']
  }
  refuseForeignStateDir(stateDir)

  const configPath = argv.config ?? defaultConfigFile()
  let file: ConfigFile | null = null
  let store: StateStore
  let config: Readonly<AgentConfig>
  try {
    if (configPath) file = readConfigFile(configPath)
    store = new StateStore(stateDir)
    config = resolveConfig(store, flags, file)
  } catch (err) {
    const e = toNatdError(err)
    if (e.code === 'INVALID_ARGUMENT') usage(e.message)
    fail(e)
  }
  const log = createLogger({ level: config.logLevel })
  logStateFiles(store, log, stateDir)
  if (file) {
    store.setDeclared(file)
    warnShadowed(store, log, file.path)
  }
  let secretKey: Buffer | null = null
  if (config.secretFile) {
    try {
      secretKey = networkSecretKey(fs.readFileSync(config.secretFile))
    } catch (err) {
      fail(new NatdError('INVALID_ARGUMENT', `cannot read the secret file ${config.secretFile}: ${(err as Error).message}`))
    }
  }

  const keyPair = store.loadIdentity()
  const tunnelDeadMs = testMs(TEST_TUNNEL_DEAD_ENV, 100)
  const messageAckDelayMs = testMs(TEST_MESSAGE_ACK_DELAY_ENV, 0)
  const tunnelGiveUpMs = testMs(TEST_TUNNEL_GIVE_UP_ENV, 100)
  const portMapCheckMs = testMs(TEST_PORTMAP_CHECK_ENV, 500)
  const tests = {
    ...(tunnelDeadMs === undefined ? {} : { tunnelDeadMs }),
    ...(messageAckDelayMs === undefined ? {} : { messageAckDelayMs }),
    ...(tunnelGiveUpMs === undefined ? {} : { tunnelGiveUpMs }),
    ...(portMapCheckMs === undefined ? {} : { portMapCheckMs })
  }
  const agent = new Agent({ config, socketPath, secretKey, metrics, ...tests }, { store, keyPair, log: log.child({ component: 'agent' }) })
  // Signals are handled from before start(), which takes a moment (the NAT check): a stop
  // or reload that arrives meanwhile waits for it rather than killing natd mid-start.
  const started = agent.start().then(
    () => {
      // Keep the same port from now on; written in the background (config.ts LEARNT_FILE),
      // so a slow disk never holds up the registration that has just begun.
      if (config.port === 0) store.rememberPort(agent.localPort)
    },
    (err: unknown) => fail(toNatdError(err))
  )
  let stopping = false
  const shutdown = (signal: string): void => {
    if (stopping) return
    stopping = true
    log.info('shutting down', { signal })
    // A direct timer: the process's own last resort, outside the agent (and its clock) it stops.
    setTimeout(() => {
      log.warn('shutdown deadline passed, exiting')
      process.exit(0)
    }, SHUTDOWN_DEADLINE_MS).unref()
    void started
      .then(() => agent.stop())
      .then(() => store.flushed()) // within the shutdown deadline
      .catch((err: unknown) => log.error('shutdown failed', { err: (err as Error).message }))
      .finally(() => process.exit(0))
  }
  // One reload at a time, in signal order, after start; never rejects.
  let reloading = started
  const applied = { file }
  const reload = (): void => {
    reloading = reloading.then(() => (stopping ? undefined : reloadConfig({ configPath, flags, store, agent, log, running: { ...config, port: agent.localPort }, applied })))
  }
  process.on('SIGTERM', () => shutdown('SIGTERM'))
  process.on('SIGINT', () => shutdown('SIGINT'))
  // conf's atomic writes (atomically → when-exit) hook SIGHUP as an exit signal: they
  // clean up and raise it again, which would run each reload twice. To natd SIGHUP is
  // "reload", not "exit", so theirs goes.
  process.removeAllListeners('SIGHUP')
  process.on('SIGHUP', reload)
  await started
}

/**
 * SIGHUP: reads the config file again. Forwards and exposes apply at once (new forwards
 * start, removed ones stop, the rest and every live tunnel and connection stay); the log
 * level too; the other settings need a restart, which is logged. A bad file changes
 * nothing. Never rejects.
 */
async function reloadConfig(r: {
  configPath: string | null
  flags: Overrides
  store: StateStore
  agent: Agent
  log: RootLogger
  running: Readonly<AgentConfig>
  /** The file as last applied. */
  applied: { file: ConfigFile | null }
}): Promise<void> {
  const { store, agent, log } = r
  try {
    if (!r.configPath) {
      log.info('SIGHUP without a config file: applying the stored forwards again')
      await agent.reload()
      return
    }
    const file = readConfigFile(r.configPath)
    const next = mergeConfig(store.config, r.flags, file)
    const changed = RESTART_KEYS.filter((k) => next[k] !== r.running[k] && !(k === 'port' && next.port === 0))
    if (changed.length) log.warn('config changes that need a restart were not applied', { file: file.path, keys: changed, hint: 'systemctl restart natd' })
    if (next.logLevel !== log.level) log.level = next.logLevel

    // A forward whose local port stays but whose target changed is stopped first, so
    // Forwards.reload() starts it again with the new target.
    const old = r.applied.file?.forwards ?? []
    const moved = file.forwards.filter((f) => old.some((o) => o.localPort === f.localPort && !sameForward(o, f)))
    if (moved.length) {
      store.setDeclared({ forwards: file.forwards.filter((f) => !moved.includes(f)), exposes: file.exposes })
      await agent.reload()
    }
    store.setDeclared(file)
    r.applied.file = file
    await agent.reload()
    warnShadowed(store, log, file.path)
    log.debug('config file applied', { file: file.path, forwards: file.forwards.map((f) => f.localPort), exposes: file.exposes.map((e) => e.port) })
    log.info('config reloaded', { file: file.path, forwards: store.forwards.length, exposes: store.exposes.length })
  } catch (err) {
    log.error('config not reloaded, the running config stays', { file: r.configPath, err: (err as Error).message })
  }
}

function sameForward(a: ForwardSpec, b: ForwardSpec): boolean {
  return a.localPort === b.localPort && a.bind === b.bind && a.peer === b.peer && a.remotePort === b.remotePort
}

function warnShadowed(store: StateStore, log: Logger, file: string): void {
  const s = store.shadowed()
  for (const f of s.forwards) log.warn('a forward in the config file is ignored: natctl manages that port', { file, localPort: f.localPort, hint: `natctl forward rm ${f.localPort}` })
  for (const e of s.exposes) log.warn('an expose in the config file is ignored: natctl manages that port', { file, port: e.port, hint: `natctl expose rm ${e.port}` })
}

/**
 * root running natd by hand on the service's state directory would leave root-owned
 * files the service (user natd) cannot read: refuse, and say what to do instead.
 */
function refuseForeignStateDir(dir: string): void {
  if (process.getuid?.() !== 0) return
  let owner: number
  try {
    owner = fs.statSync(dir).uid
  } catch {
    return // not there yet
  }
  if (owner !== 0) {
    usage(`${dir} belongs to uid ${owner} (the natd service's user): run the agent with systemctl (start|restart) natd, or give root its own --state-dir`)
  }
}

function usage(message: string): never {
  process.stderr.write(`natd: ${message}\nTry natd --help\n`)
  process.exit(2)
}

function fail(err: NatdError): never {
  process.stderr.write(`natd: ${err.message} (${err.code})\n`)
  process.exit(1)
}

await main()
