/**
 * The agent: one UDP socket (UDX; rendezvous, punching and tunnels share it, so the
 * mapping the server sees is the one peers punch to), the rendezvous client, and the
 * local API. main.ts builds it from the command line; tests build it directly.
 */
import UDX, { type UDXSocket } from 'udx-native'
import { formatEndpoint, type Endpoint } from '../protocol/endpoint.js'
import { NatdError } from '../protocol/errors.js'
import { parsePeerId, peerId, type KeyPair } from '../protocol/identity.js'
import { isTarget, type PeerRef } from '../protocol/peer-ref.js'
import { systemClock, systemRandom, type Random, type TimerClock } from '../protocol/clock.js'
import type { Logger } from '../protocol/log.js'
import { isRendezvousFrame, MAX_LIST_PEERS, MSG, type PeerRecord } from '../protocol/rendezvous.js'
import { ApiServer } from '../ipc/server.js'
import { dataSocketPath, FileStreamServer } from '../ipc/file-stream.js'
import type { StatusResult } from '../ipc/schema.js'
import { TunnelManager } from '../tunnel/manager.js'
import { NatCheck } from '../tunnel/nat-check.js'
import { isStun } from '../protocol/stun.js'
import { parseServerSpec, resolveServer, type ServerSpec } from './server-address.js'
import { probePortMapping } from './port-mapping-probe.js'
import { fileCache, PortMappingKeeper } from './port-mapping.js'
import type { Tunnel } from '../tunnel/tunnel.js'
import type { AgentConfig, StateStore } from './config.js'
import { Exposes } from './exposes.js'
import { Forwards } from './forwards.js'
import { Files, FILE_SERVICE } from './files.js'
import { KnownPeers } from './known-peers.js'
import { Messages, MESSAGE_SERVICE } from './messages.js'
import { PathCheck } from './path-check.js'
import { PeerPresence } from './peer-presence.js'
import { RendezvousClient } from './rendezvous-client.js'
import { lanEndpoints, NatMonitor } from './nat-monitor.js'
import { TunnelHost, type ChannelHandler } from './tunnel-host.js'
import { globalV6Addresses, openV6Socket, socketFor } from './ipv6-socket.js'
import { apiHandlers, peerInfo, type AgentParts } from './api-handlers.js'
import { serveAgentMetrics, type AgentMetrics } from './agent-metrics.js'
import { agentStatus } from './agent-status.js'

/** A path silent this long is dead (the issue asks for ~15 s). */
export const TUNNEL_DEAD_MS = 15_000
/** Tunnel keepalives at most this far apart, and never slower than the heartbeat the user set for their NAT. */
export const TUNNEL_KEEPALIVE_MAX_MS = 5_000
/** How long the responder side of an introduction may take to punch and authenticate. */
export const ACCEPT_TIMEOUT_MS = 15_000
export { NAT_RECHECK_MS, lanEndpoints, localEndpoints } from './nat-monitor.js'

export { VERSION } from './agent-status.js'

export interface AgentInit {
  config: Readonly<AgentConfig>
  socketPath: string
  secretKey: Buffer | null
  /** When a silent path is dead; default TUNNEL_DEAD_MS. Not a user setting: the lab tests shorten it. */
  tunnelDeadMs?: number
  /** Delay between storing a received message and its ACK; default 0. Not a user setting: a lab test loses ACKs with it. */
  messageAckDelayMs?: number
  /** How long a migrating tunnel looks for a new path; default MIGRATE_GIVE_UP_MS. Not a user setting either. */
  tunnelGiveUpMs?: number
  /** How often the gateway is asked whether it lost our mapping; default PORTMAP_CHECK_MS. Not a user setting either. */
  portMapCheckMs?: number
  /** Where to serve Prometheus metrics (natd --metrics); none by default. */
  metrics?: Endpoint | null
}

