/**
 * The agent's port mappings (issue 17): its tunnel UDP port, and its TCP port (the
 * control connection's, which TCP punching reuses), asked of the default gateway by PCP,
 * else NAT-PMP, else UPnP IGD (src/portmap; all three probed at once, the preferred one
 * that answers wins, gateway-probe.ts), for the same external port for
 * PORTMAP_LIFETIME_S, renewed at half-life, made again when the gateway lost them, and
 * removed at stop.
 *
 * It runs before the start-up NAT check, because a gateway like miniupnpd also sends the
 * mapped port's outbound traffic from the mapped port: a NAT that maps per destination
 * (hard) then maps that one port endpoint-independently and lets anything in through it,
 * so the check finds an easy NAT and peers punch to it directly (the lab: hard×hard with
 * one mapping router → direct UDP). A flow the NAT already knows keeps its old mapping,
 * hence "before". The mapped UDP endpoint is also offered to peers as a candidate of its
 * own (agent.ts, protocol/lan.ts), for gateways that only forward inbound.
 *
 * Start-up cost, bounded: the fastest answer (plus PORTMAP_PROBE_GRACE_MS for a preferred
 * protocol still silent); a gateway that answers none costs PORTMAP_PROBE_TRIES tries
 * (0.75 s). That answer is remembered in the state directory (`portmap.json`, the
 * gateway's address: silent-gateway.ts); the next start with the same gateway does not
 * wait for it, but probes in the background, and when a mapping appears after all,
 * `onChange` tells the agent (it checks its NAT again and registers again with the new
 * candidate).
 *
 * Changes noticed: every PORTMAP_CHECK_MS the keeper asks the gateway for its epoch (one
 * PCP ANNOUNCE and one NAT-PMP address request, as at start): a changed default gateway,
 * an epoch that went back (the gateway restarted: RFC 6886 §3.6, RFC 6887 §8.5) or a
 * changed external address → mapped again at once. UPnP has no epoch: the keeper asks
 * whether the gateway still holds the UDP mapping (GetSpecificPortMappingEntry) and its
 * external address (two small HTTP exchanges); a gone mapping, or a service that no
 * longer answers (a restarted miniupnpd listens on another port) → found and mapped
 * again. Without a mapping the check probes again (a gateway whose owner turned PCP on, a
 * new network). A renewal that fails until the lease ends → the mapping is lost (status
 * says why).
 *
 * Failed attempts (a refusal, a silent gateway, no default gateway) are retried after
 * PORTMAP_RETRY_MS, doubling per failure in a row up to PORTMAP_RETRY_MAX_MS, with
 * jitter (port-mapping-retry.ts); meanwhile the check only looks whether the default
 * gateway changed (then it asks the new one at once). A mapping granted, or a change the
 * check sees, starts again from PORTMAP_RETRY_MS. Status shows when the next try is due.
 *
 * Who can make us do work: the gateway (or a LAN host spoofing it, for NAT-PMP, or its
 * SSDP answer) can refuse or fake a mapping, or fake a restart; we then send at most 2 ×
 * PORTMAP_TRIES requests (UPnP: one search, one description and ≤ 4 SOAP exchanges per
 * protocol mapped, each bounded in size and time) per check or renewal, never more often
 * than PORTMAP_CHECK_MS / MIN_RENEW_MS and the retry backoff allow.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import type { Clock, Logger } from '../protocol/log.js'
import { systemClock } from '../protocol/log.js'
import { systemRandom, type Random } from '../protocol/clock.js'
import { formatEndpoint, sameEndpoint, type Endpoint } from '../protocol/endpoint.js'
import type { MapProtocol } from '../portmap/natpmp.js'
import { probeGateway } from '../portmap/gateway-probe.js'
import { gatewayLostState, PORTMAP_LIFETIME_S, type PortMapping, type PortMapVia } from '../portmap/port-mapper.js'
import type { PortMappingStatus } from '../ipc/schema.js'
import { gatewayClient, unmap, type GatewayClient } from './port-mapping-probe.js'
import { keeperStatus, type KeeperState } from './port-mapping-status.js'
import { PortMapBackoff } from './port-mapping-retry.js'
import { noCache, type SilentGatewayCache } from './silent-gateway.js'

export { PORTMAP_RETRY_MAX_MS, PORTMAP_RETRY_MS } from './port-mapping-retry.js'
/** A gateway that grants less than this many seconds is asked again no sooner than this. */
const MIN_RENEW_MS = 30_000
/**
 * How often the gateway is asked whether it restarted or changed (its epoch, its
 * address) and whether the default gateway is still the same: one small datagram to our
 * own gateway every 2 minutes, so a router reboot costs peers at most that long.
 */
