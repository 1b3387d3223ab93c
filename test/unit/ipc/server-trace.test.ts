// ipc/server-trace.ts: natd's API trace keys requests by the client's id; only a number or a
// short string is traced, so a client cannot grow the per-connection map or the log.
import type net from 'node:net'
import { describe, expect, it } from 'vitest'
import type { LogFields, Logger } from '../../../src/protocol/log.js'
import { ApiTrace } from '../../../src/ipc/server-trace.js'

function recorder(): { log: Logger; lines: Array<{ msg: string; fields: LogFields }> } {
  const lines: Array<{ msg: string; fields: LogFields }> = []
  const log: Logger = {
    error: () => undefined,
    warn: () => undefined,
    info: (msg, fields = {}) => lines.push({ msg, fields }),
    debug: () => undefined,
    child: () => log
  }
  return { log, lines }
}

describe('ApiTrace request ids', () => {
  it('a number id is timed from request to answer', () => {
    const { log, lines } = recorder()
    let now = 1_000
    const trace = new ApiTrace(log, true, () => now)
    const socket = {} as net.Socket
    trace.connected(socket, 'peer')
    trace.request(socket, { id: 7, method: 'status' })
    now += 25
    trace.answered(socket, 7, null, true)
    expect(lines.at(-1)!.fields).toMatchObject({ id: 7, ms: 25 })
  })

  it('an object id or a long string id is neither kept nor logged raw', () => {
    const { log, lines } = recorder()
    const trace = new ApiTrace(log, true, () => 0)
    const socket = {} as net.Socket
    trace.connected(socket, 'peer')
    const big = { x: 'y'.repeat(10_000) }
    trace.request(socket, { id: big, method: 'status' })
    trace.request(socket, { id: 'z'.repeat(10_000), method: 'status' })
    trace.answered(socket, JSON.parse(JSON.stringify(big)) as unknown, null, true) // what the server echoes: never the same object
    const started = (trace as unknown as { started: WeakMap<net.Socket, Map<unknown, number>> }).started.get(socket)
    expect(started?.size ?? 0).toBe(0)
    for (const line of lines) expect(JSON.stringify(line.fields).length).toBeLessThan(300)
    expect(lines.filter((l) => l.msg === 'api trace: request').map((l) => l.fields.id)).toEqual([null, null])
  })
})
