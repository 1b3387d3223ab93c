// TunnelRecovery (src/tunnel/recovery.ts) alone: the resume and upgrade loops against
// fake tunnels, a stub introducer and punch, and fake time; what each loop asks for,
// when, and when it stops.
import { describe, expect, it } from 'vitest'
import { NatdError } from '../../../src/protocol/errors.js'
import { DEFAULT_SERVER_LIMITS } from '../../../src/rendezvous/limits.js'
import { silentLogger } from '../../../src/protocol/log.js'
import type { PeerTarget } from '../../../src/protocol/peer-ref.js'
import type { Via } from '../../../src/protocol/rendezvous.js'
import type { Introduction } from '../../../src/tunnel/paths.js'
import {
  RESUME_ATTEMPT_MIN_MS,
  RESUME_ATTEMPT_MS,
  RESUME_ATTEMPT_SPACING_MS,
  RESUME_OFFLINE_FAST_BURST,
  RESUME_OFFLINE_FAST_MAX,
  RESUME_OFFLINE_FAST_PER_MIN,
  RESUME_OFFLINE_RETRY_MS,
  RESUME_RATE_LIMITED_MAX_MS,
  RESUME_RATE_LIMITED_MS,
  RESUME_RETRY_FIRST_MS,
  RESUME_RETRY_MS,
  RESUME_UNREGISTERED_RETRY_MS,
  TunnelRecovery,
  UPGRADE_FIRST_MS,
  UPGRADE_RETRY_MS,
  UPGRADE_TIMEOUT_MS,
  type RecoveringTunnel
} from '../../../src/tunnel/recovery.js'
import type { PathKind } from '../../../src/tunnel/tunnel.js'
import { FakeClock } from '../helpers.js'

class FakeTunnel implements RecoveringTunnel {
  readonly peer = { name: 'bob', id: 'B'.repeat(52) }
  path: PathKind = 'relay'
  isOpen = true
  isUp = true
  isMigrating = false
  migratedBySilence = false
  lastRttMs: number | null = null
}

interface Call {
  at: number
  what: 'introduce' | 'refresh' | 'establish'
  via?: Via
  timeoutMs?: number
  expected?: PeerTarget
  resuming?: FakeTunnel | null
}

function setup(punch: (resuming: FakeTunnel | null) => Promise<void> = () => Promise.reject(new NatdError('PUNCH_TIMEOUT', 'no path'))) {
  const clock = new FakeClock()
  const calls: Call[] = []
  const kept = new Map<string, FakeTunnel>()
  let closed = false
  const start = clock.now()
  const recovery = new TunnelRecovery<FakeTunnel>({
    clock,
    log: silentLogger,
    introduce: async (_target, via) => {
      calls.push({ at: clock.now() - start, what: 'introduce', via })
      return { introId: new Uint8Array(16) } as unknown as Introduction
    },
    refreshNat: async () => void calls.push({ at: clock.now() - start, what: 'refresh' }),
    establish: async (_intro, timeoutMs, expected, resuming) => {
      calls.push({ at: clock.now() - start, what: 'establish', timeoutMs, expected, resuming })
      await punch(resuming)
    },
    current: (id) => kept.get(id),
    closed: () => closed
  })
  const tunnel = new FakeTunnel()
  kept.set(tunnel.peer.id, tunnel)
  return { clock, calls, kept, tunnel, recovery, close: () => (closed = true) }
}

/**
 * A TunnelRecovery for s.tunnel whose server answers each introduction with `answer()`:
 * a refusal when it throws, else an introduction, whose punch resumes s.tunnel.
 */
function answering(s: ReturnType<typeof setup>, answer: () => void): TunnelRecovery<FakeTunnel> {
  return new TunnelRecovery<FakeTunnel>({
    clock: s.clock,
    log: silentLogger,
    introduce: async (_target, via) => {
      s.calls.push({ at: s.clock.now(), what: 'introduce', via })
      answer()
      return { introId: new Uint8Array(16) } as unknown as Introduction
    },
    refreshNat: async () => undefined,
    establish: async () => void (s.tunnel.isMigrating = false),
    current: (id) => s.kept.get(id),
    closed: () => false
  })
}

