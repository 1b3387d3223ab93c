/**
 * The agent: one UDP socket (UDX; rendezvous, punching and tunnels share it, so the
 * mapping the server sees is the one peers punch to), the rendezvous client, and the
 * local API. main.ts builds it from the command line; tests build it directly.
 */
import os from 'node:os'
import UDX, { type UDXSocket } from 'udx-native'
import { formatEndpoint, type Endpoint } from '../protocol/endpoint.js'
import { lanCandidates } from '../protocol/lan.js'
import { NatdError } from '../protocol/errors.js'
import { parsePeerId, peerId, type KeyPair } from '../protocol/identity.js'
import { isTarget, type PeerRef } from '../protocol/peer-ref.js'
import { systemClock, type Logger } from '../protocol/log.js'
import { isRendezvousFrame, MAX_LIST_PEERS, MSG, type NatVerdict, type PeerRecord } from '../protocol/rendezvous.js'
import { ApiServer, type Handlers } from '../ipc/server.js'
import { dataSocketPath, FileStreamServer } from '../ipc/file-stream.js'
import type { NetcheckResult, PeerInfo, StatusResult } from '../ipc/schema.js'
import { TunnelManager } from '../tunnel/manager.js'
import { NatCheck } from '../tunnel/nat-check.js'
import { isStun } from '../protocol/stun.js'
import { parseServerSpec, resolveServer, type ServerSpec } from './server-address.js'
import type { Tunnel } from '../tunnel/tunnel.js'
import type { OpenRequest } from '../tunnel/mux.js'
import type { AgentConfig, StateStore } from './config.js'
import { Exposes } from './exposes.js'
import { Forwards } from './forwards.js'
import { Files, FILE_SERVICE } from './files.js'
import { KnownPeers } from './known-peers.js'
import { Messages, MESSAGE_SERVICE } from './messages.js'
import { RendezvousClient } from './rendezvous-client.js'

/** A path silent this long is dead (the issue asks for ~15 s). */
export const TUNNEL_DEAD_MS = 15_000
/** Tunnel keepalives at most this far apart, and never slower than the heartbeat the user set for their NAT. */
export const TUNNEL_KEEPALIVE_MAX_MS = 5_000
/** How long the responder side of an introduction may take to punch and authenticate. */
export const ACCEPT_TIMEOUT_MS = 15_000
/** While a tunnel is relayed, our NAT is checked again this often (it may have become punchable). */
export const NAT_RECHECK_MS = 5_000

export const VERSION = '0.1.0'

export interface AgentInit {
  config: Readonly<AgentConfig>
  socketPath: string
  secretKey: Buffer | null
  /** When a silent path is dead; default TUNNEL_DEAD_MS. Not a user setting: the lab tests shorten it. */
  tunnelDeadMs?: number
  /** How long a migrating tunnel looks for a new path; default MIGRATE_GIVE_UP_MS. Not a user setting either. */
  tunnelGiveUpMs?: number
}

export interface AgentComponents {
  store: StateStore
  keyPair: KeyPair
  log: Logger
}

export class Agent {
  private readonly udx = new UDX()
  private socket: UDXSocket | null = null
  private client: RendezvousClient | null = null
  private tunnels: TunnelManager | null = null
  private forwards: Forwards | null = null
  private messages: Messages | null = null
  private files: Files | null = null
  private readonly exposes: Exposes
  private readonly known: KnownPeers
  private api: ApiServer | null = null
  private streams: FileStreamServer | null = null
  private runLoop: Promise<void> | null = null
  private readonly startedAt = Date.now()
  private nat: NatVerdict = 'unknown'
  private natCheck: NatCheck | null = null
  private netcheckRun: Promise<NetcheckResult> | null = null
  private natTimer: NodeJS.Timeout | null = null
  private readonly server: ServerSpec
  readonly id: string

