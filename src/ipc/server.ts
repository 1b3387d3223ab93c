/**
 * The daemon's side of the local API: a node-ipc server on a Unix socket.
 *
 * Socket safety (as wireguard-go does it): the socket is created under a tight umask
 * and then given mode 0660, so only the owner and the socket's group may connect. A
 * socket file left by a crash is replaced; a socket a live daemon answers on is never
 * stolen (we try to connect before we unlink). The socket's directory must be ours and
 * writable by nobody else (socket-dir.ts), or natd refuses to listen (UNSAFE_SOCKET).
 *
 * Abuse limits (api-limits.ts says why each value): slots are handed out by
 * ConnectionTable (idle connections are evicted for newcomers, subscribers are capped),
 * idle connections expire, and a connection that does not read what natd writes to it
 * is dropped once MAX_QUEUED_BYTES wait for it.
 */
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { IPCModule } from 'node-ipc'
import { NatdError, toNatdError } from '../protocol/errors.js'
import { systemClock, type Timer, type TimerClock } from '../protocol/clock.js'
import type { Logger } from '../protocol/log.js'
import { RefusalLog } from '../common/refusal-log.js'
import { API_ACCEPT_LIMIT, DEFAULT_API_LIMITS, MAX_CONCURRENT_PROOFS, MAX_REQUEST_BYTES, type ApiLimits } from './api-limits.js'
import { ConnectionTable } from './connection-table.js'
import { claimSocketPath } from './socket-claim.js'
import { checkSocketDir } from './socket-dir.js'
import { EVENT_NAMES, PARAMS, parseRequest, type EventName, type Events, type MethodName, type Params, type Result } from './schema.js'
import { ApiTrace, apiTraceWanted } from './server-trace.js'
import { checkProof, ensureProofDir, newNonce, PROOF_DEADLINE_MS, proofDirFor } from './uid-proof.js'

/** The owner and the socket's group (natd) may connect, nobody else. */
export const SOCKET_MODE = 0o660
/** How long natd lets its BAD_REQUEST answer to an unreadable frame leave before node-ipc drops the connection. */
const UNREADABLE_LINGER_MS = 50
/** How long a refused connection may stay half-closed while the client reads why. */
const REFUSED_LINGER_MS = 1_000
/** Refusals and drops of one kind are counted this long before their line (common/refusal-log.ts). */
const REFUSAL_LOG_INTERVAL_MS = 10_000
/** Who a refusal came from: local clients have no address; the API's group is who may connect. */
const LOCAL = 'local client'

/**
 * What a handler gets besides its params: the caller's connection, and a signal that
 * aborts when that connection closes before the answer (no one would read it): a
 * handler that does work for the caller (open, ping, message.send, file.send) stops.
 */
export interface HandlerContext {
  socket: net.Socket
  signal: AbortSignal
}

/** Methods the API server answers itself: the uid proof (uid-proof.ts). */
type AuthMethod = 'auth.challenge' | 'auth.prove'
const isAuthMethod = (m: unknown): m is AuthMethod => m === 'auth.challenge' || m === 'auth.prove'

export type Handlers = { [M in Exclude<MethodName, AuthMethod>]: (params: Params<M>, ctx: HandlerContext) => Promise<Result<M>> | Result<M> }

interface IpcServerHandle {
  on(event: string, fn: (...args: never[]) => void): void
  emit(socket: net.Socket, type: string, data: unknown): boolean
  start(): void
  stop(): void
  server?: net.Server
  protocolFailure: (socket: net.Socket, error: Error) => void
}

export class ApiServer {
  private readonly ipc = new IPCModule()
  private handle: IpcServerHandle | null = null
  private readonly subscriptions = new Map<net.Socket, Set<EventName>>()
  private readonly limits: ApiLimits
  private readonly table: ConnectionTable<net.Socket>
  private readonly idleTimers = new Map<net.Socket, Timer>()
  private readonly refusals: RefusalLog
  /** Each connection's nonce, once it asked for one; `tried` once it sent its one proof. */
  private readonly challenges = new Map<net.Socket, { nonce: string; issuedMs: number; tried: boolean }>()
  private proofsInProgress = 0
  private readonly trace: ApiTrace