export const PORTMAP_CHECK_MS = 120_000
/**
 * stop() waits this long for a probe or renewal in flight (it may be about to grant a
 * mapping that must then be removed), within natd's 3 s shutdown deadline.
 */
const STOP_WAIT_MS = 1_000
// The silent-gateway cache (portmap.json) is silent-gateway.ts; re-exported for the agent.
export { fileCache, PORTMAP_CACHE_FILE, type SilentGatewayCache } from './silent-gateway.js'

export interface PortMappingInit {
  /** Our UDP port (tunnels), and the same TCP port (control connection). */
  port: number
  /** Map the TCP port too. */
  tcp: boolean
  /** false: --no-port-mapping; nothing is sent. */
  enabled: boolean
  /** How often the gateway is checked (PORTMAP_CHECK_MS; lab tests shorten it). */
  checkMs?: number
}

export interface PortMappingComponents {
  log: Logger
  /** The gateway's client (tests inject a fake gateway). */
  connect?: () => Promise<GatewayClient | null>
  cache?: SilentGatewayCache
  clock?: Clock
  /** The retry backoff's jitter (tests pin it). */
  random?: Random
  /** The mapped UDP endpoint appeared, changed or went (never called for the first mapping at start). */
  onChange?: () => void
}

export class PortMappingKeeper {
  private client: GatewayClient | null = null
  private state: KeeperState
  private renewTimer: NodeJS.Timeout | null = null
  private checkTimer: NodeJS.Timeout | null = null
  private stopped = false
  private busy: Promise<void> | null = null
  /** Started (start() returned): changes from now on are news for onChange. */
  private started = false
  private readonly connect: () => Promise<GatewayClient | null>
  private readonly cache: SilentGatewayCache
  private readonly clock: Clock
  private readonly backoff: PortMapBackoff

  constructor(
    private readonly init: PortMappingInit,
    private readonly c: PortMappingComponents
  ) {
    this.state = init.enabled ? { kind: 'probing', gateway: null } : { kind: 'off' }
    this.connect = c.connect ?? gatewayClient
    this.cache = c.cache ?? noCache
    this.clock = c.clock ?? systemClock
    this.backoff = new PortMapBackoff(c.random ?? systemRandom)
  }

  /** The live UDP mapping, if any. */
  get current(): PortMapping | null {
    return this.state.kind === 'mapped' ? this.state.udp : null
  }

  /** The external endpoints of our mappings: UDP, then TCP when it differs. */
  externalEndpoints(): Endpoint[] {
    if (this.state.kind !== 'mapped') return []
    const { udp, tcp } = this.state
    return tcp && !sameEndpoint(tcp.external, udp.external) ? [udp.external, tcp.external] : [udp.external]
  }

  /** What `natctl status` shows. */
  status(): PortMappingStatus {
    const now = this.clock.now()
    return keeperStatus(this.state, now, this.backoff.retryInMs(now))
  }

  /**
   * Probes the gateway and maps the ports; resolves when the caller's NAT check may run:
   * after the mapping, or at once when this gateway is known to answer none of the protocols
   * (the probe then goes on in the background). Never rejects.
   */
  async start(): Promise<void> {
    if (!this.init.enabled) return
    this.checkTimer = setInterval(() => this.onCheckDue(), this.init.checkMs ?? PORTMAP_CHECK_MS)
    this.checkTimer.unref()
    const silent = this.cache.get()
    let gateway: string | null = null
    let connected!: () => void
    const isConnected = new Promise<void>((resolve) => (connected = resolve))
    const first = this.serial(() =>
      this.setUp((gw) => {
        gateway = gw
        connected()
      })
    )
    await Promise.race([first, isConnected])
    // The same gateway that answered nothing last time: do not wait for it again.
    if (silent === null || gateway !== silent) await first
    this.started = true
  }

  /** One probe or mapping run at a time. */
  private serial(fn: () => Promise<void>): Promise<void> {
    const run = (this.busy ?? Promise.resolve()).then(fn).finally(() => {
      if (this.busy === run) this.busy = null
    })
    this.busy = run
    return run
  }