describe('TunnelRecovery.resume: a migrating tunnel we opened', () => {
  it('asks the way the tunnel was opened, punches to resume that tunnel, retries after RESUME_RETRY_FIRST_MS then RESUME_ATTEMPT_SPACING_MS after a fast failure\'s start, each attempt twice as long, until it is up', async () => {
    const s = setup()
    s.tunnel.isMigrating = true
    const loop = s.recovery.resume(s.tunnel, 'relay')
    await s.clock.pass(RESUME_RETRY_FIRST_MS + RESUME_ATTEMPT_SPACING_MS)
    const establishes = s.calls.filter((c) => c.what === 'establish')
    expect(establishes.map((c) => c.at)).toEqual([0, RESUME_RETRY_FIRST_MS, RESUME_RETRY_FIRST_MS + RESUME_ATTEMPT_SPACING_MS])
    expect(establishes.map((c) => c.timeoutMs)).toEqual([RESUME_ATTEMPT_MIN_MS, 2 * RESUME_ATTEMPT_MIN_MS, Math.min(RESUME_ATTEMPT_MS, 4 * RESUME_ATTEMPT_MIN_MS)])
    expect(establishes[0]).toMatchObject({ expected: { name: null, id: s.tunnel.peer.id }, resuming: s.tunnel })
    expect(s.calls.filter((c) => c.what === 'introduce').every((c) => c.via === 'relay')).toBe(true)
    s.tunnel.isMigrating = false // resumed (by the punch, or the peer)
    await s.clock.pass(RESUME_RETRY_MS * 5)
    await loop
    expect(s.calls.filter((c) => c.what === 'establish')).toHaveLength(3)
  })

  it('the first attempt lasts RESUME_ATTEMPT_RTTS round trips of the tunnel when that is longer than the minimum', async () => {
    const s = setup(async (t) => void (t!.isMigrating = false))
    s.tunnel.isMigrating = true
    s.tunnel.lastRttMs = 150
    await s.recovery.resume(s.tunnel, 'auto')
    expect(s.calls.find((c) => c.what === 'establish')?.timeoutMs).toBe(1_500)
  })

  it('attempt lengths are whole milliseconds (a measured round trip is fractional; errors quote the length)', async () => {
    const s = setup(async (t) => void (t!.isMigrating = false))
    s.tunnel.isMigrating = true
    s.tunnel.lastRttMs = 105.32
    await s.recovery.resume(s.tunnel, 'auto')
    expect(s.calls.find((c) => c.what === 'establish')?.timeoutMs).toBe(1_053)
  })

  it('an auto direct-tcp tunnel that went silent asks for UDP first, then as it was opened', async () => {
    const s = setup()
    s.tunnel.isMigrating = true
    s.tunnel.path = 'direct-tcp'
    s.tunnel.migratedBySilence = true
    const loop = s.recovery.resume(s.tunnel, 'auto')
    await s.clock.pass(RESUME_RETRY_FIRST_MS + RESUME_ATTEMPT_SPACING_MS)
    expect(s.calls.filter((c) => c.what === 'introduce').map((c) => c.via)).toEqual(['udp', 'auto', 'auto'])
    s.tunnel.isMigrating = false
    await s.clock.pass(RESUME_ATTEMPT_SPACING_MS)
    await loop
  })

  it('attempts that fail at once cost at most 60 introductions a minute (plus the early first retry), inside the server\'s 120 per key; a full-length attempt is still followed after RESUME_RETRY_MS', async () => {
    const s = setup()
    s.tunnel.isMigrating = true
    const loop = s.recovery.resume(s.tunnel, 'auto')
    await s.clock.pass(60_000)
    const at = s.calls.filter((c) => c.what === 'introduce').map((c) => c.at)
    expect(at.length).toBeLessThanOrEqual(61)
    expect(at.length - 1).toBeLessThanOrEqual(DEFAULT_SERVER_LIMITS.introductionsPerMinute / 2)
    for (let i = 2; i < at.length; i++) expect(at[i]! - at[i - 1]!).toBeGreaterThanOrEqual(RESUME_ATTEMPT_SPACING_MS)
    s.tunnel.isMigrating = false
    await s.clock.pass(RESUME_ATTEMPT_SPACING_MS)
    await loop

    // attempts that run their whole time (600, 1200 ms): the next one RESUME_RETRY_MS after each ends
    const slow: ReturnType<typeof setup> = setup(async () => {
      await slow.clock.sleep(slow.calls.at(-1)!.timeoutMs!)
      throw new NatdError('PUNCH_TIMEOUT', 'no path')
    })
    slow.tunnel.isMigrating = true
    const slowLoop = slow.recovery.resume(slow.tunnel, 'auto')
    await slow.clock.pass(RESUME_ATTEMPT_MIN_MS * 3 + RESUME_RETRY_FIRST_MS + RESUME_RETRY_MS)
    expect(slow.calls.filter((c) => c.what === 'establish').map((c) => c.at)).toEqual([0, RESUME_ATTEMPT_MIN_MS + RESUME_RETRY_FIRST_MS, RESUME_ATTEMPT_MIN_MS * 3 + RESUME_RETRY_FIRST_MS + RESUME_RETRY_MS])
    slow.tunnel.isMigrating = false
    await slow.clock.pass(RESUME_ATTEMPT_MS)
    await slowLoop
  })

  it('backs off on RATE_LIMITED: RESUME_RATE_LIMITED_MS, doubling up to RESUME_RATE_LIMITED_MAX_MS', async () => {
    const s = setup()
    const recovery = answering(s, () => {
      throw new NatdError('RATE_LIMITED', 'over 120 introductions a minute')
    })
    s.tunnel.isMigrating = true
    const start = s.clock.now()
    const loop = recovery.resume(s.tunnel, 'auto')
    await s.clock.pass(120_000)
    const gaps = s.calls.map((c, i) => (i ? c.at - s.calls[i - 1]!.at : c.at - start))
    expect(gaps).toEqual([0, RESUME_RATE_LIMITED_MS, 2 * RESUME_RATE_LIMITED_MS, 4 * RESUME_RATE_LIMITED_MS, RESUME_RATE_LIMITED_MAX_MS, RESUME_RATE_LIMITED_MAX_MS])
    s.tunnel.isMigrating = false
    await s.clock.pass(RESUME_RATE_LIMITED_MAX_MS)
    await loop
  })

  it('while we are not registered again it asks every RESUME_UNREGISTERED_RETRY_MS (nothing is sent meanwhile)', async () => {
    const s = setup()
    let unregistered = 3
    const recovery = answering(s, () => {
      if (unregistered-- > 0) throw new NatdError('NOT_REGISTERED', 'registering again')
    })
    s.tunnel.isMigrating = true
    const start = s.clock.now()
    const loop = recovery.resume(s.tunnel, 'auto')
    await s.clock.pass(4 * RESUME_UNREGISTERED_RETRY_MS)
    await loop
    expect(s.calls.map((c) => c.at - start)).toEqual([0, 1, 2, 3].map((i) => i * RESUME_UNREGISTERED_RETRY_MS))
    expect(s.tunnel.isMigrating).toBe(false)
  })

  it('asks again RESUME_OFFLINE_RETRY_MS after PEER_OFFLINE (the peer registers again), at most RESUME_OFFLINE_FAST_MAX times per migration, then spaced as any failure', async () => {
    const s = setup()
    let offline = RESUME_OFFLINE_FAST_MAX + 2
    const recovery = answering(s, () => {
      if (offline-- > 0) throw new NatdError('PEER_OFFLINE', 'bob is offline')
    })
    s.tunnel.isMigrating = true
    const start = s.clock.now()
    const loop = recovery.resume(s.tunnel, 'auto')
    await s.clock.pass(RESUME_OFFLINE_FAST_MAX * RESUME_OFFLINE_RETRY_MS + RESUME_RETRY_FIRST_MS + RESUME_ATTEMPT_SPACING_MS)
    await loop
    const gaps = s.calls.map((c, i) => (i ? c.at - s.calls[i - 1]!.at : c.at - start))
    expect(gaps).toEqual([0, ...Array<number>(RESUME_OFFLINE_FAST_MAX).fill(RESUME_OFFLINE_RETRY_MS), RESUME_RETRY_FIRST_MS, RESUME_ATTEMPT_SPACING_MS])
    expect(s.tunnel.isMigrating).toBe(false)
    // Inside the server's budget: the fast ones and a minute of spaced attempts.
    expect(RESUME_OFFLINE_FAST_MAX + 60_000 / RESUME_ATTEMPT_SPACING_MS).toBeLessThan(DEFAULT_SERVER_LIMITS.introductionsPerMinute)
  })

  it('the fast PEER_OFFLINE retries of all migrating tunnels share one budget: 15 tunnels after a server restart stay inside the server\'s per-key budget', async () => {
    const clock = new FakeClock()
    const kept = new Map<string, FakeTunnel>()
    const asked: Array<{ at: number; peer: string }> = []
    const recovery = new TunnelRecovery<FakeTunnel>({
      clock,
      log: silentLogger,
      introduce: async (target) => {
        asked.push({ at: clock.now(), peer: target })
        throw new NatdError('PEER_OFFLINE', 'offline')
      },
      refreshNat: async () => undefined,
      establish: async () => undefined,
      current: (id) => kept.get(id),
      closed: () => false
    })
    const tunnels = Array.from({ length: 15 }, (_, i) => {
      const t = new FakeTunnel()
      ;(t as { peer: { name: string; id: string } }).peer = { name: `p${i}`, id: String(i).padStart(52, 'P') }
      t.isMigrating = true
      kept.set(t.peer.id, t)
      return t
    })
    const loops = tunnels.map((t) => recovery.resume(t, 'auto'))
    await clock.pass(60_000)
    for (const t of tunnels) t.isMigrating = false
    await clock.pass(RESUME_ATTEMPT_SPACING_MS)
    await Promise.all(loops)
    const fast = asked.filter((a, i) => asked.slice(0, i).findLast((b) => b.peer === a.peer)?.at === a.at - RESUME_OFFLINE_RETRY_MS).length
    expect(fast).toBeLessThanOrEqual(RESUME_OFFLINE_FAST_BURST + RESUME_OFFLINE_FAST_PER_MIN)
    // The fast ones stay a small share of the server's 120 a minute (the spaced ones are each tunnel's own pace).
    expect(RESUME_OFFLINE_FAST_BURST + RESUME_OFFLINE_FAST_PER_MIN).toBeLessThanOrEqual(DEFAULT_SERVER_LIMITS.introductionsPerMinute / 4)
  })

  it('moveToUdp punches UDP to resume an up direct-tcp tunnel, and gives up quietly without one', async () => {
    const s = setup()
    s.tunnel.path = 'direct-tcp'
    await s.recovery.moveToUdp(s.tunnel)
    expect(s.calls.map((c) => c.what)).toEqual(['introduce', 'establish'])
    expect(s.calls[0]!.via).toBe('udp')
    expect(s.calls[1]).toMatchObject({ timeoutMs: RESUME_ATTEMPT_MS, resuming: s.tunnel })
  })

  it('stops after a successful resume, and at once for a tunnel the manager no longer keeps or once it closed', async () => {
    const s = setup(async (t) => void (t!.isMigrating = false))
    s.tunnel.isMigrating = true
    await s.recovery.resume(s.tunnel, 'auto')
    expect(s.calls.filter((c) => c.what === 'establish')).toHaveLength(1)

    const replaced = setup()
    replaced.tunnel.isMigrating = true
    replaced.kept.set(replaced.tunnel.peer.id, new FakeTunnel())
    await replaced.recovery.resume(replaced.tunnel, 'auto')
    expect(replaced.calls).toEqual([])

    const shut = setup()
    shut.tunnel.isMigrating = true
    const loop = shut.recovery.resume(shut.tunnel, 'auto')
    await shut.clock.pass(10)
    shut.close()
    await shut.clock.pass(RESUME_RETRY_MS * 5)
    await loop
    expect(shut.calls.filter((c) => c.what === 'establish')).toHaveLength(1)
  })
})