  constructor(
    private readonly socketPath: string,
    private readonly handlers: Handlers,
    private readonly log: Logger,
    limits: Partial<ApiLimits> = {},
    /** Idle timers, and hrNow() for the connection table's idle ages. */
    private readonly clock: TimerClock = systemClock
  ) {
    this.limits = { ...DEFAULT_API_LIMITS, ...limits }
    this.table = new ConnectionTable({ maxConnections: this.limits.maxConnections, maxSubscribers: this.limits.maxSubscribers, perUid: this.limits.perUid, unproven: this.limits.unproven })
    this.refusals = new RefusalLog(log, { windowMs: REFUSAL_LOG_INTERVAL_MS, level: 'warn' }, this.clock)
    this.trace = new ApiTrace(log, apiTraceWanted(), () => this.clock.hrNow())
  }

  /** Connections held now (tests and status). */
  get connectionCount(): number {
    return this.table.size
  }

  /** What a uid (or the unproven pool) holds now (tests, the abuse suite). */
  heldBy(owner: number | 'unproven'): Readonly<{ connections: number; subscribers: number; inFlight: number }> {
    return this.table.heldBy(owner)
  }

  /** The most bytes ever seen queued for one subscriber after an event was written (tests, abuse suite). */
  peakQueuedBytes = 0

  async start(): Promise<void> {
    const dir = path.dirname(this.socketPath)
    fs.mkdirSync(dir, { recursive: true, mode: 0o750 })
    checkSocketDir(this.socketPath)
    if (!ensureProofDir(this.socketPath)) this.log.warn('api proof directory unusable, clients prove their uid in /tmp', { dir: proofDirFor(this.socketPath) })
    await claimSocketPath(this.socketPath)

    const cfg = this.ipc.config
    cfg.id = 'natd'
    cfg.silent = true
    cfg.unlink = false // we decide what may be unlinked (claimSocketPath)
    cfg.socketRoot = dir + path.sep
    cfg.secureSocketRoot = false // /run/natd is 0750 group natd by design, not 0700
    cfg.parser = 'guarded'
    cfg.maxMessageSize = MAX_REQUEST_BYTES
    cfg.maxPendingBytes = this.limits.maxQueuedBytes // responses; events are checked in emit()
    cfg.maxConnections = Math.max(API_ACCEPT_LIMIT, 4 * this.limits.maxConnections)

    await new Promise<void>((resolve, reject) => {
      const oldUmask = process.umask(0o177)
      try {
        this.ipc.serve(this.socketPath, () => resolve())
        const handle = this.ipc.server as unknown as IpcServerHandle
        this.handle = handle
        handle.on('error', (err: Error) => {
          if (!handle.server?.listening) reject(err)
          else this.log.debug('api connection error', { err: err.message })
        })
        handle.on('connect', (socket: net.Socket) => {
          if (socket instanceof net.Socket) this.onConnect(socket)
        })
        handle.on('request', (data: never, socket: never) => void this.onRequest(data, socket))
        handle.on('socket.disconnected', (socket: net.Socket) => this.forget(socket))
        // node-ipc destroys a connection that sends a frame it cannot parse; tell the
        // caller why first, so scripts see BAD_REQUEST rather than a silent hang-up.
        const failure = handle.protocolFailure.bind(handle)
        handle.protocolFailure = (socket, error) => {
          if ((error as { code?: string }).code === 'ERR_IPC_BACKPRESSURE') {
            // A client that does not read its responses: writing more would only queue more.
            this.refusals.refused('api client not reading, dropped', LOCAL, 'BUSY', `${socket.writableLength} bytes queued, limit ${this.limits.maxQueuedBytes}`)
            failure(socket, error)
            return
          }
          if (socket.writable) socket.write(encodeFrame('response', { id: null, error: { code: 'BAD_REQUEST', message: `unreadable frame: ${error.message}` } }))
          socket.end()
          this.clock.setTimeout(() => failure(socket, error), UNREADABLE_LINGER_MS).unref()
        }
        handle.start()
      } finally {
        process.umask(oldUmask)
      }
    })
    fs.chmodSync(this.socketPath, SOCKET_MODE)
    this.log.info('api listening', { socket: this.socketPath })
  }

