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

export class ApiTrace {
  private readonly ids = new WeakMap<net.Socket, number>()
  private readonly started = new WeakMap<net.Socket, Map<unknown, number>>()
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
    const { id, method } = (data ?? {}) as { id?: unknown; method?: unknown }
    let m = this.started.get(socket)
    if (!m) this.started.set(socket, (m = new Map()))
    m.set(id, this.now())
    this.log.info('api trace: request', { conn: this.ids.get(socket), id, method: typeof method === 'string' ? method.slice(0, 32) : null })
  }

  answered(socket: net.Socket, id: unknown, error: string | null, written: boolean): void {
    if (!this.enabled) return
    const m = this.started.get(socket)
    const t = m?.get(id)
    m?.delete(id)
    this.log.info('api trace: answer', { conn: this.ids.get(socket), id, error, written, ms: t === undefined ? null : Math.round(this.now() - t) })
  }
}
