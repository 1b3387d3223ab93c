/**
 * The API client natctl (and any Node program) uses: one connection, requests matched
 * to responses by id, events to subscribers. Errors come back as NatdError with the
 * daemon's code; a missing daemon is NOT_RUNNING, a socket we may not use is
 * PERMISSION_DENIED, a daemon whose API slots are full is BUSY, and a socket in a
 * directory someone else could have planted it in is UNSAFE_SOCKET (we never connect).
 */
import fs from 'node:fs'
import fsp from 'node:fs/promises'
import os from 'node:os'
import nodePath from 'node:path'
import { IPCModule } from 'node-ipc'
import { isErrorCode, NatdError } from '../protocol/errors.js'
import type { EventName, Events, MethodName, Params, Result } from './schema.js'
import { defaultSocketPath } from './schema.js'
import { checkSocketDir } from './socket-dir.js'
import { callDeadlineMs, CONNECT_DEADLINE_MS } from './call-deadline.js'
import { traceFromEnv, type Trace } from './client-trace.js'
import { PROOF_DEADLINE_MS, PROOF_PREFIX, proofDirFor } from './uid-proof.js'

interface IpcClientHandle {
  on(event: string, fn: (...args: never[]) => void): void
  emit(type: string, data: unknown): void
  socket?: { destroy(): void }
}

/**
 * Whether something is at `path`. A directory we may not search (/run/natd is 0750,
 * group natd) hides the socket with EACCES: that counts as there, so the caller gets
 * "permission denied … add yourself to group natd" rather than "not running".
 */
function present(path: string): boolean {
  try {
    fs.lstatSync(path)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EACCES'
  }
}

/** The socket natctl talks to when --socket is not given: the user's own daemon, else the system one. */
export function resolveSocketPath(explicit?: string): string {
  if (explicit) return explicit
  const user = defaultSocketPath(process.env, process.getuid?.() ?? 0)
  if (present(user)) return user
  return present('/run/natd/natd.sock') ? '/run/natd/natd.sock' : user
}

export interface ApiClientOptions {
  /** Each step's trace line (client-trace.ts); default: NATCTL_DEBUG. */
  trace?: Trace
  /** Per-call deadline (call-deadline.ts; null: none); tests shorten it. */
  callDeadline?: typeof callDeadlineMs
  connectDeadlineMs?: number
  proofDeadlineMs?: number
  /** Creates the empty 0600 proof file (tests stand in a stalled disk). */
  createProofFile?: (file: string) => Promise<void>
}

export class ApiClient {
  private readonly ipc = new IPCModule()
  private handle: IpcClientHandle | null = null
  private nextId = 1
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>()
  private readonly listeners = new Set<(event: EventName, data: unknown) => void>()
  private closed = false
  /** Why the connection ended (the first reason seen): later calls fail with it. */
  private failure: NatdError | null = null

  private readonly trace: Trace
  private readonly deadline: typeof callDeadlineMs
  private readonly connectDeadlineMs: number
  private readonly proofDeadlineMs: number
  private readonly createProofFile: (file: string) => Promise<void>

  constructor(
    readonly socketPath: string,
    opts: ApiClientOptions = {}
  ) {
    this.trace = opts.trace ?? traceFromEnv()
    this.deadline = opts.callDeadline ?? callDeadlineMs
    this.connectDeadlineMs = opts.connectDeadlineMs ?? CONNECT_DEADLINE_MS
    this.proofDeadlineMs = opts.proofDeadlineMs ?? PROOF_DEADLINE_MS
    this.createProofFile = opts.createProofFile ?? createProofFile
  }

  /** Connects, or rejects with NOT_RUNNING / PERMISSION_DENIED / UNSAFE_SOCKET, or TIMEOUT (step connect). */
  async connect(): Promise<void> {
    const path = this.socketPath
    this.trace('connect', path)
    // Before anything touches the socket: one an attacker planted must not get our requests.
    checkSocketDir(path)
    if (!present(path)) throw new NatdError('NOT_RUNNING', `natd is not running (no socket at ${path})`)
    try {
      await within(this.open(path), this.connectDeadlineMs, () => timeout('connect', `natd did not accept the connection on ${path}`, this.connectDeadlineMs))
    } catch (err) {
      this.trace('connect failed', (err as NatdError).code)
      if ((err as NatdError).code === 'TIMEOUT') this.close()
      throw err
    }
    this.trace('connected')
    await this.proveUid()
  }