export interface AgentComponents {
  store: StateStore
  keyPair: KeyPair
  log: Logger
  /** Time for every part of the agent; default systemClock. */
  clock?: TimerClock
  /** Chance for the tunnel layer (stream ids, spray ports, retry jitter); default systemRandom. */
  random?: Random
}

export class Agent {
  private readonly udx = new UDX()
  private socket: UDXSocket | null = null
  /** The IPv6 socket (ipv6-socket.ts), null when the host has no IPv6. */
  private socket6: UDXSocket | null = null
  private client: RendezvousClient | null = null
  private presence: PeerPresence | null = null
  private tunnels: TunnelManager | null = null
  private forwards: Forwards | null = null
  private messages: Messages | null = null
  private files: Files | null = null
  private readonly exposes: Exposes
  private readonly known: KnownPeers
  private api: ApiServer | null = null
  private streams: FileStreamServer | null = null
  private runLoop: Promise<void> | null = null
  private readonly clock: TimerClock
  private readonly startedAt: number
  private nat: NatMonitor | null = null
  private natCheck: NatCheck | null = null
  private host: TunnelHost | null = null
  private portMapping: PortMappingKeeper | null = null
  private metrics: AgentMetrics | null = null
  private readonly server: ServerSpec
  readonly id: string

  constructor(
    private readonly init: AgentInit,
    private readonly c: AgentComponents
  ) {
    this.clock = c.clock ?? systemClock
    this.startedAt = this.clock.now()
    this.id = peerId(c.keyPair.publicKey)
    this.server = parseServerSpec(init.config.server)
    this.known = new KnownPeers({ store: c.store, log: c.log.child({ component: 'peers' }), serverPeers: () => this.serverPeers() })
    this.exposes = new Exposes(c.store, c.log.child({ component: 'expose' }), this.known, this.clock)
  }

  get localPort(): number {
    return this.socket?.address()?.port ?? 0
  }

