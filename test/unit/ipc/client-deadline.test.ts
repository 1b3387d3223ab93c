// The API client's per-call deadline (ipc/call-deadline.ts), its bounded uid proof and its
// step trace (ipc/client-trace.ts), against a real ApiServer on a Unix socket: a call natd
// never answers fails with TIMEOUT naming the step, and a proof file that cannot be made
// (a stalled disk) leaves the connection unproven instead of holding the call.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { CALL_DEADLINE_MS, callDeadlineMs, MIGRATION_ALLOWANCE_MS, NETCHECK_DEADLINE_MS } from '../../../src/ipc/call-deadline.js'
import { ApiClient, type ApiClientOptions } from '../../../src/ipc/client.js'
import { stderrTrace, traceWanted } from '../../../src/ipc/client-trace.js'
import type { Handlers } from '../../../src/ipc/server.js'
import { ApiServer } from '../../../src/ipc/server.js'
import { NatdError } from '../../../src/protocol/errors.js'
import { silentLogger } from '../../../src/protocol/log.js'

/** Fails the test if `p` has not settled within `ms` (a hung client is what these tests catch). */
function within<T>(p: Promise<T>, ms = 3_000): Promise<T> {
  return Promise.race([p, sleep(ms).then(() => Promise.reject(new Error(`not settled within ${ms} ms`)))])
}

describe('callDeadlineMs', () => {
  it('a quick method gets CALL_DEADLINE_MS; one with its own timeout gets it plus a migration; file.send none; netcheck its own', () => {
    expect(callDeadlineMs('status', {})).toBe(CALL_DEADLINE_MS)
    expect(callDeadlineMs('forward.ls', {})).toBe(CALL_DEADLINE_MS)
    expect(callDeadlineMs('open', { peer: 'bob', via: 'auto', timeoutMs: 10_000 })).toBe(10_000 + MIGRATION_ALLOWANCE_MS + CALL_DEADLINE_MS)
    expect(callDeadlineMs('message.send', { peer: 'bob', text: 'hi', timeoutMs: 10_000, id: null } as never)).toBe(10_000 + MIGRATION_ALLOWANCE_MS + CALL_DEADLINE_MS)
    expect(callDeadlineMs('netcheck', {})).toBe(NETCHECK_DEADLINE_MS)
    expect(callDeadlineMs('file.send', { timeoutMs: 10_000 } as never)).toBeNull()
  })

  it('ping may open a tunnel (timeoutMs) and then ping (timeoutMs again): its deadline covers both, so --timeout 200s is not cut at 310 s', () => {
    expect(callDeadlineMs('ping', { peer: 'bob', timeoutMs: 5_000 })).toBe(2 * 5_000 + MIGRATION_ALLOWANCE_MS + CALL_DEADLINE_MS)
    const timeoutMs = 200_000
    expect(callDeadlineMs('ping', { peer: 'bob', timeoutMs })!).toBeGreaterThan(2 * timeoutMs + MIGRATION_ALLOWANCE_MS)
  })
})

describe('client-trace', () => {
  it('NATCTL_DEBUG turns it on, unless empty or 0; each line has the time, ms since start, step and detail', () => {
    expect(traceWanted({ NATCTL_DEBUG: '1' })).toBe(true)
    expect(traceWanted({ NATCTL_DEBUG: '0' })).toBe(false)
    expect(traceWanted({ NATCTL_DEBUG: '' })).toBe(false)
    expect(traceWanted({})).toBe(false)
    const lines: string[] = []
    let t = 100
    const trace = stderrTrace((l) => lines.push(l), () => t)
    t = 142.4
    trace('call', 'status id 3')
    expect(lines).toHaveLength(1)
    expect(lines[0]).toMatch(/^natctl \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \+42ms call status id 3\n$/)
  })
})

describe('ApiClient deadlines against a real API socket', () => {
  let dir: string
  let socketPath: string
  const servers: ApiServer[] = []
  const clients: ApiClient[] = []
  /** status never answers (a lost request, a stuck handler); peers answers at once. */
  const handlers = { status: () => new Promise(() => undefined), peers: () => [] } as unknown as Handlers

  beforeEach(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-deadline-'))
    socketPath = path.join(dir, 'run', 'natd.sock')
    const server = new ApiServer(socketPath, handlers, silentLogger)
    await server.start()
    servers.push(server)
  })

  afterEach(() => {
    for (const c of clients.splice(0)) c.close()
    for (const s of servers.splice(0)) s.stop()
    fs.rmSync(dir, { recursive: true, force: true })
  })

  function client(opts: ApiClientOptions, lines: string[]): ApiClient {
    const c = new ApiClient(socketPath, { trace: (step, detail) => lines.push(`${step}${detail ? ` ${detail}` : ''}`), ...opts })
    clients.push(c)
    return c
  }

  it('a call natd does not answer fails with TIMEOUT naming the call, within its deadline; the connection still works', async () => {
    const lines: string[] = []
    const c = client({ callDeadline: (m) => (m === 'status' ? 200 : 5_000) }, lines)
    await within(c.connect())
    const err = await within(c.call('status', {})).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(NatdError)
    expect((err as NatdError).code).toBe('TIMEOUT')
    expect((err as NatdError).message).toContain('(step: call status)')
    expect(await within(c.call('peers', {}))).toEqual([])
    expect(lines.some((l) => /^error status id \d+: TIMEOUT/.test(l)), lines.join('\n')).toBe(true)
  })

  it('an explicit deadlineMs overrides the default; null waits', async () => {
    const c = client({ callDeadline: () => 60_000 }, [])
    await within(c.connect())
    const err = await within(c.call('status', {}, { deadlineMs: 150 })).catch((e: unknown) => e)
    expect((err as NatdError).code).toBe('TIMEOUT')
    const waiting = c.call('status', {}, { deadlineMs: null })
    const settled = await Promise.race([waiting.then(() => 'settled', () => 'settled'), sleep(400).then(() => 'waiting')])
    expect(settled).toBe('waiting')
  })

  it('a proof file that cannot be made in time (a stalled disk): the connection goes on unproven and the call is answered', async () => {
    const lines: string[] = []
    const c = client({ proofDeadlineMs: 200, createProofFile: () => new Promise(() => undefined) }, lines)
    await within(c.connect())
    expect(await within(c.call('peers', {}))).toEqual([])
    expect(servers[0]!.heldBy('unproven').connections).toBe(1)
    expect(lines.join('\n')).toMatch(/unproven proof file: .*\(step: proof file\)/)
  })

  it('the trace shows each step of a proven call', async () => {
    const lines: string[] = []
    const c = client({}, lines)
    await within(c.connect())
    await within(c.call('peers', {}))
    await sleep(50) // the proof file's removal is not awaited: it may come after the call
    expect(lines[0]).toBe(`connect ${socketPath}`)
    expect(lines.join('\n')).toMatch(/call auth\.challenge[\s\S]*proof file written[\s\S]*call auth\.prove[\s\S]*proven uid[\s\S]*call peers[\s\S]*answer peers/)
    expect(lines).toContain('proof file removed')
    expect(fs.readdirSync(path.join(dir, 'run', 'proof'))).toEqual([])
  })
})