  private async open(path: string): Promise<void> {
    const cfg = this.ipc.config
    cfg.silent = true
    cfg.stopRetrying = true
    cfg.maxRetries = 0
    cfg.parser = 'guarded'
    cfg.maxMessageSize = 16 * 1024 * 1024
    await new Promise<void>((resolve, reject) => {
      this.ipc.connectTo('natd', path, () => {
        const handle = this.ipc.of.natd as unknown as IpcClientHandle
        this.handle = handle
        handle.on('connect', () => resolve())
        handle.on('error', (err: NodeJS.ErrnoException) => {
          const e = mapConnectError(err, path)
          reject(e)
          this.failAll(e)
        })
        handle.on('disconnect', () => {
          const e = new NatdError('NOT_RUNNING', `natd closed the connection on ${path}`)
          reject(e)
          this.failAll(e)
        })
        handle.on('response', (data: never) => this.onResponse(data))
        handle.on('event', (data: never) => this.onEvent(data))
      })
    })
  }

  /**
   * Proves our uid to natd (uid-proof.ts), so this connection counts in our own share of
   * natd's API slots rather than in the small pool of unproven ones. Best effort: an older
   * natd (no auth methods), a temp directory we cannot write, or a refused proof leave the
   * connection unproven and still usable; a closed connection fails the next call.
   */
  private async proveUid(): Promise<void> {
    const uid = process.getuid?.()
    if (uid === undefined) return
    const step = (p: Promise<unknown>, what: string): Promise<unknown> => within(p, this.proofDeadlineMs, () => timeout(what, 'no answer to the uid proof', this.proofDeadlineMs))
    let nonce: string
    try {
      nonce = ((await step(this.call('auth.challenge', {}, { deadlineMs: null }), 'auth.challenge')) as { nonce: string }).nonce
    } catch (err) {
      this.trace('unproven', `auth.challenge: ${(err as Error).message}`)
      return
    }
    if (!/^[0-9a-f]{1,64}$/.test(nonce)) return // never let a reply choose where we create a file
    const file = nodePath.join(proofDir(this.socketPath), PROOF_PREFIX + nonce)
    // Asynchronous and bounded: a stalled disk under the proof directory (a journal busy
    // with other writes) once held natctl in a synchronous open() past its caller's patience;
    // now the proof is given up and the call goes ahead unproven.
    const creating = this.createProofFile(file)
    try {
      await step(creating, 'proof file')
    } catch (err) {
      this.trace('unproven', `proof file: ${(err as Error).message}`)
      // If it is made after all, it is removed (best effort; the nonce has expired by then).
      creating.then(() => fsp.rm(file, { force: true })).catch(() => undefined)
      return
    }
    this.trace('proof file written', file)
    try {
      await step(this.call('auth.prove', { uid, path: file }, { deadlineMs: null }), 'auth.prove')
      this.trace('proven', `uid ${uid}`)
    } catch (err) {
      this.trace('unproven', `auth.prove: ${(err as Error).message}`)
    }
    // Awaited, within the same bound: natctl exits right after its call, and a removal
    // still pending then would leave the file behind in natd's proof directory for good. A
    // stalled disk holds the call at most the bound longer (the removal goes on unawaited).
    try {
      await step(fsp.rm(file, { force: true }), 'proof file removal')
      this.trace('proof file removed')
    } catch (err) {
      this.trace('proof file left', (err as Error).message)
    }
  }