  constructor(
    private readonly init: AgentInit,
    private readonly c: AgentComponents
  ) {
    this.id = peerId(c.keyPair.publicKey)
    this.server = parseServerSpec(init.config.server)
    this.known = new KnownPeers({ store: c.store, log: c.log.child({ component: 'peers' }), serverPeers: () => this.serverPeers() })
    this.exposes = new Exposes(c.store, c.log.child({ component: 'expose' }), this.known)
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

    this.api = new ApiServer(this.init.socketPath, this.handlers(), log.child({ component: 'api' }))
    try {
      await this.api.start()
      this.streams = new FileStreamServer(dataSocketPath(this.init.socketPath), log.child({ component: 'file-stream' }))
      await this.streams.start()
    } catch (err) {
      this.api.stop()
      await socket.close()
      throw err
    }

    const client = new RendezvousClient(
      { server: this.server, name: this.init.config.name, heartbeatMs: this.init.config.heartbeatMs, tcpPort: this.localPort, secretKey: this.init.secretKey },
      {
        udp: { send: (buf, to, ttl) => socket.trySend(buf, to.port, to.host, ttl) },
        keyPair: this.c.keyPair,
        serverKey: {
          expected: () => parsePeerId(this.c.store.serverKey(this.server.text) ?? ''),
          learned: (key) => this.c.store.pinServerKey(this.server.text, peerId(key))
        },
        log: log.child({ component: 'rendezvous' }),
        clock: systemClock,
        lan: () => lanEndpoints(this.localPort),
        nat: () => this.nat
      }
    )
    this.client = client
    let registeredBefore = false
    client.on('state', (state, error) => {
      this.api?.emit('server.state', { state: state.kind, error: error ? { code: error.code, message: error.message } : null })
      // Registered again after losing the server: often a network change, so our NAT may
      // behave differently now. Check again and tell the server if the verdict changed.
      if (state.kind === 'registered') {
        if (registeredBefore) void this.refreshNat()
        registeredBefore = true
      }
    })
    client.on('peer', (event, peer) => {
      this.c.log.info(event === 'up' ? 'peer online' : 'peer offline', { peer: peer.name, id: peerId(peer.publicKey).slice(0, 8) })
      this.api?.emit(event === 'up' ? 'peer.up' : 'peer.down', this.peerInfo(peer))
    })
    const tunnels = new TunnelManager(
      { keepaliveMs: Math.min(this.init.config.heartbeatMs, TUNNEL_KEEPALIVE_MAX_MS), deadMs: this.init.tunnelDeadMs ?? TUNNEL_DEAD_MS, ...(this.init.tunnelGiveUpMs === undefined ? {} : { giveUpMs: this.init.tunnelGiveUpMs }) },
      {
        udx: this.udx,
        socket,
        keyPair: this.c.keyPair,
        clock: systemClock,
        log: log.child({ component: 'tunnel' }),
        introduce: (target, via) => client.introduce(target, via),
        localTcpPort: () => client.tcpLocalPort,
        natVerdict: () => this.nat,
        relayServer: () => client.serverEndpoint,
        refreshNat: () => this.refreshNat(),
        peers: this.known,
        onChannel: (tunnel, req) => this.onChannel(tunnel, req)
      }
    )
    this.tunnels = tunnels
    client.on('introduction', (intro) => {
      if (!intro.initiator) tunnels.accept(intro, ACCEPT_TIMEOUT_MS)
    })
    tunnels.on('up', (t) => this.emitTunnel(t, 'up', null))
    tunnels.on('down', (t, reason) => this.emitTunnel(t, 'down', reason))
    tunnels.on('path', (t, from) => this.emitTunnel(t, 'up', `path upgraded from ${from}`))
    tunnels.on('migrating', (t, reason) => this.emitTunnel(t, 'migrating', reason))
    tunnels.on('resumed', (t, stalledMs) => this.emitTunnel(t, 'up', `resumed after ${stalledMs} ms`))
    // While a tunnel is relayed, watch for a NAT that became punchable (the peer's upgrade
    // attempts need our current verdict at the server).
    this.natTimer = setInterval(() => {
      if (tunnels.list().some((t) => t.path === 'relay')) void this.refreshNat()
    }, NAT_RECHECK_MS)
    this.natTimer.unref()
    this.forwards = new Forwards({
      store: this.c.store,
      tunnels,
      log: log.child({ component: 'forward' }),
      selfName: this.init.config.name,
      selfId: this.id,
      checkPeer: (peer) => this.checkPeerExists(peer)
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
      quotas: () => files.quotas
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
      onProgress: (p) => this.api?.emit('file.progress', p)
    })
    this.messages = messages
    this.files = files
    this.registerService(MESSAGE_SERVICE, (t, req) => messages.onChannel(t, req))
    this.registerService(FILE_SERVICE, (t, req) => files.onChannel(t, req))
    this.natCheck = new NatCheck((buf, to) => socket.trySend(buf, to.port, to.host))
    await this.checkNat() // before registering, so peers learn our verdict with our endpoint
    this.runLoop = client.run()
    log.info('natd started', { name: this.init.config.name, id: this.id, udpPort: this.localPort, socket: this.init.socketPath })
  }

