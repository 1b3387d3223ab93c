#!/usr/bin/env -S node --max-semi-space-size=4
// --max-semi-space-size=4: under load V8 grew the young generation to ~126 MB, as much as
// 100,000 registrations take; capped at 4 MB the server holds 100,000 agents in ~0.75 KiB of
// RSS each at the same CPU (docs/BENCHMARKS.md). The systemd unit sets it in NODE_OPTIONS.
/** natd-rendezvous: the public introducer. See README "Running a rendezvous server". */
import { readFileSync } from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import yargs, { type Argv } from 'yargs'
import { hideBin } from 'yargs/helpers'
import { createLogger, LOG_LEVELS } from '../common/logger.js'
import { parseBytes, parseDuration } from '../protocol/duration.js'
import { parseEndpoint, type Endpoint } from '../protocol/endpoint.js'
import { peerId, type KeyPair } from '../protocol/identity.js'
import { FileNameStore } from './file-name-store.js'
import { namesLs, namesLsRedis, namesRm, namesRmRedis } from './names-command.js'
import { PromMetrics, type ServerGauges } from './metrics.js'
import { RedisCluster } from './redis-cluster.js'
import { RendezvousServer } from './server.js'
import { defaultServerStateDir, ensureStateDir, KEY_FILE, loadServerKey } from './server-identity.js'
import { DEFAULT_SERVER_LIMITS, INTRO_SOURCE_FACTOR, type ServerLimits } from './limits.js'
import type { RelayLimits } from './relay.js'

/** Suggested to agents: Linux conntrack forgets an idle UDP mapping after 30 s. */
const DEFAULT_HEARTBEAT = '20s'
/** registry.ts's DEFAULT_NAME_TTL_MS, as a flag: a machine off for a long holiday keeps its name. */
const DEFAULT_NAME_TTL = '90d'

type ServerArgs = Awaited<ReturnType<ReturnType<typeof serverOptions>['parseAsync']>>

const D = DEFAULT_SERVER_LIMITS