  /**
   * One call; rejects with natd's error, or TIMEOUT naming the call when natd does not
   * answer within its deadline (call-deadline.ts; `deadlineMs` overrides, null for none).
   */
  call<M extends MethodName>(method: M, params: Params<M>, opts: { deadlineMs?: number | null } = {}): Promise<Result<M>> {
    if (this.failure) return Promise.reject(this.failure)
    if (!this.handle) return Promise.reject(new NatdError('NOT_RUNNING', 'not connected'))
    const id = this.nextId++
    const deadlineMs = opts.deadlineMs === undefined ? this.deadline(method, params) : opts.deadlineMs
    this.trace('call', `${method} id ${id}${deadlineMs === null ? '' : ` deadline ${deadlineMs} ms`}`)
    const answer = new Promise<Result<M>>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject })
      this.handle!.emit('request', { id, method, params })
    }).then(
      (r) => {
        this.trace('answer', `${method} id ${id}`)
        return r
      },
      (err: unknown) => {
        this.trace('error', `${method} id ${id}: ${(err as NatdError).code ?? ''} ${(err as Error).message}`)
        throw err
      }
    )
    if (deadlineMs === null) return answer
    return within(answer, deadlineMs, () => {
      this.pending.delete(id) // a late answer is dropped
      const e = timeout(`call ${method}`, `natd did not answer ${method}`, deadlineMs)
      this.trace('error', `${method} id ${id}: ${e.code} ${e.message}`)
      return e
    })
  }

  /** Subscribes to events; the handler sees every event of the named kinds. */
  async subscribe(events: EventName[], handler: <E extends EventName>(event: E, data: Events[E]) => void): Promise<void> {
    this.listeners.add(handler as (event: EventName, data: unknown) => void)
    await this.call('subscribe', { events })
  }

  close(): void {
    this.closed = true
    this.ipc.disconnect('natd')
  }

  private onResponse(data: { id: number | null; result?: unknown; error?: { code: string; message: string } }): void {
    if (data.id === null) {
      // natd's answer to the connection rather than to one request (BUSY when it refused
      // us, BAD_REQUEST for an unreadable frame); it closes the connection next.
      if (data.error) this.failAll(toError(data.error))
      return
    }
    const p = this.pending.get(data.id)
    if (!p) return
    this.pending.delete(data.id)
    if (data.error) p.reject(toError(data.error))
    else p.resolve(data.result)
  }

  private onEvent(data: { event: EventName; data: unknown }): void {
    for (const l of this.listeners) l(data.event, data.data)
  }

  private failAll(err: NatdError): void {
    if (this.closed) return
    this.failure ??= err
    for (const p of this.pending.values()) p.reject(err)
    this.pending.clear()
  }
}

/**
 * `p`, or the error `late()` makes when it has not settled within `ms`. A direct timer:
 * the client runs in natctl or another program, which has no clock to inject.
 */
function within<T>(p: Promise<T>, ms: number, late: () => Error): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(late()), ms)
    timer.unref()
  })
  return Promise.race([p, expired]).finally(() => clearTimeout(timer))
}

/** TIMEOUT, saying which step of the client's (connect, auth.challenge, proof file, auth.prove, call M) waited. */
function timeout(step: string, what: string, ms: number): NatdError {
  return new NatdError('TIMEOUT', `${what} within ${ms / 1000} s (step: ${step})`)
}

/** An empty new file of ours, mode 0600: O_EXCL (wx), never one planted there; chmod whatever the umask. */
async function createProofFile(file: string): Promise<void> {
  const fh = await fsp.open(file, 'wx', 0o600)
  try {
    await fh.chmod(0o600)
  } finally {
    await fh.close()
  }
}

/**
 * Where the proof file goes: the `proof` directory natd keeps next to its socket (a
 * directory we checked with the socket's, which natd sees whatever its /tmp), else our
 * temp directory when others may search it, else /tmp. The file is empty and lives for
 * one round trip.
 */
function proofDir(socketPath: string): string {
  const beside = proofDirFor(socketPath)
  try {
    if (fs.lstatSync(beside).isDirectory()) return beside
  } catch {
    // an older natd: none
  }
  const dir = os.tmpdir()
  try {
    if ((fs.statSync(dir).mode & 0o001) !== 0) return dir
  } catch {
    // fall through
  }
  return '/tmp'
}

function toError(error: { code: string; message: string }): NatdError {
  return new NatdError(isErrorCode(error.code) ? error.code : 'INTERNAL', error.message)
}

function mapConnectError(err: NodeJS.ErrnoException, path: string): NatdError {
  switch (err.code) {
    case 'EACCES':
    case 'EPERM':
      return new NatdError('PERMISSION_DENIED', `permission denied on ${path}: add yourself to group natd`, { cause: err })
    case 'ENOENT':
    case 'ECONNREFUSED':
      return new NatdError('NOT_RUNNING', `natd is not running (no socket at ${path})`, { cause: err })
    default:
      return new NatdError('NOT_RUNNING', `cannot reach natd on ${path}: ${err.message}`, { cause: err })
  }
}