  /** Connects to the default gateway, probes it and maps. Never rejects. */
  private async setUp(onConnected?: (gateway: string | null) => void): Promise<void> {
    this.close()
    const before = this.current
    this.client = await this.connect()
    const client = this.client
    onConnected?.(client?.gateway ?? null)
    if (this.stopped) return
    if (!client) {
      this.retryLater(null)
      return this.lose(null, 'no IPv4 default gateway', before)
    }
    this.state = { kind: 'probing', gateway: client.gateway }
    const offer = await probeGateway(client.mapper, client.upnp ?? null, { first: true })
    if (this.stopped) return
    if (!offer.pcp && !offer.natPmp && !offer.upnp) {
      if (this.cache.get() !== client.gateway) this.cache.set(client.gateway)
      this.c.log.debug('no port mapping: the gateway answers none of PCP, NAT-PMP and UPnP', { gateway: client.gateway })
      this.close()
      this.retryLater(null)
      return this.lose(client.gateway, `the gateway ${client.gateway} answers none of PCP, NAT-PMP and UPnP`, before)
    }
    if (this.cache.get() !== null) this.cache.set(null)
    await this.map(offer.pcp ? 'pcp' : offer.natPmp ? 'nat-pmp' : 'upnp', before)
  }

  /**
   * Maps (again, with the same nonces), then schedules the next renewal at half-life.
   * A failure keeps the mapping until its lease ends. Never rejects.
   */
  private async map(via: PortMapVia, before: PortMapping | null): Promise<void> {
    const client = this.client
    if (!client || this.stopped) return
    const held = this.state.kind === 'mapped' ? this.state : null
    const ask = async (protocol: MapProtocol, old: PortMapping | null | undefined): Promise<PortMapping> => {
      if (via !== 'upnp') return client.mapper.map(via, protocol, this.init.port, { lifetimeS: PORTMAP_LIFETIME_S, nonce: old?.via === via ? old.nonce : null })
      if (!client.upnp) throw new Error('no UPnP client')
      // A renewal asks for the port it holds (AddAnyPortMapping may have given another).
      return client.upnp.map(protocol, this.init.port, { lifetimeS: PORTMAP_LIFETIME_S, ...(old?.via === 'upnp' ? { externalPort: old.external.port } : {}) })
    }
    const at = this.clock.now()
    let udp: PortMapping
    try {
      udp = await ask('udp', held?.udp)
    } catch (err) {
      if (this.stopped) return
      const message = (err as Error).message
      this.c.log.warn('port mapping failed', { via, gateway: client.gateway, err: message, failures: this.backoff.failed + 1 })
      const leaseEnd = held ? held.at + held.udp.lifetimeS * 1000 : null
      if (leaseEnd !== null && this.clock.now() < leaseEnd) return this.retryLater(leaseEnd) // the lease still holds
      this.retryLater(null)
      return this.lose(client.gateway, held ? `lease lost: ${message}` : message, before)
    }
    let tcp: PortMapping | null = null
    if (this.init.tcp) {
      tcp = await ask('tcp', held?.tcp).catch((err: Error) => {
        this.c.log.warn('tcp port mapping failed', { via, gateway: client.gateway, err: err.message })
        return null
      })
    }
    if (this.stopped) {
      // Granted while natd stops: stop() may have looked already, so remove it here.
      await Promise.all([udp, tcp].map((m) => (m ? unmap(client, m).catch(() => undefined) : undefined)))
      return
    }
    this.state = { kind: 'mapped', gateway: client.gateway, udp, tcp, at, epoch: udp.epoch, epochAt: at }
    const changed = !before || formatEndpoint(before.external) !== formatEndpoint(udp.external)
    this.c.log[changed ? 'info' : 'debug']('port mapped', {
      via,
      internalPort: this.init.port,
      external: formatEndpoint(udp.external),
      tcp: tcp ? formatEndpoint(tcp.external) : null,
      lifetimeS: udp.lifetimeS
    })
    this.backoff.reset()
    this.scheduleRenew(Math.max(MIN_RENEW_MS, (udp.lifetimeS * 1000) / 2))
    if (changed && this.started) this.c.onChange?.()
  }

  private lose(gateway: string | null, reason: string, before: PortMapping | null): void {
    this.state = { kind: 'none', gateway, reason }
    if (before && this.started) {
      this.c.log.warn('port mapping lost', { external: formatEndpoint(before.external), reason })
      this.c.onChange?.()
    }
  }

  /** A failed attempt: the next one after the backoff's wait (or at the end of a lease still held). */
  private retryLater(leaseEnd: number | null): void {
    const ms = this.backoff.fail(this.clock.now(), leaseEnd)
    this.c.log.debug('port mapping retry scheduled', { failures: this.backoff.failed, retryInMs: ms })
    this.scheduleRenew(ms)
  }

  private scheduleRenew(ms: number): void {
    if (this.stopped) return
    if (this.renewTimer) clearTimeout(this.renewTimer)
    this.renewTimer = setTimeout(() => this.onRenewDue(), ms)
    this.renewTimer.unref()
  }

