/**
 * natd-rendezvous: registry, heartbeats, peer lists, introductions, STUN reflection.
 *
 * UDP on `port` (sealed heartbeats + STUN) and `altPort` (STUN, so an agent can tell
 * whether its NAT mapping depends on the destination); TCP on `port`: control
 * connections (a Noise session with the server's key: registration, peer lists,
 * introductions) and relay connections (protocol/rendezvous.ts draws both).
 * The server never answers a UDP source it cannot verify, except STUN Binding (RFC 8489,
 * and RFC 3489 requests without the magic cookie), whose answer is at most the request +
 * 36 bytes, sent to the source's own IP (see stun-responder.ts); a heartbeat ack is
 * sealed and never larger than the heartbeat.
 * With `altHost`, UDP STUN also on altHost:port and altHost:altPort (RFC 5780).
 *
 * This file wires the parts, each behind an interface, and runs their lifecycle and the
 * expiry sweep:
 *
 *   udp-sockets.ts    UDP sockets, STUN answers, sealed heartbeats
 *   tcp-gate.ts       TCP connections: limits, deadlines, Noise sessions, relay binding
 *   control.ts        what a control connection's messages mean (the gate's handler)
 *   registration.ts   REGISTER, RELEASE, agents that moved to another instance
 *   introductions.ts  INTRODUCE, and introductions from other instances
 *   intro-outbox.ts   introductions held ~3 s, sent again when their target registers anew
 *   agent-conns.ts    which agent holds which control connection; peer up/down events
 *   contacts.ts       who hears of whom on a big server
 *   registry.ts, relay.ts, cluster.ts: the agents held here, relayed tunnels, other instances
 */
import net from 'node:net'
import { peerId, type KeyPair } from '../protocol/identity.js'
import { systemClock, type Clock, type Logger } from '../protocol/log.js'
import { RefusalLog } from '../common/refusal-log.js'
import { AgentConns } from './agent-conns.js'
import type { Cluster, ClusterHandlers } from './cluster.js'
import { Contacts } from './contacts.js'
import { Control } from './control.js'
import { Introductions } from './introductions.js'
import { IntroOutbox } from './intro-outbox.js'
import { DEFAULT_SERVER_LIMITS, type ServerLimits } from './limits.js'
import type { ServerMetrics } from './metrics.js'
import type { NameStore } from './name-store.js'
import { Registrations } from './registration.js'
import { Registry } from './registry.js'
import { Relay, type RelayLimits } from './relay.js'
import { TcpGate } from './tcp-gate.js'
import { systemTimers, type Timer, type Timers } from './timers.js'
import { UdpSockets } from './udp-sockets.js'

export { BACKLOG_POLL_MS, END_LINGER_MS, MAX_AGENT_MESSAGE_BYTES, MAX_CLEAR_FRAME_BYTES, MAX_RELAY_FRAME_BYTES, MAX_SEND_BACKLOG_BYTES, REQUEST_BACKLOG_BYTES, TCP_AUTH_TIMEOUT_MS } from './tcp-gate.js'

/** Refusals of one kind are counted this long before their line (common/refusal-log.ts): at most a line a second per kind, whatever the attack. */
export const REFUSAL_LOG_INTERVAL_MS = 1_000
/** Expiry sweep period; bounds how late past --peer-timeout a silent agent is dropped. */
export const EXPIRY_SWEEP_MS = 1_000
/** Contacts of agents the registry forgot are pruned every this many sweeps (once a minute). */
const CONTACTS_PRUNE_SWEEPS = 60

