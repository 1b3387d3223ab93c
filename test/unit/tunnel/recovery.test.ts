// TunnelRecovery (src/tunnel/recovery.ts) alone: the resume and upgrade loops against
// fake tunnels, a stub introducer and punch, and fake time; what each loop asks for,
// when, and when it stops.
import { describe, expect, it } from 'vitest'
import { NatdError } from '../../../src/protocol/errors.js'
import { silentLogger } from '../../../src/protocol/log.js'
import type { PeerTarget } from '../../../src/protocol/peer-ref.js'
import type { Via } from '../../../src/protocol/rendezvous.js'
import type { Introduction } from '../../../src/tunnel/paths.js'
import {
  RESUME_ATTEMPT_MS,
  RESUME_RETRY_MS,
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

describe('TunnelRecovery.resume: a migrating tunnel we opened', () => {
  it('asks the way the tunnel was opened, punches to resume that tunnel, and retries every RESUME_RETRY_MS until it is up', async () => {
    const s = setup()
    s.tunnel.isMigrating = true
    const loop = s.recovery.resume(s.tunnel, 'relay')
    await s.clock.pass(RESUME_RETRY_MS * 2)
    const establishes = s.calls.filter((c) => c.what === 'establish')
    expect(establishes.map((c) => c.at)).toEqual([0, RESUME_RETRY_MS, 2 * RESUME_RETRY_MS])
    expect(establishes[0]).toMatchObject({ timeoutMs: RESUME_ATTEMPT_MS, expected: { name: null, id: s.tunnel.peer.id }, resuming: s.tunnel })
    expect(s.calls.filter((c) => c.what === 'introduce').every((c) => c.via === 'relay')).toBe(true)
    s.tunnel.isMigrating = false // resumed (by the punch, or the peer)
    await s.clock.pass(RESUME_RETRY_MS * 5)
    await loop
    expect(s.calls.filter((c) => c.what === 'establish')).toHaveLength(3)
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
