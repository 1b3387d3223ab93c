/**
 * The config file (`--config`, default /etc/natd/natd.json; docs/SERVICE.md): read,
 * size-capped and validated into settings and the forwards and exposes it declares.
 * config.ts merges it over the stored config (mergeConfig); this file opens nothing else.
 */
import fs from 'node:fs'
import { NatdError } from '../protocol/errors.js'
import { parseDuration } from '../protocol/duration.js'
import { isPeerId } from '../protocol/peer-ref.js'
import type { LogLevel } from '../common/logger.js'
import type { AllowEntry } from './allow-list.js'
import { checkConfigFile, HEARTBEAT_MAX_MS, HEARTBEAT_MIN_MS } from './config-schema.js'
import { parseServerSpec } from './server-address.js'
import { unsafeState, untrustedBecause } from './trusted-file.js'
import type { Declared } from './config.js'

/** The service's configuration file (systemd/natd.service passes it as --config). */
export const DEFAULT_CONFIG_FILE = '/etc/natd/natd.json'
/** Largest config file natd reads: a typo'd path to a huge file fails fast. */
const MAX_CONFIG_FILE_BYTES = 1024 * 1024

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
  portMapping?: boolean
}

/** The config file natd reads without --config: the service's, when natd runs as root or under systemd. */
export function defaultConfigFile(env: NodeJS.ProcessEnv = process.env, uid = process.getuid?.() ?? 0): string | null {
  return (uid === 0 || env.INVOCATION_ID) && fs.existsSync(DEFAULT_CONFIG_FILE) ? DEFAULT_CONFIG_FILE : null
}

/**
 * The config file may be root's (/etc/natd/natd.json is root:natd 0640) or natd's user's,
 * never another user's, and nobody else may write it: its exposes and allow lists say who
 * gets in. It may be a symlink (configuration management links files into /etc): the file
 * it leads to is judged, through the descriptor that is then read (trusted-file.ts).
 */
const CONFIG_FILE_RULE = { rootMayOwn: true, maxBytes: MAX_CONFIG_FILE_BYTES } as const

/**
 * Reads and validates the config file; throws INVALID_ARGUMENT naming the file and the
 * key, UNSAFE_STATE when it is not root's or natd's alone (CONFIG_FILE_RULE).
 */
export function readConfigFile(file: string): ConfigFile {
  let text: string
  let fd: number
  try {
    // O_NONBLOCK: opening a FIFO (or a device) to read would wait for a writer, and natd's
    // start with it, forever; it is refused below instead (a regular file reads the same).
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK)
  } catch (err) {
    throw new NatdError('INVALID_ARGUMENT', `cannot read the config file ${file}: ${(err as Error).message}`, { cause: err })
  }
  try {
    const st = fs.fstatSync(fd)
    if (!st.isFile()) throw new NatdError('INVALID_ARGUMENT', `the config file ${file} is not a regular file (${st.isDirectory() ? 'a directory' : st.isFIFO() ? 'a FIFO' : 'a device or socket'}): give a JSON file`)
    const why = untrustedBecause(st, CONFIG_FILE_RULE)
    if (why !== null) throw unsafeState(file, 'the config file', why, CONFIG_FILE_RULE)
    text = fs.readFileSync(fd, 'utf8')
  } catch (err) {
    if (err instanceof NatdError) throw err
    throw new NatdError('INVALID_ARGUMENT', `cannot read the config file ${file}: ${(err as Error).message}`, { cause: err })
  } finally {
    fs.closeSync(fd)
  }
  return parseConfigFile(text, file)
}

/**
 * Validates the text of a config file (docs/SERVICE.md has the reference):
 *
 *   { "name": "alice", "server": "rv.example.org:3478", "secretFile": "/etc/natd/secret",
 *     "heartbeat": "20s", "port": 41641, "logLevel": "info", "inbox": "/srv/natd-inbox", "portMapping": true,
 *     "forwards": [{ "localPort": 2222, "peer": "bob", "remotePort": 22, "bind": "127.0.0.1" }],
 *     "exposes": [{ "port": 22, "host": "127.0.0.1", "allow": ["bob"] }] }
 *
 * Every key is optional; "" and null mean "not set". A key "//" holds a comment. The
 * schema (config-schema.ts) checks each value; what it cannot say is checked here.
 */
export function parseConfigFile(text: string, file: string): ConfigFile {
  const bad = (key: string, what: string): NatdError => new NatdError('INVALID_ARGUMENT', `${file}: "${key}" ${what}`)
  let raw: unknown
  try {
    raw = JSON.parse(text)
  } catch (err) {
    throw new NatdError('INVALID_ARGUMENT', `${file}: not valid JSON: ${(err as Error).message}`)
  }
  const top = checkConfigFile(raw, file)
  const out: ConfigFile = { path: file, forwards: [], exposes: [] }
  if (top.name) out.name = top.name
  if (top.server) {
    try {
      parseServerSpec(top.server)
    } catch (err) {
      throw bad('server', `must be HOST, HOST:PORT or HOST:PORT#KEY: ${(err as Error).message}`)
    }
    out.server = top.server
  }
  if (top.secretFile !== undefined && top.secretFile !== '') out.secretFile = top.secretFile
  if (top.inbox !== undefined && top.inbox !== '') out.inbox = top.inbox
  if (top.heartbeat !== undefined && top.heartbeat !== null && top.heartbeat !== '') {
    let ms: number
    try {
      ms = parseDuration(top.heartbeat)
    } catch (err) {
      throw bad('heartbeat', `must be a duration like "20s" or a number of seconds (${(err as Error).message})`)
    }
    if (ms < HEARTBEAT_MIN_MS || ms > HEARTBEAT_MAX_MS) throw bad('heartbeat', 'must be between 200ms and 10m')
    out.heartbeatMs = ms
  }
  if (top.port !== undefined && top.port !== null) out.port = top.port
  if (typeof top.portMapping === 'boolean') out.portMapping = top.portMapping
  if (top.logLevel) out.logLevel = top.logLevel
  for (const [i, spec] of (top.forwards ?? []).entries()) {
    if (out.forwards.some((o) => o.localPort === spec.localPort)) throw bad(`forwards[${i}].localPort`, `repeats port ${spec.localPort}: each local port forwards to one place`)
    out.forwards.push(spec)
  }
  for (const [i, e] of (top.exposes ?? []).entries()) {
    if (out.exposes.some((o) => o.port === e.port)) throw bad(`exposes[${i}].port`, `repeats port ${e.port}: give each port one entry`)
    out.exposes.push({ port: e.port, host: e.host, allow: e.allow.map((a, j) => allowEntry(a, () => bad(`exposes[${i}].allow[${j}]`, 'needs a "name" or an "id"'))) })
  }
  return out
}

/**
 * An allow entry: a peer name, a full peer ID, or `{"name": …, "id": FULL_ID}`. A name is
 * resolved against the pinned peers when the file is applied (StateStore.setDeclared);
 * one without a pinned key matches nobody (allow-list.ts). An abbreviated ID, as older
 * files may hold, is taken like a name.
 */
function allowEntry(v: string | { name?: string; id?: string | null }, empty: () => NatdError): AllowEntry {
  if (typeof v === 'string') return isPeerId(v) ? { name: '', id: v } : { name: v, id: null }
  const entry = { name: v.name ?? '', id: v.id ?? null }
  if (entry.id === null && !entry.name) throw empty()
  return entry
}
