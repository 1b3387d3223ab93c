// The agent's port mappings (src/daemon/port-mapping.ts) against a fake PCP gateway under
// fake timers: mapped at start (UDP and TCP), renewed at half-life with the same nonce,
// retried after a failure, lost when the lease runs out, mapped again when the gateway
// restarts (its epoch went back), removed at stop; a gateway that answers nothing is
// remembered, and not waited for at the next start; --no-port-mapping sends nothing.
import { afterEach, describe, expect, it, vi } from 'vitest'
import { PortMappingKeeper, PORTMAP_CHECK_MS, PORTMAP_RETRY_MS } from '../../../src/daemon/port-mapping.js'
import { silentLogger } from '../../../src/protocol/log.js'
import { gatewayLostState } from '../../../src/portmap/port-mapper.js'
import { fakeGateway, memoryCache } from './fake-pcp-gateway.js'

afterEach(() => vi.useRealTimers())

describe('PortMappingKeeper', () => {
  it('maps at start, renews at half-life with the same nonce, retries after a refusal, removes the mapping at stop', async () => {
    vi.useFakeTimers()
    const gw = fakeGateway({ pcp: true, lifetimeS: 600 })
    const keeper = new PortMappingKeeper({ port: 41641, tcp: false, enabled: true, checkMs: 3_600_000 }, { log: silentLogger, connect: gw.connect })
    const started = keeper.start()
    await vi.advanceTimersByTimeAsync(1_000)
    await started
    expect(keeper.current).toMatchObject({ via: 'pcp', external: { host: '198.18.1.2', port: 41641 }, lifetimeS: 600 })
    expect(gw.maps()).toHaveLength(1)
    await vi.advanceTimersByTimeAsync(298_000)
    expect(gw.maps()).toHaveLength(1) // not before half of 600 s (mapped at once: PCP answered)
    await vi.advanceTimersByTimeAsync(1_000)
    expect(gw.maps()).toHaveLength(2)
    expect(gw.maps()[1]!.nonce).toBe(gw.maps()[0]!.nonce) // the renewal owns the same mapping
    gw.g.result = 8 // no resources
    await vi.advanceTimersByTimeAsync(300_000)
    expect(gw.maps()).toHaveLength(3)
    gw.g.result = 0
    await vi.advanceTimersByTimeAsync(PORTMAP_RETRY_MS)
    expect(gw.maps()).toHaveLength(4)
    expect(keeper.current).not.toBeNull()
    const stopping = keeper.stop()
    await vi.advanceTimersByTimeAsync(1_000)
    await stopping
    expect(gw.maps().at(-1)!.lifetimeS).toBe(0) // the delete
    expect(gw.closed()).toBeGreaterThan(0)
    expect(keeper.current).toBeNull()
  })

  it('maps the TCP port too; status shows both external endpoints, the protocol and the lease left', async () => {
    vi.useFakeTimers()
    const gw = fakeGateway({ pcp: true, lifetimeS: 7200 })
    gw.g.portOffset = 5 // the gateway gives another external port
    const keeper = new PortMappingKeeper({ port: 41641, tcp: true, enabled: true }, { log: silentLogger, connect: gw.connect })
    expect(keeper.status()).toMatchObject({ state: 'probing' })
    let done = false
    void keeper.start().then(() => (done = true))
    // PCP answers at once, and the start does not wait out the silent NAT-PMP's 0.75 s of tries.
    await vi.advanceTimersByTimeAsync(0)
    expect(done).toBe(true)
    expect(gw.maps(17)).toHaveLength(1)
    expect(gw.maps(6)).toHaveLength(1)
    await vi.advanceTimersByTimeAsync(61_000)
    expect(keeper.status()).toEqual({
      state: 'mapped',
      gateway: '10.1.0.1',
      via: 'pcp',
      udp: '198.18.1.2:41646',
      tcp: '198.18.1.2:41646',
      expiresInMs: 7_200_000 - 61_000,
      retryInMs: null,
      reason: null
    })
    expect(keeper.externalEndpoints()).toEqual([{ host: '198.18.1.2', port: 41646 }])
    const stopping = keeper.stop()
    await vi.advanceTimersByTimeAsync(1_000)
    await stopping
    expect(gw.maps(6).at(-1)!.lifetimeS).toBe(0) // both deleted
    expect(gw.maps(17).at(-1)!.lifetimeS).toBe(0)
  })

  it('a gateway that answers none of the protocols: no mapping, the socket closed, the gateway remembered', async () => {
    vi.useFakeTimers()
    const gw = fakeGateway({ pcp: false })
    const cache = memoryCache()
    const keeper = new PortMappingKeeper({ port: 41641, tcp: true, enabled: true }, { log: silentLogger, connect: gw.connect, cache })
    const started = keeper.start()
    let done = false
    void started.then(() => (done = true))
    await vi.advanceTimersByTimeAsync(700)
    expect(done).toBe(false) // unknown gateway: the start waits for the probe (0.75 s)
    await vi.advanceTimersByTimeAsync(100)
    expect(done).toBe(true)
    expect(keeper.current).toBeNull()
    expect(gw.closed()).toBe(1)
    expect(cache.value).toBe('10.1.0.1')
    expect(keeper.status()).toMatchObject({ state: 'none', gateway: '10.1.0.1', reason: 'the gateway 10.1.0.1 answers none of PCP, NAT-PMP and UPnP' })
    await keeper.stop()
  })

  it('the next start with the same silent gateway does not wait; a mapping that appears later is news (onChange)', async () => {
    vi.useFakeTimers()
    const gw = fakeGateway({ pcp: false })
    const cache = memoryCache('10.1.0.1')
    const changes: string[] = []
    const keeper = new PortMappingKeeper(
      { port: 41641, tcp: false, enabled: true, checkMs: 10_000 },
      { log: silentLogger, connect: gw.connect, cache, random: () => 0, onChange: () => changes.push(keeper.status().state) }
    )
    let done = false
    void keeper.start().then(() => (done = true))
    await vi.advanceTimersByTimeAsync(0)
    expect(done).toBe(true) // at once, not after 0.75 s
    expect(keeper.status().state).toBe('probing') // still asking, in the background
    await vi.advanceTimersByTimeAsync(1_000)
    expect(keeper.status().state).toBe('none')
    expect(changes).toEqual([])
    expect(cache.value).toBe('10.1.0.1')
    gw.g.pcp = true // the owner turned PCP on: seen at the next try (the checks meanwhile only look for another gateway)
    await vi.advanceTimersByTimeAsync(10_000)
    expect(keeper.status().state).toBe('none')
    await vi.advanceTimersByTimeAsync(PORTMAP_RETRY_MS - 10_000)
    expect(keeper.status().state).toBe('mapped')
    expect(changes).toEqual(['mapped']) // the agent checks its NAT and registers again
    expect(cache.value).toBeNull()
    await keeper.stop()
  })

  it('a mapping that appears in the background after a cached start is news', async () => {
    vi.useFakeTimers()
    const gw = fakeGateway({ pcp: true })
    const cache = memoryCache('10.1.0.1') // it said no last time; now it answers
    const changes: string[] = []
    const keeper = new PortMappingKeeper({ port: 41641, tcp: false, enabled: true }, { log: silentLogger, connect: gw.connect, cache, onChange: () => changes.push(keeper.status().state) })
    await keeper.start()
    expect(keeper.status().state).toBe('probing')
    await vi.advanceTimersByTimeAsync(1_000)
    expect(keeper.status().state).toBe('mapped')
    expect(changes).toEqual(['mapped']) // the agent checks its NAT and registers again
    expect(cache.value).toBeNull() // and the next start waits for this gateway again
    await keeper.stop()
  })

  it('the gateway restarted (its epoch went back): mapped again at the next check; a new external port is news', async () => {
    vi.useFakeTimers()
    const gw = fakeGateway({ pcp: true })
    const changes: string[] = []
    const keeper = new PortMappingKeeper({ port: 41641, tcp: false, enabled: true }, { log: silentLogger, connect: gw.connect, onChange: () => changes.push(keeper.status().udp ?? 'none') })
    gw.g.epoch = 1000
    const started = keeper.start()
    await vi.advanceTimersByTimeAsync(1_000)
    await started
    expect(gw.maps()).toHaveLength(1)
    gw.g.epoch = 1000 + PORTMAP_CHECK_MS / 1000 // an uptime that advanced as our clock did: nothing to do
    await vi.advanceTimersByTimeAsync(PORTMAP_CHECK_MS)
    expect(gw.maps()).toHaveLength(1)
    gw.g.epoch = 3 // rebooted: our mapping is gone
    gw.g.portOffset = 1
    await vi.advanceTimersByTimeAsync(PORTMAP_CHECK_MS + 2_000) // the check's probe, then a new probe and mapping
    expect(gw.maps()).toHaveLength(2)
    expect(gw.maps()[1]!.lifetimeS).toBeGreaterThan(0)
    expect(keeper.status().udp).toBe('198.18.1.2:41642')
    expect(changes).toEqual(['198.18.1.2:41642'])
    await keeper.stop()
  })

  it('renewals that fail until the lease ends: the mapping is lost (news), and tried again', async () => {
    vi.useFakeTimers()
    const gw = fakeGateway({ pcp: true, lifetimeS: 120 })
    const changes: string[] = []
    const keeper = new PortMappingKeeper({ port: 41641, tcp: false, enabled: true, checkMs: 3_600_000 }, { log: silentLogger, connect: gw.connect, random: () => 0, onChange: () => changes.push(keeper.status().state) })
    const started = keeper.start()
    await vi.advanceTimersByTimeAsync(1_000) // PCP answers at once; the NAT-PMP ask waits out its 0.75 s
    await started
    gw.g.result = 2 // not authorized any more
    await vi.advanceTimersByTimeAsync(60_000) // renewal at half-life: refused, the lease still holds
    expect(keeper.status().state).toBe('mapped')
    expect(changes).toEqual([])
    await vi.advanceTimersByTimeAsync(PORTMAP_RETRY_MS) // past the 120 s lease
    expect(keeper.status()).toMatchObject({ state: 'none', retryInMs: 2 * PORTMAP_RETRY_MS - 1_000, reason: expect.stringMatching(/^lease lost: the gateway refused the PCP mapping: not authorized \(2\)/) })
    expect(changes).toEqual(['none'])
    gw.g.result = 0
    await vi.advanceTimersByTimeAsync(2 * PORTMAP_RETRY_MS + 1_000) // the second failure in a row waits twice as long; then probed again, and mapped
    expect(keeper.status().state).toBe('mapped')
    expect(changes).toEqual(['none', 'mapped'])
    await keeper.stop()
  })

  it('a mapping granted while natd stops is removed, not left on the gateway for its lease', async () => {
    vi.useFakeTimers()
    const gw = fakeGateway({ pcp: true })
    const keeper = new PortMappingKeeper({ port: 41641, tcp: false, enabled: true }, { log: silentLogger, connect: gw.connect })
    gw.g.mapDelayMs = 200 // the first MAP answer is on its way when stop() begins
    void keeper.start()
    await vi.advanceTimersByTimeAsync(760) // probed; the MAP sent
    expect(gw.maps()).toHaveLength(1)
    const stopping = keeper.stop()
    gw.g.mapDelayMs = 0
    await vi.advanceTimersByTimeAsync(2_000)
    await stopping
    expect(gw.maps().map((m) => m.lifetimeS)).toEqual([7200, 0])
    expect(keeper.current).toBeNull()
  })

  it('--no-port-mapping: nothing is sent, status says off', async () => {
    vi.useFakeTimers()
    const gw = fakeGateway({ pcp: true })
    const keeper = new PortMappingKeeper({ port: 41641, tcp: true, enabled: false }, { log: silentLogger, connect: gw.connect })
    await keeper.start()
    await vi.advanceTimersByTimeAsync(PORTMAP_CHECK_MS * 2)
    expect(gw.connects()).toBe(0)
    expect(gw.asked).toEqual([])
    expect(keeper.status()).toMatchObject({ state: 'off', reason: 'turned off (--no-port-mapping)' })
    await keeper.stop()
  })
})

describe('gatewayLostState (RFC 6886 §3.6, RFC 6887 §8.5)', () => {
  it('an epoch that kept pace with our clock (within 7/8 and 2 s) is the same gateway state; one that went back is a restart', () => {
    const prev = { epoch: 1000, atMs: 0 }
    expect(gatewayLostState(prev, { epoch: 1120, atMs: 120_000 })).toBe(false)
    expect(gatewayLostState(prev, { epoch: 1104, atMs: 120_000 })).toBe(false) // 7/8 of 120 s, less 1 s
    expect(gatewayLostState(prev, { epoch: 1100, atMs: 120_000 })).toBe(true) // fell behind: it restarted in between
    expect(gatewayLostState(prev, { epoch: 999, atMs: 0 })).toBe(false) // 1 s back: reordering
    expect(gatewayLostState(prev, { epoch: 5, atMs: 1_000 })).toBe(true)
  })
})