  /** Says goodbye to the server, closes the API and the socket. */
  /** Checks our NAT again; tells the server when the verdict changed. Never rejects. */
  private async refreshNat(): Promise<void> {
    const before = this.nat
    await this.checkNat()
    if (this.nat !== before) await this.client?.refreshRegistration().catch(() => undefined)
  }

  async stop(): Promise<void> {
    if (this.natTimer) clearInterval(this.natTimer)
    this.tunnels?.closeAll('the peer\'s natd is shutting down')
    this.forwards?.stop()
    await this.client?.stop()
    await this.runLoop
    this.api?.stop()
    this.streams?.stop()
    await this.socket?.close()
  }

  private onDatagram(buf: Buffer, from: Endpoint): void {
    if (isStun(buf)) return this.natCheck?.onStun(buf, from)
    if (!isRendezvousFrame(buf)) return
    if (buf[3] === MSG.PROBE) this.tunnels?.onProbe(buf, from)
    else this.client?.onDatagram(buf, from)
  }

  /**
   * How our NAT maps, from STUN to the server's other address when it names one
   * (OTHER-ADDRESS, --alt-host), else to its alternate port (the main port + 1); see
   * nat-check.ts. Never rejects: an unreachable server leaves the verdict 'unknown'.
   */
  private async checkNat(): Promise<void> {
    try {
      const server = await resolveServer(this.server)
      const { verdict, samples } = await this.natCheck!.verdict(server, server.port + 1, localEndpoints(this.localPort))
      const changed = verdict !== this.nat
      this.nat = verdict
      // Logged when the verdict changes; the periodic re-checks are debug.
      this.c.log[changed ? 'info' : 'debug']('nat check', { verdict, primary: formatEndpoint(samples.primary), alternate: formatEndpoint(samples.alternate) })
    } catch (err) {
      this.c.log.warn('nat check failed', { err: (err as Error).message })
    }
  }

