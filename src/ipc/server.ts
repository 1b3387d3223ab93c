/**
 * The daemon's side of the local API: a node-ipc server on a Unix socket.
 *
 * Socket safety (as wireguard-go does it): the socket is created under a tight umask
 * and then given mode 0660, so only the owner and the socket's group may connect. A
 * socket file left by a crash is replaced; a socket a live daemon answers on is never
 * stolen (we try to connect before we unlink).
 */
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { IPCModule } from 'node-ipc'
import { NatdError, toNatdError } from '../protocol/errors.js'
import type { Logger } from '../protocol/log.js'
import { EVENT_NAMES, PARAMS, parseRequest, type EventName, type Events, type MethodName, type Params, type Result } from './schema.js'

export const SOCKET_MODE = 0o660
/** Largest request frame the daemon reads (node-ipc drops the connection past it). */
export const MAX_REQUEST_BYTES = 256 * 1024
/**
 * A subscriber that does not read its events is disconnected once this much waits unsent
 * on its socket: without it a peer's flood of messages grew natd's memory by what the
 * subscriber left unread (+33 MB for 1,000 × 16 KB). 64 full-size messages' worth.
 */
export const MAX_EVENT_BACKLOG_BYTES = 1024 * 1024

export type Handlers = { [M in MethodName]: (params: Params<M>, ctx: { socket: net.Socket }) => Promise<Result<M>> | Result<M> }

interface IpcServerHandle {
  on(event: string, fn: (...args: never[]) => void): void
  emit(socket: net.Socket, type: string, data: unknown): void
  start(): void
  stop(): void
  server?: net.Server
  protocolFailure: (socket: net.Socket, error: Error) => void
}

export class ApiServer {
  private readonly ipc = new IPCModule()
  private handle: IpcServerHandle | null = null
  private readonly subscriptions = new Map<net.Socket, Set<EventName>>()

  constructor(
    private readonly socketPath: string,
    private readonly handlers: Handlers,
    private readonly log: Logger
  ) {}

  async start(): Promise<void> {
    const dir = path.dirname(this.socketPath)
    fs.mkdirSync(dir, { recursive: true, mode: 0o750 })
    await claimSocketPath(this.socketPath)

    const cfg = this.ipc.config
    cfg.id = 'natd'
    cfg.silent = true
    cfg.unlink = false // we decide what may be unlinked (claimSocketPath)
    cfg.socketRoot = dir + path.sep
    cfg.secureSocketRoot = false // /run/natd is 0750 group natd by design, not 0700
    cfg.parser = 'guarded'
    cfg.maxMessageSize = MAX_REQUEST_BYTES
    cfg.maxConnections = 64

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
        handle.on('request', (data: never, socket: never) => void this.onRequest(data, socket))
        handle.on('socket.disconnected', (socket: never) => this.subscriptions.delete(socket))
        // node-ipc destroys a connection that sends a frame it cannot parse; tell the
        // caller why first, so scripts see BAD_REQUEST rather than a silent hang-up.
        const failure = handle.protocolFailure.bind(handle)
        handle.protocolFailure = (socket, error) => {
          if (socket.writable) socket.write(encodeFrame('response', { id: null, error: { code: 'BAD_REQUEST', message: `unreadable frame: ${error.message}` } }))
          socket.end()
          setTimeout(() => failure(socket, error), 50).unref()
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
    this.handle?.stop()
    try {
      fs.unlinkSync(this.socketPath)
    } catch {
      // already gone
    }
  }

  emit<E extends EventName>(event: E, data: Events[E]): void {
    if (!this.handle) return
    for (const [socket, events] of this.subscriptions) {
      if (!events.has(event) || socket.destroyed) continue
      if (socket.writableLength > MAX_EVENT_BACKLOG_BYTES) {
        this.log.warn('disconnected a subscriber that does not read its events', { backlogBytes: socket.writableLength, event })
        this.subscriptions.delete(socket)
        socket.destroy()
        continue
      }
      this.handle.emit(socket, 'event', { event, data })
    }
  }

  private async onRequest(data: unknown, socket: net.Socket): Promise<void> {
    // Echo the caller's id even when the rest of the request is bad, so it can match the error.
    const raw = (data as { id?: unknown } | null)?.id
    let id: number | string | null = (typeof raw === 'number' && Number.isSafeInteger(raw)) || (typeof raw === 'string' && raw.length <= 64) ? raw : null
    try {
      const req = parseRequest(data)
      id = req.id
      if (req.method === 'subscribe') {
        const params = PARAMS.subscribe(req.params, 'params')
        const events = params.events.length ? params.events : [...EVENT_NAMES]
        this.subscriptions.set(socket, new Set(events))
        return this.reply(socket, id, { subscribed: events })
      }
      const params = (PARAMS[req.method] as (x: unknown, p: string) => unknown)(req.params, 'params')
      const handler = this.handlers[req.method] as (p: unknown, ctx: { socket: net.Socket }) => Promise<unknown>
      const result = await handler(params, { socket })
      this.reply(socket, id, result)
    } catch (err) {
      const e = toNatdError(err)
      if (e.code === 'INTERNAL') this.log.error('api handler failed', { err: (err as Error).stack })
      this.handle?.emit(socket, 'response', { id, error: e.toJSON() })
    }
  }

  private reply(socket: net.Socket, id: number | string, result: unknown): void {
    this.handle?.emit(socket, 'response', { id, result })
  }
}

function encodeFrame(type: string, data: unknown): string {
  return JSON.stringify({ type, data }) + '\f'
}

/**
 * Makes the socket path ours to listen on: refuses when a live daemon answers there,
 * removes a stale socket file, and refuses to remove anything that is not a socket.
 */
export async function claimSocketPath(socketPath: string): Promise<void> {
  let stat: fs.Stats
  try {
    stat = fs.lstatSync(socketPath)
  } catch {
    return // nothing there
  }
  if (!stat.isSocket()) throw new NatdError('INVALID_ARGUMENT', `${socketPath} exists and is not a socket; refusing to remove it (choose another --socket)`)
  if (await socketAnswers(socketPath)) throw new NatdError('ALREADY_RUNNING', `another natd is running on ${socketPath}`)
  fs.unlinkSync(socketPath)
}

/** Whether a daemon answers on this socket path (a stale socket file does not). */
export function socketAnswers(socketPath: string): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    const probe = net.connect(socketPath)
    probe.once('connect', () => {
      probe.destroy()
      resolve(true)
    })
    probe.once('error', () => resolve(false))
  })
}

export { NatdError }
