// How an introduction settles on one path (src/tunnel/path-race.ts), with a fake clock and
// fake paths: the first path starts the tunnel, TCP within AUTO_TCP_GRACE_MS of UDP is
// taken instead, and an attempt that could give a better path runs on for LATE_PATH_MS
// and hands it over when it lands (the TCP/UDP race under delay, issue #15).
import { describe, expect, it } from 'vitest'
import { NatdError } from '../../../src/protocol/errors.js'
import { silentLogger } from '../../../src/protocol/log.js'
import { AUTO_TCP_GRACE_MS, LATE_PATH_ANSWER_MS, LATE_PATH_MS, PathRace, pathRank, type AttemptKind, type RaceEntry } from '../../../src/tunnel/path-race.js'
import type { PathKind, Transport } from '../../../src/protocol/tunnel-snapshot.js'
import { FakeClock } from '../helpers.js'

interface FakePath {
  name: string
  path: PathKind
  transport: Transport
}

const UDP: FakePath = { name: 'udp', path: 'direct-udp', transport: 'udp' }
const TCP: FakePath = { name: 'tcp', path: 'direct-tcp', transport: 'tcp' }
const RELAY: FakePath = { name: 'relay', path: 'relay', transport: 'tcp' }
const LAN: FakePath = { name: 'lan', path: 'lan', transport: 'udp' }

interface AttemptOpts {
  lan?: boolean
  costly?: boolean
}

interface RaceOpts {
  preferTcp?: boolean
  lateMs?: number
  follow?: boolean
}

/** An attempt the test lands or fails by hand; `aborted` says whether the race stopped it. */
function attempt(kind: AttemptKind, opts: AttemptOpts = {}): RaceEntry<FakePath> & { land(p: FakePath): void; fail(code?: string): void; readonly aborted: boolean } {
  let land!: (p: FakePath) => void
  let fail!: (e: Error) => void
  const p = new Promise<FakePath>((res, rej) => {
    land = res
    fail = rej
  })
  p.catch(() => undefined)
  const abort = new AbortController()
  abort.signal.addEventListener('abort', () => fail(new NatdError('ABORTED', 'aborted')))
  return { kind, lan: opts.lan ?? true, costly: opts.costly ?? false, attempt: p, abort, land, fail: (code = 'PUNCH_TIMEOUT') => fail(new NatdError(code as 'PUNCH_TIMEOUT', code)), get aborted() { return abort.signal.aborted } }
}

function race(entries: Array<RaceEntry<FakePath>>, opts: RaceOpts = {}) {
  const clock = new FakeClock()
  const discarded: string[] = []
  const late: string[] = []
  const r = new PathRace(entries, { preferTcp: opts.preferTcp ?? true, lateMs: opts.lateMs ?? LATE_PATH_MS, follow: opts.follow ?? false }, { clock, log: silentLogger, discard: (p) => void discarded.push(p.name) })
  let doneAt: number | null = null
  const outcome = r.run((p) => void late.push(p.name)).then((o) => {
    void o.done.then(() => (doneAt = clock.now()))
    return o
  })
  return { r, clock, discarded, late, outcome, doneAt: () => doneAt }
}

/** A UDP and a TCP attempt racing: the attempts beside the fields of `race()`. */
function twoWay(opts: RaceOpts & { udp?: AttemptOpts; tcp?: AttemptOpts } = {}) {
  const udp = attempt('udp', opts.udp)
  const tcp = attempt('tcp', opts.tcp)
  return { udp, tcp, ...race([udp, tcp], opts) }
}

/** UDP, TCP and relay attempts racing, as an `auto` open starts them. */
function threeWay(opts: RaceOpts = {}) {
  const udp = attempt('udp')
  const tcp = attempt('tcp')
  const relay = attempt('relay')
  return { udp, tcp, relay, ...race([udp, tcp, relay], opts) }
}

describe('pathRank', () => {
  it('ranks LAN over direct over the relay, TCP over UDP on the same', () => {
    const order = [RELAY, UDP, TCP, LAN, { ...LAN, transport: 'tcp' as const }].map(pathRank)
    expect(order).toEqual([...order].sort((a, b) => a - b))
    expect(new Set(order).size).toBe(5)
  })
})

