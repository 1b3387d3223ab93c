#!/usr/bin/env node
/** natd: the agent daemon. The only module that touches `process` (flags, signals, exit). */
import fs from 'node:fs'
import yargs from 'yargs'
import { hideBin } from 'yargs/helpers'
import { parseDuration } from '../protocol/duration.js'
import { NatdError, toNatdError } from '../protocol/errors.js'
import { networkSecretKey } from '../protocol/identity.js'
import { defaultSocketPath } from '../ipc/schema.js'
import { Agent } from './agent.js'
import { defaultStateDir, resolveConfig, StateStore } from './config.js'
import { createLogger, LOG_LEVELS, type LogLevel } from './logger.js'

/** SIGTERM must finish within this (systemd's stop timeout is far longer; peers want speed). */
const SHUTDOWN_DEADLINE_MS = 3_000

async function main(): Promise<void> {
  const argv = await yargs(hideBin(process.argv))
    .scriptName('natd')
    .usage('$0 --name NAME --server HOST[:PORT] [options]\n\nThe natd agent: registers with a rendezvous server and opens encrypted tunnels to peers.\nFlags are stored in the state directory; later starts need none.')
    .option('name', { type: 'string', describe: 'this agent\'s name on the server' })
    .option('server', { type: 'string', describe: 'rendezvous server HOST[:PORT] (port 3478 by default)' })
    .option('state-dir', { type: 'string', describe: 'keys, config and inbox (default /var/lib/natd as root, else $XDG_STATE_HOME/natd)' })
    .option('socket', { type: 'string', describe: 'local API socket (default /run/natd/natd.sock as root, else $XDG_RUNTIME_DIR/natd/natd.sock)' })
    .option('port', { type: 'number', describe: 'local UDP and TCP port (default: chosen once, then kept)' })
    .option('heartbeat', { type: 'string', describe: 'heartbeat interval (default 20s)' })
    .option('secret-file', { type: 'string', describe: 'file with the network secret, when the server needs one' })
    .option('log-level', { choices: LOG_LEVELS })
    .strict()
    .help()
    .version(false)
    .fail((msg, err) => usage(msg ?? err?.message ?? 'bad arguments'))
    .parseAsync()

  const stateDir = argv['state-dir'] ?? defaultStateDir()
  const socketPath = argv.socket ?? (process.env.RUNTIME_DIRECTORY ? `${process.env.RUNTIME_DIRECTORY.split(':')[0]}/natd.sock` : defaultSocketPath())
  if (argv.port !== undefined && (!Number.isInteger(argv.port) || argv.port < 0 || argv.port > 65535)) usage('--port must be 0-65535')
  let heartbeatMs: number | undefined
  try {
    heartbeatMs = argv.heartbeat === undefined ? undefined : parseDuration(argv.heartbeat)
  } catch (err) {
    usage(`--heartbeat: ${(err as Error).message}`)
  }

  let store: StateStore
  let config
  try {
    store = new StateStore(stateDir)
    config = resolveConfig(store, {
      name: argv.name,
      server: argv.server,
      heartbeatMs,
      port: argv.port,
      logLevel: argv['log-level'] as LogLevel | undefined,
      secretFile: argv['secret-file']
    })
  } catch (err) {
    const e = toNatdError(err)
    if (e.code === 'INVALID_ARGUMENT') usage(e.message)
    fail(e)
  }
  const log = createLogger({ level: config.logLevel })
  let secretKey: Buffer | null = null
  if (config.secretFile) {
    try {
      secretKey = networkSecretKey(fs.readFileSync(config.secretFile))
    } catch (err) {
      fail(new NatdError('INVALID_ARGUMENT', `cannot read the secret file ${config.secretFile}: ${(err as Error).message}`))
    }
  }

  const keyPair = store.loadIdentity()
  const agent = new Agent({ config, socketPath, secretKey }, { store, keyPair, log: log.child({ component: 'agent' }) })
  try {
    await agent.start()
  } catch (err) {
    fail(toNatdError(err))
  }
  if (config.port === 0) store.setConfig({ ...config, port: agent.localPort }) // keep the same port from now on

  let stopping = false
  const shutdown = (signal: string): void => {
    if (stopping) return
    stopping = true
    log.info('shutting down', { signal })
    setTimeout(() => {
      log.warn('shutdown deadline passed, exiting')
      process.exit(0)
    }, SHUTDOWN_DEADLINE_MS).unref()
    void agent.stop().finally(() => process.exit(0))
  }
  process.on('SIGTERM', () => shutdown('SIGTERM'))
  process.on('SIGINT', () => shutdown('SIGINT'))
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
