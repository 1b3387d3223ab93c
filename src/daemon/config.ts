/**
 * The agent's configuration and persistent state, the only module that opens conf.
 * Everything lives in the state directory (mode 0700): `config.json` (mode 0600, schema
 * validated), `identity.json` (the Ed25519 key pair, mode 0600) and `learnt.json` (what the
 * running agent learns: see LEARNT_FILE).
 *
 * Flags given to `natd` override the stored values and are persisted, so a service
 * restarted without flags comes back as it was.
 *
 * Under systemd the configuration is one file instead (`--config`, default
 * /etc/natd/natd.json; docs/SERVICE.md; read by config-file.ts): flags override it, and
 * it is authoritative for what it covers. Its `forwards` and `exposes` are declared on top
 * of natctl's, which stay in the state directory as before; SIGHUP reads the file again.
 */
import fs from 'node:fs'
import path from 'node:path'
import { isDeepStrictEqual } from 'node:util'
import Conf from 'conf'
import { NatdError } from '../protocol/errors.js'
import { generateKeyPair, isValidName, NAME_RULE, type KeyPair } from '../protocol/identity.js'
import { parseServerSpec } from './server-address.js'
import { ConfigJson } from './config-json.js'
import { LEARNT_FILE, readLearnt, type Learnt } from './learnt-file.js'
import { BackgroundJsonFile } from '../common/background-json-file.js'
import { defaultStateDirFor, removeStaleTemps, writeFileAtomic } from '../common/state-files.js'
import type { PeerRef } from '../protocol/peer-ref.js'
import type { LogLevel } from '../common/logger.js'
import { refuseUntrusted } from './trusted-file.js'
import { isCurrent, migrateAllowEntry, type AllowEntry } from './allow-list.js'
import { AJV_OPTIONS, HEARTBEAT_MAX_MS, HEARTBEAT_MIN_MS, STORE_SCHEMA } from './config-schema.js'
import type { ConfigFile } from './config-file.js'

/** Default heartbeat: Linux conntrack forgets an idle UDP mapping after 30 s (ARCHITECTURE.md). */
export const DEFAULT_HEARTBEAT_MS = 20_000
export { DEFAULT_SERVER_PORT } from './server-address.js'
// The config file (--config) is read in config-file.ts; re-exported for natd's importers.
export { DEFAULT_CONFIG_FILE, defaultConfigFile, parseConfigFile, readConfigFile, type ConfigFile } from './config-file.js'

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
  /**
   * Ask the default gateway to map our ports (PCP, NAT-PMP: port-mapping.ts). On by
   * default: it is what lets two hard NATs connect directly; off for networks whose
   * owner does not want natd to open ports on the router.
   */
  portMapping: boolean
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

export { LEARNT_FILE, LEARNT_MAX_BYTES } from './learnt-file.js'
/** The state file conf reads at start (the config, natctl's forwards and exposes, pinned peers). */
export const CONFIG_JSON_FILE = 'config.json'

/**
 * Largest config.json natd reads (it holds the config, natctl's forwards and exposes, and
 * the pinned peers: ~100 bytes a pin, so this is ~150,000 pins). A start never parses
 * more; past it natd refuses to start (UNSAFE_STATE) rather than drop pins or exposes.
 */
export const CONFIG_JSON_MAX_BYTES = 16 * 1024 * 1024

/**
 * The state directory and config.json may be root's (an administrator made them) but never
 * another user's, nor writable by group or others: whoever may write them can add an
 * expose for their key, pin their key for a peer's name or replace natd's key (trusted-file.ts).
 */
const STATE_DIR_RULE = { rootMayOwn: true, directory: true } as const
const CONFIG_JSON_RULE = { rootMayOwn: true, maxBytes: CONFIG_JSON_MAX_BYTES } as const

export interface StateStoreOptions {
  /** How learnt.json is written (tests stall it); default: writeFileAtomicAsync. */
  writeLearnt?: (file: string, text: string) => Promise<void>
  /** How config.json is written once read (config-json.ts; tests stall it); default: writeFileAtomicAsync. */
  writeConfig?: (file: string, text: string) => Promise<void>
}

function entryKey(e: ForwardSpec | ExposeSpec): string {
  return 'localPort' in e ? `forward ${e.bind}:${e.localPort} ${e.peer}:${e.remotePort}` : `expose ${e.host}:${e.port} ${e.allow.map((a) => a.id ?? a.name).join(',')}`
}

export function defaultStateDir(env: NodeJS.ProcessEnv = process.env, uid = process.getuid?.() ?? 0): string {
  return defaultStateDirFor('natd', env, uid)
}

/**
 * Persistent agent state. Methods return copies; changes take effect at once and go to
 * disk in the background (config-json.ts: `durable()` says when they are there).
 *
 * `forwards` and `exposes` are natctl's (persisted) plus the config file's (declared, held
 * in memory, never persisted): natctl's win on the same port. Removing a declared entry
 * with natctl hides it until the file is applied again (SIGHUP or restart).
 */
export class StateStore {
  /** config.json: read by conf at start, then held and written by config-json.ts. */
  private readonly conf: ConfigJson<StoreShape>
  private declared: Declared = { forwards: [], exposes: [] }
  /** Keys of declared entries natctl removed or replaced; cleared by setDeclared(). */
  private readonly hidden = new Set<string>()
  private learnt: Learnt
  private readonly learntFile: BackgroundJsonFile
  /** Told when a background write of learnt.json or config.json fails, with the file's path (the daemon logs it). */
  onWriteError: ((err: Error, file: string) => void) | null = null
  /**
   * Problems with the state files found at start that someone should look at (the daemon
   * logs them as errors; `natctl status` shows them): a learnt.json that did not read;
   * later, pins of inbound strangers stopped at their cap (known-peers.ts logs that). A
   * state directory or config.json others may write is no warning: the constructor throws
   * UNSAFE_STATE (trusted-file.ts).
   */
  readonly stateWarnings: string[] = []
  /** Temp files of background writes a dead natd left (removed at start). */
  readonly removedTemps: string[]
  /** False when a bad learnt.json could not be set aside: it is then never written over. */
  private learntWritable = true

