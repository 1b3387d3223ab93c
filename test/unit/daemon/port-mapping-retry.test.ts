// Failed port-mapping attempts back off (src/daemon/port-mapping-retry.ts) under fake
// timers: a gateway that refuses is asked again after 1, 2, 4, 8, 16 min, then every 30,
// not every minute for as long as natd runs; a silent gateway is not probed at every
// check; a mapping granted, or another default gateway, starts again from 1 min; status
// (natctl status, and its --json) says when the next try is due.
import { afterEach, describe, expect, it, vi } from 'vitest'
import { PortMappingKeeper, PORTMAP_RETRY_MAX_MS, PORTMAP_RETRY_MS } from '../../../src/daemon/port-mapping.js'
import { PortMapBackoff, PORTMAP_RETRY_JITTER } from '../../../src/daemon/port-mapping-retry.js'
import { portMappingLine } from '../../../src/cli/format.js'
import { silentLogger } from '../../../src/protocol/log.js'
import { fakeGateway, GW } from './fake-pcp-gateway.js'

afterEach(() => vi.useRealTimers())

const MIN = 60_000
/** A check interval that never comes in these tests (the fake gateway's epoch stands still: a check would take it for a restart). */
const DAY_MS = 86_400_000
const REFUSED = 'the gateway refused the PCP mapping: not authorized (2)'

/** The waits between a gateway's successive MAP requests, in minutes. */
function gapsMin(at: number[]): number[] {
  return at.slice(1).map((t, i) => (t - at[i]!) / MIN)
}

