/**
 * Our NAT verdict, kept in one place: checked at start (before registering, so peers
 * learn it with our endpoint), again after the server was lost and found (often a
 * network change), every NAT_RECHECK_MS while a tunnel is relayed (it may have become
 * punchable: the peer's upgrade attempts need our current verdict at the server), and
 * on `natctl netcheck`. A changed verdict is announced to the server at once.
 *
 * Beside the verdict it keeps the first-probe TTL (tunnel/hop-check.ts): learnt when the
 * agent starts and again after the server was lost and found, never per punch.
 *
 * Checks never overlap, and a caller that wants a fresh verdict (the tunnels, before an
 * upgrade attempt) shares the check in flight or the one done within NAT_RECHECK_MS: the
 * relay watch and the upgrade loop together cost one check per period, not two.
 */
import os from 'node:os'
import { formatEndpoint, type Endpoint } from '../protocol/endpoint.js'
import { lanCandidates } from '../protocol/lan.js'
import type { Timer, TimerClock } from '../protocol/clock.js'
import type { Logger } from '../protocol/log.js'
import type { NatVerdict } from '../protocol/rendezvous.js'
import type { NatCheck } from '../tunnel/nat-check.js'
import { FIRST_PROBE_TTL, firstProbeTtlFor, learnedTtl } from '../tunnel/hop-check.js'
import type { NetcheckResult, PortMappingReport } from '../ipc/schema.js'
import { ulaV6Addresses } from './ipv6-socket.js'

/** While a tunnel is relayed, our NAT is checked again this often (it may have become punchable). */
export const NAT_RECHECK_MS = 5_000

export interface NatMonitorComponents {
  natCheck: Pick<NatCheck, 'verdict' | 'netcheck' | 'hops'>
  /** The rendezvous server's address, resolved now; it answers STUN there and on port + 1. */
  server(): Promise<Endpoint>
  /** Our UDP port (the tunnel socket's): the mapping the server sees is the one peers punch to. */
  localPort(): number
  /** Tells the server our verdict changed (registers again). Never rejects. */
  announce(): Promise<void>
  /** Whether a tunnel is relayed now: then the verdict is kept fresh. */
  relayed(): boolean
  /** What the server's side of the registration says, for the netcheck report. */
  registeredTcp(): Endpoint | null | undefined
  /** Which port-mapping protocols the default gateway answers (port-mapping-probe.ts); asked beside the STUN run. */
  probePortMapping(): Promise<PortMappingReport>
  clock: TimerClock
  log: Logger
}

export class NatMonitor {
  private current: NatVerdict = 'unknown'
  private running: Promise<void> | null = null
  private checkedAt = -Infinity
  private netcheckRun: Promise<NetcheckResult> | null = null
  private timer: Timer | null = null
  private learned = FIRST_PROBE_TTL
  private publicHost: string | null = null
  private hopRun: Promise<void> | null = null

  constructor(private readonly c: NatMonitorComponents) {}

  get verdict(): NatVerdict {
    return this.current
  }

  /** The first-probe TTL learnt from the server's distance (hop-check.ts), before the same-address rule. */
  get learnedTtl(): number {
    return this.learned
  }

  /** The first-probe TTL towards a peer seen at `peerHost` (hop-check.ts firstProbeTtlFor). */
  firstProbeTtl(peerHost?: string): number {
    return firstProbeTtlFor(this.learned, this.publicHost, peerHost)
  }

  /** The first check and hop check (awaited before registering), then the watch while a tunnel is relayed. */
  async start(): Promise<void> {
    await Promise.all([this.check(), this.checkHops()])
    this.timer = this.c.clock.setInterval(() => this.onRecheckExpired(), NAT_RECHECK_MS).unref()
  }

  stop(): void {
    this.c.clock.clear(this.timer)
    this.timer = null
  }

  private onRecheckExpired(): void {
    // Half a period: a tick a little early (timers drift) still checks; one that follows
    // a check the tunnels just asked for does not.
    if (this.c.relayed() && this.c.clock.now() - this.checkedAt >= NAT_RECHECK_MS / 2) void this.recheck() // never rejects
  }

  /**
   * A verdict at most NAT_RECHECK_MS old: the check in flight, a recent one, or a new one
   * (announced when it changed). Never rejects.
   */
  fresh(): Promise<void> {
    if (this.running) return this.running
    if (this.c.clock.now() - this.checkedAt < NAT_RECHECK_MS) return Promise.resolve()
    return this.recheck()
  }

  /** Checks again now (the server was lost and found: the network may have changed). Never rejects. */
  recheck(): Promise<void> {
    this.running ??= (async () => {
      const before = this.current
      await this.check()
      if (this.current !== before) await this.c.announce()
    })().finally(() => (this.running = null))
    return this.running
  }

  /**
   * Learns the first-probe TTL again (the agent starts, or found the server again after
   * losing it: the network may have changed). One at a time; 7 datagrams. Never rejects:
   * an unanswered check keeps the TTL learnt before.
   */
  checkHops(): Promise<void> {
    this.hopRun ??= (async () => {
      try {
        const verdict = await this.c.natCheck.hops(await this.c.server())
        if (verdict.kind === 'unknown') return
        const ttl = learnedTtl(verdict)
        const changed = ttl !== this.learned
        this.learned = ttl
        this.c.log[changed ? 'info' : 'debug']('hop check', { server: verdict.kind, ...(verdict.kind === 'near' ? { serverTtl: verdict.serverTtl } : {}), firstProbeTtl: ttl })
      } catch (err) {
        this.c.log.warn('hop check failed', { err: (err as Error).message })
      }
    })().finally(() => (this.hopRun = null))
    return this.hopRun
  }