  /** Binds the socket and the API; rejects with a clear NatdError when either is taken. */
  async start(): Promise<void> {
    const log = this.c.log
    const socket = this.udx.createSocket()
    try {
      socket.bind(this.init.config.port, '0.0.0.0')
    } catch (err) {
      throw new NatdError('PORT_IN_USE', `cannot bind UDP port ${this.init.config.port}: ${(err as Error).message}`, { cause: err })
    }
    this.socket = socket
    socket.on('message', (buf, rinfo) => this.onDatagram(buf, { host: rinfo.host, port: rinfo.port }))
    socket.on('error', (err) => log.warn('udp socket error', { err: err.message }))
    const socket6 = (this.socket6 = openV6Socket(this.udx, this.localPort, log))
    socket6?.on('message', (buf, rinfo) => this.onDatagram(buf, { host: rinfo.host, port: rinfo.port }))
    socket6?.on('error', (err) => log.warn('udp socket error', { family: 6, err: err.message }))
    // Each datagram leaves by the socket of its destination's family.
    const send = (buf: Uint8Array, to: Endpoint, ttl?: number): void => void socketFor(to, socket, socket6)?.trySend(buf, to.port, to.host, ttl)

    this.api = new ApiServer(this.init.socketPath, apiHandlers(() => this.parts()), log.child({ component: 'api' }))
    try {
      await this.api.start()
      this.streams = new FileStreamServer(dataSocketPath(this.init.socketPath), log.child({ component: 'file-stream' }), this.clock)
      await this.streams.start()
    } catch (err) {
      this.api.stop()
      await socket.close()
      await socket6?.close()
      throw err
    }

    const client = new RendezvousClient(
      { server: this.server, name: this.init.config.name, heartbeatMs: this.init.config.heartbeatMs, tcpPort: this.localPort, secretKey: this.init.secretKey },
      {
        udp: { send },
        keyPair: this.c.keyPair,
        serverKey: {
          expected: () => parsePeerId(this.c.store.serverKey(this.server.text) ?? ''),
          learned: (key) => this.c.store.pinServerKey(this.server.text, peerId(key))
        },
        log: log.child({ component: 'rendezvous' }),
        clock: this.clock,
        // Ports our gateway mapped first (protocol/lan.ts: the server keeps them only at our own address).
        lan: () => [...this.mappedEndpoints(), ...lanEndpoints(this.localPort, socket6?.address().port)],
        nat: () => this.nat?.verdict ?? 'unknown',
        ipv6: () => socket6 !== null && globalV6Addresses().length > 0,
        urgent: () => this.tunnels?.list().some((t) => t.isMigrating) ?? false
      }
    )
    this.client = client
    let registeredBefore = false
    const presence = new PeerPresence((event, peer, reason) => {
      this.c.log.info(event === 'up' ? 'peer online' : 'peer offline', { peer: peer.name, id: peerId(peer.publicKey).slice(0, 8), ...(reason ? { reason } : {}) })
      this.api?.emit(event === 'up' ? 'peer.up' : 'peer.down', peerInfo(peer, this.known, this.tunnels, () => reason))
    })
    this.presence = presence
    client.on('state', (state, error) => {
      this.api?.emit('server.state', { state: state.kind, error: error ? { code: error.code, message: error.message } : null })
      // Registered again after losing the server: often a network change, so our NAT may
      // behave differently now. Check again and tell the server if the verdict changed.
      if (state.kind === 'registered') {
        if (registeredBefore) {
          void this.nat?.recheck() // never rejects
          void this.nat?.checkHops() // never rejects
        }
        registeredBefore = true
        // Peers online before we registered are held too; after a lost session they come up again.
        const announce = presence.wantsList
        void client.list().then((peers) => presence.listed(peers, announce), () => undefined) // a failure ends the session
      } else presence.serverLost()
    })
    client.on('peer', (event, peer, reason) => {
      presence.onEvent(event, peer, reason)
      if (event === 'down') this.onPeerOffline(peer)
    })
    this.natCheck = new NatCheck((buf, to, ttl) => send(buf, to, ttl))
    const nat = new NatMonitor({
      natCheck: this.natCheck,
      server: () => this.homeServer(),
      localPort: () => this.localPort,
      announce: () => client.refreshRegistration(),
      relayed: () => this.tunnels?.list().some((t) => t.path === 'relay') ?? false,
      registeredTcp: () => (client.state.kind === 'registered' ? client.state.tcp : null),
      probePortMapping: () => probePortMapping(),
      clock: this.clock,
      log: log.child({ component: 'nat' })
    })
    this.nat = nat
    const host = new TunnelHost({
      udx: this.udx,
      socket,
      socket6,
      keyPair: this.c.keyPair,
      clock: this.clock,
      random: this.c.random ?? systemRandom,
      log: log.child({ component: 'tunnel' }),
      peers: this.known,
      rendezvous: client,
      nat,
      exposes: this.exposes,
      mappedUdp: () => this.portMapping?.current?.external ?? null,
      named: (id) => this.exposes.names(id) || (this.files?.names(id) ?? false)
    })
    this.host = host
    const tunnels = new TunnelManager({ keepaliveMs: Math.min(this.init.config.heartbeatMs, TUNNEL_KEEPALIVE_MAX_MS), deadMs: this.init.tunnelDeadMs ?? TUNNEL_DEAD_MS, ...(this.init.tunnelGiveUpMs === undefined ? {} : { giveUpMs: this.init.tunnelGiveUpMs }) }, host)
    this.tunnels = tunnels
    client.on('introduction', (intro) => {
      if (!intro.initiator) tunnels.accept(intro, ACCEPT_TIMEOUT_MS)
    })
    tunnels.on('up', (t) => this.emitTunnel(t, 'up', null))
    tunnels.on('down', (t, reason) => this.emitTunnel(t, 'down', reason))
    tunnels.on('path', (t, from) => this.emitTunnel(t, 'up', `path upgraded from ${from}`))
    tunnels.on('migrating', (t, reason) => this.emitTunnel(t, 'migrating', reason))
    tunnels.on('resumed', (t, stalledMs) => this.emitTunnel(t, 'up', `resumed after ${stalledMs} ms`))
    if (this.init.metrics) this.metrics = await serveAgentMetrics(this.init.metrics, tunnels, this.c.log)
    // A silent tunnel: our own mapping may have changed; the server tells us in a round trip.
    const pathCheck = new PathCheck({
      probe: () => client.probe(),
      peerRecord: async (id) => {
        const key = parsePeerId(id)
        return client.state.kind === 'registered' && key ? client.peer(key) : null
      },
      pathChanged: (reason) => tunnels.pathChanged(reason),
      clock: this.clock,
      log: log.child({ component: 'path-check' })
    })
    tunnels.on('suspect', (t) => pathCheck.onSuspect(t))
    client.on('moved', () => pathCheck.onMoved())
    this.forwards = new Forwards({
      store: this.c.store,
      tunnels,
      log: log.child({ component: 'forward' }),
      selfName: this.init.config.name,
      selfId: this.id,
      checkPeer: (peer) => this.checkPeerExists(peer),
      clock: this.clock
    })
    await this.forwards.start()
    const messages = new Messages({
      dir: this.c.store.dir,
      tunnels,
      log: log.child({ component: 'messages' }),
      selfName: this.init.config.name,
      selfId: this.id,
      known: this.known,
      onMessage: (m) => this.api?.emit('message', m),
      quotas: () => files.quotas,
      ackDelayMs: this.init.messageAckDelayMs ?? 0,
      clock: this.clock
    })
    const files = new Files({
      inbox: this.init.config.inbox ?? '',
      dir: this.c.store.dir,
      tunnels,
      log: log.child({ component: 'files' }),
      selfName: this.init.config.name,
      selfId: this.id,
      known: this.known,
      onReceived: (f) => this.api?.emit('file', f),
      onProgress: (p) => this.api?.emit('file.progress', p),
      clock: this.clock
    })
    this.messages = messages
    this.files = files
    host.registerService(MESSAGE_SERVICE, (t, req) => messages.onChannel(t, req))
    host.registerService(FILE_SERVICE, (t, req) => files.onChannel(t, req))
    // The gateway's mapping first: it can turn our NAT easy (port-mapping.ts), and the
    // check must see our traffic through it. A gateway known to answer nothing is not waited for.
    this.portMapping = new PortMappingKeeper(
      { port: this.localPort, tcp: true, enabled: this.init.config.portMapping, ...(this.init.portMapCheckMs === undefined ? {} : { checkMs: this.init.portMapCheckMs }) },
      { log: log.child({ component: 'portmap' }), cache: fileCache(this.c.store.dir), onChange: () => void this.onPortMappingChanged() }
    )
    await this.portMapping.start()
    await nat.start() // the first check before registering, so peers learn our verdict with our endpoint
    this.runLoop = client.run()
    log.info('natd started', { name: this.init.config.name, id: this.id, udpPort: this.localPort, socket: this.init.socketPath })
  }