  /** Throws UNSAFE_STATE when the state directory or its config.json is not natd's (or root's) alone. */
  constructor(
    readonly dir: string,
    o: StateStoreOptions = {}
  ) {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
    refuseUntrusted(dir, 'the state directory', STATE_DIR_RULE)
    refuseUntrusted(path.join(dir, CONFIG_JSON_FILE), 'the state file', CONFIG_JSON_RULE)
    this.removedTemps = removeStaleTemps(dir)
    const learnt = path.join(dir, LEARNT_FILE)
    const read = readLearnt(learnt)
    this.learnt = read.learnt
    if (read.bad !== null) this.setAsideLearnt(learnt, read.bad)
    this.learntFile = new BackgroundJsonFile(learnt, o.writeLearnt, (err, file) => this.onWriteError?.(err, file))
    const conf = new Conf<StoreShape>({
      cwd: dir,
      configName: path.basename(CONFIG_JSON_FILE, '.json'),
      configFileMode: 0o600,
      schema: STORE_SCHEMA as never,
      ajvOptions: AJV_OPTIONS,
      clearInvalidConfig: false,
      watch: false
    })
    this.conf = new ConfigJson(conf.path, conf.store, o.writeConfig, (err, file) => this.onWriteError?.(err, file))
    this.migrateExposes()
  }

  /**
   * A learnt.json that does not read is renamed learnt.json.bad-<time>, not written over:
   * the server keys pinned in it no longer count, so the next registration pins the
   * server's key on first use again, and the warning says where the old pins are.
   */
  private setAsideLearnt(file: string, why: string): void {
    const aside = `${file}.bad-${new Date().toISOString().replace(/[:.]/g, '-')}`
    try {
      fs.renameSync(file, aside)
    } catch (err) {
      this.learntWritable = false
      this.stateWarnings.push(`${LEARNT_FILE} could not be read (${why}) nor moved aside (${(err as Error).message}): the server keys pinned in it do not count, and natd will not write over it; fix or remove ${file}`)
      return
    }
    this.stateWarnings.push(`${LEARNT_FILE} could not be read (${why}): kept as ${aside}; the server keys pinned in it do not count, so the server's key is pinned on first use again (check it, or restore the file)`)
  }

  /** natctl's exposes stored before allow lists held keys: resolved against the pinned peers, once (allow-list.ts). */
  private migrateExposes(): void {
    const own = this.conf.get('exposes') ?? []
    if (own.every((e) => (e.allow ?? []).every(isCurrent))) return
    const pinned = this.knownPeers()
    this.conf.setNow('exposes', own.map((e) => ({ ...e, allow: (e.allow ?? []).map((a) => migrateAllowEntry(a, pinned)) })))
  }

  /** The stored config; a port of 0 (any) reads as the port learnt at an earlier start. */
  get config(): Readonly<AgentConfig> | null {
    const c = this.conf.get('config')
    if (!c) return null
    return Object.freeze({ ...c, ...(c.port === 0 && this.learnt.port ? { port: this.learnt.port } : {}) })
  }

  /** The port natd got when it asked for any: kept from now on (learnt.json, written in the background). */
  rememberPort(port: number): void {
    this.learnt = { ...this.learnt, port }
    this.saveLearnt()
  }

  private saveLearnt(): void {
    if (this.learntWritable) this.learntFile.save(this.learnt)
  }

  /** Resolves once what was learnt and changed so far is on disk (or its write failed). Never rejects. */
  async flushed(): Promise<void> {
    await Promise.all([this.learntFile.flushed(), this.conf.flushed()])
  }

  /** Resolves once every config change so far is on disk; STATE_WRITE_FAILED when its write failed (config-json.ts). */
  durable(): Promise<void> {
    return this.conf.durable()
  }

  /**
   * Stores `c`, on disk when this returns (config-json.ts setNow: at start, before natd
   * serves anything; `natd` commands that exit next rely on it); an unchanged config is
   * not written again.
   */
  setConfig(c: AgentConfig): Readonly<AgentConfig> {
    if (!isDeepStrictEqual(this.conf.get('config'), c)) this.conf.setNow('config', c)
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
    const pins = this.conf.peek('knownPeers') ?? {}
    return Object.hasOwn(pins, name) ? pins[name] : undefined
  }

  /** How many peers are pinned (without copying them). */
  get pinCount(): number {
    return Object.keys(this.conf.peek('knownPeers') ?? {}).length
  }

  pinPeer(name: string, id: string): void {
    this.conf.set('knownPeers', { ...(this.conf.get('knownPeers') ?? {}), [name]: id })
  }

  /** The server key pinned on first use for `server` (`host:port`), as a peer ID (learnt.json; config.json before it existed). */
  serverKey(server: string): string | undefined {
    return this.learnt.serverKeys?.[server] ?? (this.conf.get('serverKeys') ?? {})[server]
  }

  /** Pins at once in memory; on disk in the background (LEARNT_FILE says why). */
  pinServerKey(server: string, id: string): void {
    this.learnt = { ...this.learnt, serverKeys: { ...this.learnt.serverKeys, [server]: id } }
    this.saveLearnt()
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
  portMapping?: boolean | undefined
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
    inbox: flags.inbox ?? base.inbox ?? null,
    portMapping: flags.portMapping ?? base.portMapping ?? true
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
