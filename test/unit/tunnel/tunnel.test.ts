// One tunnel (src/tunnel/tunnel.ts) over the in-memory message pipe (./pipe.ts), with
// small real timings (keepalive 50 ms, gone after 200 ms, given up 300 ms later):
// keepalive, a silent path (migrating, then closed), goodbye, ping and snapshot().
//
//   Tunnel A (opener, peer "bob") ── pipe.a ═══ frames ═══ pipe.b ── Tunnel B (peer "alice")
import { afterEach, describe, expect, it } from 'vitest'
import { NatdError } from '../../../src/protocol/errors.js'
import { silentLogger, systemClock, type Logger, type TimerClock } from '../../../src/protocol/log.js'
import { canTransition, MIGRATE_GIVE_UP_MS, movesWithMapping, SUSPECT_SILENT_MS, Tunnel, type TunnelState, type TunnelTiming } from '../../../src/tunnel/tunnel.js'
import { FakeClock } from '../helpers.js'
import { messagePipe, until, type MessagePipe } from './pipe.js'

const TIMING: TunnelTiming = { keepaliveMs: 50, deadMs: 200, giveUpMs: 300 }
const BOB = { host: '203.0.113.2', port: 5000 }
const ALICE = { host: '198.51.100.1', port: 4000 }

interface Pair {
  pipe: MessagePipe
  a: Tunnel
  b: Tunnel
  closed: { a: string[]; b: string[] }
}

const live: Tunnel[] = []

