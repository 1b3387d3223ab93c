// PortMapper (src/portmap/port-mapper.ts) against fake gateways: which protocols a probe
// finds, PCP preferred and its nonce checked, NAT-PMP with the external address, refusals,
// silence, and datagrams from anyone but the gateway ignored.
import { afterEach, describe, expect, it, vi } from 'vitest'
import type { Endpoint } from '../../../src/protocol/endpoint.js'
import { NatdError } from '../../../src/protocol/errors.js'
import { PortMapper, PORTMAP_FIRST_WAIT_MS, PORTMAP_PROBE_TRIES } from '../../../src/portmap/port-mapper.js'
import { hex } from '../helpers.js'

const GW = '10.1.0.1'
const GW_EP = { host: GW, port: 5351 }
const EXTERNAL = hex('c6120102') // 198.18.1.2

interface Gateway {
  pcp: boolean
  natPmp: boolean
  /** PCP / NAT-PMP result code for mappings. */
  result?: number
  /** Answer with another nonce first (a stale or forged answer). */
  wrongNonceFirst?: boolean
}

/** A PortMapper wired to a fake gateway that answers synchronously, as miniupnpd does. */
function rig(gw: Gateway | null): { mapper: PortMapper; sent: Buffer[]; inject: (buf: Buffer, from?: Endpoint) => void } {
  const sent: Buffer[] = []
  const reply = (buf: Buffer): void => queueMicrotask(() => mapper.onMessage(buf, GW_EP))
  const mapper = new PortMapper({ gateway: GW, localIp: '10.1.0.2' }, {
    randomBytes: (n) => Buffer.alloc(n, 7),
    send: (b, to) => {
      const req = Buffer.from(b)
      sent.push(req)
      expect(to).toEqual(GW_EP)
      if (!gw) return
      const result = gw.result ?? 0
      if (req[0] === 2) {
        if (!gw.pcp) return gw.natPmp ? reply(hex('00 80 0001 00000000')) : undefined // NAT-PMP-only: "unsupported version"
        const head = Buffer.concat([hex(`02 ${(0x80 | req[1]!).toString(16)} 00`), Buffer.from([result]), req.subarray(4, 8), hex('00000009'), Buffer.alloc(12)])
        if (req[1] === 0) return reply(head)
        const payload = Buffer.from(req.subarray(24, 60))
        payload.set(EXTERNAL, 32)
        if (gw.wrongNonceFirst) {
          const forged = Buffer.from(payload)
          forged[0]! ^= 1
          reply(Buffer.concat([head, forged]))
        }
        return reply(Buffer.concat([head, payload]))
      }
      if (!gw.natPmp) return
      if (req[1] === 0) return reply(Buffer.concat([hex('00 80 0000 00000009'), EXTERNAL]))
      return reply(Buffer.concat([Buffer.from([0, 0x80 | req[1]!]), Buffer.from([0, result]), hex('00000009'), req.subarray(4, 6), req.subarray(6, 8), req.subarray(8, 12)]))
    }
  })
  return { mapper, sent, inject: (buf, from = GW_EP) => mapper.onMessage(buf, from) }
}

afterEach(() => vi.useRealTimers())

describe('PortMapper.probe', () => {
  it('finds PCP and NAT-PMP and the external address', async () => {
    const { mapper } = rig({ pcp: true, natPmp: true })
    expect(await mapper.probe()).toEqual({ pcp: true, natPmp: true, externalIp: '198.18.1.2', epoch: 9 })
  })

  it('a NAT-PMP-only gateway: its "unsupported version" answer to PCP is not PCP, nor mistaken for the address answer', async () => {
    vi.useFakeTimers()
    const { mapper } = rig({ pcp: false, natPmp: true })
    const p = mapper.probe()
    await vi.advanceTimersByTimeAsync(2_000) // the PCP ask waits out its tries
    expect(await p).toEqual({ pcp: false, natPmp: true, externalIp: '198.18.1.2', epoch: 9 })
  })

  it('no gateway: nothing after PORTMAP_PROBE_TRIES tries, 250 + 500 ms', async () => {
    vi.useFakeTimers()
    const { mapper, sent } = rig(null)
    let done = false
    const p = mapper.probe().then((o) => ((done = true), o))
    await vi.advanceTimersByTimeAsync(PORTMAP_FIRST_WAIT_MS * (2 ** PORTMAP_PROBE_TRIES - 1) - 1)
    expect(done).toBe(false)
    await vi.advanceTimersByTimeAsync(1)
    expect(await p).toEqual({ pcp: false, natPmp: false, externalIp: null, epoch: null })
    expect(sent).toHaveLength(2 * PORTMAP_PROBE_TRIES)
  })
})