  /**
   * How our NAT maps, from STUN to the server's other address when it names one
   * (OTHER-ADDRESS, --alt-host), else to its alternate port (nat-check.ts). Never
   * rejects: an unreachable server leaves the verdict as it was.
   */
  private async check(): Promise<void> {
    this.checkedAt = this.c.clock.now() // when it started: what it says is that old
    try {
      const server = await this.c.server()
      const { verdict, samples } = await this.c.natCheck.verdict(server, server.port + 1, localEndpoints(this.c.localPort()))
      const changed = verdict !== this.current
      this.current = verdict
      if (samples.primary) this.publicHost = samples.primary.host
      // Logged when the verdict changes; the periodic re-checks are debug.
      this.c.log[changed ? 'info' : 'debug']('nat check', { verdict, primary: formatEndpoint(samples.primary), alternate: formatEndpoint(samples.alternate) })
    } catch (err) {
      this.c.log.warn('nat check failed', { err: (err as Error).message })
    }
  }

  /** `natctl netcheck`, one run at a time: interleaved probes would open paths the filtering tests rely on being closed. */
  netcheck(): Promise<NetcheckResult> {
    this.netcheckRun ??= this.runNetcheck().finally(() => (this.netcheckRun = null))
    return this.netcheckRun
  }

  /** The full RFC 5780 run from the tunnel socket (nat-check.ts). Its verdict replaces ours; a change is announced at once. */
  private async runNetcheck(): Promise<NetcheckResult> {
    const started = this.c.clock.now()
    const server = await this.c.server()
    const localPort = this.c.localPort()
    // The gateway's port-mapping protocols are asked at the same time (≤ 1.75 s, under the STUN run's).
    const [r, portMapping] = await Promise.all([this.c.natCheck.netcheck(server, server.port + 1, localEndpoints(localPort)), this.c.probePortMapping()])
    const previousNat = this.current
    const natChanged = r.verdict !== 'unknown' && r.verdict !== previousNat
    if (natChanged) {
      this.current = r.verdict
      this.checkedAt = started
      this.c.log.info('nat verdict changed', { from: previousNat, to: r.verdict, mapping: r.mapping })
      void this.c.announce() // never rejects; the report need not wait for it
    }
    const tcp = this.c.registeredTcp()
    const s = r.samples
    const ep = (e: Endpoint | null | undefined): string | null => (e ? formatEndpoint(e) : null)
    const result: NetcheckResult = {
      udp: s.primary !== null,
      tcp: tcp !== undefined && tcp !== null,
      server: formatEndpoint(server),
      serverOtherAddress: ep(s.otherAddress),
      serverRttMs: r.rttMs,
      localPort,
      publicUdp: ep(s.primary),
      publicTcp: ep(tcp),
      portPreserved: s.primary ? s.primary.port === localPort : null,
      mapping: r.mapping,
      filtering: r.filtering,
      nat: r.verdict,
      previousNat,
      natChanged,
      probes: {
        primary: ep(s.primary),
        otherIp: ep(s.otherIp),
        otherIpAndPort: ep(s.otherIpAndPort),
        otherPort: ep(s.otherPort),
        filterChangeIpAndPort: s.filterChangeIpAndPort,
        filterChangePort: s.filterChangePort
      },
      portMapping,
      tookMs: this.c.clock.now() - started
    }
    this.c.log.info('netcheck', { udp: result.udp, publicUdp: result.publicUdp, mapping: r.mapping, filtering: r.filtering, nat: r.verdict, pcp: portMapping.pcp, natPmp: portMapping.natPmp, upnp: portMapping.upnp })
    return result
  }
}

/**
 * Every non-internal IPv4 address of this host, at our UDP port: the NAT check compares
 * them with what the server sees (a public host sees its own address: no NAT).
 */
export function localEndpoints(port: number): Endpoint[] {
  const out: Endpoint[] = []
  for (const addrs of Object.values(os.networkInterfaces())) {
    for (const a of addrs ?? []) if (!a.internal && a.family === 'IPv4') out.push({ host: a.address, port })
  }
  return out
}

/**
 * This host's LAN candidates: with an IPv6 socket, its unique-local IPv6 addresses at its
 * port (at most MAX_ULA_CANDIDATES, ipv6-socket.ts ulaV6Addresses; peers on our LAN only
 * probe them: protocol/ipv6.ts sameLanV6), then its private IPv4 addresses at our UDP
 * port (protocol/lan.ts says which). The unique-local ones first: the cut to
 * MAX_LAN_CANDIDATES (8, here and at the server, after at most 2 mapped ones) then never
 * drops them, so a peer sees every address ulaV6Addresses gives our own TCP punching.
 */
export function lanEndpoints(port: number, port6 = 0): Endpoint[] {
  const ula = port6 ? ulaV6Addresses().map((host) => ({ host, port: port6 })) : []
  return lanCandidates([...ula, ...localEndpoints(port)])
}

