/**
 * The one JSON schema of natd's settings. conf validates the state directory's
 * config.json with it (STORE_SCHEMA), and the service's config file is checked against
 * it (checkConfigFile). Each setting is described once: its `description` is what a user
 * reads when a value is refused, e.g.
 *
 *   /etc/natd/natd.json: "forwards[0].localPort" must be a port number 1-65535, not 70000
 *
 * What JSON Schema cannot say (that a server address parses, a duration, two entries on
 * one port) config.ts checks after the schema.
 */
import net from 'node:net'
import { Ajv2020, type ErrorObject, type Options } from 'ajv/dist/2020.js'
import { LOG_LEVELS } from '../common/logger.js'
import { NAME_PATTERN, NAME_RULE } from '../protocol/identity.js'
import { ID_PREFIX_PATTERN, PEER_ID_PATTERN } from '../protocol/peer-ref.js'
import { NatdError } from '../protocol/errors.js'

export const HEARTBEAT_MIN_MS = 200
export const HEARTBEAT_MAX_MS = 600_000
/** Where a forward listens and an exposed port is reached when the entry does not say. */
export const DEFAULT_BIND = '127.0.0.1'

/**
 * Options both validators take (conf's and ours): the `ip` format is what node:net
 * accepts; union types ("string or object") are meant, so ajv need not warn of them on
 * stderr at every start.
 */
export const AJV_OPTIONS: Options = { formats: { ip: (s: string) => net.isIP(s) !== 0 }, allowUnionTypes: true }

const inner = (re: RegExp): string => re.source.replace(/^\^/, '').replace(/\$$/, '')
/** A peer as natctl takes it: a name, a whole ID or an abbreviated one. */
const PEER = `^(?:${inner(NAME_PATTERN)}|${inner(ID_PREFIX_PATTERN)})$`

const port = (min: number) => ({ type: 'integer', minimum: min, maximum: 65535, description: `must be a port number ${min}-65535` }) as const
const ip = { type: 'string', format: 'ip', default: DEFAULT_BIND, description: 'must be an IP address' } as const
const peer = { type: 'string', pattern: PEER, description: 'must be a peer name or ID' } as const
const absolutePath = { type: ['string', 'null'], pattern: '^(?:/[\\s\\S]*)?$', description: 'must be an absolute path' } as const

/** A setting the config file may also leave unset, with "" or null. */
const orNull = <T extends { type: string }>(s: T) => ({ ...s, type: [s.type, 'null'] }) as const

const SETTINGS = {
  name: { type: 'string', pattern: `^(?:${inner(NAME_PATTERN)})?$`, description: `must be ${NAME_RULE}` },
  server: { type: 'string', description: 'must be HOST, HOST:PORT or HOST:PORT#KEY' },
  port: port(0),
  logLevel: { enum: LOG_LEVELS, description: `must be one of ${LOG_LEVELS.join(', ')}` },
  secretFile: absolutePath,
  inbox: absolutePath,
  portMapping: { type: 'boolean', description: 'must be true or false' }
} as const

/** An allow entry: a peer name, a full peer ID, or {"name": …, "id": FULL_ID} (allow-list.ts). */
const ALLOW_ENTRY = {
  type: ['string', 'object'],
  pattern: PEER,
  properties: {
    name: { type: 'string', pattern: `^(?:${inner(NAME_PATTERN)}|${inner(ID_PREFIX_PATTERN)})?$`, description: 'must be a peer name or ID' },
    id: { type: ['string', 'null'], pattern: PEER_ID_PATTERN.source, description: 'must be a full peer ID (52 base32 characters)' }
  },
  additionalProperties: false,
  description: 'must be a peer name or ID'
} as const

const FORWARD = {
  type: 'object',
  properties: { localPort: port(1), peer, remotePort: port(1), bind: ip },
  required: ['localPort', 'peer', 'remotePort'],
  additionalProperties: false,
  description: 'must be an object {"localPort": …, "peer": …, "remotePort": …, "bind": …}'
} as const

const EXPOSE = {
  type: 'object',
  properties: { port: port(1), host: ip, allow: { type: 'array', items: ALLOW_ENTRY, default: [], description: 'must be an array of peer names or IDs' } },
  required: ['port'],
  additionalProperties: false,
  description: 'must be an object {"port": …, "host": …, "allow": […]}'
} as const

/** config.json in the state directory, as conf's `schema` (its top-level properties). */
export const STORE_SCHEMA = {
  config: {
    type: 'object',
    properties: { ...SETTINGS, heartbeatMs: { type: 'number', minimum: HEARTBEAT_MIN_MS, maximum: HEARTBEAT_MAX_MS } }
  },
  forwards: { type: 'array', items: FORWARD },
  exposes: { type: 'array', items: EXPOSE },
  knownPeers: { type: 'object' },
  serverKeys: { type: 'object' }
} as const

