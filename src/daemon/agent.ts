/**
 * The agent: one UDP socket (UDX; rendezvous, punching and tunnels share it, so the
 * mapping the server sees is the one peers punch to), the rendezvous client, and the
 * local API. main.ts builds it from the command line; tests build it directly.
 */
import os from 'node:os'
import UDX, { type UDXSocket } from 'udx-native'
import { formatEndpoint, type Endpoint } from '../protocol/endpoint.js'
import { NatdError } from '../protocol/errors.js'
import { peerId, type KeyPair } from '../protocol/identity.js'
import { systemClock, type Logger } from '../protocol/log.js'
import { isRendezvousFrame, type NatVerdict, type PeerRecord } from '../protocol/rendezvous.js'
import { ApiServer, type Handlers } from '../ipc/server.js'
import type { PeerInfo, StatusResult } from '../ipc/schema.js'
import type { AgentConfig, StateStore } from './config.js'
import { RendezvousClient } from './rendezvous-client.js'

export const VERSION = '0.1.0'

export interface AgentInit {
  config: Readonly<AgentConfig>
  socketPath: string
  secretKey: Buffer | null
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
  private api: ApiServer | null = null
  private runLoop: Promise<void> | null = null
  private readonly startedAt = Date.now()
  private nat: NatVerdict = 'unknown'
  readonly id: string

  constructor(
    private readonly init: AgentInit,
    private readonly c: AgentComponents
  ) {
    this.id = peerId(c.keyPair.publicKey)
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
    } catch (err) {
      await socket.close()
      throw err
    }

    const client = new RendezvousClient(
      { server: this.init.config.server, name: this.init.config.name, heartbeatMs: this.init.config.heartbeatMs, tcpPort: this.localPort, secretKey: this.init.secretKey },
      {
        udp: { send: (buf, to, ttl) => socket.trySend(buf, to.port, to.host, ttl) },
        keyPair: this.c.keyPair,
        log: log.child({ component: 'rendezvous' }),
        clock: systemClock,
        lan: () => lanEndpoints(this.localPort),
        nat: () => this.nat
      }
    )
    this.client = client
    client.on('state', (state, error) =>
      this.api?.emit('server.state', { state: state.kind, error: error ? { code: error.code, message: error.message } : null })
    )
    client.on('peer', (event, peer) => {
      this.c.log.info(event === 'up' ? 'peer online' : 'peer offline', { peer: peer.name, id: peerId(peer.publicKey).slice(0, 8) })
      this.api?.emit(event === 'up' ? 'peer.up' : 'peer.down', this.peerInfo(peer))
    })
    this.runLoop = client.run()
    log.info('natd started', { name: this.init.config.name, id: this.id, udpPort: this.localPort, socket: this.init.socketPath })
  }

  /** Says goodbye to the server, closes the API and the socket. */
  async stop(): Promise<void> {
    await this.client?.stop()
    await this.runLoop
    this.api?.stop()
    await this.socket?.close()
  }

  private onDatagram(buf: Buffer, from: Endpoint): void {
    if (isRendezvousFrame(buf)) this.client?.onDatagram(buf, from)
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
      tunnel: null
    }
  }

  status(): StatusResult {
    const client = this.client
    const state = client?.state ?? { kind: 'stopped' as const }
    return {
      version: VERSION,
      name: this.init.config.name,
      id: this.id,
      server: this.init.config.server,
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
      tunnels: 0
    }
  }

  private handlers(): Handlers {
    const unsupported = (what: string) => (): never => {
      throw new NatdError('UNSUPPORTED_PATH', `${what} is not available in this build yet`)
    }
    return {
      status: () => this.status(),
      peers: async () => {
        if (!this.client) throw new NatdError('NOT_REGISTERED', 'not started')
        const peers = await this.client.list()
        return peers.map((p) => this.peerInfo(p)).sort((a, b) => Number(b.online) - Number(a.online) || a.name.localeCompare(b.name))
      },
      subscribe: () => ({ subscribed: [] }), // handled by the API server itself
      open: unsupported('natctl open'),
      close: unsupported('natctl close'),
      tunnels: () => [],
      ping: unsupported('natctl ping'),
      'forward.add': unsupported('natctl forward'),
      'forward.ls': () => [],
      'forward.rm': unsupported('natctl forward'),
      'expose.add': unsupported('natctl expose'),
      'expose.ls': () => [],
      'expose.rm': unsupported('natctl expose')
    }
  }
}

/** This host's LAN candidates: every non-internal IPv4 address, at our UDP port. */
export function lanEndpoints(port: number): Endpoint[] {
  const out: Endpoint[] = []
  for (const addrs of Object.values(os.networkInterfaces())) {
    for (const a of addrs ?? []) if (!a.internal && a.family === 'IPv4') out.push({ host: a.address, port })
  }
  return out.slice(0, 8)
}