  /**
   * `natctl netcheck`: the full RFC 5780 run from the tunnel socket (nat-check.ts). The
   * verdict replaces the start-up one; when it changed, the server learns it at once.
   */
  private async netcheck(): Promise<NetcheckResult> {
    if (!this.natCheck) throw new NatdError('NOT_REGISTERED', 'not started')
    const started = Date.now()
    const server = await resolveServer(this.server)
    const localPort = this.localPort
    const r = await this.natCheck.netcheck(server, server.port + 1, localEndpoints(localPort))
    const previousNat = this.nat
    const natChanged = r.verdict !== 'unknown' && r.verdict !== previousNat
    if (natChanged) {
      this.nat = r.verdict
      this.c.log.info('nat verdict changed', { from: previousNat, to: r.verdict, mapping: r.mapping })
      void this.client?.refreshRegistration()
    }
    const state = this.client?.state
    const s = r.samples
    const result: NetcheckResult = {
      udp: s.primary !== null,
      tcp: state?.kind === 'registered' && state.tcp !== null,
      server: formatEndpoint(server),
      serverOtherAddress: s.otherAddress ? formatEndpoint(s.otherAddress) : null,
      serverRttMs: r.rttMs,
      localPort,
      publicUdp: s.primary ? formatEndpoint(s.primary) : null,
      publicTcp: state?.kind === 'registered' && state.tcp ? formatEndpoint(state.tcp) : null,
      portPreserved: s.primary ? s.primary.port === localPort : null,
      mapping: r.mapping,
      filtering: r.filtering,
      nat: r.verdict,
      previousNat,
      natChanged,
      probes: {
        primary: s.primary ? formatEndpoint(s.primary) : null,
        otherIp: s.otherIp ? formatEndpoint(s.otherIp) : null,
        otherIpAndPort: s.otherIpAndPort ? formatEndpoint(s.otherIpAndPort) : null,
        otherPort: s.otherPort ? formatEndpoint(s.otherPort) : null,
        filterChangeIpAndPort: s.filterChangeIpAndPort,
        filterChangePort: s.filterChangePort
      },
      tookMs: Date.now() - started
    }
    this.c.log.info('netcheck', { udp: result.udp, publicUdp: result.publicUdp, mapping: r.mapping, filtering: r.filtering, nat: r.verdict })
    return result
  }

  /**
   * Agent services reachable over tunnels besides exposed ports (messages, files).
   * A service decides for itself whom it accepts (it gets the authenticated peer).
   */
  private readonly services = new Map<string, (tunnel: Tunnel, req: OpenRequest) => void>()

  /** Registers the handler for channels that name `service`. */
  registerService(service: string, handler: (tunnel: Tunnel, req: OpenRequest) => void): void {
    this.services.set(service, handler)
  }