/** The service's config file (docs/SERVICE.md); a key "//" holds a comment. */
const FILE_SCHEMA = {
  type: 'object',
  properties: {
    '//': {},
    name: orNull(SETTINGS.name),
    server: orNull(SETTINGS.server),
    secretFile: SETTINGS.secretFile,
    heartbeat: { type: ['string', 'number', 'null'], description: 'must be a duration like "20s" or a number of seconds' },
    port: orNull(SETTINGS.port),
    logLevel: { ...SETTINGS.logLevel, enum: [...LOG_LEVELS, null] },
    inbox: SETTINGS.inbox,
    portMapping: orNull(SETTINGS.portMapping),
    forwards: { type: ['array', 'null'], items: FORWARD, description: 'must be an array of forwards' },
    exposes: { type: ['array', 'null'], items: EXPOSE, description: 'must be an array of exposes' }
  },
  additionalProperties: false,
  description: 'must hold a JSON object {"name": …, "server": …}'
} as const

/** The config file as the schema lets it through (defaults filled in). */
export interface RawConfigFile {
  name?: string | null
  server?: string | null
  secretFile?: string | null
  heartbeat?: string | number | null
  port?: number | null
  logLevel?: (typeof LOG_LEVELS)[number] | null
  inbox?: string | null
  portMapping?: boolean | null
  forwards?: Array<{ localPort: number; peer: string; remotePort: number; bind: string }> | null
  exposes?: Array<{ port: number; host: string; allow: Array<string | { name?: string; id?: string | null }> }> | null
}

const validateFile = new Ajv2020({ ...AJV_OPTIONS, useDefaults: true, verbose: true, allErrors: true }).compile<RawConfigFile>(FILE_SCHEMA)

const validateStore = new Ajv2020({ ...AJV_OPTIONS, useDefaults: true, verbose: true, allErrors: true }).compile({ type: 'object', properties: STORE_SCHEMA })

/**
 * Checks config.json's content (`file`) against STORE_SCHEMA, as conf does when it reads
 * it at start (defaults filled in); throws INVALID_ARGUMENT naming the key. Run before a
 * change is stored while natd runs (config-json.ts): a value conf would refuse, written,
 * would stop the next start (conf's clearInvalidConfig is false).
 */
export function checkStore(store: unknown, file: string): void {
  if (validateStore(store)) return
  const errors = validateStore.errors!
  throw describeError(errors.find((e) => e.keyword !== 'required') ?? errors[0]!, file)
}

/**
 * Checks a parsed config file against the schema (filling defaults in); throws
 * INVALID_ARGUMENT naming the file and the key. One error: the user fixes one thing at a
 * time. A value written wrong is told before one left out.
 */
export function checkConfigFile(raw: unknown, file: string): RawConfigFile {
  if (validateFile(raw)) return raw
  const errors = validateFile.errors!
  throw describeError(errors.find((e) => e.keyword !== 'required') ?? errors[0]!, file)
}

/** `/forwards/0/localPort` → `forwards[0].localPort`. */
function keyOf(instancePath: string, child?: string): string {
  const parts = instancePath.split('/').slice(1).map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'))
  if (child !== undefined) parts.push(child)
  return parts.map((p, i) => (/^\d+$/.test(p) ? `[${p}]` : i === 0 ? p : `.${p}`)).join('')
}

function shown(v: unknown): string {
  const s = JSON.stringify(v) ?? String(v)
  return s.length > 80 ? `${s.slice(0, 77)}...` : s
}

function describeError(e: ErrorObject, file: string): NatdError {
  const parent = e.parentSchema as { description?: string; properties?: Record<string, { description?: string }> } | undefined
  const at = (key: string, what: string): NatdError => new NatdError('INVALID_ARGUMENT', key ? `${file}: "${key}" ${what}` : `${file}: ${what}`)
  if (e.keyword === 'additionalProperties') {
    const known = Object.keys(parent?.properties ?? {}).filter((k) => k !== '//')
    return at(keyOf(e.instancePath, (e.params as { additionalProperty: string }).additionalProperty), `is not a setting natd knows (known: ${known.join(', ')})`)
  }
  if (e.keyword === 'required') {
    const missing = (e.params as { missingProperty: string }).missingProperty
    return at(keyOf(e.instancePath, missing), `${parent?.properties?.[missing]?.description ?? 'is required'}, not missing`)
  }
  return at(keyOf(e.instancePath), `${parent?.description ?? e.message ?? 'is not valid'}, not ${shown(e.data)}`)
}
