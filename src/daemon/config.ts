/**
 * The agent's configuration and persistent state, the only module that opens conf.
 * Everything lives in the state directory (mode 0700): `config.json` (mode 0600, schema
 * validated) and `identity.json` (the Ed25519 key pair, mode 0600).
 *
 * Flags given to `natd` override the stored values and are persisted, so a service
 * restarted without flags comes back as it was.
 */
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import Conf from 'conf'
import { NatdError } from '../protocol/errors.js'
import { generateKeyPair, isValidName, NAME_RULE, type KeyPair } from '../protocol/identity.js'
import { parseEndpoint } from '../protocol/endpoint.js'
import type { LogLevel } from './logger.js'

/** Default heartbeat: Linux conntrack forgets an idle UDP mapping after 30 s (ARCHITECTURE.md). */
export const DEFAULT_HEARTBEAT_MS = 20_000
export const DEFAULT_SERVER_PORT = 3478

export interface ForwardSpec {
  localPort: number
  bind: string
  peer: string
  remotePort: number
}

export interface ExposeSpec {
  port: number
  host: string
  allow: string[]
}

export interface AgentConfig {
  name: string
  server: string
  heartbeatMs: number
  /** Local UDP port (tunnels) and TCP port (control connection, TCP punching); chosen once. */
  port: number
  logLevel: LogLevel
  secretFile: string | null
}

interface StoreShape {
  config: AgentConfig
  forwards: ForwardSpec[]
  exposes: ExposeSpec[]
  /** Peer ID pinned to each name on first use. */
  knownPeers: Record<string, string>
}

export function defaultStateDir(env: NodeJS.ProcessEnv = process.env, uid = process.getuid?.() ?? 0): string {
  if (env.STATE_DIRECTORY) return env.STATE_DIRECTORY.split(':')[0]!
  if (uid === 0) return '/var/lib/natd'
  const base = env.XDG_STATE_HOME || path.join(os.homedir(), '.local', 'state')
  return path.join(base, 'natd')
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
      secretFile: { type: ['string', 'null'] }
    }
  },
  forwards: { type: 'array' },
  exposes: { type: 'array' },
  knownPeers: { type: 'object' }
} as const

/** Persistent agent state. Methods return copies; writes go straight to disk (atomically, by conf). */
export class StateStore {
  private readonly conf: Conf<StoreShape>

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
  }

  get config(): Readonly<AgentConfig> | null {
    const c = this.conf.get('config')
    return c ? Object.freeze({ ...c }) : null
  }

  setConfig(c: AgentConfig): Readonly<AgentConfig> {
    this.conf.set('config', c)
    return Object.freeze({ ...c })
  }

  get forwards(): ForwardSpec[] {
    return structuredClone(this.conf.get('forwards') ?? [])
  }

  setForwards(f: ForwardSpec[]): void {
    this.conf.set('forwards', f)
  }

  get exposes(): ExposeSpec[] {
    return structuredClone(this.conf.get('exposes') ?? [])
  }

  setExposes(e: ExposeSpec[]): void {
    this.conf.set('exposes', e)
  }

  knownPeer(name: string): string | undefined {
    return (this.conf.get('knownPeers') ?? {})[name]
  }

  pinPeer(name: string, id: string): void {
    this.conf.set('knownPeers', { ...(this.conf.get('knownPeers') ?? {}), [name]: id })
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
    const tmp = `${file}.tmp`
    fs.writeFileSync(tmp, JSON.stringify({ publicKey: kp.publicKey.toString('hex'), secretKey: Buffer.from(kp.secretKey).toString('hex') }) + '\n', { mode: 0o600 })
    fs.renameSync(tmp, file)
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
}

/** Merges flags over the stored config, validates, persists. Throws INVALID_ARGUMENT with a clear message. */
export function resolveConfig(store: StateStore, flags: Overrides): Readonly<AgentConfig> {
  const stored = store.config
  const merged: AgentConfig = {
    name: flags.name ?? stored?.name ?? '',
    server: flags.server ?? stored?.server ?? '',
    heartbeatMs: flags.heartbeatMs ?? stored?.heartbeatMs ?? DEFAULT_HEARTBEAT_MS,
    port: flags.port ?? stored?.port ?? 0,
    logLevel: flags.logLevel ?? stored?.logLevel ?? 'info',
    secretFile: flags.secretFile ?? stored?.secretFile ?? null
  }
  if (!merged.name) throw new NatdError('INVALID_ARGUMENT', 'no name: start natd once with --name NAME')
  if (!isValidName(merged.name)) throw new NatdError('INVALID_ARGUMENT', `bad --name ${JSON.stringify(merged.name)}: ${NAME_RULE}`)
  if (!merged.server) throw new NatdError('INVALID_ARGUMENT', 'no server: start natd once with --server HOST[:PORT]')
  try {
    parseEndpoint(merged.server, DEFAULT_SERVER_PORT)
  } catch (err) {
    throw new NatdError('INVALID_ARGUMENT', `bad --server: ${(err as Error).message}`)
  }
  if (merged.heartbeatMs < 200 || merged.heartbeatMs > 600_000) throw new NatdError('INVALID_ARGUMENT', '--heartbeat must be between 200ms and 10m')
  return store.setConfig(merged)
}
