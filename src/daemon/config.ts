/**
 * The agent's configuration and persistent state, the only module that opens conf.
 * Everything lives in the state directory (mode 0700): `config.json` (mode 0600, schema
 * validated) and `identity.json` (the Ed25519 key pair, mode 0600).
 *
 * Flags given to `natd` override the stored values and are persisted, so a service
 * restarted without flags comes back as it was.
 *
 * Under systemd the configuration is one file instead (`--config`, default
 * /etc/natd/natd.json; docs/SERVICE.md): flags override it, and it is authoritative for
 * what it covers. Its `forwards` and `exposes` are declared on top of natctl's, which stay
 * in the state directory as before; SIGHUP reads the file again.
 */
import fs from 'node:fs'
import path from 'node:path'
import Conf from 'conf'
import { NatdError } from '../protocol/errors.js'
import net from 'node:net'
import { parseDuration } from '../protocol/duration.js'
import { generateKeyPair, isValidName, NAME_RULE, type KeyPair } from '../protocol/identity.js'
import { parseServerSpec } from './server-address.js'
import { defaultStateDirFor, writeFileAtomic } from '../common/state-files.js'
import { isPeerId, type PeerRef } from '../protocol/peer-ref.js'
import { LOG_LEVELS, type LogLevel } from '../common/logger.js'
import { isCurrent, migrateAllowEntry, type AllowEntry } from './allow-list.js'

/** Default heartbeat: Linux conntrack forgets an idle UDP mapping after 30 s (ARCHITECTURE.md). */
export const DEFAULT_HEARTBEAT_MS = 20_000
export { DEFAULT_SERVER_PORT } from './server-address.js'
/** The service's configuration file (systemd/natd.service passes it as --config). */
export const DEFAULT_CONFIG_FILE = '/etc/natd/natd.json'
/** Largest config file natd reads: a typo'd path to a huge file fails fast. */
const MAX_CONFIG_FILE_BYTES = 1024 * 1024
const HEARTBEAT_MIN_MS = 200
const HEARTBEAT_MAX_MS = 600_000

export interface ForwardSpec {
  localPort: number
  bind: string
  peer: string
  remotePort: number
}

export interface ExposeSpec {
  port: number
  host: string
  /** Peers by whole key (allow-list.ts); empty = every peer. */
  allow: AllowEntry[]
}

export interface AgentConfig {
  name: string
  server: string
  heartbeatMs: number
  /** Local UDP port (tunnels) and TCP port (control connection, TCP punching); chosen once. */
  port: number
  logLevel: LogLevel
  secretFile: string | null
  /**
   * Where received files go (absolute); null = `<state dir>/inbox`. Only the operator sets
   * it (flag or config file): the API, open to all of group natd, cannot.
   */
  inbox: string | null
}

/** What the config file adds to natctl's forwards and exposes. */
export interface Declared {
  forwards: ForwardSpec[]
  exposes: ExposeSpec[]
}

interface StoreShape {
  config: AgentConfig
  forwards: ForwardSpec[]
  exposes: ExposeSpec[]
  /** Peer ID pinned to each name on first use. */
  knownPeers: Record<string, string>
  /** Server keys pinned on first use, by `host:port` as the user named the server. */
  serverKeys: Record<string, string>
}

function entryKey(e: ForwardSpec | ExposeSpec): string {
  return 'localPort' in e ? `forward ${e.bind}:${e.localPort} ${e.peer}:${e.remotePort}` : `expose ${e.host}:${e.port} ${e.allow.map((a) => a.id ?? a.name).join(',')}`
}

export function defaultStateDir(env: NodeJS.ProcessEnv = process.env, uid = process.getuid?.() ?? 0): string {
  return defaultStateDirFor('natd', env, uid)
}