  private onRenewDue(): void {
    void this.serial(async () => {
      if (this.state.kind === 'mapped' && this.client) return this.map(this.state.udp.via, this.state.udp)
      return this.setUp()
    })
  }

  /**
   * The periodic check: another default gateway, or none mapped yet → set up again; the
   * same gateway → its epoch and address, and map again at once if it lost our mappings.
   * Never rejects.
   */
  private onCheckDue(): void {
    if (this.busy) return // a probe or renewal is under way: it will tell
    void this.serial(() => this.check())
  }

  /** Checks again now (the network may have changed: the server was lost and found). Never rejects. */
  recheck(): Promise<void> {
    if (!this.init.enabled || this.stopped) return Promise.resolve()
    return this.serial(() => this.check())
  }

  private async check(): Promise<void> {
    const s = this.state
    if (this.stopped) return
    // Nothing mapped: probe again (a gateway whose owner turned PCP on, another network),
    // unless failures are backing off: then only another default gateway is asked at once.
    if (s.kind !== 'mapped' || !this.client) {
      if (this.backoff.waiting(this.clock.now())) {
        const known = s.kind === 'off' ? null : s.gateway
        const gateway = await this.defaultGateway()
        if (this.stopped || gateway === known) return
        this.c.log.info('the default gateway changed: asking it now', { from: known, to: gateway })
        this.backoff.reset()
      }
      return this.setUp()
    }
    if (s.udp.via === 'upnp') return this.checkUpnp(s)
    const at = this.clock.now()
    const offer = await this.client.mapper.probe()
    if (this.stopped) return
    if (offer.epoch === null) return // silent now: the renewal decides whether the lease is lost
    const lost = gatewayLostState({ epoch: s.epoch, atMs: s.epochAt }, { epoch: offer.epoch, atMs: at })
    const moved = offer.externalIp !== null && offer.externalIp !== s.udp.external.host
    if (!lost && !moved && (await this.sameGateway())) {
      // Compared with the latest answer each time, so clock drift never adds up.
      this.state = { ...s, epoch: offer.epoch, epochAt: at }
      return
    }
    this.c.log.info('the gateway lost or changed our mapping: mapping again', { gateway: s.gateway, epoch: offer.epoch, lost, moved })
    this.backoff.reset()
    await this.setUp()
  }

  /** check() for a UPnP mapping: is it still held, at the same external address? */
  private async checkUpnp(s: Extract<KeeperState, { kind: 'mapped' }>): Promise<void> {
    const upnp = this.client?.upnp
    const held = upnp ? await upnp.isMapped(s.udp) : null
    if (this.stopped) return
    const externalIp = held && upnp ? await upnp.currentExternalIp() : null
    if (this.stopped) return
    const moved = externalIp !== null && externalIp !== s.udp.external.host
    if (held && !moved && (await this.sameGateway())) return
    this.c.log.info('the gateway lost or changed our mapping: mapping again', { gateway: s.gateway, via: 'upnp', lost: held === false, unanswered: held === null, moved })
    this.backoff.reset()
    await this.setUp()
  }

  /** Whether the default gateway is still the one we talk to. */
  private async sameGateway(): Promise<boolean> {
    const gateway = this.client?.gateway ?? null
    return (await this.defaultGateway()) === gateway
  }

  /** The IPv4 default gateway now (null: none), from a client closed at once. */
  private async defaultGateway(): Promise<string | null> {
    const now = await this.connect()
    now?.close()
    return now?.gateway ?? null
  }

  /** Removes the mappings (best effort, at once, ≤ 1.75 s; by UPnP ≤ 1.5 s) and closes the socket. Never rejects. */
  async stop(): Promise<void> {
    this.stopped = true
    if (this.renewTimer) clearTimeout(this.renewTimer)
    if (this.checkTimer) clearInterval(this.checkTimer)
    if (this.busy) await Promise.race([this.busy.catch(() => undefined), sleep(STOP_WAIT_MS, undefined, { ref: false })])
    const s = this.state
    if (s.kind === 'mapped' && this.client) {
      const client = this.client
      await Promise.all(
        [s.udp, s.tcp].flatMap((m) =>
          m
            ? [
                unmap(client, m).then(
                  () => this.c.log.info('port mapping removed', { protocol: m.protocol, external: formatEndpoint(m.external) }),
                  (err: Error) => this.c.log.warn('port mapping not removed', { protocol: m.protocol, err: err.message })
                )
              ]
            : []
        )
      )
    }
    this.state = this.init.enabled ? { kind: 'none', gateway: null, reason: 'natd is stopping' } : { kind: 'off' }
    this.close()
  }

  private close(): void {
    this.client?.close()
    this.client = null
  }
}