  /** The server reports `p` offline: its tunnel is checked (tunnel-host.ts peerOffline). */
  private onPeerOffline(p: PeerRecord): void {
    const id = peerId(p.publicKey)
    const t = this.tunnels?.list().find((x) => x.peer.id === id)
    if (t) this.host?.peerOffline(t)
  }

  /**
   * A mapping appeared after start (the gateway answered late), changed or went: check
   * our NAT again (it may behave differently through the mapping) and register again, so
   * the server offers peers the new candidates. Never rejects.
   */
  private async onPortMappingChanged(): Promise<void> {
    const before = this.nat?.verdict
    await this.nat?.recheck()
    if (this.nat?.verdict === before) await this.client?.refreshRegistration() // else recheck() announced it
  }

  /** The external endpoints our gateway mapped for us (candidates for peers). */
  private mappedEndpoints(): Endpoint[] {
    return this.portMapping?.externalEndpoints() ?? []
  }

  /** Says goodbye to the server, closes the API and the socket. */
  async stop(): Promise<void> {
    this.nat?.stop()
    this.tunnels?.closeAll('the peer\'s natd is shutting down')
    this.forwards?.stop()
    this.files?.stop()
    await this.client?.stop()
    await this.runLoop
    await this.portMapping?.stop()
    this.api?.stop()
    this.streams?.stop()
    this.metrics?.close()
    await this.socket?.close()
    await this.socket6?.close()
    // What the inbox, the outbox, the IDs and the file policy still write (within main's shutdown deadline).
    await Promise.all([this.messages?.flushed(), this.files?.flushed()])
  }