const schema = {
  config: {
    type: 'object',
    properties: {
      name: { type: 'string' },
      server: { type: 'string' },
      heartbeatMs: { type: 'number', minimum: 200 },
      port: { type: 'number', minimum: 0, maximum: 65535 },
      logLevel: { type: 'string', enum: ['error', 'warn', 'info', 'debug'] },
      secretFile: { type: ['string', 'null'] },
      inbox: { type: ['string', 'null'] }
    }
  },
  forwards: { type: 'array' },
  exposes: { type: 'array' },
  knownPeers: { type: 'object' },
  serverKeys: { type: 'object' }
} as const

/**
 * Persistent agent state. Methods return copies; writes go straight to disk (atomically, by conf).
 *
 * `forwards` and `exposes` are natctl's (persisted) plus the config file's (declared, held
 * in memory, never persisted): natctl's win on the same port. Removing a declared entry
 * with natctl hides it until the file is applied again (SIGHUP or restart).
 */
export class StateStore {
  private readonly conf: Conf<StoreShape>
  private declared: Declared = { forwards: [], exposes: [] }
  /** Keys of declared entries natctl removed or replaced; cleared by setDeclared(). */
  private readonly hidden = new Set<string>()

  constructor(readonly dir: string) {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
    this.conf = new Conf<StoreShape>({
      cwd: dir,
      configName: 'config',
      configFileMode: 0o600,
      schema: schema as never,
      clearInvalidConfig: false,
      watch: false
    })
    this.migrateExposes()
  }

  /** natctl's exposes stored before allow lists held keys: resolved against the pinned peers, once (allow-list.ts). */
  private migrateExposes(): void {
    const own = this.conf.get('exposes') ?? []
    if (own.every((e) => (e.allow ?? []).every(isCurrent))) return
    const pinned = this.knownPeers()
    this.conf.set('exposes', own.map((e) => ({ ...e, allow: (e.allow ?? []).map((a) => migrateAllowEntry(a, pinned)) })))
  }

  get config(): Readonly<AgentConfig> | null {
    const c = this.conf.get('config')
    return c ? Object.freeze({ ...c }) : null
  }

  setConfig(c: AgentConfig): Readonly<AgentConfig> {
    this.conf.set('config', c)
    return Object.freeze({ ...c })
  }

  /** natctl's forwards, then the declared ones on ports natctl does not use. */
  get forwards(): ForwardSpec[] {
    const own = this.conf.get('forwards') ?? []
    return structuredClone([...own, ...this.liveDeclared('forwards', own)])
  }

  setForwards(f: ForwardSpec[]): void {
    this.conf.set('forwards', this.keepOwn('forwards', f))
  }

  /** natctl's exposes and the declared ones on other ports, by port. */
  get exposes(): ExposeSpec[] {
    const own = this.conf.get('exposes') ?? []
    return structuredClone([...own, ...this.liveDeclared('exposes', own)].sort((a, b) => a.port - b.port))
  }

  setExposes(e: ExposeSpec[]): void {
    this.conf.set('exposes', this.keepOwn('exposes', e))
  }

  /**
   * The config file's forwards and exposes (start and SIGHUP). Shows entries natctl had
   * hidden again. Allow entries given by name are resolved against the pinned peers now.
   */
  setDeclared(d: Declared): void {
    const pinned = this.knownPeers()
    this.declared = structuredClone({ ...d, exposes: d.exposes.map((e) => ({ ...e, allow: e.allow.map((a) => (a.id === null ? migrateAllowEntry(a.name, pinned) : a)) })) })
    this.hidden.clear()
  }

  /** Declared entries that do not apply because natctl manages the same port (to warn about). */
  shadowed(): Declared {
    const own = { forwards: this.conf.get('forwards') ?? [], exposes: this.conf.get('exposes') ?? [] }
    return {
      forwards: this.declared.forwards.filter((d) => own.forwards.some((o) => o.localPort === d.localPort)),
      exposes: this.declared.exposes.filter((d) => own.exposes.some((o) => o.port === d.port))
    }
  }

  private liveDeclared<K extends keyof Declared>(kind: K, own: Declared[K]): Declared[K] {
    const port = (e: ForwardSpec | ExposeSpec): number => ('localPort' in e ? e.localPort : e.port)
    return (this.declared[kind] as Array<ForwardSpec | ExposeSpec>).filter(
      (d) => !this.hidden.has(entryKey(d)) && !(own as Array<ForwardSpec | ExposeSpec>).some((o) => port(o) === port(d))
    ) as Declared[K]
  }

