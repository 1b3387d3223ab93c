// Agents for TunnelManager's tests (manager.test.ts, manager-accept.test.ts): each a
// TunnelManager on a real loopback UDX socket, with a stub introducer, and the daemon's
// peer policy in miniature. A test file calls closeAgents() after each test.
//
//   alice 127.0.0.1:A ◀──── UDP (loopback) ────▶ bob 127.0.0.1:B
//         └── introduce(target) is a stub: it hands out whatever intro the test says
import { randomBytes } from 'node:crypto'
import UDX from 'udx-native'
import { NatdError } from '../../../src/protocol/errors.js'
import { generateKeyPair, peerId, type KeyPair } from '../../../src/protocol/identity.js'
import { silentLogger, systemClock } from '../../../src/protocol/log.js'
import { isTarget, resolvePeer, type PeerRef, type PeerTarget } from '../../../src/protocol/peer-ref.js'
import { isRendezvousFrame, MSG, type PeerRecord, type Via } from '../../../src/protocol/rendezvous.js'
import type { PunchBudgetInit } from '../../../src/tunnel/budget.js'
import { TunnelManager, type Introduction, type PeerPolicy, type PinSource, type TunnelManagerComponents } from '../../../src/tunnel/manager.js'

/** The daemon's policy in miniature: pinned names, first-use pinning, the same checks. */
export class Pins implements PeerPolicy {
  readonly pins = new Map<string, string>()
  async expect(typed: string): Promise<PeerTarget> {
    const t = resolvePeer(typed, [...this.pins].map(([name, id]) => ({ name, id })))
    if (!t) throw new NatdError('PEER_UNKNOWN', typed)
    return t
  }
  check(peer: PeerRef, expected: PeerTarget | null): void {
    const pinned = this.pins.get(peer.name)
    if (pinned !== undefined && pinned !== peer.id) throw new NatdError('KEY_MISMATCH', `${peer.name} presents another key`)
    if (expected && !isTarget(peer, expected)) throw new NatdError('PEER_MISMATCH', `asked for ${expected.name ?? expected.id}, introduced ${peer.name}`)
  }
  /** Who each pin was asked by ('ours': we opened the tunnel; 'inbound': the peer did). */
  readonly sources = new Map<string, PinSource>()
  pin(peer: PeerRef, by: PinSource): void {
    if (!this.pins.has(peer.name)) this.pins.set(peer.name, peer.id)
    if (!this.sources.has(peer.name)) this.sources.set(peer.name, by)
  }
}

export interface Agent {
  name: string
  keyPair: KeyPair
  id: string
  port: number
  manager: TunnelManager
  pins: Pins
  asked: string[]
  /** Checks of tunnels whose peer was reported offline, by peer ID (the daemon's TunnelHost runs them). */
  offline: Map<string, Promise<void>>
  close(): Promise<void>
}

const udx = new UDX()
const agents: Agent[] = []

/** Closes every agent made since the last call (each test file's afterEach). */
export async function closeAgents(): Promise<void> {
  for (const a of agents.splice(0)) await a.close()
}

export function record(a: { name: string; keyPair: KeyPair; port: number }): PeerRecord {
  return { publicKey: a.keyPair.publicKey, name: a.name, online: true, lastSeenAgoMs: 0, nat: 'easy', udp: { host: '127.0.0.1', port: a.port }, tcp: null, lan: [] }
}

/** An agent whose introducer answers with `introduce(target, via)` from the test. */
export function agent(name: string, introduce: (self: Agent, target: string, via: Via) => Promise<Introduction>, onChannel: TunnelManagerComponents['onChannel'] = (_t, req) => req.reject('NOT_EXPOSED', 'test'), tcpPort = 0, budget: Partial<PunchBudgetInit> = {}, named?: (peerId: string) => boolean): Agent {
  const socket = udx.createSocket()
  socket.bind(0, '127.0.0.1')
  const keyPair = generateKeyPair()
  const pins = new Pins()
  const asked: string[] = []
  const a: Agent = {
    name,
    keyPair,
    id: peerId(keyPair.publicKey),
    port: socket.address().port,
    pins,
    asked,
    offline: new Map(),
    manager: null as unknown as TunnelManager,
    close: async () => {
      a.manager.closeAll('test over')
      await socket.close()
    }
  }
  a.manager = new TunnelManager(
    { keepaliveMs: 1_000, deadMs: 5_000 },
    {
      udx,
      socket,
      keyPair,
      clock: systemClock,
      random: Math.random,
      log: silentLogger,
      natVerdict: () => 'easy',
      relayServer: () => null,
      localTcpPort: () => tcpPort,
      refreshNat: async () => undefined,
      offlineCheck: (id) => a.offline.get(id) ?? Promise.resolve(),
      onChannel,
      ...(named ? { named } : {}),
      peers: pins,
      introduce: (target, via) => {
        asked.push(target)
        return introduce(a, target, via)
      }
    },
    budget
  )
  socket.on('message', (buf, rinfo) => {
    if (isRendezvousFrame(buf) && buf[3] === MSG.PROBE) a.manager.onProbe(buf, { host: rinfo.host, port: rinfo.port })
  })
  agents.push(a)
  return a
}

/** An introducer that introduces its agent to `to()` whatever it asks for (renamed `name` when given). */
export function introducesTo(to: () => Agent, name?: string): (self: Agent, target: string, via: Via) => Promise<Introduction> {
  return async (self, _target, via) => {
    const introId = randomBytes(16)
    const punchKey = randomBytes(32) // both sides get the same one, as from the server
    const peer = { ...record(to()), name: name ?? to().name }
    to().manager.accept({ introId, punchKey, initiator: false, via, peer: record(self) }, 5_000)
    return { introId, punchKey, initiator: true, via, peer }
  }
}

/** alice and bob, with a server that introduces them to each other whatever alice asks for (or `impostor` instead). */
export function pair(opts: { introducedName?: string; bobChannel?: TunnelManagerComponents['onChannel'] } = {}): { alice: Agent; bob: Agent } {
  let bob: Agent | null = null
  const alice = agent('alice', introducesTo(() => bob!, opts.introducedName))
  bob = agent('bob', () => Promise.reject(new NatdError('PEER_UNKNOWN', 'bob opens nothing here')), opts.bobChannel)
  return { alice, bob }
}