function pair(clock: TimerClock = systemClock, timing: TunnelTiming = TIMING, log: Logger = silentLogger): Pair {
  const pipe = messagePipe()
  const a = new Tunnel({ name: 'bob', id: 'b0b' }, 'direct-udp', BOB, 'udp', 'intro-1', true, pipe.a, timing, clock, log)
  const b = new Tunnel({ name: 'alice', id: 'a11ce' }, 'direct-udp', ALICE, 'udp', 'intro-1', false, pipe.b, timing, clock, silentLogger)
  live.push(a, b)
  const closed = { a: [] as string[], b: [] as string[] }
  a.on('closed', (r) => closed.a.push(r))
  b.on('closed', (r) => closed.b.push(r))
  return { pipe, a, b, closed }
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

afterEach(() => {
  for (const t of live.splice(0)) t.close('test over', { goodbye: false })
})

describe('Tunnel: liveness', () => {
  it('a healthy tunnel stays up well past deadMs: keepalive pings are answered', async () => {
    const { a, b, closed } = pair()
    await sleep(2 * TIMING.deadMs + TIMING.keepaliveMs)
    expect(a.isUp).toBe(true)
    expect(b.isUp).toBe(true)
    expect(closed).toEqual({ a: [], b: [] })
    expect(a.snapshot().rttMs).toEqual(expect.any(Number)) // measured by the keepalive
  })

  it('a silent path makes both sides migrate (channels kept), then close after giveUpMs with a reason mentioning "silent"', async () => {
    const { pipe, a, b, closed } = pair()
    const ch = a.mux.openChannel(80)
    b.mux.on('open', (req) => req.accept())
    await ch.opened
    const chErrors: Error[] = []
    ch.on('error', (e) => chErrors.push(e))
    const migrating = { a: [] as string[], b: [] as string[] }
    a.on('migrating', (r) => migrating.a.push(r))
    b.on('migrating', (r) => migrating.b.push(r))
    pipe.up = false // the path dies: nothing crosses in either direction
    const cut = Date.now()
    await until(() => a.isMigrating && b.isMigrating, 'both tunnels to migrate', 2_000)
    expect(closed).toEqual({ a: [], b: [] })
    expect(a.snapshot().state).toBe('migrating')
    expect(chErrors).toEqual([])
    await until(() => closed.a.length > 0 && closed.b.length > 0, 'both tunnels to close', 2_000)
    expect(Date.now() - cut).toBeGreaterThanOrEqual(TIMING.deadMs + TIMING.giveUpMs!)
    expect(migrating.a).toEqual([expect.stringMatching(/silent|no answer/)])
    expect(closed.a).toEqual([expect.stringMatching(/no path for .*(silent|no answer)/)])
    expect(closed.b).toEqual([expect.stringMatching(/no path for .*(silent|no answer)/)])
    expect(a.isUp).toBe(false)
    await until(() => chErrors.length > 0, 'the channel to error')
    expect(chErrors[0]).toMatchObject({ code: 'TUNNEL_CLOSED' })
  })

  it('a path that comes back while migrating makes the tunnel up again, with nothing resent', async () => {
    const { pipe, a, b, closed } = pair()
    pipe.up = false
    await until(() => a.isMigrating && b.isMigrating, 'both tunnels to migrate', 2_000)
    const resumed: number[] = []
    a.on('resumed', (ms) => resumed.push(ms))
    pipe.up = true
    await until(() => a.isUp && b.isUp, 'both tunnels up again', 2_000)
    expect(resumed).toEqual([expect.any(Number)])
    expect(closed).toEqual({ a: [], b: [] })
  })

  it('an up tunnel whose resume on a new session failed after detach() migrates at once; one that kept its session does not', async () => {
    const { a, closed } = pair()
    a.resumeFailed('no answer')
    expect(a.isUp).toBe(true) // still on its session: nothing to do
    a.detach()
    expect(a.isUp).toBe(true) // a voluntary move (moveToUdp) waits for the RESUME answer
    a.resumeFailed('the peer did not answer the resume')
    expect(a.isMigrating).toBe(true)
    expect(a.snapshot().state).toBe('migrating')
    expect(closed.a).toEqual([])
  })

  it('the session closing makes the tunnel migrate, not close', async () => {
    const { pipe, a, closed } = pair()
    pipe.a.destroy()
    await until(() => a.isMigrating, 'the tunnel to migrate')
    expect(closed.a).toEqual([])
    expect(a.snapshot().state).toBe('migrating')
  })
})

describe('Tunnel: close', () => {
  it('close() says goodbye: the peer closes at once with a reason containing "peer closed"', async () => {
    const { pipe, a, b, closed } = pair()
    a.close('closed by user')
    expect(closed.a).toEqual(['closed by user'])
    await until(() => closed.b.length > 0, 'the peer to close')
    expect(closed.b[0]).toContain('peer closed')
    expect(closed.b[0]).toContain('closed by user')
    expect(b.isUp).toBe(false)
    await expect(a.ping(100)).rejects.toSatisfy((e) => e instanceof NatdError && e.code === 'TUNNEL_CLOSED')
    // The goodbye is given a moment to leave, then the session goes.
    await until(() => pipe.a.destroyed, 'the session to be destroyed', 1_000)
    a.close('again') // idempotent
    expect(closed.a).toEqual(['closed by user'])
  })

  it("close(reason, { goodbye: false }) sends nothing: the peer only notices when the path goes silent", async () => {
    const { pipe, a, closed } = pair()
    const fromA: number[] = []
    pipe.tap = (from, buf) => {
      if (from === 'a') fromA.push(buf[0]!)
    }
    // Positive control: the tap sees what A sends while it is open.
    await a.ping(1_000)
    expect(fromA.length).toBeGreaterThan(0)
    fromA.length = 0
    a.close('duplicate tunnel', { goodbye: false })
    await sleep(20)
    expect(fromA).toEqual([])
    expect(closed.a).toEqual(['duplicate tunnel'])
    expect(closed.b).toEqual([])
  })
})

describe('Tunnel: ping and snapshot', () => {
  it('ping() resolves with a round-trip time in ms, and snapshot() reports it', async () => {
    const { pipe, a } = pair()
    pipe.delayMs = 30 // each way: the round trip takes at least 60 ms
    const rtt = await a.ping(1_000)
    expect(rtt).toBeGreaterThanOrEqual(59) // timers may round down by a fraction of a ms
    expect(rtt).toBeLessThan(1_000)
    expect(a.snapshot().rttMs).toBe(rtt)
  })

  it('ping(ms, signal): an abort rejects ABORTED at once, long before the timeout; the tunnel stays up', async () => {
    const { pipe, a } = pair()
    pipe.up = false
    const caller = new AbortController()
    const ping = a.ping(60_000, caller.signal)
    caller.abort()
    await expect(ping).rejects.toSatisfy((e) => e instanceof NatdError && e.code === 'ABORTED')
    await expect(a.ping(10, AbortSignal.abort())).rejects.toSatisfy((e) => e instanceof NatdError && e.code === 'ABORTED')
    expect(a.isUp).toBe(true)
  })

  it('ping() rejects TIMEOUT naming the peer when no pong comes back', async () => {
    const { pipe, a } = pair()
    pipe.up = false
    await expect(a.ping(30)).rejects.toSatisfy((e) => e instanceof NatdError && e.code === 'TIMEOUT' && e.message.includes('bob'))
  })

  it('snapshot() describes the tunnel: peer, id, path, remote, rtt, bytes, since, streams', async () => {
    const clock = new FakeClock(Date.UTC(2025, 0, 2, 3, 4, 5))
    const { a, b } = pair(clock)
    expect(a.snapshot()).toEqual({
      peer: 'bob',
      id: 'b0b',
      path: 'direct-udp',
      remote: '203.0.113.2:5000',
      rttMs: null,
      bytesIn: 0,
      bytesOut: 0,
      since: '2025-01-02T03:04:05.000Z',
      streams: 0,
      transport: 'udp',
      state: 'up'
    })
    b.mux.on('open', (req) => {
      req.accept()
      req.channel.end(Buffer.alloc(300, 1))
    })
    const ch = a.mux.openChannel(80)
    await ch.opened
    ch.write(Buffer.alloc(1000, 2))
    ch.resume()
    await until(() => a.snapshot().bytesIn === 300 && b.snapshot().bytesIn === 1000, 'the bytes to cross')
    expect(a.snapshot()).toMatchObject({ bytesIn: 300, bytesOut: 1000, streams: 1 })
    expect(b.snapshot()).toMatchObject({ peer: 'alice', remote: '198.51.100.1:4000', bytesIn: 1000, bytesOut: 300 })
  })
})

describe('Tunnel: liveness under a fake clock (the daemon\'s real timings, no real waiting)', () => {
  it('a silent path: migrating within a keepalive and WAITING_SILENT_MS, closed after MIGRATE_GIVE_UP_MS (90 s) and not a moment before', async () => {
    const clock = new FakeClock()
    const { pipe, a, b, closed } = pair(clock, { keepaliveMs: 5_000, deadMs: 15_000 })
    await clock.pass(12_000)
    expect([a.isUp, b.isUp]).toEqual([true, true]) // positive control: keepalives answered, nothing silent
    expect(a.snapshot().rttMs).toEqual(expect.any(Number))
    pipe.up = false
    const cut = clock.now()
    // The next keepalive ping goes unanswered: gone WAITING_SILENT_MS later.
    await clock.pass(5_000 + 2_000 + 500)
    expect([a.isMigrating, b.isMigrating]).toEqual([true, true])
    const since = (a.state as Extract<TunnelState, { kind: 'migrating' }>).since
    expect(since - cut).toBeGreaterThan(2_000)
    await clock.pass(since + MIGRATE_GIVE_UP_MS - clock.now() - 300)
    expect(closed).toEqual({ a: [], b: [] })
    await clock.pass(600)
    expect(closed.a).toEqual([expect.stringMatching(/^no path for 1m30s \(no answer for 2\.0s\)$/)])
    expect(a.state.kind).toBe('closed')
  })
})

describe('Tunnel: a silent path is suspect long before it is gone (issue #15)', () => {
  it("'suspect' after SUSPECT_SILENT_MS of silence while waiting, again at each further SUSPECT_SILENT_MS, none while answers come; the tunnel stays up until WAITING_SILENT_MS", async () => {
    const clock = new FakeClock()
    const { pipe, a } = pair(clock, { keepaliveMs: 5_000, deadMs: 15_000 })
    const suspects: number[] = []
    a.on('suspect', () => suspects.push(clock.now()))
    await clock.pass(12_000)
    expect(suspects).toEqual([]) // positive control: keepalives answered
    pipe.up = false
    // The next keepalive ping (within 5 s) goes unanswered: suspect SUSPECT_SILENT_MS later.
    for (let i = 0; i < 120 && suspects.length === 0; i++) await clock.pass(50)
    const first = suspects[0]!
    expect(a.isUp).toBe(true)
    await clock.pass(SUSPECT_SILENT_MS)
    expect(suspects).toHaveLength(2)
    expect(suspects[1]! - first).toBeGreaterThanOrEqual(SUSPECT_SILENT_MS - 250)
    expect(a.isUp).toBe(true)
    await clock.pass(2_000 - 2 * SUSPECT_SILENT_MS + 300)
    expect(a.isMigrating).toBe(true)
  })

  it("a suspect silence that ends with the path heard again is 'lossy' (not gone): the tunnel stays up", async () => {
    const clock = new FakeClock()
    const { pipe, a } = pair(clock, { keepaliveMs: 5_000, deadMs: 15_000 })
    const lossy: number[] = []
    a.on('lossy', (ms) => lossy.push(ms))
    await clock.pass(12_000)
    expect(lossy).toEqual([]) // positive control: answers come, nothing suspect
    pipe.up = false
    let suspects = 0
    a.on('suspect', () => suspects++)
    for (let i = 0; i < 120 && suspects === 0; i++) await clock.pass(50)
    expect(suspects).toBe(1)
    pipe.up = true // the lost frames are not resent by the pipe: a new ping's pong is heard
    void a.ping(1_000).catch(() => undefined)
    await clock.pass(100)
    expect(lossy).toHaveLength(1)
    expect(lossy[0]).toBeGreaterThanOrEqual(SUSPECT_SILENT_MS)
    expect(a.isUp).toBe(true)
    expect(a.migratedBySilence).toBe(false)
  })

  it("a suspect silence that ended in a migration is not 'lossy' once the tunnel resumed on a new session (it was gone, not lossy: auto must not move the new path to UDP for it)", async () => {
    const clock = new FakeClock()
    const { pipe, a, b } = pair(clock, { keepaliveMs: 5_000, deadMs: 15_000 })
    const lossy: number[] = []
    a.on('lossy', (ms) => lossy.push(ms))
    await clock.pass(12_000)
    pipe.up = false
    let suspects = 0
    a.on('suspect', () => suspects++)
    for (let i = 0; i < 120 && suspects === 0; i++) await clock.pass(50)
    expect(suspects).toBe(1)
    a.pathChanged('the peer\'s NAT mapping or address changed') // the path check found it gone
    expect(a.isMigrating).toBe(true)
    // The opener's resume: both sides detach and continue on a new session.
    const next = messagePipe()
    const fromA = b.detach()
    const fromB = a.detach()
    expect(a.resume(next.a, fromA, 'direct-tcp', BOB, 'tcp')).toBe(true)
    expect(b.resume(next.b, fromB, 'direct-tcp', ALICE, 'tcp')).toBe(true)
    let answered = false
    void a.ping(1_000).then(() => (answered = true), () => undefined)
    await clock.pass(100)
    expect(answered).toBe(true) // the peer was heard on the new session
    expect(a.isUp).toBe(true)
    expect(lossy).toEqual([])
  })

  it('pathChanged() migrates a direct tunnel at once (channels kept), and the old path heard again brings it up; a relayed tunnel is left alone', async () => {
    const { a, b, closed } = pair()
    const ch = a.mux.openChannel(80)
    b.mux.on('open', (req) => req.accept())
    await ch.opened
    a.pathChanged('our NAT mapping or address changed')
    expect(a.isMigrating).toBe(true)
    expect((a.state as Extract<TunnelState, { kind: 'migrating' }>).reason).toBe('our NAT mapping or address changed')
    await until(() => a.isUp, 'the old path heard again', 2_000) // the pipe still carries: the migrating ping is answered
    expect(closed).toEqual({ a: [], b: [] })
    const pipe = messagePipe()
    const relayed = new Tunnel({ name: 'bob', id: 'b0b' }, 'relay', BOB, 'tcp', 'intro-2', true, pipe.a, TIMING, systemClock, silentLogger)
    live.push(relayed)
    relayed.pathChanged('our NAT mapping or address changed')
    expect(relayed.isUp).toBe(true)
  })

  it('pathChanged() leaves a LAN tunnel and an IPv6 one up: neither goes through the NAT mapping that changed', async () => {
    const made: Tunnel[] = []
    for (const [path, remote] of [
      ['lan', { host: '192.168.1.20', port: 5000 }],
      ['direct-udp', { host: '2001:db8::20', port: 5000 }]
    ] as const) {
      const pipe = messagePipe()
      const t = new Tunnel({ name: 'bob', id: 'b0b' }, path, remote, 'udp', `intro-${path}`, true, pipe.a, TIMING, systemClock, silentLogger)
      live.push(t)
      made.push(t)
      t.pathChanged('our NAT mapping or address changed')
    }
    expect(made.map((t) => t.state.kind)).toEqual(['up', 'up'])
    // The rule itself: direct paths to IPv4 endpoints only, UDP or TCP.
    expect(movesWithMapping({ path: 'direct-udp', remote: BOB })).toBe(true)
    expect(movesWithMapping({ path: 'direct-tcp', remote: BOB })).toBe(true)
    expect(movesWithMapping({ path: 'direct-tcp', remote: { host: '2001:db8::20', port: 1 } })).toBe(false)
    expect(movesWithMapping({ path: 'relay', remote: BOB })).toBe(false)
    expect(movesWithMapping({ path: 'lan', remote: BOB })).toBe(false)
  })
})

describe('Tunnel: moves to a late path (tunnel/path-race.ts) one switch at a time', () => {
  it('relay -> direct-udp -> direct-tcp in quick succession: the second move waits for the first switch to settle, and every byte crosses both ways in order', async () => {
    const relay = messagePipe()
    const a = new Tunnel({ name: 'bob', id: 'b0b' }, 'relay', { host: '192.0.2.9', port: 3478 }, 'tcp', 'intro-2', true, relay.a, TIMING, systemClock, silentLogger)
    const b = new Tunnel({ name: 'alice', id: 'a11ce' }, 'relay', { host: '192.0.2.9', port: 3478 }, 'tcp', 'intro-2', false, relay.b, TIMING, systemClock, silentLogger)
    live.push(a, b)
    relay.delayMs = 20 // the relay is slow: the peer's SWITCH on it comes well after ours left
    const got = { a: [] as Buffer[], b: [] as Buffer[] }
    b.mux.on('open', (req) => {
      req.accept()
      req.channel.on('data', (d: Buffer) => got.b.push(d))
      req.channel.write(Buffer.from('b0,'))
      sendB = (x) => req.channel.write(Buffer.from(x))
    })
    let sendB: (x: string) => void = () => undefined
    const ch = a.mux.openChannel(80)
    ch.on('data', (d: Buffer) => got.a.push(d))
    await ch.opened
    ch.write(Buffer.from('a0,'))
    const udp = messagePipe()
    const tcp = messagePipe()
    expect(a.upgrade(udp.a, 'direct-udp', BOB, 'udp')).toBe(true)
    expect(b.upgrade(udp.b, 'direct-udp', ALICE, 'udp')).toBe(true)
    ch.write(Buffer.from('a1,'))
    sendB('b1,')
    // A second switch now would lose frames (the mux reads the relay until the peer's SWITCH): refused.
    const spare = messagePipe()
    expect(a.upgrade(spare.a, 'direct-tcp', BOB, 'tcp')).toBe(false)
    expect(spare.a.destroyed).toBe(true)
    await Promise.all([a.switchSettled(), b.switchSettled()])
    expect(a.upgrade(tcp.a, 'direct-tcp', BOB, 'tcp')).toBe(true)
    expect(b.upgrade(tcp.b, 'direct-tcp', ALICE, 'tcp')).toBe(true)
    ch.write(Buffer.from('a2'))
    sendB('b2')
    await until(() => Buffer.concat(got.b).toString() === 'a0,a1,a2' && Buffer.concat(got.a).toString() === 'b0,b1,b2', 'every byte, in order, both ways', 3_000)
    await Promise.all([a.switchSettled(), b.switchSettled()])
    expect([a.path, b.path, a.transport]).toEqual(['direct-tcp', 'direct-tcp', 'tcp'])
    await until(() => relay.a.destroyed && udp.a.destroyed && relay.b.destroyed && udp.b.destroyed, 'the old sessions to go', 3_000)
    expect(tcp.a.destroyed).toBe(false)
  })
})

describe('Tunnel: every state move goes through one transition() that logs once', () => {
  it('canTransition: up to anything, migrating to up or closed, closed to nothing', () => {
    const kinds = ['up', 'migrating', 'closed'] as const
    const allowed = kinds.flatMap((from) => kinds.filter((to) => canTransition(from, to)).map((to) => `${from}->${to}`))
    expect(allowed).toEqual(['up->up', 'up->migrating', 'up->closed', 'migrating->up', 'migrating->closed'])
  })

  it('path, remote and transport are the state\'s: an upgrade changes them with one "path upgraded" line; a closed tunnel refuses to resume or upgrade and keeps its route', async () => {
    const lines: string[] = []
    const log: Logger = { error: (m) => void lines.push(m), warn: (m) => void lines.push(m), info: (m) => void lines.push(m), debug: (m) => void lines.push(`debug ${m}`), child: () => log }
    const clock = new FakeClock()
    const { a } = pair(clock, TIMING, log)
    const next = messagePipe()
    const paths: string[] = []
    a.on('path', (from, to) => paths.push(`${from}->${to}`))
    const RELAY = { host: '192.0.2.9', port: 3478 }
    a.upgrade(next.a, 'relay', RELAY, 'tcp')
    expect(a.state).toEqual({ kind: 'up', path: 'relay', remote: RELAY, transport: 'tcp' })
    expect(a.snapshot()).toMatchObject({ path: 'relay', remote: '192.0.2.9:3478', transport: 'tcp', state: 'up' })
    expect(paths).toEqual(['direct-udp->relay'])
    expect(lines).toEqual(['path upgraded'])
    lines.length = 0
    a.close('closed by user', { goodbye: false })
    expect(lines).toEqual(['tunnel closed'])
    expect(a.state).toEqual({ kind: 'closed', reason: 'closed by user', path: 'relay', remote: RELAY, transport: 'tcp' })
    lines.length = 0
    const late = messagePipe()
    expect(a.resume(late.a, 0, 'direct-udp', BOB, 'udp')).toBe(false)
    expect(late.a.destroyed).toBe(true)
    a.upgrade(messagePipe().a, 'direct-tcp', BOB, 'tcp')
    a.close('again')
    expect(a.state).toMatchObject({ kind: 'closed', reason: 'closed by user', path: 'relay' })
    expect(paths).toEqual(['direct-udp->relay'])
    expect(lines.filter((l) => !l.startsWith('debug'))).toEqual([])
  })

  it('up -> migrating -> up (the old path heard again) -> closed: one line each, and a migrating tunnel refuses an upgrade', async () => {
    const lines: string[] = []
    const log: Logger = { error: (m) => void lines.push(m), warn: (m) => void lines.push(m), info: (m) => void lines.push(m), debug: () => undefined, child: () => log }
    const clock = new FakeClock()
    const { pipe, a } = pair(clock, { keepaliveMs: 1_000, deadMs: 5_000 }, log)
    pipe.up = false
    await clock.pass(1_000 + 2_000 + 500)
    expect(a.isMigrating).toBe(true)
    const spare = messagePipe()
    a.upgrade(spare.a, 'relay', { host: '192.0.2.9', port: 3478 }, 'tcp')
    expect(spare.a.destroyed).toBe(true)
    expect(a.path).toBe('direct-udp')
    pipe.up = true
    await clock.pass(1_000) // the migrating ping is answered: the old path is back
    expect(a.isUp).toBe(true)
    a.close('closed by user', { goodbye: false })
    expect(lines).toEqual(['tunnel migrating', 'tunnel resumed', 'tunnel closed'])
  })
})