  /** Of a full list written back by Forwards/Exposes: declared entries stay declared (or become hidden when missing), the rest is natctl's. */
  private keepOwn<K extends keyof Declared>(kind: K, list: Declared[K]): Declared[K] {
    const live = this.liveDeclared(kind, this.conf.get(kind) ?? []) as Array<ForwardSpec | ExposeSpec>
    const keys = new Set((list as Array<ForwardSpec | ExposeSpec>).map(entryKey))
    for (const d of live) if (!keys.has(entryKey(d))) this.hidden.add(entryKey(d))
    const liveKeys = new Set(live.map(entryKey))
    return (list as Array<ForwardSpec | ExposeSpec>).filter((e) => !liveKeys.has(entryKey(e))) as Declared[K]
  }

  knownPeer(name: string): string | undefined {
    return (this.conf.get('knownPeers') ?? {})[name]
  }

  pinPeer(name: string, id: string): void {
    this.conf.set('knownPeers', { ...(this.conf.get('knownPeers') ?? {}), [name]: id })
  }

  /** The server key pinned on first use for `server` (`host:port`), as a peer ID. */
  serverKey(server: string): string | undefined {
    return (this.conf.get('serverKeys') ?? {})[server]
  }

  pinServerKey(server: string, id: string): void {
    this.conf.set('serverKeys', { ...(this.conf.get('serverKeys') ?? {}), [server]: id })
  }

  /** Every pinned peer, by name. */
  knownPeers(): PeerRef[] {
    return Object.entries(this.conf.get('knownPeers') ?? {})
      .filter(([, id]) => typeof id === 'string')
      .map(([name, id]) => ({ name, id }))
      .sort((a, b) => a.name.localeCompare(b.name))
  }

  unpinPeer(name: string): void {
    const { [name]: _gone, ...rest } = this.conf.get('knownPeers') ?? {}
    this.conf.set('knownPeers', rest)
  }

  /** Loads the key pair, creating it (mode 0600) on first start. */
  loadIdentity(): KeyPair {
    const file = path.join(this.dir, 'identity.json')
    try {
      const raw = JSON.parse(fs.readFileSync(file, 'utf8')) as { publicKey: string; secretKey: string }
      const kp = { publicKey: Buffer.from(raw.publicKey, 'hex'), secretKey: Buffer.from(raw.secretKey, 'hex') }
      if (kp.publicKey.length !== 32 || kp.secretKey.length !== 64) throw new Error('bad key lengths')
      return kp
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
        throw new NatdError('INTERNAL', `cannot read ${file}: ${(err as Error).message} (move it away to create a new identity)`)
      }
    }
    const kp = generateKeyPair()
    // fsynced before natd goes on: a crash must not leave an agent that registered a key it lost.
    writeFileAtomic(file, JSON.stringify({ publicKey: kp.publicKey.toString('hex'), secretKey: Buffer.from(kp.secretKey).toString('hex') }) + '\n')
    return kp
  }
}

export interface Overrides {
  name?: string | undefined
  server?: string | undefined
  heartbeatMs?: number | undefined
  port?: number | undefined
  logLevel?: LogLevel | undefined
  secretFile?: string | undefined
  inbox?: string | undefined
}

/** The config file, validated: settings it gives, and the forwards and exposes it declares. */
export interface ConfigFile extends Declared {
  path: string
  name?: string
  server?: string
  heartbeatMs?: number
  port?: number
  logLevel?: LogLevel
  secretFile?: string | null
  inbox?: string | null
}

/**
 * Merges flags over the config file (when there is one) over the stored config, and
 * validates. Without a file the stored values fill what flags leave out; with one, the
 * file is the configuration and only the port (chosen once) comes from the store.
 * Throws INVALID_ARGUMENT with a clear message. Persists nothing (see resolveConfig).
 */