/** The options of the default command (run the server). */
function serverOptions(y: Argv<{ 'state-dir': string | undefined }>) {
  return y
    .usage('$0 [options]\n\nRegisters natd agents, keeps their NAT mappings alive, introduces them to each other.')
    .option('host', { type: 'string', default: '0.0.0.0', describe: 'address to listen on' })
    .option('host6', { type: 'string', describe: 'an IPv6 address of this host to listen on too (UDP and TCP, same port): agents learn their IPv6 candidate there; a specific global address, as agents are told it' })
    .option('port', { type: 'number', default: 3478, describe: 'UDP and TCP port (UDP also answers STUN)' })
    .option('alt-port', { type: 'number', default: 3479, describe: 'second UDP port for STUN mapping checks (0 = off)' })
    .option('alt-host', { type: 'string', describe: 'second IP address of this host: STUN on it too, for RFC 5780 NAT behaviour discovery (natctl netcheck); needs a specific --host' })
    .option('secret-file', { type: 'string', describe: 'file holding the network secret agents must prove' })
    .option('key-file', { type: 'string', describe: 'the server\'s key pair (default STATE_DIR/server-key.json; created on first start, mode 0600)' })
    .option('print-key', { type: 'boolean', default: false, describe: 'print the server\'s key (its peer ID, for agents\' --server HOST#KEY) and exit' })
    .option('peer-timeout', { type: 'string', default: '60s', describe: 'drop an agent silent for this long' })
    .option('name-ttl', { type: 'string', default: DEFAULT_NAME_TTL, describe: 'free a name whose holder has not been seen for this long' })
    .option('heartbeat', { type: 'string', default: DEFAULT_HEARTBEAT, describe: 'heartbeat interval suggested to agents' })
    .option('relay', { type: 'boolean', default: true, describe: 'relay tunnels that cannot be punched (--no-relay turns it off)' })
    .option('relay-max-bytes', { type: 'string', default: '1GiB', describe: 'bytes one relayed tunnel may carry' })
    .option('relay-max-seconds', { type: 'string', default: '2h', describe: 'how long one relayed tunnel may last' })
    .option('relay-rate', { type: 'string', default: '8MiB', describe: 'bytes per second per direction of one relayed tunnel' })
    .option('relay-max-tunnels', { type: 'number', default: 100, describe: 'relayed tunnels at once' })
    .option('relay-max-permits', { type: 'number', default: D.maxRelayPermitsPerKey, describe: 'relay permissions one agent may hold unused at once (each lives 30 s)' })
    .option('max-unauth-per-ip', { type: 'number', default: D.maxUnauthPerSource, describe: 'unauthenticated connections at once from one IPv4 address or IPv6 /64' })
    .option('max-unauth', { type: 'number', default: D.maxUnauth, describe: 'unauthenticated connections at once, all sources' })
    .option('max-conns-per-ip', { type: 'number', default: D.maxConnsPerSource, describe: 'connections at once from one IPv4 address or IPv6 /64 (control and relay)' })
    .option('auth-timeout', { type: 'string', default: `${D.authTimeoutMs / 1000}s`, describe: 'a connection must register or bind a relay this long after it opened (absolute)' })
    .option('sessions-per-minute', { type: 'number', default: D.sessionsPerMinute, describe: 'Noise handshakes (registrations) per minute from one IPv4 address or IPv6 /64' })
    .option('introductions-per-minute', { type: 'number', default: D.introductionsPerMinute, describe: `introductions per minute per agent (an address gets ${INTRO_SOURCE_FACTOR} times that)` })
    .option('relays-per-minute', { type: 'number', default: D.relaysPerMinute, describe: 'relay binds per minute from one IPv4 address or IPv6 /64' })
    .option('redis', { type: 'string', describe: 'share the registry with other instances through this Redis 7 (redis://[user:pass@]host:port, rediss:// for TLS); default: this process alone' })
    .option('advertise', { type: 'string', describe: 'with --redis: the HOST[:PORT] agents dial for this instance (named to peers of other instances for relaying; default --host and --port)' })
    .option('metrics', { type: 'string', describe: 'serve Prometheus metrics on HOST:PORT at /metrics (off by default; bind a private address)' })
    .option('log-level', { choices: LOG_LEVELS, default: 'info' as const })
}

async function main(): Promise<void> {
  // The handlers only pick what to run: it runs after parsing, outside yargs's .fail().
  let run: (() => Promise<void>) | null = null
  await yargs(hideBin(process.argv))
    // A flag given twice: the last one wins (no flag here takes a list).
    .parserConfiguration({ 'duplicate-arguments-array': false })
    .scriptName('natd-rendezvous')
    .option('state-dir', { type: 'string', describe: 'key pair and name bindings (default $STATE_DIRECTORY, /var/lib/natd-rendezvous as root, else $XDG_STATE_HOME/natd-rendezvous)' })
    .command('$0', 'run the rendezvous server', serverOptions, (argv) => {
      run = () => runServer(argv)
    })
    .command('names', 'the names agents hold: names ls, names rm NAME', (y) =>
      y
        .option('redis', { type: 'string', describe: 'the bindings of the instances sharing this Redis (redis://…, as given to them) instead of --state-dir\'s' })
        .command('ls', 'list the name bindings (name, peer ID, bound, last seen)', (z) => z.option('json', { type: 'boolean', default: false, describe: 'print JSON' }), (argv) => {
          run = async () => (argv.redis === undefined ? namesLs(stateDirOf(argv['state-dir']), argv.json) : namesLsRedis(redisUrl(argv.redis), argv.json))
        })
        .command('rm <name>', 'free a name (a running server picks it up within seconds; with --redis, not while its holder is online)', (z) => z.positional('name', { type: 'string', demandOption: true }), (argv) => {
          run = async () => (argv.redis === undefined ? namesRm(stateDirOf(argv['state-dir']), argv.name) : namesRmRedis(redisUrl(argv.redis), argv.name))
        })
        .demandCommand(1, 'names needs a subcommand: ls or rm NAME')
    )
    .strict()
    .help()
    .version(false)
    .fail((msg, err) => {
      process.stderr.write(`natd-rendezvous: ${msg ?? err?.message}\nTry natd-rendezvous --help\n`)
      process.exit(2)
    })
    .parseAsync()
  // (TypeScript cannot see the handlers assign it.)
  if (run) await (run as () => Promise<void>)()
}