export interface RendezvousInit {
  host: string // address to bind ('0.0.0.0' for all)
  port: number // UDP + TCP
  altPort: number // UDP, STUN only; 0 = off
  /**
   * An IPv6 address of this host to listen on too (UDP and TCP, same port): heartbeats
   * there give agents their IPv6 candidate (protocol/ipv6.ts), REGISTER_ACK names it, and
   * IPv6-only agents register there. A specific address, as agents are told it. null = off.
   */
  host6?: string | null
  /** Second address (RFC 5780 behaviour discovery): UDP STUN on altHost:port and altHost:altPort; needs a specific `host`. */
  altHost?: string | null
  /** Network secret: only agents proving they hold it may register. */
  secret?: Uint8Array | undefined
  peerTimeoutMs: number
  /** Heartbeat interval the server suggests to agents. */
  heartbeatMs: number
  /** Relay limits; null turns relaying off (--no-relay). */
  relay?: RelayLimits | null
  /** Release a name whose holder has not been seen for this long (--name-ttl). Default: registry.ts's DEFAULT_NAME_TTL_MS. */
  nameTtlMs?: number
  /** Per-source and per-key limits (limits.ts); each missing one takes its default. */
  limits?: Partial<ServerLimits>
}

export interface RendezvousComponents {
  log: Logger
  clock?: Clock
  /** The expiry sweep's timer, and the gate's and the relay's deadlines (timers.ts); default Node's, unref'd. */
  timers?: Timers
  /** The server's identity (server-identity.ts): agents pin its public key and run Noise against it. */
  keyPair: KeyPair
  /** Name bindings (name-store.ts); default in memory. The caller closes it after stop(). */
  names?: NameStore
  /**
   * Several instances sharing one registry (cluster.ts; `--redis`). The server starts and
   * stops it; its NameStore is then a cache of the shared bindings. Default: none.
   */
  cluster?: Cluster | null
  /** Counters for --metrics (metrics.ts); default none. */
  metrics?: ServerMetrics | null
}

export class RendezvousServer {
  private readonly log: Logger
  private readonly timers: Timers
  private readonly keyPair: KeyPair
  readonly registry: Registry
  readonly relay: Relay | null
  readonly limits: ServerLimits
  private readonly cluster: Cluster | null
  private readonly refusals: RefusalLog
  private readonly udp: UdpSockets
  private tcp: net.Server | null = null
  private tcp6: net.Server | null = null
  private readonly gate: TcpGate
  private readonly contacts = new Contacts()
  private readonly agents: AgentConns
  private readonly registrations: Registrations
  private readonly introductions: Introductions
  private readonly outbox: IntroOutbox
  private sweepTimer: Timer | null = null
  private sweeps = 0

  constructor(
    private readonly init: RendezvousInit,
    components: RendezvousComponents
  ) {
    const { log, keyPair } = components
    const clock = components.clock ?? systemClock
    this.log = log
    this.keyPair = keyPair
    const timers = (this.timers = components.timers ?? systemTimers)
    const cluster = (this.cluster = components.cluster ?? null)
    const metrics = components.metrics ?? null
    const limits = (this.limits = { ...DEFAULT_SERVER_LIMITS, ...init.limits })
    const registry = (this.registry = new Registry(clock, init.peerTimeoutMs, { names: components.names, nameTtlMs: init.nameTtlMs }))
    const relay = (this.relay = init.relay ? new Relay({ maxPermitsPerKey: limits.maxRelayPermitsPerKey, ...init.relay }, clock, log.child({ component: 'relay' }), timers) : null)
    const refusals = (this.refusals = new RefusalLog(log, { windowMs: REFUSAL_LOG_INTERVAL_MS, level: 'info' }, timers))
    const contacts = this.contacts
    const gate = (this.gate = new TcpGate({ limits, clock, timers, log, keyPair, refusals, relay }))
    const udp = (this.udp = new UdpSockets({ host: init.host, port: init.port, altPort: init.altPort, altHost: init.altHost ?? null, host6: init.host6 ?? null }, { log, refusals, registry, cluster, metrics }))
    const agents = (this.agents = new AgentConns({ clock, registry, gate, contacts, cluster }))
    const outbox = (this.outbox = new IntroOutbox({ clock, gate }))
    const registrations = (this.registrations = new Registrations(init, { clock, log, limits, refusals, registry, gate, agents, udp, cluster, metrics, outbox }))
    const introductions = (this.introductions = new Introductions({ clock, log, limits, refusals, registry, gate, agents, contacts, relay, cluster, metrics, outbox }))
    gate.handleWith(new Control({ log, clock, timers, registry, gate, agents, registrations, introductions, relay, cluster }))
  }

