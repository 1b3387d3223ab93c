// probeGateway (src/portmap/gateway-probe.ts): PCP, NAT-PMP and UPnP asked at once. "all"
// waits for every answer (netcheck); "first" ends at the preferred protocol that answers
// (the agent's start): a PCP-only or NAT-PMP-only gateway costs one round trip, a
// UPnP-only one its discovery plus PORTMAP_PROBE_GRACE_MS, not the others' 0.75 s.
import { afterEach, describe, expect, it, vi } from 'vitest'
import { PORTMAP_PROBE_GRACE_MS, probeGateway } from '../../../src/portmap/gateway-probe.js'
import { PortMapper, PORTMAP_FIRST_WAIT_MS, PORTMAP_PROBE_TRIES } from '../../../src/portmap/port-mapper.js'
import { hex } from '../helpers.js'
import { fakeIgd } from './fake-igd.js'

const GW = { host: '10.1.0.1', port: 5351 }
const SILENT_MS = PORTMAP_FIRST_WAIT_MS * (2 ** PORTMAP_PROBE_TRIES - 1) // 750

/** A gateway on UDP 5351 speaking PCP and/or NAT-PMP, answering after `delayMs`. */
function pmpGateway(o: { pcp: boolean; natPmp: boolean; pcpDelayMs?: number; natPmpDelayMs?: number }): PortMapper {
  const mapper: PortMapper = new PortMapper({ gateway: GW.host, localIp: '10.1.0.2' }, {
    randomBytes: (n) => Buffer.alloc(n, 7),
    send: (b) => {
      const req = Buffer.from(b)
      const later = (buf: Buffer, ms = 0): void => void setTimeout(() => mapper.onMessage(buf, GW), ms)
      if (req[0] === 2) {
        if (o.pcp) later(Buffer.concat([hex('02 80 00 00 00000000 00000009'), Buffer.alloc(12)]), o.pcpDelayMs)
        else if (o.natPmp) later(hex('00 80 0001 00000000')) // NAT-PMP-only: "unsupported version"
      } else if (o.natPmp && req[1] === 0) later(hex('00 80 0000 00000005 c6120102'), o.natPmpDelayMs)
    }
  })
  return mapper
}

/** Resolves with the offer and when it came, under fake timers. */
async function timed(p: Promise<unknown>): Promise<{ at: number; offer: unknown }> {
  const t0 = Date.now()
  let out: { at: number; offer: unknown } | null = null
  void p.then((offer) => (out = { at: Date.now() - t0, offer }))
  for (let i = 0; i < 400 && !out; i++) await vi.advanceTimersByTimeAsync(5)
  return out!
}

afterEach(() => vi.useRealTimers())

describe('probeGateway', () => {
  it('all: every protocol waited for; a gateway with the three reports the three', async () => {
    vi.useFakeTimers()
    const r = await timed(probeGateway(pmpGateway({ pcp: true, natPmp: true }), fakeIgd().client))
    expect(r.offer).toEqual({ pcp: true, natPmp: true, upnp: true, externalIp: '198.18.1.2', epoch: 9 })
  })

  it('all: a UPnP-only gateway waits out PCP and NAT-PMP, and its external address comes from UPnP', async () => {
    vi.useFakeTimers()
    const r = await timed(probeGateway(pmpGateway({ pcp: false, natPmp: false }), fakeIgd({ externalIp: '198.18.1.7' }).client))
    expect(r.offer).toEqual({ pcp: false, natPmp: false, upnp: true, externalIp: '198.18.1.7', epoch: null })
    expect(r.at).toBeGreaterThanOrEqual(SILENT_MS)
  })

  it('first: a PCP-only gateway → at its answer, without waiting for NAT-PMP or UPnP', async () => {
    vi.useFakeTimers()
    const igd = fakeIgd({ ssdpDelayMs: 50 })
    const r = await timed(probeGateway(pmpGateway({ pcp: true, natPmp: false, pcpDelayMs: 20 }), igd.client, { first: true }))
    expect(r.offer).toMatchObject({ pcp: true, natPmp: false, upnp: false, epoch: 9 })
    expect(r.at).toBeLessThan(50)
    expect(igd.calls).toEqual([]) // UPnP was dropped before its description was fetched
  })

  it('first: a NAT-PMP-only gateway → at once (its "unsupported version" rules PCP out)', async () => {
    vi.useFakeTimers()
    const r = await timed(probeGateway(pmpGateway({ pcp: false, natPmp: true, natPmpDelayMs: 10 }), fakeIgd({ ssdp: false }).client, { first: true }))
    expect(r.offer).toEqual({ pcp: false, natPmp: true, upnp: false, externalIp: '198.18.1.2', epoch: 5 })
    expect(r.at).toBeLessThan(50)
  })

  it('first: NAT-PMP answered first, PCP within the grace → PCP is seen and preferred', async () => {
    vi.useFakeTimers()
    const r = await timed(probeGateway(pmpGateway({ pcp: true, natPmp: true, pcpDelayMs: PORTMAP_PROBE_GRACE_MS / 2 }), null, { first: true }))
    expect(r.offer).toMatchObject({ pcp: true, natPmp: true, epoch: 9 })
  })

  it('first: a UPnP-only gateway → its discovery plus the grace, not 0.75 s', async () => {
    vi.useFakeTimers()
    const r = await timed(probeGateway(pmpGateway({ pcp: false, natPmp: false }), fakeIgd({ ssdpDelayMs: 60 }).client, { first: true }))
    expect(r.offer).toEqual({ pcp: false, natPmp: false, upnp: true, externalIp: '198.18.1.2', epoch: null })
    expect(r.at).toBeLessThanOrEqual(60 + PORTMAP_PROBE_GRACE_MS + 10)
  })

  it('first: nothing answers → the tries (0.75 s); an abort ends it at once', async () => {
    vi.useFakeTimers()
    const silent = await timed(probeGateway(pmpGateway({ pcp: false, natPmp: false }), fakeIgd({ ssdp: false }).client, { first: true }))
    expect(silent.offer).toEqual({ pcp: false, natPmp: false, upnp: false, externalIp: null, epoch: null })
    expect(silent.at).toBeGreaterThanOrEqual(SILENT_MS)
    const ac = new AbortController()
    setTimeout(() => ac.abort(), 30)
    const aborted = await timed(probeGateway(pmpGateway({ pcp: false, natPmp: false }), fakeIgd({ ssdp: false }).client, { first: true, signal: ac.signal }))
    expect(aborted.at).toBeLessThan(50)
  })
})