function stateDirOf(flag: string | undefined): string {
  return flag ?? defaultServerStateDir()
}

function redisUrl(url: string): string {
  if (!/^rediss?:\/\//.test(url)) usage('--redis takes a redis:// or rediss:// URL')
  return url
}

async function runServer(argv: ServerArgs): Promise<void> {
  const ports = [argv.port, argv['alt-port']]
  if (ports.some((p) => !Number.isInteger(p) || p < 0 || p > 65535) || argv.port === 0) usage('ports must be 1-65535 (--alt-port 0 turns it off)')
  if (argv.port === argv['alt-port']) usage('--alt-port must differ from --port')
  const altHost = argv['alt-host'] ?? null
  if (altHost !== null) {
    if (!net.isIP(altHost)) usage(`--alt-host must be an IP address, not ${JSON.stringify(altHost)}`)
    if (!net.isIP(argv.host) || argv.host === '0.0.0.0' || argv.host === '::') usage('--alt-host needs --host to be one specific address of this host (the server names both in its STUN answers)')
    if (net.isIP(altHost) !== net.isIP(argv.host)) usage('--alt-host and --host must be of the same address family')
    if (altHost === argv.host) usage('--alt-host must differ from --host')
    if (!argv['alt-port']) usage('--alt-host needs --alt-port (RFC 5780 uses two addresses and two ports)')
  }
  const host6 = argv.host6 ?? null
  if (host6 !== null && (net.isIP(host6) !== 6 || host6 === '::')) usage(`--host6 must be one specific IPv6 address of this host, not ${JSON.stringify(host6)}`)
  if (host6 !== null && net.isIP(argv.host) === 6) usage('--host6 is for a server whose --host is IPv4 (a --host that is IPv6 serves IPv6 already)')
  let peerTimeoutMs: number
  let heartbeatMs: number
  let nameTtlMs: number
  let relay: RelayLimits | null = null
  let limits: Partial<ServerLimits>
  try {
    limits = {
      maxUnauthPerSource: positiveInt(argv['max-unauth-per-ip'], '--max-unauth-per-ip'),
      maxUnauth: positiveInt(argv['max-unauth'], '--max-unauth'),
      maxConnsPerSource: positiveInt(argv['max-conns-per-ip'], '--max-conns-per-ip'),
      authTimeoutMs: parseDuration(argv['auth-timeout']),
      sessionsPerMinute: positiveInt(argv['sessions-per-minute'], '--sessions-per-minute'),
      introductionsPerMinute: positiveInt(argv['introductions-per-minute'], '--introductions-per-minute'),
      relaysPerMinute: positiveInt(argv['relays-per-minute'], '--relays-per-minute'),
      maxRelayPermitsPerKey: positiveInt(argv['relay-max-permits'], '--relay-max-permits')
    }
    if (limits.authTimeoutMs! <= 0) throw new RangeError('--auth-timeout must be more than 0')
    peerTimeoutMs = parseDuration(argv['peer-timeout'])
    heartbeatMs = parseDuration(argv.heartbeat)
    nameTtlMs = parseDuration(argv['name-ttl'])
    if (nameTtlMs <= 0) throw new RangeError('--name-ttl must be more than 0')
    if (argv.relay) {
      relay = {
        maxBytes: parseBytes(argv['relay-max-bytes']),
        maxSeconds: parseDuration(argv['relay-max-seconds']) / 1000,
        rate: parseBytes(argv['relay-rate']),
        maxTunnels: argv['relay-max-tunnels']
      }
      if (!Number.isInteger(relay.maxTunnels) || relay.maxTunnels < 1) throw new RangeError('--relay-max-tunnels must be a positive integer')
      if (relay.rate < 1024) throw new RangeError('--relay-rate must be at least 1KiB')
    }
  } catch (err) {
    usage((err as Error).message)
  }
  let secret: Buffer | undefined
  if (argv['secret-file']) {
    try {
      secret = readFileSync(argv['secret-file'])
    } catch (err) {
      usage(`cannot read --secret-file: ${(err as Error).message}`)
    }
    if (!secret.length) usage('--secret-file is empty')
  }

  const stateDir = stateDirOf(argv['state-dir'])
  let keyPair: KeyPair
  try {
    keyPair = loadServerKey(argv['key-file'] ?? path.join(stateDir, KEY_FILE)).keyPair
  } catch (err) {
    usage((err as Error).message)
  }
  if (argv['print-key']) {
    process.stdout.write(`${peerId(keyPair.publicKey)}\n`)
    return
  }

  let advertise: Endpoint | null = null
  if (argv.redis !== undefined) {
    try {
      advertise = parseEndpoint(argv.advertise ?? argv.host, argv.port)
    } catch (err) {
      usage(`--advertise: ${(err as Error).message}`)
    }
    if (!net.isIP(advertise.host) || advertise.host === '0.0.0.0' || advertise.host === '::') usage('--redis needs --advertise HOST[:PORT] (an address agents can dial) when --host is not one')
    redisUrl(argv.redis)
  }

  let metricsAt: Endpoint | null = null
  if (argv.metrics !== undefined) {
    try {
      metricsAt = parseEndpoint(argv.metrics)
    } catch (err) {
      usage(`--metrics: ${(err as Error).message}`)
    }
  }

  const log = createLogger({ level: argv['log-level'] })
  const gauges: ServerGauges = { agentsConnected: () => server.agentsConnected, relayTunnels: () => server.relay?.tunnels ?? 0, relayBytes: () => server.relay?.bytesRelayed ?? 0, redisHealthy: () => (cluster ? (cluster.healthy ? 1 : 0) : null) }
  const metrics: PromMetrics | null = metricsAt ? new PromMetrics(gauges) : null
  // Several instances: the bindings live in Redis (the registry's store is a cache of them).
  const cluster = argv.redis !== undefined && advertise ? new RedisCluster({ url: argv.redis, advertise, observe: (ms, ok) => metrics?.redis(ms, ok) }, { log: log.child({ component: 'cluster' }) }) : null
  let names: FileNameStore
  try {
    ensureStateDir(stateDir)
    names = new FileNameStore(stateDir, log.child({ component: 'names' }))
  } catch (err) {
    usage(`cannot open the names file in ${stateDir}: ${(err as Error).message}`)
  }
  // (the gauges read `server` at scrape time, after it is made)
  const server: RendezvousServer = new RendezvousServer(
    { host: argv.host, host6, port: argv.port, altPort: argv['alt-port'], altHost, secret, peerTimeoutMs, heartbeatMs, relay, nameTtlMs, limits },
    { log: log.child({ component: 'rendezvous' }), keyPair, names: cluster ? undefined : names, cluster, metrics }
  )
  try {
    await server.start()
    if (metrics && metricsAt) log.info('metrics listening', { at: `${metricsAt.host}:${await metrics.listen(metricsAt.host, metricsAt.port, log)}` })
  } catch (err) {
    log.error(cluster ? 'cannot listen or reach Redis' : 'cannot listen', { err: (err as Error).message })
    names.close()
    process.exit(1)
  }
  const shutdown = (signal: string): void => {
    log.info('shutting down', { signal })
    metrics?.close()
    void server
      .stop()
      .catch((err: unknown) => log.error('shutdown failed', { err: (err as Error).message }))
      .finally(() => names.close())
      .finally(() => process.exit(0))
  }
  process.on('SIGTERM', () => shutdown('SIGTERM'))
  process.on('SIGINT', () => shutdown('SIGINT'))
}

function positiveInt(n: number, flag: string): number {
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`${flag} must be a positive integer`)
  return n
}

function usage(message: string): never {
  process.stderr.write(`natd-rendezvous: ${message}\n`)
  process.exit(2)
}

await main()
