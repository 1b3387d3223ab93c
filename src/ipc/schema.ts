/**
 * The local API: every method, its parameters (validated at the boundary) and its
 * result, and the events subscribers receive. The types are in api-types.ts (re-exported
 * here); this file holds the runtime side: method and event names, the parameter checks.
 * docs/API.md documents the same for programs in other languages; a unit test checks the
 * two agree.
 *
 * Framing (node-ipc): UTF-8 JSON `{"type": …, "data": …}` followed by `\f`.
 *   request   {"type":"request","data":{"id":1,"method":"status","params":{}}}
 *   response  {"type":"response","data":{"id":1,"result":{…}}}
 *             {"type":"response","data":{"id":1,"error":{"code":"PEER_UNKNOWN","message":"…"}}}
 *   event     {"type":"event","data":{"event":"peer.up","data":{…}}}
 */
import { NatdError } from '../protocol/errors.js'
import { VIAS } from '../protocol/via.js'
import type { EventName, MethodName, OpenVia, Params } from './api-types.js'
import { MAX_PROOF_PATH } from './uid-proof.js'

export type * from './api-types.js'

export const API_VERSION = 1

/** The values `open` accepts for `via` (natctl's --via choices). */
export const OPEN_VIAS: readonly OpenVia[] = VIAS.filter((via): via is OpenVia => via !== 'direct')

/** Every event of Events (api-types.ts); `subscribe` with no names subscribes to all of them. */
export const EVENT_NAMES: readonly EventName[] = ['peer.up', 'peer.down', 'server.state', 'tunnel.state', 'message', 'file', 'file.progress']

// --- validation ------------------------------------------------------------

type Check<T> = (value: unknown, path: string) => T

const fail = (path: string, want: string): never => {
  throw new NatdError('BAD_REQUEST', `${path} must be ${want}`)
}

export const v = {
  string: (opts: { max?: number; min?: number } = {}): Check<string> => (x, p) =>
    typeof x === 'string' && x.length >= (opts.min ?? 1) && x.length <= (opts.max ?? 256) ? x : fail(p, `a string of ${opts.min ?? 1}-${opts.max ?? 256} characters`),
  bool: (): Check<boolean> => (x, p) => (typeof x === 'boolean' ? x : fail(p, 'true or false')),
  port: (): Check<number> => (x, p) => (Number.isInteger(x) && (x as number) >= 1 && (x as number) <= 65535 ? (x as number) : fail(p, 'a port number 1-65535')),
  int: (min: number, max: number): Check<number> => (x, p) => (Number.isInteger(x) && (x as number) >= min && (x as number) <= max ? (x as number) : fail(p, `an integer ${min}-${max}`)),
  oneOf: <T extends string>(values: readonly T[]): Check<T> => (x, p) => (values.includes(x as T) ? (x as T) : fail(p, `one of ${values.join(', ')}`)),
  array: <T>(item: Check<T>, max = 64): Check<T[]> => (x, p) => {
    if (!Array.isArray(x) || x.length > max) return fail(p, `an array of at most ${max} items`)
    return x.map((el, i) => item(el, `${p}[${i}]`))
  },
  optional: <T>(check: Check<T>, fallback: T): Check<T> => (x, p) => (x === undefined ? fallback : check(x, p)),
  object: <T extends Record<string, unknown>>(shape: { [K in keyof T]: Check<T[K]> }): Check<T> => (x, p) => {
    if (typeof x !== 'object' || x === null || Array.isArray(x)) return fail(p, 'an object')
    for (const key of Object.keys(x)) if (!(key in shape)) fail(`${p}.${key}`, 'absent (unknown parameter)')
    const out = {} as T
    for (const key of Object.keys(shape) as (keyof T)[]) out[key] = shape[key]((x as Record<string, unknown>)[key as string], `${p}.${String(key)}`)
    return out
  }
}

const empty = v.object<Record<string, never>>({})
/** Absent or null: null (unchanged). */
const nullable = <T>(check: Check<T>): Check<T | null> => (x, p) => (x === null || x === undefined ? null : check(x, p))
const TIMEOUT_MAX_MS = 10 * 60_000