  stop(): void {
    this.refusals.flush()
    for (const t of this.idleTimers.values()) this.clock.clear(t)
    this.idleTimers.clear()
    this.handle?.stop()
    // Only a socket we listened on is ours to remove: after a refused start (UNSAFE_SOCKET,
    // ALREADY_RUNNING) the file there is someone else's.
    if (!this.handle) return
    this.handle = null
    try {
      fs.unlinkSync(this.socketPath)
    } catch {
      // already gone
    }
  }

  /**
   * Sends an event to its subscribers. The frame is encoded once; a subscriber whose
   * unread backlog would pass maxQueuedBytes is dropped (and logged) instead.
   */
  emit<E extends EventName>(event: E, data: Events[E]): void {
    if (!this.handle) return
    let frame: string | null = null
    let bytes = 0
    for (const [socket, events] of this.subscriptions) {
      if (!events.has(event) || socket.destroyed) continue
      if (frame === null) {
        frame = encodeFrame('event', { event, data })
        bytes = Buffer.byteLength(frame)
      }
      if (socket.writableLength + bytes > this.limits.maxQueuedBytes) {
        this.refusals.refused('api subscriber not reading, dropped', LOCAL, 'BUSY', `${socket.writableLength} bytes queued, limit ${this.limits.maxQueuedBytes}, at event ${event}`)
        this.forget(socket)
        socket.destroy()
        continue
      }
      socket.write(frame)
      if (socket.writableLength > this.peakQueuedBytes) this.peakQueuedBytes = socket.writableLength
    }
  }

  /** A new connection: a slot, an evicted idle connection to make room, or BUSY. */
  private onConnect(socket: net.Socket): void {
    const admission = this.table.admit(socket, this.clock.hrNow())
    this.trace.connected(socket, admission.kind)
    if (admission.kind === 'refused') {
      this.refusals.refused('api busy, connection refused', LOCAL, 'BUSY', `${this.table.size} connections, ${this.table.subscriberCount} subscribed`)
      const error = { code: 'BUSY', message: `natd is busy: all ${this.limits.maxConnections} API connections are in use (${this.table.subscriberCount} subscribed, the rest waiting for answers); try again shortly` }
      // end(), not destroy(): the client may be writing its request right now, and a
      // closed read side would fail that write (EPIPE) before it reads why.
      socket.end(encodeFrame('response', { id: null, error }))
      this.clock.setTimeout(() => socket.destroy(), REFUSED_LINGER_MS).unref()
      return
    }
    if (admission.kind === 'admitted-evicting') {
      this.log.debug('api idle connection evicted for a new one', { idleMs: Math.round(admission.idleMs) })
      this.closeIdle(admission.evicted)
    }
    this.armIdle(socket)
  }

  private armIdle(socket: net.Socket): void {
    this.disarmIdle(socket)
    this.idleTimers.set(socket, this.clock.setTimeout(() => this.onIdleExpired(socket), this.limits.idleTimeoutMs).unref())
  }

  private disarmIdle(socket: net.Socket): void {
    const timer = this.idleTimers.get(socket)
    this.clock.clear(timer)
    this.idleTimers.delete(socket)
  }

  private onIdleExpired(socket: net.Socket): void {
    this.idleTimers.delete(socket)
    if (!this.table.isIdle(socket)) return
    this.log.debug('api idle connection closed', { idleTimeoutMs: this.limits.idleTimeoutMs })
    this.closeIdle(socket)
  }

