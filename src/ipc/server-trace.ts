/**
 * natd's side of natctl's trace (client-trace.ts): with NATD_TRACE_API=1 in natd's
 * environment, one log line per API connection accepted, request read and answer sent,
 * each with a connection number and the time since the request was read, so a call that
 * natctl says went unanswered shows whether natd read it, and when it answered. Off by
 * default: a busy API (scripts polling status) would fill the log. Params and results are
 * never logged (a message's text, file paths).
 */
import type net from 'node:net'
import type { Logger } from '../protocol/log.js'

export function apiTraceWanted(env: NodeJS.ProcessEnv = process.env): boolean {
  const v = env.NATD_TRACE_API
  return v !== undefined && v !== '' && v !== '0'
}

/** A request id longer than this is not traced (natctl's ids are small numbers). */
const TRACE_ID_MAX_CHARS = 64

/**
 * The client's request id as the trace keeps and logs it: a number or a short string, else
 * null (not kept). An object id was kept in the per-connection map for good (never equal
 * to the answer's id, so never deleted: one entry per request) and logged whole.
 */
function traceId(id: unknown): number | string | null {
  if (typeof id === 'number' && Number.isFinite(id)) return id
  if (typeof id === 'string' && id.length <= TRACE_ID_MAX_CHARS) return id
  return null
}

export class ApiTrace {
  private readonly ids = new WeakMap<net.Socket, number>()
  private readonly started = new WeakMap<net.Socket, Map<number | string, number>>()
  private next = 1

  constructor(
    private readonly log: Logger,
    readonly enabled: boolean,
    private readonly now: () => number
  ) {}

  connected(socket: net.Socket, admission: string): void {
    if (!this.enabled) return
    this.ids.set(socket, this.next++)
    this.log.info('api trace: connection', { conn: this.ids.get(socket), admission })
  }

  request(socket: net.Socket, data: unknown): void {
    if (!this.enabled) return
    const { id: raw, method } = (data ?? {}) as { id?: unknown; method?: unknown }
    const id = traceId(raw)
    if (id !== null) {
      let m = this.started.get(socket)
      if (!m) this.started.set(socket, (m = new Map()))
      m.set(id, this.now())
    }
    this.log.info('api trace: request', { conn: this.ids.get(socket), id, method: typeof method === 'string' ? method.slice(0, 32) : null })
  }

  answered(socket: net.Socket, raw: unknown, error: string | null, written: boolean): void {
    if (!this.enabled) return
    const id = traceId(raw)
    const m = this.started.get(socket)
    const t = id === null ? undefined : m?.get(id)
    if (id !== null) m?.delete(id)
    this.log.info('api trace: answer', { conn: this.ids.get(socket), id, error, written, ms: t === undefined ? null : Math.round(this.now() - t) })
  }
}
