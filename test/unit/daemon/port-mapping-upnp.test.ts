// The agent's port mappings by UPnP IGD (src/daemon/port-mapping.ts) against a fake IGD
// (test/unit/portmap/fake-igd.ts) behind a gateway silent on PCP and NAT-PMP, under fake
// timers: mapped at start (UDP and TCP), renewed at half-life on the port it holds, mapped
// again when the router forgot the mapping (a restart: UPnP has no epoch), removed at stop.
import { afterEach, describe, expect, it, vi } from 'vitest'
import { PortMappingKeeper, PORTMAP_CHECK_MS } from '../../../src/daemon/port-mapping.js'
import { silentLogger } from '../../../src/protocol/log.js'
import { PortMapper, PORTMAP_LIFETIME_S } from '../../../src/portmap/port-mapper.js'
import { fakeIgd, GATEWAY } from '../portmap/fake-igd.js'

afterEach(() => vi.useRealTimers())

function rig(o: Parameters<typeof fakeIgd>[0] = {}) {
  const igd = fakeIgd(o)
  const silent = new PortMapper({ gateway: GATEWAY, localIp: '10.1.0.2' }, { send: () => undefined, randomBytes: (n) => Buffer.alloc(n) })
  const changes: string[] = []
  const keeper: PortMappingKeeper = new PortMappingKeeper(
    { port: 41641, tcp: true, enabled: true },
    { log: silentLogger, connect: async () => ({ gateway: GATEWAY, mapper: silent, upnp: igd.client, close: () => undefined }), onChange: () => changes.push(keeper.status().udp ?? 'none') }
  )
  const adds = (): string[] => igd.calls.filter((c) => c === 'AddAnyPortMapping')
  return { igd, keeper, changes, adds }
}

describe('PortMappingKeeper by UPnP', () => {
  it('PCP and NAT-PMP silent: maps UDP and TCP by UPnP at start, without waiting out their 0.75 s; status shows it', async () => {
    vi.useFakeTimers()
    const { igd, keeper } = rig({ taken: [41641] })
    let done = false
    void keeper.start().then(() => (done = true))
    await vi.advanceTimersByTimeAsync(300) // SSDP and HTTP answer at once here; then the grace for PCP and NAT-PMP
    expect(done).toBe(true)
    expect(keeper.status()).toMatchObject({ state: 'mapped', via: 'upnp', gateway: GATEWAY, udp: '198.18.1.2:41642', tcp: '198.18.1.2:41642' })
    expect(igd.mappings.get('UDP/41642')).toMatchObject({ internalPort: 41641, client: '10.1.0.2', leaseS: PORTMAP_LIFETIME_S })
    expect(igd.mappings.get('TCP/41642')).toMatchObject({ internalPort: 41641, leaseS: PORTMAP_LIFETIME_S })
    expect(keeper.externalEndpoints()).toEqual([{ host: '198.18.1.2', port: 41642 }])
    const stopping = keeper.stop()
    await vi.advanceTimersByTimeAsync(1_000)
    await stopping
    expect(igd.mappings.size).toBe(0) // both deleted
    expect(igd.calls.filter((c) => c === 'DeletePortMapping')).toHaveLength(2)
  })

  it('renews at half-life on the external port it holds; the router forgetting it (restart) → mapped again at the next check', async () => {
    vi.useFakeTimers()
    const { igd, keeper, adds, changes } = rig({ taken: [41641] })
    const started = keeper.start()
    await vi.advanceTimersByTimeAsync(1_000)
    await started
    expect(adds()).toHaveLength(2)
    await vi.advanceTimersByTimeAsync((PORTMAP_LIFETIME_S * 1000) / 2)
    expect(adds()).toHaveLength(4)
    expect(keeper.status().udp).toBe('198.18.1.2:41642') // the held port asked for, and kept
    expect(changes).toEqual([])
    igd.mappings.clear() // the router restarted and forgot
    igd.state.externalIp = '198.18.1.9' // with a new address
    await vi.advanceTimersByTimeAsync(PORTMAP_CHECK_MS + 1_000)
    expect(adds()).toHaveLength(6)
    expect(igd.mappings.get('UDP/41642')).toMatchObject({ internalPort: 41641 })
    expect(changes).toEqual(['198.18.1.9:41642']) // news for the agent: it registers the new candidate
    await keeper.stop()
  })

  it('a router that stops answering (gone, or listening elsewhere) → found again at the next check, or the mapping is lost', async () => {
    vi.useFakeTimers()
    const { igd, keeper, changes } = rig()
    const started = keeper.start()
    await vi.advanceTimersByTimeAsync(1_000)
    await started
    igd.restart()
    await vi.advanceTimersByTimeAsync(PORTMAP_CHECK_MS + 2_000)
    expect(keeper.status()).toMatchObject({ state: 'none', reason: `the gateway ${GATEWAY} answers none of PCP, NAT-PMP and UPnP` })
    expect(changes).toEqual(['none'])
    igd.up()
    await vi.advanceTimersByTimeAsync(PORTMAP_CHECK_MS + 2_000)
    expect(keeper.status()).toMatchObject({ state: 'mapped', via: 'upnp' })
    expect(changes).toEqual(['none', '198.18.1.2:41641'])
    await keeper.stop()
  })
})