  private closeIdle(socket: net.Socket): void {
    this.forget(socket)
    socket.destroy()
  }

  private forget(socket: net.Socket): void {
    this.disarmIdle(socket)
    this.table.remove(socket)
    this.subscriptions.delete(socket)
    this.challenges.delete(socket)
  }

  private async onRequest(data: unknown, socket: net.Socket): Promise<void> {
    this.trace.request(socket, data)
    if (!this.table.has(socket)) return this.trace.answered(socket, echoId(data), 'not admitted', false) // evicted or refused while this frame was read
    const method = (data as { method?: unknown } | null)?.method
    // The proof is bounded on its own (one per connection, MAX_CONCURRENT_PROOFS, a
    // deadline), so it takes none of the owner's requests in flight.
    if (isAuthMethod(method)) return this.answer(data, socket)
    if (!this.table.requestStarted(socket, this.clock.hrNow())) return this.refuseRequest(data, socket)
    this.disarmIdle(socket)
    try {
      await this.answer(data, socket)
    } finally {
      this.table.requestFinished(socket, this.clock.hrNow())
      if (this.table.isIdle(socket)) this.armIdle(socket)
    }
  }

  /** Its owner has its share of requests in flight: BUSY for this one, the connection stays. */
  private refuseRequest(data: unknown, socket: net.Socket): void {
    const owner = this.table.ownerOf(socket)
    const who = owner === 'unproven' ? 'connections that have not proved a uid' : `uid ${owner}`
    const limit = owner === undefined ? 0 : this.table.shareOf(owner).inFlight
    this.refusals.refused('api requests in flight over the share, refused', LOCAL, 'BUSY', `${who}: ${limit} in flight`)
    this.handle?.emit(socket, 'response', { id: echoId(data), error: { code: 'BUSY', message: `natd is busy: ${who} have ${limit} requests waiting for answers already; try again when one is answered` } })
  }

  /** `auth.challenge`: this connection's nonce (one per connection). */
  private challenge(socket: net.Socket): { nonce: string } {
    if (this.challenges.has(socket)) throw new NatdError('UNAUTHORIZED', 'uid proof refused: one challenge per connection')
    const nonce = newNonce()
    const issuedMs = this.clock.hrNow()
    this.challenges.set(socket, { nonce, issuedMs, tried: false })
    this.table.proving(socket, issuedMs + PROOF_DEADLINE_MS)
    return { nonce }
  }

  /** `auth.prove`: checks the file (uid-proof.ts) and moves the connection into the uid's share. */
  private async prove(socket: net.Socket, claim: { uid: number; path: string }): Promise<{ uid: number }> {
    const c = this.challenges.get(socket)
    if (!c) throw new NatdError('UNAUTHORIZED', 'uid proof refused: ask for a challenge (auth.challenge) first')
    if (c.tried) throw new NatdError('UNAUTHORIZED', 'uid proof refused: one proof per connection')
    c.tried = true
    if (this.proofsInProgress >= MAX_CONCURRENT_PROOFS) {
      this.table.proving(socket, 0)
      this.refusals.refused('api uid proofs at once over the limit, refused', LOCAL, 'BUSY', `${MAX_CONCURRENT_PROOFS} at once`)
      throw new NatdError('BUSY', `natd is busy: ${MAX_CONCURRENT_PROOFS} uid proofs are being checked; the connection stays unproven`)
    }
    this.proofsInProgress++
    try {
      await checkProof(claim, c.nonce, c.issuedMs, () => this.clock.hrNow())
    } catch (err) {
      this.table.proving(socket, 0)
      this.refusals.refused('api uid proof refused', LOCAL, 'UNAUTHORIZED', (err as Error).message)
      throw err
    } finally {
      this.proofsInProgress--
    }
    if (!this.table.has(socket)) throw new NatdError('TUNNEL_CLOSED', 'the connection was closed during its proof')
    this.table.proving(socket, 0)
    const moved = this.table.prove(socket, claim.uid, this.clock.hrNow())
    if (moved.kind === 'refused') {
      const share = this.table.shareOf(claim.uid)
      this.refusals.refused('api uid share full, proof refused', LOCAL, 'BUSY', `uid ${claim.uid}: ${share.connections} connections`)
      throw new NatdError('BUSY', `natd is busy: uid ${claim.uid} holds its ${share.connections} connections (${share.subscribers} subscribed or ${share.inFlight} requests waiting); the connection stays unproven`)
    }
    if (moved.kind === 'admitted-evicting') {
      this.log.debug('api idle connection evicted for a new one of its uid', { uid: claim.uid, idleMs: Math.round(moved.idleMs) })
      this.closeIdle(moved.evicted)
    }
    return { uid: claim.uid }
  }

