// The agent's port mapping (src/daemon/port-mapping.ts) against a fake PCP gateway under
// fake timers: mapped at start, renewed at half-life with the same nonce, retried after a
// failure, removed at stop; nothing at all when the gateway answers neither protocol.
import { afterEach, describe, expect, it, vi } from 'vitest'
import { PortMappingKeeper, PORTMAP_RETRY_MS } from '../../../src/daemon/port-mapping.js'
import { silentLogger } from '../../../src/protocol/log.js'
import { PortMapper } from '../../../src/portmap/port-mapper.js'
import { hex } from '../helpers.js'

const GW = { host: '10.1.0.1', port: 5351 }

/** A PCP gateway granting `lifetimeS` (or refusing with `result`), and what it was asked. */
function fakeGateway(o: { pcp: boolean; lifetimeS?: number }) {
  const asked: Array<{ op: number; lifetimeS: number; nonce: string }> = []
  let result = 0
  let closed = false
  const mapper: PortMapper = new PortMapper({ gateway: GW.host, localIp: '10.1.0.2' }, {
    randomBytes: (n) => Buffer.alloc(n, 9),
    send: (b) => {
      const req = Buffer.from(b)
      if (req[0] !== 2 || !o.pcp) return // no NAT-PMP here, and PCP only when asked for
      asked.push({ op: req[1]!, lifetimeS: req.readUInt32BE(4), nonce: req.subarray(24, 36).toString('hex') })
      const granted = req[1] === 1 && req.readUInt32BE(4) > 0 ? (o.lifetimeS ?? 7200) : 0
      const head = Buffer.concat([hex(`02 ${(0x80 | req[1]!).toString(16)} 00`), Buffer.from([result]), Buffer.alloc(4), hex('00000001'), Buffer.alloc(12)])
      head.writeUInt32BE(granted, 4)
      const payload = req[1] === 1 ? Buffer.from(req.subarray(24, 60)) : Buffer.alloc(0)
      if (payload.length) payload.set(hex('c6120102'), 32)
      queueMicrotask(() => mapper.onMessage(Buffer.concat([head, payload]), GW))
    }
  })
  return {
    asked,
    refuse: (code: number) => (result = code),
    closed: () => closed,
    connect: async () => ({ gateway: GW.host, mapper, close: () => void (closed = true) })
  }
}

afterEach(() => vi.useRealTimers())

describe('PortMappingKeeper', () => {
  it('maps at start, renews at half-life with the same nonce, retries after a refusal, removes the mapping at stop', async () => {
    vi.useFakeTimers()
    const gw = fakeGateway({ pcp: true, lifetimeS: 600 })
    const keeper = new PortMappingKeeper(41641, silentLogger, gw.connect)
    const started = keeper.start()
    await vi.advanceTimersByTimeAsync(1_000)
    expect(await started).toMatchObject({ via: 'pcp', external: { host: '198.18.1.2', port: 41641 }, lifetimeS: 600 })
    const maps = () => gw.asked.filter((a) => a.op === 1)
    expect(maps()).toHaveLength(1)
    await vi.advanceTimersByTimeAsync(299_000)
    expect(maps()).toHaveLength(1) // not before half of 600 s
    await vi.advanceTimersByTimeAsync(1_000)
    expect(maps()).toHaveLength(2)
    expect(maps()[1]!.nonce).toBe(maps()[0]!.nonce) // the renewal owns the same mapping
    gw.refuse(8) // no resources
    await vi.advanceTimersByTimeAsync(300_000)
    expect(maps()).toHaveLength(3)
    gw.refuse(0)
    await vi.advanceTimersByTimeAsync(PORTMAP_RETRY_MS)
    expect(maps()).toHaveLength(4)
    expect(keeper.current).not.toBeNull()
    const stopping = keeper.stop()
    await vi.advanceTimersByTimeAsync(1_000)
    await stopping
    expect(maps().at(-1)!.lifetimeS).toBe(0) // the delete
    expect(gw.closed()).toBe(true)
    expect(keeper.current).toBeNull()
  })

  it('a gateway that answers neither protocol: no mapping, the socket closed, nothing scheduled', async () => {
    vi.useFakeTimers()
    const gw = fakeGateway({ pcp: false })
    const keeper = new PortMappingKeeper(41641, silentLogger, gw.connect)
    const started = keeper.start()
    await vi.advanceTimersByTimeAsync(1_000)
    expect(await started).toBeNull()
    expect(gw.closed()).toBe(true)
    expect(vi.getTimerCount()).toBe(0)
  })
})
