/**
 * The agent's port mapping of its tunnel UDP port (issue 17): at start it asks the
 * default gateway by PCP, else NAT-PMP (src/portmap), for the same external port for
 * PORTMAP_LIFETIME_S, renews at half-life and removes the mapping on shutdown.
 *
 * It runs before the start-up NAT check, because a gateway like miniupnpd also sends the
 * mapped port's outbound traffic from the mapped port: a NAT that maps per destination
 * (hard) then maps that one port endpoint-independently and lets anything in through it,
 * so the check finds an easy NAT and peers punch to it directly (the lab: hard×hard with
 * one mapping router → direct UDP). A flow the NAT already knows keeps its old mapping,
 * hence "before". Cost where no gateway answers: PORTMAP_PROBE_TRIES tries, 0.75 s.
 *
 * Not done yet (issue 17): the mapped endpoint is not offered to peers as a candidate of
 * its own (a gateway that does not send our outbound traffic from the mapped port gains
 * nothing), no UPnP IGD, no TCP port, and a changed gateway or external address is only
 * noticed at the next renewal.
 *
 * Who can make us do work: the gateway (or a LAN host spoofing it, for NAT-PMP) can
 * refuse or fake a mapping; we then send at most PORTMAP_TRIES requests per renewal.
 */
import type { Logger } from '../protocol/log.js'
import { formatEndpoint } from '../protocol/endpoint.js'
import { PORTMAP_LIFETIME_S, type PortMapping } from '../portmap/port-mapper.js'
import { gatewayClient, type GatewayClient } from './port-mapping-probe.js'

/** After a failed renewal, try again this much later (the old mapping may still hold). */
export const PORTMAP_RETRY_MS = 60_000
/** A gateway that grants less than this many seconds is asked again no sooner than this. */
const MIN_RENEW_MS = 30_000

export class PortMappingKeeper {
  private client: GatewayClient | null = null
  private mapping: PortMapping | null = null
  private timer: NodeJS.Timeout | null = null
  private stopped = false

  constructor(
    private readonly port: number,
    private readonly log: Logger,
    /** The gateway's client (tests inject a fake gateway). */
    private readonly connect: () => Promise<GatewayClient | null> = gatewayClient
  ) {}

  /** The live mapping, if any. */
  get current(): PortMapping | null {
    return this.mapping
  }

  /** Probes the gateway and maps the port. Resolves with the mapping or null. Never rejects. */
  async start(): Promise<PortMapping | null> {
    this.client = await this.connect()
    if (!this.client || this.stopped) return null
    const offer = await this.client.mapper.probe()
    if (!offer.pcp && !offer.natPmp) {
      this.log.debug('no port mapping: the gateway answers neither PCP nor NAT-PMP', { gateway: this.client.gateway })
      this.close()
      return null
    }
    await this.onRenewDue(offer.pcp ? 'pcp' : 'nat-pmp')
    return this.mapping
  }

  /** Maps (again, with the same nonce), then schedules the next renewal at half-life. Never rejects. */
  private async onRenewDue(via: 'pcp' | 'nat-pmp'): Promise<void> {
    if (!this.client || this.stopped) return
    try {
      const m = await this.client.mapper.map(via, 'udp', this.port, { lifetimeS: PORTMAP_LIFETIME_S, nonce: this.mapping?.nonce ?? null })
      const first = !this.mapping || formatEndpoint(this.mapping.external) !== formatEndpoint(m.external)
      this.mapping = m
      this.log[first ? 'info' : 'debug']('port mapped', { via, internalPort: this.port, external: formatEndpoint(m.external), lifetimeS: m.lifetimeS })
      this.schedule(via, Math.max(MIN_RENEW_MS, (m.lifetimeS * 1000) / 2))
    } catch (err) {
      this.log.warn('port mapping failed', { via, gateway: this.client.gateway, err: (err as Error).message })
      this.schedule(via, PORTMAP_RETRY_MS)
    }
  }

  private schedule(via: 'pcp' | 'nat-pmp', ms: number): void {
    if (this.stopped) return
    this.timer = setTimeout(() => void this.onRenewDue(via), ms)
    this.timer.unref()
  }

  /** Removes the mapping (best effort, ≤ 1.75 s) and closes the socket. Never rejects. */
  async stop(): Promise<void> {
    this.stopped = true
    if (this.timer) clearTimeout(this.timer)
    const m = this.mapping
    this.mapping = null
    if (m && this.client) {
      await this.client.mapper.unmap(m).then(
        () => this.log.info('port mapping removed', { external: formatEndpoint(m.external) }),
        (err: Error) => this.log.warn('port mapping not removed', { err: err.message })
      )
    }
    this.close()
  }

  private close(): void {
    this.client?.close()
    this.client = null
  }
}