  /**
   * What strangers currently hold on this server: connections, the unauthenticated
   * ones, and the bytes held for them (partial frames and Noise messages, early relay
   * frames). The abuse suite asserts its bounds.
   */
  stats(): { conns: number; unauth: number; heldBytes: number } {
    const gate = this.gate.stats()
    return { ...gate, heldBytes: gate.heldBytes + (this.relay?.earlyBytes ?? 0) }
  }

  async start(): Promise<void> {
    try {
      await this.listen()
      await this.cluster?.start(this.clusterHandlers())
    } catch (err) {
      await this.stop() // release whatever did bind
      throw err
    }
    this.sweepTimer = this.timers.setInterval(() => this.onSweepExpired(), EXPIRY_SWEEP_MS).unref()
    this.log.info('rendezvous listening', {
      host: this.init.host,
      port: this.init.port,
      altPort: this.init.altPort || null,
      altHost: this.init.altHost ?? null,
      host6: this.init.host6 ?? null,
      key: peerId(this.keyPair.publicKey),
      secret: this.registrations.needsSecret,
      peerTimeoutMs: this.init.peerTimeoutMs,
      limits: this.limits
    })
  }

  private async listen(): Promise<void> {
    await this.udp.listen()
    this.tcp = await this.listenTcp(this.init.host, this.init.port)
    if (this.init.host6) this.tcp6 = await this.listenTcp(this.init.host6, this.address().tcp)
  }

  private async listenTcp(host: string, port: number): Promise<net.Server> {
    const tcp = net.createServer((socket) => this.gate.onConnection(socket))
    await new Promise<void>((resolve, reject) => {
      tcp.once('error', reject)
      tcp.listen({ host, port, ipv6Only: host.includes(':') }, () => resolve())
    })
    tcp.on('error', (err) => this.log.error('tcp server error', { err: err.message }))
    return tcp
  }

  /** What another instance tells this one (several instances): each part takes its own. */
  private clusterHandlers(): ClusterHandlers {
    return {
      onIntroduction: (intro) => this.introductions.onRemoteIntroduction(intro),
      onPeerEvents: (event, peers) => this.agents.onRemotePeerEvents(event, peers),
      onMoved: (peers) => peers.forEach((p) => this.registrations.movedAway(p))
    }
  }

  async stop(): Promise<void> {
    this.timers.clear(this.sweepTimer)
    await this.cluster?.stop().catch((err: Error) => this.log.warn('shared registry stop failed', { err: err.message }))
    this.refusals.flush()
    this.relay?.stop()
    this.gate.closeAll()
    this.udp.close()
    for (const tcp of [this.tcp, this.tcp6]) await new Promise<void>((resolve) => (tcp?.listening ? tcp.close(() => resolve()) : resolve()))
    this.tcp = this.tcp6 = null
  }

  private onSweepExpired(): void {
    if (++this.sweeps % CONTACTS_PRUNE_SWEEPS === 0) this.contacts.prune(this.registry)
    this.relay?.prune()
    this.registrations.sweep()
    this.introductions.sweep()
    this.outbox.sweep()
    this.gate.sweep()
    for (const reg of this.registry.expire()) {
      this.log.info('agent timed out', { name: reg.name, id: reg.id.slice(0, 8) })
      this.agents.close(reg.ref)
      this.agents.wentDown(reg.ref, this.registry.record(reg), 'expired')
    }
  }

  /** Agents holding a control connection here (metrics). */
  get agentsConnected(): number {
    return this.agents.size
  }

  address(): { udp: number; tcp: number; alt: number | null } {
    const tcp = this.tcp?.address()
    const { udp, alt } = this.udp.ports()
    return { udp, tcp: typeof tcp === 'object' && tcp ? tcp.port : 0, alt }
  }
}
