/**
 * The control connection each registered agent holds on this server, and what the
 * connected agents are told of each other: peer up/down events, to everyone on a small
 * server, to the contacts of the agent concerned (contacts.ts) on a big one. TcpGate
 * owns the connections' sockets and limits; this file knows which agent each one controls.
 */
import type { Clock } from '../protocol/log.js'
import { encode, type OutgoingMessage, type PeerDownReason, type PeerRecord } from '../protocol/rendezvous.js'
import type { Cluster } from './cluster.js'
import type { Contacts } from './contacts.js'
import type { Registry, RegRef } from './registry.js'
import { TCP_KEEPALIVE_MS, type TcpConn, type TcpGate } from './tcp-gate.js'

/**
 * Up to this many agents online here, every peer up/down event goes to every connected
 * agent (live `natctl peers` for a home network). Above it, only to the agents that were
 * introduced to that peer: telling everyone costs O(N²) when a server with 100k agents
 * restarts. Counted by agents online, not by connections held: a big server whose
 * agents mostly hold no control connection at the moment (the capacity bench keeps 1%)
 * is still big, and broadcasting there made every registration write to every held
 * connection (up to 1,000 Noise messages, ~12 µs each: 3.4 ms per registration at
 * 50,000 agents against 2.3 at 3,000; docs/BENCHMARKS.md). So a registration or a drop
 * costs at most BROADCAST_MAX_AGENTS writes on a small server and MAX_CONTACTS on a big one.
 */
export const BROADCAST_MAX_AGENTS = 1_000

export interface AgentConnsComponents {
  clock: Clock
  registry: Pick<Registry, 'clearTcp' | 'controlLost' | 'online'>
  gate: Pick<TcpGate, 'conns' | 'authenticated' | 'writeSession'>
  contacts: Pick<Contacts, 'of' | 'ofRemote'>
  cluster: Pick<Cluster, 'offline'> | null
}

export class AgentConns {
  private readonly byPeer = new Map<RegRef, TcpConn>()
  /**
   * Control connections the agent's host ended with a FIN without BYE: its natd died
   * (crash, OOM, SIGKILL), as the kernel closes a dead process's sockets. A reset or a
   * keepalive timeout says less (a NAT that lost its mapping answers with RST while the
   * agent lives on and reconnects at its next ping), so those wait for --peer-timeout.
   */
  private readonly endedByAgent = new WeakSet<TcpConn>()

  constructor(private readonly c: AgentConnsComponents) {}

  /** Agents holding a control connection here. */
  get size(): number {
    return this.byPeer.size
  }

  /** The control connection of `ref`, if it holds one here. */
  of(ref: RegRef): TcpConn | undefined {
    return this.byPeer.get(ref)
  }

  /** `conn` registered as `ref`: it controls that agent from now on (a connection it held before is closed). */
  adopt(conn: TcpConn, ref: RegRef): void {
    const previous = this.byPeer.get(ref)
    if (previous && previous !== conn) previous.socket.destroy()
    conn.reg = ref
    this.byPeer.set(ref, conn)
    this.c.gate.authenticated(conn)
    conn.socket.setKeepAlive(true, TCP_KEEPALIVE_MS)
    conn.socket.once('end', () => this.endedByAgent.add(conn))
  }

  /** Closes the control connection of `ref` (timed out, released, moved away). */
  close(ref: RegRef): void {
    this.byPeer.get(ref)?.socket.destroy()
  }

  /**
   * A connection closed: the agent it controlled no longer has a TCP endpoint. One its
   * host ended is dropped (peers told) unless it registers again within
   * CONTROL_LOST_GRACE_MS. A BYE, a timeout or a newer registration got there first and
   * leave nothing to do.
   */
  onClose(conn: TcpConn): void {
    if (conn.reg !== null && this.byPeer.get(conn.reg) === conn) {
      this.byPeer.delete(conn.reg)
      this.c.registry.clearTcp(conn.reg)
      if (this.endedByAgent.has(conn)) this.c.registry.controlLost(conn.reg)
    }
  }

  /** A local agent went offline: its peers here and on the other instances hear of it. */
  wentDown(ref: RegRef, peer: PeerRecord, reason: PeerDownReason): void {
    const down = { ...peer, online: false }
    this.c.cluster?.offline(down, this.c.clock.now())
    this.broadcast(ref, { type: 'peer-event', event: 'down', peer: down, reason })
  }

  /** Tells the other connected agents about `about` (all of them on a small server, or its contacts). */
  broadcast(about: RegRef, msg: OutgoingMessage): void {
    const bytes = encode(msg)
    if (this.small) {
      for (const c of this.c.gate.conns) if (c.reg !== null && c.reg !== about) this.c.gate.writeSession(c, bytes)
      return
    }
    this.writeTo(this.c.contacts.of(about), bytes)
  }

  /** Agents of other instances came or went: our agents hear of it (all, or their contacts on a big server). */
  onRemotePeerEvents(event: 'up' | 'down', peers: PeerRecord[]): void {
    const everyone = this.small
    for (const peer of peers) {
      const bytes = encode({ type: 'peer-event', event, peer })
      this.writeTo(everyone ? [...this.byPeer.keys()] : this.c.contacts.ofRemote(peer.publicKey), bytes)
    }
  }

  /** A small server (BROADCAST_MAX_AGENTS online at most): events go to everyone. */
  private get small(): boolean {
    return this.c.registry.online <= BROADCAST_MAX_AGENTS
  }

  private writeTo(refs: readonly RegRef[], bytes: Buffer): void {
    for (const ref of refs) {
      const c = this.byPeer.get(ref)
      if (c) this.c.gate.writeSession(c, bytes)
    }
  }
}