  private async answer(data: unknown, socket: net.Socket): Promise<void> {
    // Echo the caller's id even when the rest of the request is bad, so it can match the error.
    let id = echoId(data)
    try {
      const req = parseRequest(data)
      id = req.id
      if (req.method === 'subscribe') {
        const params = PARAMS.subscribe(req.params, 'params')
        const events = params.events.length ? params.events : [...EVENT_NAMES]
        if (!this.table.subscribe(socket)) {
          const owner = this.table.ownerOf(socket) ?? 'unproven'
          const mine = this.table.shareOf(owner).subscribers
          const whose = owner === 'unproven' ? `connections that have not proved a uid may hold ${mine}` : `uid ${owner} may hold ${mine}`
          throw new NatdError('BUSY', `natd is busy: ${this.table.subscriberCount} connections are subscribed (${this.limits.maxSubscribers} at most; ${whose}); close one and try again`)
        }
        this.subscriptions.set(socket, new Set(events))
        return this.reply(socket, id, { subscribed: events })
      }
      if (req.method === 'auth.challenge') return this.reply(socket, id, this.challenge(socket))
      if (req.method === 'auth.prove') return this.reply(socket, id, await this.prove(socket, PARAMS['auth.prove'](req.params, 'params')))
      const params = (PARAMS[req.method] as (x: unknown, p: string) => unknown)(req.params, 'params')
      const handler = this.handlers[req.method as Exclude<MethodName, AuthMethod>] as (p: unknown, ctx: HandlerContext) => Promise<unknown>
      const result = await callerBound(socket, (signal) => handler(params, { socket, signal }))
      this.reply(socket, id, result)
    } catch (err) {
      const e = toNatdError(err)
      if (e.code === 'INTERNAL') this.log.error('api handler failed', { err: (err as Error).stack })
      const written = this.handle?.emit(socket, 'response', { id, error: e.toJSON() }) ?? false
      this.trace.answered(socket, id, e.code, written)
    }
  }

  private reply(socket: net.Socket, id: number | string, result: unknown): void {
    const written = this.handle?.emit(socket, 'response', { id, result }) ?? false
    this.trace.answered(socket, id, null, written)
  }
}

/** Runs `work` with a signal that aborts when `socket` closes before `work` ends. */
async function callerBound<T>(socket: net.Socket, work: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const abort = new AbortController()
  const onClose = (): void => abort.abort(new NatdError('ABORTED', 'the API client went away'))
  if (socket.destroyed) onClose()
  else socket.once('close', onClose)
  try {
    return await work(abort.signal)
  } finally {
    socket.off('close', onClose)
  }
}

/** The request's id when it is a valid one (so an error can be matched to it), else null. */
function echoId(data: unknown): number | string | null {
  const raw = (data as { id?: unknown } | null)?.id
  return (typeof raw === 'number' && Number.isSafeInteger(raw)) || (typeof raw === 'string' && raw.length <= 64) ? raw : null
}

function encodeFrame(type: string, data: unknown): string {
  return JSON.stringify({ type, data }) + '\f'
}

export { NatdError }
// Their earlier home: importers of server.js keep working.
export * from './api-limits.js'
export { claimSocketPath, socketAnswers } from './socket-claim.js'