export function mergeConfig(stored: Readonly<AgentConfig> | null, flags: Overrides, file: ConfigFile | null = null): AgentConfig {
  const base: Partial<AgentConfig> = file ?? stored ?? {}
  const merged: AgentConfig = {
    name: flags.name ?? base.name ?? '',
    server: flags.server ?? base.server ?? '',
    heartbeatMs: flags.heartbeatMs ?? base.heartbeatMs ?? DEFAULT_HEARTBEAT_MS,
    port: flags.port ?? file?.port ?? stored?.port ?? 0,
    logLevel: flags.logLevel ?? base.logLevel ?? 'info',
    secretFile: flags.secretFile ?? base.secretFile ?? null,
    inbox: flags.inbox ?? base.inbox ?? null
  }
  const where = (key: string, flag: string): string => (file ? `set "${key}" in ${file.path} (or pass ${flag})` : `start natd once with ${flag}`)
  if (!merged.name) throw new NatdError('INVALID_ARGUMENT', `no name: ${where('name', '--name NAME')}`)
  if (!isValidName(merged.name)) throw new NatdError('INVALID_ARGUMENT', `bad --name ${JSON.stringify(merged.name)}: ${NAME_RULE}`)
  if (!merged.server) throw new NatdError('INVALID_ARGUMENT', `no server: ${where('server', '--server HOST[:PORT][#KEY]')}`)
  parseServerSpec(merged.server)
  if (merged.inbox !== null && !path.isAbsolute(merged.inbox)) throw new NatdError('INVALID_ARGUMENT', `--inbox must be an absolute path, not ${JSON.stringify(merged.inbox)}`)
  if (merged.heartbeatMs < HEARTBEAT_MIN_MS || merged.heartbeatMs > HEARTBEAT_MAX_MS) throw new NatdError('INVALID_ARGUMENT', '--heartbeat must be between 200ms and 10m')
  return merged
}

/** mergeConfig, then persists the result (so a later start without flags comes back the same). */
export function resolveConfig(store: StateStore, flags: Overrides, file: ConfigFile | null = null): Readonly<AgentConfig> {
  return store.setConfig(mergeConfig(store.config, flags, file))
}

/** The config file natd reads without --config: the service's, when natd runs as root or under systemd. */
export function defaultConfigFile(env: NodeJS.ProcessEnv = process.env, uid = process.getuid?.() ?? 0): string | null {
  return (uid === 0 || env.INVOCATION_ID) && fs.existsSync(DEFAULT_CONFIG_FILE) ? DEFAULT_CONFIG_FILE : null
}

/** Reads and validates the config file; throws INVALID_ARGUMENT naming the file and the key. */
export function readConfigFile(file: string): ConfigFile {
  let text: string
  try {
    const fd = fs.openSync(file, 'r')
    try {
      if (fs.fstatSync(fd).size > MAX_CONFIG_FILE_BYTES) throw new Error(`larger than ${MAX_CONFIG_FILE_BYTES} bytes`)
      text = fs.readFileSync(fd, 'utf8')
    } finally {
      fs.closeSync(fd)
    }
  } catch (err) {
    throw new NatdError('INVALID_ARGUMENT', `cannot read the config file ${file}: ${(err as Error).message}`, { cause: err })
  }
  return parseConfigFile(text, file)
}

const FILE_KEYS = ['name', 'server', 'secretFile', 'heartbeat', 'port', 'logLevel', 'inbox', 'forwards', 'exposes'] as const
const FORWARD_KEYS = ['localPort', 'peer', 'remotePort', 'bind'] as const
const EXPOSE_KEYS = ['port', 'host', 'allow'] as const

/**
 * Validates the text of a config file (docs/SERVICE.md has the reference):
 *
 *   { "name": "alice", "server": "rv.example.org:3478", "secretFile": "/etc/natd/secret",
 *     "heartbeat": "20s", "port": 41641, "logLevel": "info", "inbox": "/srv/natd-inbox",
 *     "forwards": [{ "localPort": 2222, "peer": "bob", "remotePort": 22, "bind": "127.0.0.1" }],
 *     "exposes": [{ "port": 22, "host": "127.0.0.1", "allow": ["bob"] }] }
 *
 * Every key is optional; "" and null mean "not set". A key "//" holds a comment.
 */
