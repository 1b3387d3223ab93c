/**
 * Which port-mapping protocols the gateway speaks: PCP, NAT-PMP and UPnP IGD asked at
 * once, preferred in that order (Tailscale's net/portmapper).
 *
 *   all    waits for every answer or its tries (netcheck: the whole report, ≤ ~0.75 s
 *          plus the UPnP HTTP exchanges when the gateway answers SSDP)
 *   first  done as soon as the preferred protocol that will answer has: when one answers,
 *          the less preferred ones are dropped and the preferred ones still silent get
 *          PORTMAP_PROBE_GRACE_MS more (the agent's start: a PCP-only gateway costs one
 *          round trip, not NAT-PMP's 0.75 s of tries)
 *
 * A NAT-PMP-only gateway tells PCP "unsupported version" at once, so it costs no grace.
 */
import type { PortMapper, GatewayOffer } from './port-mapper.js'
import { offerOf } from './port-mapper.js'
import type { UpnpClient } from './upnp-client.js'

/**
 * After a protocol answered, how long the preferred ones still silent may take: the
 * requests went out together to the same gateway, which answers each within its own
 * processing time (miniupnpd: well under 10 ms) — a lost datagram is not waited for.
 */
export const PORTMAP_PROBE_GRACE_MS = 100

export interface ProbeGatewayOptions {
  /** Stop at the preferred protocol that answers (see above); default: wait for all. */
  first?: boolean
  signal?: AbortSignal
}

/** The offer of the gateway behind `mapper` (and `upnp`, when given). Never rejects. */
export async function probeGateway(mapper: PortMapper, upnp: UpnpClient | null, o: ProbeGatewayOptions = {}): Promise<GatewayOffer> {
  const [pcp, natPmp, igd] = await preferred(
    [(s) => mapper.probePcp(s), (s) => mapper.probeNatPmp(s), (s) => (upnp ? upnp.discover(s) : Promise.resolve(null))] as const,
    o
  )
  const offer = offerOf(pcp, natPmp)
  return { ...offer, upnp: !!igd, externalIp: offer.externalIp ?? igd?.externalIp ?? null }
}

type Probe<T> = (signal: AbortSignal) => Promise<T>
type Results<P extends readonly Probe<unknown>[]> = { -readonly [K in keyof P]: P[K] extends Probe<infer T> ? T : never }

/**
 * Runs `probes` (most preferred first) at once; a probe answered when it resolved to
 * anything but null or false, and a stopped one must resolve null at once. Never rejects
 * when the probes do not.
 */
async function preferred<P extends readonly Probe<unknown>[]>(probes: P, o: ProbeGatewayOptions): Promise<Results<P>> {
  const stops = probes.map(() => new AbortController())
  const pending = new Set(probes.map((_, i) => i))
  let grace: NodeJS.Timeout | undefined
  const stop = (i: number): void => {
    if (pending.has(i)) stops[i]!.abort()
  }
  const onAbort = (): void => stops.forEach((c) => c.abort())
  o.signal?.addEventListener('abort', onAbort, { once: true })
  if (o.signal?.aborted) onAbort()
  try {
    return (await Promise.all(
      probes.map(async (probe, i) => {
        const r = await probe(stops[i]!.signal)
        pending.delete(i)
        if (o.first && r !== null && r !== false) {
          for (let j = i + 1; j < probes.length; j++) stop(j)
          if ([...pending].some((j) => j < i)) grace ??= setTimeout(() => pending.forEach(stop), PORTMAP_PROBE_GRACE_MS)
        }
        return r
      })
    )) as Results<P>
  } finally {
    clearTimeout(grace)
    o.signal?.removeEventListener('abort', onAbort)
  }
}