describe('TunnelRecovery.upgrade: a relayed auto tunnel looks for a direct path', () => {
  it('first after UPGRADE_FIRST_MS, then every UPGRADE_RETRY_MS: NAT re-checked, a direct introduction, a punch that resumes nothing', async () => {
    const s = setup()
    const loop = s.recovery.upgrade(s.tunnel)
    await s.clock.pass(UPGRADE_FIRST_MS - 1)
    expect(s.calls).toEqual([])
    await s.clock.pass(1 + 2 * UPGRADE_RETRY_MS)
    expect(s.calls.map((c) => `${c.at} ${c.what}`)).toEqual([UPGRADE_FIRST_MS, UPGRADE_FIRST_MS + UPGRADE_RETRY_MS, UPGRADE_FIRST_MS + 2 * UPGRADE_RETRY_MS].flatMap((at) => [`${at} refresh`, `${at} introduce`, `${at} establish`]))
    expect(s.calls.find((c) => c.what === 'introduce')!.via).toBe('direct')
    expect(s.calls.find((c) => c.what === 'establish')).toMatchObject({ timeoutMs: UPGRADE_TIMEOUT_MS, expected: { name: null, id: s.tunnel.peer.id }, resuming: null })
    s.tunnel.path = 'direct-udp' // upgraded
    await s.clock.pass(UPGRADE_RETRY_MS)
    await loop
    expect(s.calls).toHaveLength(9)
  })

  it('skips its turn while the tunnel migrates, and stops when it closes', async () => {
    const s = setup()
    s.tunnel.isUp = false
    s.tunnel.isMigrating = true
    const loop = s.recovery.upgrade(s.tunnel)
    await s.clock.pass(UPGRADE_FIRST_MS + UPGRADE_RETRY_MS)
    expect(s.calls).toEqual([])
    s.tunnel.isUp = true
    s.tunnel.isMigrating = false
    await s.clock.pass(UPGRADE_RETRY_MS)
    expect(s.calls.filter((c) => c.what === 'establish')).toHaveLength(1)
    s.tunnel.isOpen = false
    await s.clock.pass(UPGRADE_RETRY_MS)
    await loop
    expect(s.calls.filter((c) => c.what === 'establish')).toHaveLength(1)
  })
})