export function parseConfigFile(text: string, file: string): ConfigFile {
  const bad = (key: string, what: string): NatdError => new NatdError('INVALID_ARGUMENT', `${file}: "${key}" ${what}`)
  let raw: unknown
  try {
    raw = JSON.parse(text)
  } catch (err) {
    throw new NatdError('INVALID_ARGUMENT', `${file}: not valid JSON: ${(err as Error).message}`)
  }
  const top = object(raw, null, FILE_KEYS, bad, file)
  const out: ConfigFile = { path: file, forwards: [], exposes: [] }
  const str = (v: unknown, key: string): string | undefined => {
    if (v === undefined || v === null || v === '') return undefined
    if (typeof v !== 'string') throw bad(key, `must be a string, not ${JSON.stringify(v)}`)
    return v
  }
  const name = str(top.name, 'name')
  if (name !== undefined && !isValidName(name)) throw bad('name', `is ${JSON.stringify(name)}; a name is ${NAME_RULE}`)
  if (name !== undefined) out.name = name
  const server = str(top.server, 'server')
  if (server !== undefined) {
    try {
      parseServerSpec(server)
    } catch (err) {
      throw bad('server', `must be HOST, HOST:PORT or HOST:PORT#KEY: ${(err as Error).message}`)
    }
    out.server = server
  }
  if (top.secretFile === null) out.secretFile = null
  else {
    const secretFile = str(top.secretFile, 'secretFile')
    if (secretFile !== undefined && !path.isAbsolute(secretFile)) throw bad('secretFile', `must be an absolute path, not ${JSON.stringify(secretFile)}`)
    if (secretFile !== undefined) out.secretFile = secretFile
  }
  if (top.inbox === null) out.inbox = null
  else {
    const inbox = str(top.inbox, 'inbox')
    if (inbox !== undefined && !path.isAbsolute(inbox)) throw bad('inbox', `must be an absolute path, not ${JSON.stringify(inbox)}`)
    if (inbox !== undefined) out.inbox = inbox
  }
  if (top.heartbeat !== undefined && top.heartbeat !== null && top.heartbeat !== '') {
    let ms: number
    try {
      if (typeof top.heartbeat !== 'string' && typeof top.heartbeat !== 'number') throw new Error(`not ${JSON.stringify(top.heartbeat)}`)
      ms = parseDuration(top.heartbeat)
    } catch (err) {
      throw bad('heartbeat', `must be a duration like "20s" or a number of seconds (${(err as Error).message})`)
    }
    if (ms < HEARTBEAT_MIN_MS || ms > HEARTBEAT_MAX_MS) throw bad('heartbeat', 'must be between 200ms and 10m')
    out.heartbeatMs = ms
  }
  if (top.port !== undefined && top.port !== null) out.port = port(top.port, 'port', bad, 0)
  if (top.logLevel !== undefined && top.logLevel !== null) {
    if (!(LOG_LEVELS as readonly unknown[]).includes(top.logLevel)) throw bad('logLevel', `must be one of ${LOG_LEVELS.join(', ')}, not ${JSON.stringify(top.logLevel)}`)
    out.logLevel = top.logLevel as LogLevel
  }
  for (const [i, entry] of array(top.forwards, 'forwards', bad).entries()) {
    const key = `forwards[${i}]`
    const f = object(entry, key, FORWARD_KEYS, bad, file)
    const spec: ForwardSpec = {
      localPort: port(f.localPort, `${key}.localPort`, bad),
      bind: ip(f.bind ?? '127.0.0.1', `${key}.bind`, bad),
      peer: peerName(f.peer, `${key}.peer`, bad),
      remotePort: port(f.remotePort, `${key}.remotePort`, bad)
    }
    if (out.forwards.some((o) => o.localPort === spec.localPort)) throw bad(`${key}.localPort`, `repeats port ${spec.localPort}: each local port forwards to one place`)
    out.forwards.push(spec)
  }
  for (const [i, entry] of array(top.exposes, 'exposes', bad).entries()) {
    const key = `exposes[${i}]`
    const e = object(entry, key, EXPOSE_KEYS, bad, file)
    const spec: ExposeSpec = {
      port: port(e.port, `${key}.port`, bad),
      host: ip(e.host ?? '127.0.0.1', `${key}.host`, bad),
      allow: array(e.allow, `${key}.allow`, bad).map((p, j) => allowEntry(p, `${key}.allow[${j}]`, bad))
    }
    if (out.exposes.some((o) => o.port === spec.port)) throw bad(`${key}.port`, `repeats port ${spec.port}: give each port one entry`)
    out.exposes.push(spec)
  }
  return out
}