  private onDatagram(buf: Buffer, from: Endpoint): void {
    if (isStun(buf)) return this.natCheck?.onStun(buf, from)
    if (!isRendezvousFrame(buf)) return
    if (buf[3] === MSG.PROBE) this.tunnels?.onProbe(buf, from)
    else this.client?.onDatagram(buf, from)
  }

  /** The instance we are registered with (several: `--server a,b,c`), else the first named. */
  private async homeServer(): Promise<Endpoint> {
    return this.client?.serverEndpoint ?? (await resolveServer(this.server))
  }

  /**
   * Agent services reachable over tunnels besides exposed ports (messages, files): see
   * TunnelHost. A service decides for itself whom it accepts (it gets the authenticated peer).
   */
  registerService(service: string, handler: ChannelHandler): void {
    if (!this.host) throw new NatdError('NOT_REGISTERED', 'not started')
    this.host.registerService(service, handler)
  }

  /** The peers the server lists, as name and whole ID. */
  private async serverPeers(): Promise<PeerRef[]> {
    if (this.client?.state.kind !== 'registered') throw new NatdError('NOT_REGISTERED', 'not registered with the server')
    return (await this.client.list()).map((p) => ({ name: p.name, id: peerId(p.publicKey) }))
  }

  private async checkPeerExists(peer: string): Promise<void> {
    const target = await this.known.expect(peer)
    if (this.client?.state.kind !== 'registered') return
    const peers = await this.serverPeers()
    // A full list is capped (MAX_LIST_PEERS): a peer missing from it may still exist.
    if (peers.length < MAX_LIST_PEERS && !peers.some((p) => isTarget(p, target))) {
      throw new NatdError('PEER_UNKNOWN', `no peer ${peer} on ${this.init.config.server}`)
    }
  }

  private emitTunnel(t: Tunnel, state: 'up' | 'migrating' | 'down', reason: string | null): void {
    this.api?.emit('tunnel.state', { peer: t.peer.name, id: t.peer.id, state, path: t.path, remote: formatEndpoint(t.remote), reason })
  }

  status(): StatusResult {
    return agentStatus({ config: this.init.config, id: this.id, server: this.server, store: this.c.store, clock: this.clock, startedAt: this.startedAt, localPort: this.localPort, localPort6: this.socket6?.address().port, client: this.client, nat: this.nat, tunnels: this.tunnels, portMapping: this.portMapping })
  }

  /** What the API reaches (api-handlers.ts); read at each call, as parts appear while the agent starts. */
  private parts(): AgentParts {
    return { status: () => this.status(), client: this.client, tunnels: this.tunnels, forwards: this.forwards, messages: this.messages, files: this.files, streams: this.streams, nat: this.nat, exposes: this.exposes, known: this.known, clock: this.clock, durable: () => this.c.store.durable(), ...(this.presence ? { presence: this.presence } : {}) }
  }

  /**
   * Applies the store's forwards and exposes again (SIGHUP, after main.ts gave the store
   * the config file's): new forwards start, removed ones stop, the rest keep their
   * connections; exposes are read per connection. Live tunnels stay. Never rejects.
   */
  async reload(): Promise<void> {
    this.exposes.warnUnresolved()
    await this.forwards?.reload()
  }
}