export const PARAMS: { [M in MethodName]: Check<Params<M>> } = {
  status: empty,
  peers: empty,
  'peer.trust': v.object({ name: v.string({ max: 64 }), id: v.string({ max: 64 }), replace: v.optional(v.bool(), false) }),
  'peer.untrust': v.object({ name: v.string({ max: 64 }) }),
  subscribe: v.object({ events: v.array(v.oneOf(EVENT_NAMES), EVENT_NAMES.length) }),
  'auth.challenge': empty,
  // uid_t is 32 bits and (uid_t)-1 means "none".
  'auth.prove': v.object({ uid: v.int(0, 2 ** 32 - 2), path: v.string({ max: MAX_PROOF_PATH }) }),
  open: v.object({ peer: v.string({ max: 64 }), via: v.optional(v.oneOf(OPEN_VIAS), 'auto'), timeoutMs: v.optional(v.int(1, TIMEOUT_MAX_MS), 10_000) }),
  close: v.object({ peer: v.string({ max: 64 }) }),
  tunnels: empty,
  ping: v.object({ peer: v.string({ max: 64 }), timeoutMs: v.optional(v.int(1, TIMEOUT_MAX_MS), 5_000) }),
  netcheck: empty,
  'forward.add': v.object({ localPort: v.port(), peer: v.string({ max: 64 }), remotePort: v.port(), bind: v.optional(v.string({ max: 64 }), '127.0.0.1') }),
  'forward.ls': empty,
  'forward.rm': v.object({ localPort: v.port() }),
  'expose.add': v.object({ port: v.port(), host: v.optional(v.string({ max: 64 }), '127.0.0.1'), allow: v.optional(v.array(v.string({ max: 64 })), []) }),
  'expose.ls': empty,
  'expose.rm': v.object({ port: v.port() }),
  'message.send': v.object({ peer: v.string({ max: 64 }), text: v.string({ max: 16 * 1024 }), timeoutMs: v.optional(v.int(1, TIMEOUT_MAX_MS), 10_000), id: nullable(v.string({ max: 128 })) }),
  messages: v.object({ from: v.optional(v.string({ max: 64, min: 0 }), ''), limit: v.optional(v.int(0, 1_000_000), 0) }),
  'messages.clear': v.object({ from: v.optional(v.string({ max: 64, min: 0 }), '') }),
  'file.send': v.object({
    peer: v.string({ max: 64 }),
    source: v.string({ max: 64 }),
    name: v.string({ max: 255 }),
    size: v.int(0, 2 ** 48 - 1),
    mtimeMs: (x, p) => (typeof x === 'number' && Number.isFinite(x) && x >= 0 ? x : fail(p, 'a time in ms')),
    dev: v.int(0, Number.MAX_SAFE_INTEGER),
    ino: v.int(0, Number.MAX_SAFE_INTEGER),
    path: v.optional(v.string({ max: 4096, min: 0 }), ''),
    timeoutMs: v.optional(v.int(1, TIMEOUT_MAX_MS), 10_000)
  }),
  files: empty,
  'files.partials': empty,
  'files.policy': v.object({
    allow: nullable(v.array(v.string({ max: 64 }))),
    maxSizeBytes: nullable(v.int(0, Number.MAX_SAFE_INTEGER)),
    inbox: nullable(v.string({ max: 4096, min: 0 })),
    filesPerPeer: nullable(v.int(1, 1_000_000)),
    fileBytesPerPeer: nullable(v.int(0, Number.MAX_SAFE_INTEGER)),
    messagesPerPeer: nullable(v.int(1, 1_000_000)),
    messageBytesPerPeer: nullable(v.int(0, Number.MAX_SAFE_INTEGER)),
    stallTimeoutMs: nullable(v.int(100, TIMEOUT_MAX_MS))
  })
}

export function isMethod(name: unknown): name is MethodName {
  return typeof name === 'string' && Object.hasOwn(PARAMS, name)
}

export interface RequestEnvelope {
  id: number | string
  method: MethodName
  params: unknown
}

/** Validates a request envelope; throws NatdError('BAD_REQUEST'). */
export function parseRequest(data: unknown): RequestEnvelope {
  if (typeof data !== 'object' || data === null) throw new NatdError('BAD_REQUEST', 'request data must be an object {id, method, params}')
  const { id, method, params } = data as Record<string, unknown>
  if (!(typeof id === 'number' && Number.isSafeInteger(id)) && !(typeof id === 'string' && id.length <= 64)) {
    throw new NatdError('BAD_REQUEST', 'request id must be an integer or a short string')
  }
  if (!isMethod(method)) throw new NatdError('BAD_REQUEST', `unknown method ${JSON.stringify(method)}`)
  return { id, method, params: params ?? {} }
}

export function defaultSocketPath(env: NodeJS.ProcessEnv = process.env, uid = process.getuid?.() ?? 0): string {
  if (uid === 0) return '/run/natd/natd.sock'
  const runtime = env.XDG_RUNTIME_DIR || `/tmp/natd-${uid}`
  return `${runtime}/natd/natd.sock`
}