describe('PathRace (fake clock)', () => {
  it('UDP first, TCP within the grace: the tunnel starts on TCP and UDP is dropped', async () => {
    const { udp, tcp, ...t } = twoWay()
    udp.land(UDP)
    await t.clock.pass(AUTO_TCP_GRACE_MS - 10)
    tcp.land(TCP)
    await t.clock.pass(1)
    const o = await t.outcome
    expect(o.won.name).toBe('tcp')
    expect(t.discarded).toEqual(['udp'])
    expect(t.late).toEqual([])
  })

  it('TCP after the grace (delay, a lost SYN): the tunnel starts on UDP, TCP is handed over when it lands, 1.2 s later', async () => {
    const { udp, tcp, relay, ...t } = threeWay()
    udp.land(UDP)
    await t.clock.pass(AUTO_TCP_GRACE_MS + 1)
    const o = await t.outcome
    expect(o.won.name).toBe('udp')
    expect(relay.aborted).toBe(true) // the relay cannot beat a direct path
    expect(tcp.aborted).toBe(false)
    await t.clock.pass(1_200)
    tcp.land(TCP)
    await t.clock.pass(1)
    expect(t.late).toEqual(['tcp'])
    expect(t.discarded).toEqual([])
    expect(t.doneAt()).not.toBeNull() // nothing runs any more: the slot goes
  })

  it('a late path past LATE_PATH_MS is aborted, never handed over; done resolves at the window', async () => {
    const { udp, tcp, ...t } = twoWay()
    udp.land(UDP)
    await t.clock.pass(AUTO_TCP_GRACE_MS)
    const started = t.clock.now()
    await t.clock.pass(LATE_PATH_MS)
    expect(tcp.aborted).toBe(true)
    expect(t.doneAt()).toBe(started + LATE_PATH_MS)
    expect(t.late).toEqual([])
  })

  it('without late paths (lateMs 0: a resume, an explicit --via) every loser is aborted at once', async () => {
    const { udp, tcp, ...t } = twoWay({ preferTcp: false, lateMs: 0 })
    udp.land(UDP)
    await t.clock.pass(1)
    expect((await t.outcome).won.name).toBe('udp')
    expect(tcp.aborted).toBe(true)
    expect(t.doneAt()).not.toBeNull()
  })

  it('the relay first (two sites behind one CGN that hairpins): UDP then TCP are handed over as they land; a worse one after a better one is dropped', async () => {
    const { udp, tcp, relay, ...t } = threeWay()
    relay.land(RELAY)
    await t.clock.pass(1)
    expect((await t.outcome).won.name).toBe('relay')
    await t.clock.pass(100)
    udp.land(UDP)
    await t.clock.pass(400)
    tcp.land(TCP)
    await t.clock.pass(1)
    expect(t.late).toEqual(['udp', 'tcp'])

    const { udp: u2, tcp: t2, relay: r2, ...second } = threeWay()
    r2.land(RELAY)
    await second.clock.pass(1)
    await second.outcome
    t2.land(TCP)
    await second.clock.pass(1)
    u2.land(UDP) // a UDP path could have been a LAN one (kept for that); direct-udp loses to the TCP handed over
    await second.clock.pass(1)
    expect(second.late).toEqual(['tcp'])
    expect(second.discarded).toEqual(['udp'])
  })

  it('on the responder (no grace), the path the initiator chose wins; a path that lands after the race ended is discarded', async () => {
    const { udp, tcp, ...t } = twoWay({ preferTcp: false, lateMs: 0 })
    udp.land(UDP)
    await t.clock.pass(1)
    expect((await t.outcome).won.name).toBe('udp')
    tcp.land(TCP) // landed as its abort came (too late to stop it)
    await t.clock.pass(1)
    expect(t.discarded).toEqual([])
    expect(t.late).toEqual([])
  })

  it('every attempt fails: the most telling error; cancel() stops a late attempt', async () => {
    const { udp, tcp, ...t } = twoWay()
    udp.fail('PUNCH_TIMEOUT')
    tcp.fail('KEY_MISMATCH')
    await expect(t.outcome).rejects.toMatchObject({ code: 'KEY_MISMATCH' })

    const { udp: u2, tcp: t2, ...second } = twoWay()
    u2.land(UDP)
    await second.clock.pass(AUTO_TCP_GRACE_MS)
    await second.outcome
    second.r.cancel()
    await second.clock.pass(1)
    expect(t2.aborted).toBe(true)
    expect(second.doneAt()).not.toBeNull()
  })

  it('a LAN path over UDP is not swapped for direct-tcp in the grace', async () => {
    const { udp, tcp, ...t } = twoWay()
    udp.land(LAN)
    await t.clock.pass(5)
    tcp.land(TCP)
    await t.clock.pass(AUTO_TCP_GRACE_MS)
    expect((await t.outcome).won.name).toBe('lan')
    expect(t.discarded).toEqual(['tcp'])
  })

  it('an attempt that already failed is never kept: UDP rejected, the relay wins, done resolves at once (review 3 #1)', async () => {
    const { udp, tcp, relay, ...t } = threeWay()
    udp.fail('PUNCH_TIMEOUT')
    tcp.fail('PUNCH_FAILED')
    await t.clock.pass(1)
    relay.land(RELAY)
    await t.clock.pass(1)
    expect((await t.outcome).won.name).toBe('relay')
    expect(t.doneAt()).toBe(t.clock.now() - 1) // not at LATE_PATH_MS: nothing is left to wait for (the punch slot goes)

    // One failed, one still running: done waits for the running one only, and resolves when it fails too.
    const { udp: u2, tcp: t2, relay: r2, ...second } = threeWay()
    u2.fail('PUNCH_TIMEOUT')
    await second.clock.pass(1)
    r2.land(RELAY)
    await second.clock.pass(1)
    await second.outcome
    expect(t2.aborted).toBe(false)
    await second.clock.pass(500)
    t2.fail('PUNCH_TIMEOUT')
    await second.clock.pass(1)
    expect(second.doneAt()).toBe(second.clock.now() - 1)
  })

  it('an attempt is kept only if its real candidates can beat the winner; never a spray or birthday puncher after a direct win (review 3 #4)', async () => {
    // TCP won, the peer offers no LAN candidate: UDP can give direct-udp at best, so it stops at once.
    const { udp, tcp, ...t } = twoWay({ udp: { lan: false }, tcp: { lan: false } })
    tcp.land(TCP)
    await t.clock.pass(1)
    expect((await t.outcome).won.name).toBe('tcp')
    expect(udp.aborted).toBe(true)
    expect(t.doneAt()).not.toBeNull()

    // A spraying UDP punch stops once TCP won, even one with LAN candidates.
    const { udp: spray, tcp: t2, ...second } = twoWay({ udp: { lan: true, costly: true }, tcp: { lan: false } })
    t2.land(TCP)
    await second.clock.pass(1)
    await second.outcome
    expect(spray.aborted).toBe(true)
    expect(second.doneAt()).not.toBeNull()

    // A plain UDP punch with LAN candidates may still give a LAN path: kept.
    const { udp: plain, tcp: t3, ...third } = twoWay({ udp: { lan: true }, tcp: { lan: false } })
    t3.land(TCP)
    await third.clock.pass(1)
    await third.outcome
    expect(plain.aborted).toBe(false)
    third.r.cancel()

    // The relay won: a costly puncher still runs on (a direct path is worth its cost).
    const s4 = attempt('udp', { lan: false, costly: true })
    const r4 = attempt('relay')
    const fourth = race([s4, r4])
    r4.land(RELAY)
    await fourth.clock.pass(1)
    await fourth.outcome
    expect(s4.aborted).toBe(false)
    fourth.r.cancel()
  })

  it('the responder follows the initiator: a late path is handed over whatever its own rank of it (review 3 #3a)', async () => {
    // The responder labels its winner `lan` (rank 3); the initiator saw direct-udp and switched to a late direct-tcp (rank 2).
    const { udp, tcp, ...t } = twoWay({ udp: { lan: true }, tcp: { lan: false }, preferTcp: false, lateMs: LATE_PATH_MS + LATE_PATH_ANSWER_MS, follow: true })
    udp.land(LAN)
    await t.clock.pass(1)
    expect((await t.outcome).won.name).toBe('lan')
    expect(tcp.aborted).toBe(false) // kept: the initiator may rank the winner lower than we do
    await t.clock.pass(1_200)
    tcp.land(TCP)
    await t.clock.pass(1)
    expect(t.late).toEqual(['tcp'])
    expect(t.discarded).toEqual([])

    // Two paths the initiator chose in turn that both landed in the race: the loser is handed over too, unranked.
    const { udp: u2, tcp: t2, ...second } = twoWay({ udp: { lan: false }, tcp: { lan: false }, preferTcp: false, lateMs: LATE_PATH_MS + LATE_PATH_ANSWER_MS, follow: true })
    t2.land(TCP)
    u2.land(UDP)
    await second.clock.pass(1)
    expect((await second.outcome).won.name).toBe('tcp')
    expect(second.late).toEqual(['udp'])
  })

  it('endLate() stops the late attempts and leaves the winner alone (the responder of a resume keeps none, review 3 #2)', async () => {
    const { udp, tcp, relay, ...t } = threeWay({ preferTcp: false, follow: true })
    relay.land(RELAY)
    await t.clock.pass(1)
    await t.outcome
    expect(udp.aborted).toBe(false)
    t.r.endLate()
    await t.clock.pass(1)
    expect(udp.aborted).toBe(true)
    expect(tcp.aborted).toBe(true)
    expect(relay.aborted).toBe(false)
    expect(t.doneAt()).toBe(t.clock.now() - 1)
  })
})