  private onChannel(tunnel: Tunnel, req: OpenRequest): void {
    if (req.service === '') return this.exposes.onChannel(tunnel, req)
    const handler = this.services.get(req.service)
    if (!handler) {
      req.reject('UNSUPPORTED_PATH', `this agent has no service ${JSON.stringify(req.service)}`)
      return
    }
    handler(tunnel, req)
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

  private tunnelTo(peer: string): Tunnel {
    const t = this.tunnels?.get(peer)
    if (!t) throw new NatdError('TUNNEL_CLOSED', `no tunnel to ${peer}`)
    return t
  }

  private peerInfo(p: PeerRecord): PeerInfo {
    return {
      name: p.name,
      id: peerId(p.publicKey),
      online: p.online,
      lastSeenAgoMs: p.lastSeenAgoMs,
      endpoint: p.udp ? formatEndpoint(p.udp) : null,
      tcpEndpoint: p.tcp ? formatEndpoint(p.tcp) : null,
      lan: p.lan.map(formatEndpoint),
      nat: p.nat,
      pinned: this.known.isPinned({ name: p.name, id: peerId(p.publicKey) }),
      tunnel: this.tunnels?.get(peerId(p.publicKey))?.path ?? null
    }
  }

  status(): StatusResult {
    const client = this.client
    const state = client?.state ?? { kind: 'stopped' as const }
    return {
      version: VERSION,
      name: this.init.config.name,
      id: this.id,
      server: this.server.text,
      serverKey: this.serverKey(),
      serverState: state.kind,
      registered: state.kind === 'registered',
      lastError: client?.lastError ? client.lastError.toJSON() : null,
      lastHeartbeatAgoMs: state.kind === 'registered' && client?.lastHeartbeatAt ? Date.now() - client.lastHeartbeatAt : null,
      serverRttMs: state.kind === 'registered' ? (client?.rttMs ?? null) : null,
      publicUdp: state.kind === 'registered' && state.udp ? formatEndpoint(state.udp) : null,
      publicTcp: state.kind === 'registered' && state.tcp ? formatEndpoint(state.tcp) : null,
      localUdpPort: this.localPort,
      lan: lanEndpoints(this.localPort).map(formatEndpoint),
      nat: this.nat,
      uptimeMs: Date.now() - this.startedAt,
      tunnels: this.tunnels?.list().length ?? 0
    }
  }

  /** The server key we hold, and how it came to be pinned (the flag's #KEY, or first use). */
  private serverKey(): StatusResult['serverKey'] {
    if (this.server.key) return { id: peerId(this.server.key), pinned: 'flag' }
    const learnt = this.c.store.serverKey(this.server.text)
    return learnt ? { id: learnt, pinned: 'first-use' } : null
  }

  private handlers(): Handlers {
    const tunnels = (): TunnelManager => {
      if (!this.tunnels) throw new NatdError('NOT_REGISTERED', 'not started')
      return this.tunnels
    }
    const forwards = (): Forwards => {
      if (!this.forwards) throw new NatdError('NOT_REGISTERED', 'not started')
      return this.forwards
    }
    const started = <T,>(m: T | null): T => {
      if (!m) throw new NatdError('NOT_REGISTERED', 'not started')
      return m
    }
    return {
      status: () => this.status(),
      peers: async () => {
        if (!this.client) throw new NatdError('NOT_REGISTERED', 'not started')
        const peers = (await this.client.list()).map((p) => this.peerInfo(p))
        // Pinned peers the server did not list (offline and forgotten there, or unknown to it).
        for (const k of this.known.list()) {
          if (peers.some((p) => p.id === k.id)) continue
          peers.push({ name: k.name, id: k.id, online: false, lastSeenAgoMs: null, endpoint: null, tcpEndpoint: null, lan: [], nat: 'unknown', pinned: true, tunnel: this.tunnels?.get(k.id)?.path ?? null })
        }
        return peers.sort((a, b) => Number(b.online) - Number(a.online) || a.name.localeCompare(b.name))
      },
      'peer.trust': ({ name, id, replace }) => this.known.trust(name, id, replace),
      'peer.untrust': ({ name }) => this.known.untrust(name),
      subscribe: () => ({ subscribed: [] }), // handled by the API server itself
      open: async ({ peer, via, timeoutMs }) => {
        const { tunnel, tookMs, reused } = await tunnels().open(peer, via, timeoutMs)
        return { ...tunnel.snapshot(), tookMs, reused }
      },
      close: ({ peer }) => ({ closed: tunnels().close(peer) }),
      tunnels: () => tunnels().list().map((t) => t.snapshot()),
      ping: async ({ peer, timeoutMs }) => {
        if (!tunnels().get(peer)) await tunnels().open(peer, 'auto', timeoutMs)
        const t = this.tunnelTo(peer)
        const rttMs = await t.ping(timeoutMs)
        return { peer: t.peer.name, path: t.path, remote: formatEndpoint(t.remote), rttMs }
      },
      netcheck: () => {
        // One run at a time: interleaved probes would open paths the filtering tests rely on being closed.
        this.netcheckRun ??= this.netcheck().finally(() => (this.netcheckRun = null))
        return this.netcheckRun
      },
      'forward.add': (spec) => forwards().add(spec),
      'forward.ls': () => forwards().list(),
      'forward.rm': ({ localPort }) => ({ removed: forwards().remove(localPort) }),
      'expose.add': (spec) => this.exposes.add(spec),
      'expose.ls': () => this.exposes.list(),
      'expose.rm': ({ port }) => ({ removed: this.exposes.remove(port) }),
      'message.send': ({ peer, text, timeoutMs }) => started(this.messages).send(peer, text, timeoutMs),
      messages: ({ from, limit }) => started(this.messages).list(from, limit),
      'messages.clear': ({ from }) => started(this.messages).clear(from),
      'file.send': (p) => {
        const files = started(this.files)
        const source = started(this.streams).take(p.source)
        return files.send({ ...p, source })
      },
      files: () => started(this.files).list(),
      'files.partials': () => started(this.files).partials(),
      'files.policy': (p) => (Object.values(p).every((x) => x === null) ? started(this.files).policy() : started(this.files).setPolicy(p))
    }
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

/** This host's LAN candidates: its private addresses only (protocol/lan.ts says which). */
export function lanEndpoints(port: number): Endpoint[] {
  return lanCandidates(localEndpoints(port))
}
