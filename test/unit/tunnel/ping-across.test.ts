// A ping someone asked for on a tunnel that migrates (src/tunnel/ping-across.ts): two real
// Tunnels over the in-memory message pipe (./pipe.ts), whose path is cut and restored.
// Timings are small and real (keepalive 50 ms, gone after 200 ms, given up 5 s later);
// every wait has a wide margin, and nothing asserts speed.
//
//   Tunnel A (opener, peer "bob") ── pipe.a ═══ frames (up / cut) ═══ pipe.b ── Tunnel B (peer "alice")
import { afterEach, describe, expect, it } from 'vitest'
import { NatdError } from '../../../src/protocol/errors.js'
import { silentLogger, systemClock } from '../../../src/protocol/log.js'
import { pingAcross } from '../../../src/tunnel/ping-across.js'
import { Tunnel, type TunnelTiming } from '../../../src/tunnel/tunnel.js'
import { messagePipe, until, type MessagePipe } from './pipe.js'

const TIMING: TunnelTiming = { keepaliveMs: 50, deadMs: 200, giveUpMs: 5_000 }
const live: Tunnel[] = []

function pair(): { pipe: MessagePipe; a: Tunnel; b: Tunnel } {
  const pipe = messagePipe()
  const a = new Tunnel({ name: 'bob', id: 'b0b' }, 'direct-udp', { host: '203.0.113.2', port: 5000 }, 'udp', 'intro-1', true, pipe.a, TIMING, systemClock, silentLogger)
  const b = new Tunnel({ name: 'alice', id: 'a11ce' }, 'direct-udp', { host: '198.51.100.1', port: 4000 }, 'udp', 'intro-1', false, pipe.b, TIMING, systemClock, silentLogger)
  live.push(a, b)
  return { pipe, a, b }
}

/** Cuts the path and makes A migrate at once (its NAT mapping changed, as path-check.ts reports it). */
function cut(pipe: MessagePipe, a: Tunnel): void {
  pipe.up = false
  a.pathChanged('our NAT mapping or address changed')
  expect(a.isMigrating).toBe(true)
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

const isCode = (code: string) => (e: unknown) => e instanceof NatdError && e.code === code

afterEach(() => {
  for (const t of live.splice(0)) t.close('test over', { goodbye: false })
})

describe('pingAcross: a ping waits for a migrating tunnel to resume, within its own timeout', () => {
  it('on an up tunnel: one round trip, waitedMs 0', async () => {
    const { a } = pair()
    const r = await pingAcross(a, 5_000, systemClock)
    expect(r).toEqual({ rttMs: expect.any(Number), waitedMs: 0 })
  })

  it('called while the tunnel migrates: the pong comes once the path is back (a plain ping, lost on the dead path, times out)', async () => {
    const { pipe, a } = pair()
    cut(pipe, a)
    const plain = a.ping(1_500).then(
      () => 'pong',
      (e: unknown) => (e as NatdError).code
    )
    const across = pingAcross(a, 10_000, systemClock)
    await sleep(300)
    pipe.up = true // the old path is back: A's migrating pings bring it up
    await until(() => a.isUp, 'the tunnel up again', 5_000)
    const r = await across
    expect(r.rttMs).toEqual(expect.any(Number))
    expect(r.waitedMs).toBeGreaterThanOrEqual(250)
    expect(await plain).toBe('TIMEOUT') // what `natctl ping` did before: its PING went out on the dead path and is never replayed
  })

  it('the tunnel migrates while the PING is out: it is sent again after the resume', async () => {
    const { pipe, a } = pair()
    pipe.delayMs = 100 // the PING is still on its way when the path goes
    const across = pingAcross(a, 10_000, systemClock)
    await sleep(10)
    cut(pipe, a) // the PING in flight is dropped
    await sleep(300)
    pipe.delayMs = 0
    pipe.up = true
    const r = await across
    expect(r.waitedMs).toBeGreaterThan(0)
    expect(a.isUp).toBe(true)
  })

  it('no resume within timeoutMs: TIMEOUT, saying the tunnel is migrating and why; the tunnel keeps migrating', async () => {
    const { pipe, a } = pair()
    const listeners = (): number[] => [a.listenerCount('resumed'), a.listenerCount('closed'), a.listenerCount('migrating')]
    const before = listeners()
    cut(pipe, a)
    const err = await pingAcross(a, 300, systemClock).catch((e: unknown) => e)
    expect(err).toSatisfy(isCode('TIMEOUT'))
    expect((err as Error).message).toMatch(/bob.*migrating.*NAT mapping/)
    expect(a.isMigrating).toBe(true)
    expect(listeners()).toEqual(before)
  })

  it('the tunnel closes while the ping waits: TUNNEL_CLOSED at once, long before the timeout', async () => {
    const { pipe, a } = pair()
    cut(pipe, a)
    const started = Date.now()
    const p = pingAcross(a, 60_000, systemClock).catch((e: unknown) => e)
    await sleep(50)
    a.close('closed by user')
    expect(await p).toSatisfy(isCode('TUNNEL_CLOSED'))
    expect(Date.now() - started).toBeLessThan(30_000)
  })

  it('the caller cancels (natctl went away): ABORTED at once, waiting or pinging, and no listener is left on the tunnel', async () => {
    const { pipe, a } = pair()
    const before = { resumed: a.listenerCount('resumed'), closed: a.listenerCount('closed'), migrating: a.listenerCount('migrating') }
    cut(pipe, a)
    const waiting = new AbortController()
    const p = pingAcross(a, 60_000, systemClock, waiting.signal).catch((e: unknown) => e)
    await sleep(20)
    waiting.abort()
    expect(await p).toSatisfy(isCode('ABORTED'))
    pipe.up = true
    await until(() => a.isUp, 'the tunnel up again', 5_000)
    pipe.up = false // up, but its PING gets no answer
    const pinging = new AbortController()
    const q = pingAcross(a, 60_000, systemClock, pinging.signal).catch((e: unknown) => e)
    await sleep(20)
    pinging.abort()
    expect(await q).toSatisfy(isCode('ABORTED'))
    expect({ resumed: a.listenerCount('resumed'), closed: a.listenerCount('closed'), migrating: a.listenerCount('migrating') }).toEqual(before)
  })
})