describe('port mapping retries back off', () => {
  it('a gateway that refuses: asked again after 1, 2, 4, 8, 16, then every 30 min; status says when', async () => {
    vi.useFakeTimers()
    const gw = fakeGateway({ pcp: true })
    gw.g.result = 2 // not authorized: a deny rule
    const keeper = new PortMappingKeeper({ port: 41641, tcp: false, enabled: true }, { log: silentLogger, connect: gw.connect, random: () => 0 })
    await keeper.start()
    expect(gw.maps()).toHaveLength(1)
    expect(keeper.status()).toEqual({ state: 'none', gateway: GW.host, via: null, udp: null, tcp: null, expiresInMs: null, retryInMs: PORTMAP_RETRY_MS, reason: REFUSED })
    await vi.advanceTimersByTimeAsync(30_000)
    expect(keeper.status().retryInMs).toBe(30_000)
    expect(portMappingLine(keeper.status())).toBe(`none: ${REFUSED}; next try in 30s`)
    // 3 h (asked at 0, 1, 3, 7, 15, 31, 61, 91, 121, 151 min): the checks every 2 min in
    // between only look at which gateway is the default.
    await vi.advanceTimersByTimeAsync(3 * 3_600_000)
    expect(gapsMin(gw.maps().map((m) => m.at))).toEqual([1, 2, 4, 8, 16, 30, 30, 30, 30])
    expect(keeper.status().retryInMs).toBeLessThanOrEqual(PORTMAP_RETRY_MAX_MS)
    await keeper.stop()
  })

  it('a mapping granted starts again from 1 min: a renewal refused later is retried after 1 min, not 30', async () => {
    vi.useFakeTimers()
    const gw = fakeGateway({ pcp: true, lifetimeS: 7200 })
    gw.g.result = 2
    const keeper = new PortMappingKeeper({ port: 41641, tcp: false, enabled: true, checkMs: DAY_MS }, { log: silentLogger, connect: gw.connect, random: () => 0 })
    await keeper.start()
    await vi.advanceTimersByTimeAsync(60 * MIN) // failures at 0, 1, 3, 7, 15, 31 min: the next at 61
    expect(gw.maps()).toHaveLength(6)
    gw.g.result = 0 // the owner removed the rule
    await vi.advanceTimersByTimeAsync(1 * MIN)
    expect(keeper.status()).toMatchObject({ state: 'mapped', retryInMs: null })
    gw.g.result = 2
    await vi.advanceTimersByTimeAsync(60 * MIN) // the renewal at half of the 2 h lease: refused
    expect(gw.maps()).toHaveLength(8)
    const s = keeper.status()
    expect(s).toMatchObject({ state: 'mapped', expiresInMs: 60 * MIN, retryInMs: PORTMAP_RETRY_MS })
    expect(portMappingLine(s)).toBe(`PCP ${s.udp} (udp), gateway ${GW.host}, lease ends in 1h 0m unless renewed; renewal failed; next try in 60s`)
    await vi.advanceTimersByTimeAsync(1 * MIN)
    expect(gw.maps()).toHaveLength(9)
    expect(gapsMin(gw.maps().map((m) => m.at)).slice(-2)).toEqual([60, 1])
    await keeper.stop()
  })

  it('a renewal that keeps failing is tried once more when the lease ends, and the loss shows then', async () => {
    vi.useFakeTimers()
    const gw = fakeGateway({ pcp: true, lifetimeS: 1200 })
    const keeper = new PortMappingKeeper({ port: 41641, tcp: false, enabled: true, checkMs: DAY_MS }, { log: silentLogger, connect: gw.connect, random: () => 0 })
    await keeper.start()
    gw.g.result = 2
    await vi.advanceTimersByTimeAsync(10 * MIN) // renewal at half of 20 min: refused
    await vi.advanceTimersByTimeAsync(7 * MIN) // retries at 11 and 13, then 17 min
    expect(keeper.status()).toMatchObject({ state: 'mapped', retryInMs: 3 * MIN }) // 8 min would pass the lease end at 20
    await vi.advanceTimersByTimeAsync(3 * MIN)
    expect(gapsMin(gw.maps().map((m) => m.at))).toEqual([10, 1, 2, 4, 3])
    expect(keeper.status()).toMatchObject({ state: 'none', reason: `lease lost: ${REFUSED}`, retryInMs: 16 * MIN })
    await keeper.stop()
  })

  it('a silent gateway is not probed at every check; another default gateway is asked at once and starts again from 1 min', async () => {
    vi.useFakeTimers()
    const gw = fakeGateway({ pcp: false })
    gw.g.gateway = null // no default route yet
    const keeper = new PortMappingKeeper({ port: 41641, tcp: false, enabled: true, checkMs: 10_000 }, { log: silentLogger, connect: gw.connect, random: () => 0 })
    await keeper.start()
    expect(keeper.status()).toMatchObject({ state: 'none', gateway: null, reason: 'no IPv4 default gateway', retryInMs: PORTMAP_RETRY_MS })
    gw.g.gateway = GW.host // the network comes up
    await vi.advanceTimersByTimeAsync(10_000) // the next check sees it and asks it at once
    await vi.advanceTimersByTimeAsync(1_000) // its 0.75 s of tries
    const probe = gw.sent()
    expect(probe).toBeGreaterThan(0)
    expect(keeper.status()).toMatchObject({ state: 'none', gateway: GW.host, reason: `the gateway ${GW.host} answers none of PCP, NAT-PMP and UPnP` })
    expect(keeper.status().retryInMs).toBe(PORTMAP_RETRY_MS - 250) // a first failure again: 1 min after it
    await vi.advanceTimersByTimeAsync(PORTMAP_RETRY_MS - 1_000) // 6 checks: none of them probes
    expect(gw.sent()).toBe(probe)
    await vi.advanceTimersByTimeAsync(2_000) // the retry: probed again, then 2 min
    expect(gw.sent()).toBe(2 * probe)
    expect(keeper.status().retryInMs).toBeGreaterThan(PORTMAP_RETRY_MS)
    gw.g.gateway = '10.9.0.1' // another network
    await vi.advanceTimersByTimeAsync(10_000)
    expect(gw.sent()).toBe(3 * probe)
    expect(keeper.status()).toMatchObject({ state: 'none', gateway: '10.9.0.1' })
    expect(keeper.status().retryInMs).toBeLessThanOrEqual(PORTMAP_RETRY_MS)
    await keeper.stop()
  })
})

describe('PortMapBackoff', () => {
  it('doubles from 1 min to a 30 min cap; jitter only shortens a wait, by up to a fifth; reset starts again', () => {
    const plain = new PortMapBackoff(() => 0)
    expect(Array.from({ length: 8 }, () => plain.fail(0) / MIN)).toEqual([1, 2, 4, 8, 16, 30, 30, 30])
    plain.reset()
    expect(plain.fail(0)).toBe(PORTMAP_RETRY_MS)
    const jittered = new PortMapBackoff(() => 0.999_999)
    const waits = Array.from({ length: 7 }, () => jittered.fail(0))
    expect(waits.map((w) => Math.round(w / 1000))).toEqual([48, 96, 192, 384, 768, 1440, 1440])
    expect(PORTMAP_RETRY_JITTER).toBe(0.2)
  })

  it('waiting and retryInMs follow the clock; a held lease ending sooner cuts the wait', () => {
    const b = new PortMapBackoff(() => 0)
    expect(b.retryInMs(0)).toBeNull()
    expect(b.waiting(0)).toBe(false)
    expect(b.fail(1_000)).toBe(MIN)
    expect(b.waiting(30_000)).toBe(true)
    expect(b.retryInMs(31_000)).toBe(30_000)
    expect(b.waiting(61_000)).toBe(false)
    expect(b.fail(61_000, 91_000)).toBe(30_000) // 2 min would pass the lease end
    b.reset()
    expect(b.retryInMs(61_000)).toBeNull()
  })
})