describe('PortMapper.map', () => {
  it('PCP: maps, keeps the nonce, ignores an answer with another nonce, and unmaps with lifetime 0 and the same nonce', async () => {
    const { mapper, sent } = rig({ pcp: true, natPmp: true, wrongNonceFirst: true })
    const m = await mapper.map('pcp', 'udp', 41641, { lifetimeS: 600 })
    expect(m).toMatchObject({ via: 'pcp', protocol: 'udp', internalPort: 41641, external: { host: '198.18.1.2', port: 41641 }, lifetimeS: 600 })
    expect(Buffer.from(m.nonce!).equals(Buffer.alloc(12, 7))).toBe(true)
    await mapper.unmap(m)
    const del = sent.at(-1)!
    expect(del.readUInt32BE(4)).toBe(0) // lifetime 0
    expect(del.subarray(24, 36).equals(Buffer.alloc(12, 7))).toBe(true)
  })

  it('NAT-PMP: asks for the external address, then the mapping', async () => {
    const { mapper, sent } = rig({ pcp: false, natPmp: true })
    const m = await mapper.map('nat-pmp', 'tcp', 8080, { lifetimeS: 7200 })
    expect(m).toMatchObject({ via: 'nat-pmp', protocol: 'tcp', external: { host: '198.18.1.2', port: 8080 }, lifetimeS: 7200, nonce: null })
    expect(sent.map((b) => b.toString('hex'))).toEqual(['0000', hex('00 02 0000 1f90 1f90 00001c20').toString('hex')])
  })

  it('a refusal is UNSUPPORTED_PATH with the result named; silence is TIMEOUT', async () => {
    const pcp = rig({ pcp: true, natPmp: false, result: 2 })
    await expect(pcp.mapper.map('pcp', 'udp', 41641)).rejects.toMatchObject({ code: 'UNSUPPORTED_PATH', message: expect.stringMatching(/not authorized \(2\)/) })
    const pmp = rig({ pcp: false, natPmp: true, result: 4 })
    await expect(pmp.mapper.map('nat-pmp', 'udp', 41641)).rejects.toMatchObject({ code: 'UNSUPPORTED_PATH', message: expect.stringMatching(/out of resources/) })
    vi.useFakeTimers()
    const none = rig(null)
    const p = none.mapper.map('pcp', 'udp', 1).catch((e: unknown) => e)
    await vi.advanceTimersByTimeAsync(2_000)
    expect(await p).toBeInstanceOf(NatdError)
    expect(await p).toMatchObject({ code: 'TIMEOUT' })
  })

  it('answers from anyone but the gateway at port 5351 are ignored', async () => {
    vi.useFakeTimers()
    const { mapper, inject } = rig(null)
    const p = mapper.probe()
    const addr = Buffer.concat([hex('00 80 0000 00000009'), EXTERNAL])
    inject(addr, { host: '10.1.0.66', port: 5351 })
    inject(addr, { host: GW, port: 5350 })
    await vi.advanceTimersByTimeAsync(100)
    inject(addr) // the real one
    await vi.advanceTimersByTimeAsync(2_000)
    expect(await p).toEqual({ pcp: false, natPmp: true, externalIp: '198.18.1.2', epoch: 9 })
  })
})
