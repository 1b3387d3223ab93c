// The NAT monitor (src/daemon/nat-monitor.ts) on fake timers with a scripted NAT check:
// NAT checks run from one place; the relay watch and the tunnels' upgrade attempts
// (TunnelHost.refreshNat → fresh()) share them, so a relayed tunnel costs one check per
// NAT_RECHECK_MS, not one per layer; a changed verdict is announced to the server once.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { NAT_RECHECK_MS, NatMonitor } from '../../../src/daemon/nat-monitor.js'
import { silentLogger, systemClock } from '../../../src/protocol/log.js'
import type { NatVerdict } from '../../../src/protocol/rendezvous.js'
import { FIRST_PROBE_TTL, type HopVerdict } from '../../../src/tunnel/hop-check.js'

const SERVER = { host: '198.51.100.1', port: 3478 }
const CHECK_MS = 300 // how long one scripted check takes
/** The components of a monitor that is never relayed and announces nothing. */
const QUIET = {
  server: async () => SERVER,
  localPort: () => 41641,
  announce: async () => undefined,
  relayed: () => false,
  registeredTcp: () => null,
  probePortMapping: () => Promise.resolve({ gateway: null, pcp: false, natPmp: false, upnp: false, externalIp: null }),
  clock: systemClock,
  log: silentLogger
}

function monitor(verdicts: NatVerdict[], relayed = true) {
  const checks: number[] = []
  let announced = 0
  let inFlight = 0
  let overlapped = false
  const m = new NatMonitor({
    natCheck: {
      verdict: async () => {
        checks.push(Date.now())
        if (++inFlight > 1) overlapped = true
        await new Promise((r) => setTimeout(r, CHECK_MS))
        inFlight--
        const verdict = verdicts[Math.min(checks.length - 1, verdicts.length - 1)]!
        return { verdict, samples: { local: [], primary: SERVER, alternate: SERVER } }
      },
      netcheck: () => Promise.reject(new Error('not used')),
      hops: async () => ({ kind: 'unknown' as const })
    },
    server: async () => SERVER,
    localPort: () => 41641,
    announce: async () => void announced++,
    relayed: () => relayed,
    registeredTcp: () => null,
    probePortMapping: () => Promise.resolve({ gateway: null, pcp: false, natPmp: false, upnp: false, externalIp: null }),
    clock: systemClock,
    log: silentLogger
  })
  return { m, checks, announced: () => announced, overlapped: () => overlapped }
}

describe('NatMonitor', () => {
  beforeEach(() => vi.useFakeTimers())
  afterEach(() => vi.useRealTimers())

  it('while relayed: one check per period although the upgrade loop asks for a fresh verdict every period too', async () => {
    const t = monitor(['easy'])
    const started = t.m.start()
    await vi.advanceTimersByTimeAsync(CHECK_MS)
    await started
    expect(t.checks).toHaveLength(1)
    // The upgrade loop (manager.ts) asks before each attempt, at its own phase.
    const upgrades = setInterval(() => void t.m.fresh(), NAT_RECHECK_MS)
    await vi.advanceTimersByTimeAsync(1_700)
    const upgradesStarted = setInterval(() => void t.m.fresh(), NAT_RECHECK_MS)
    await vi.advanceTimersByTimeAsync(NAT_RECHECK_MS * 10)
    clearInterval(upgrades)
    clearInterval(upgradesStarted)
    expect(t.checks.length).toBeGreaterThanOrEqual(10)
    expect(t.checks.length).toBeLessThanOrEqual(11)
    expect(t.overlapped()).toBe(false)
    expect(t.m.verdict).toBe('easy')
    expect(t.announced()).toBe(0) // the verdict never changed
    t.m.stop()
  })

  it('not relayed: no periodic checks; a recheck (server found again) runs at once and shares one in flight', async () => {
    const t = monitor(['easy', 'hard'], false)
    const started = t.m.start()
    await vi.advanceTimersByTimeAsync(CHECK_MS)
    await started
    await vi.advanceTimersByTimeAsync(NAT_RECHECK_MS * 4)
    expect(t.checks).toHaveLength(1)
    const a = t.m.recheck()
    const b = t.m.recheck()
    const c = t.m.fresh()
    await vi.advanceTimersByTimeAsync(CHECK_MS)
    await Promise.all([a, b, c])
    expect(t.checks).toHaveLength(2)
    expect(t.m.verdict).toBe('hard')
    expect(t.announced()).toBe(1) // changed: the server is told once
    t.m.stop()
  })

  it('a check that fails leaves the verdict and never rejects', async () => {
    const m = new NatMonitor({
      natCheck: { verdict: () => Promise.reject(new Error('no route')), netcheck: () => Promise.reject(new Error('not used')), hops: () => Promise.reject(new Error('no route')) },
      ...QUIET
    })
    await m.start()
    await expect(m.recheck()).resolves.toBeUndefined()
    expect(m.verdict).toBe('unknown')
    m.stop()
  })

  it('learns the first-probe TTL at start and again on checkHops (server found again); an unanswered check keeps it; a peer at our public address gets 2', async () => {
    const verdicts: HopVerdict[] = [{ kind: 'near', serverTtl: 4 }, { kind: 'unknown' }, { kind: 'far' }]
    let hopChecks = 0
    const m = new NatMonitor({
      natCheck: {
        verdict: async () => ({ verdict: 'hard' as const, samples: { local: [], primary: { host: '198.18.12.2', port: 40000 }, alternate: { host: '198.18.12.2', port: 40001 } } }),
        netcheck: () => Promise.reject(new Error('not used')),
        hops: async (server) => {
          expect(server).toEqual(SERVER)
          return verdicts[hopChecks++]!
        }
      },
      ...QUIET
    })
    expect(m.firstProbeTtl('198.18.2.2')).toBe(FIRST_PROBE_TTL) // before any check
    await m.start()
    expect([m.learnedTtl, m.firstProbeTtl('198.18.2.2'), m.firstProbeTtl('198.18.12.2'), m.firstProbeTtl()]).toEqual([3, 3, FIRST_PROBE_TTL, 3])
    await m.checkHops() // nothing answered: keeps 3
    expect(m.learnedTtl).toBe(3)
    await m.checkHops() // the server is far now (another network)
    expect(m.learnedTtl).toBe(FIRST_PROBE_TTL)
    expect(hopChecks).toBe(3)
    await m.recheck() // a verdict recheck (the tunnels' fresh()) sends no hop probes
    expect(hopChecks).toBe(3)
    m.stop()
  })
})