type Bad = (key: string, what: string) => NatdError

function object<K extends string>(v: unknown, key: string | null, known: readonly K[], bad: Bad, file: string): Partial<Record<K, unknown>> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) {
    if (key === null) throw new NatdError('INVALID_ARGUMENT', `${file}: must hold a JSON object {"name": …, "server": …}`)
    throw bad(key, `must be an object {${known.map((k) => `"${k}": …`).join(', ')}}`)
  }
  for (const k of Object.keys(v)) {
    if (k === '//' && key === null) continue
    if (!(known as readonly string[]).includes(k)) throw bad(key === null ? k : `${key}.${k}`, `is not a setting natd knows (known: ${known.join(', ')})`)
  }
  return v as Partial<Record<K, unknown>>
}

function array(v: unknown, key: string, bad: Bad): unknown[] {
  if (v === undefined || v === null) return []
  if (!Array.isArray(v)) throw bad(key, `must be an array, not ${JSON.stringify(v)}`)
  return v
}

function port(v: unknown, key: string, bad: Bad, min = 1): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > 65535) throw bad(key, `must be a port number ${min}-65535, not ${JSON.stringify(v) ?? 'missing'}`)
  return v
}

function ip(v: unknown, key: string, bad: Bad): string {
  if (typeof v !== 'string' || !net.isIP(v)) throw bad(key, `must be an IP address, not ${JSON.stringify(v)}`)
  return v
}

/**
 * An allow entry: a peer name, a full peer ID, or `{"name": …, "id": FULL_ID}`. A name is
 * resolved against the pinned peers when the file is applied (StateStore.setDeclared);
 * one without a pinned key matches nobody (allow-list.ts). An abbreviated ID, as older
 * files may hold, is taken like a name.
 */
function allowEntry(v: unknown, key: string, bad: Bad): AllowEntry {
  if (typeof v === 'object' && v !== null && !Array.isArray(v)) {
    const o = v as Record<string, unknown>
    for (const k of Object.keys(o)) if (k !== 'name' && k !== 'id') throw bad(`${key}.${k}`, 'is not a setting natd knows (known: name, id)')
    const id = o.id === undefined || o.id === null ? null : o.id
    if (id !== null && (typeof id !== 'string' || !isPeerId(id))) throw bad(`${key}.id`, `must be a full peer ID (52 base32 characters), not ${JSON.stringify(id)}`)
    const name = o.name === undefined ? '' : peerName(o.name, `${key}.name`, bad)
    if (id === null && !name) throw bad(key, 'needs a "name" or an "id"')
    return { name, id }
  }
  const typed = peerName(v, key, bad)
  return isPeerId(typed) ? { name: '', id: typed } : { name: typed, id: null }
}

function peerName(v: unknown, key: string, bad: Bad): string {
  // A name, or a peer ID (base32) or its first 8+ characters, as natctl takes them.
  if (typeof v !== 'string' || !(isValidName(v) || /^[a-z2-7]{8,52}$/.test(v))) throw bad(key, `must be a peer name or ID, not ${JSON.stringify(v) ?? 'missing'}`)
  return v
}
