/**
 * The rendezvous server's UDP side: the sockets of each STUN slot (main, alt-port,
 * alt-ip, alt-both), STUN Binding answers (stun-responder.ts), and sealed heartbeats on
 * the main socket, the hot path every agent takes every heartbeat interval.
 *
 * Nothing here answers a source it cannot verify, except STUN (at most the request + 36
 * bytes, to the source's own IP); a heartbeat ack is sealed and never larger than the
 * heartbeat. Malformed datagrams are counted in the refusal log, never answered.
 */
import dgram from 'node:dgram'
import type { Endpoint } from '../protocol/endpoint.js'
import { NatdError } from '../protocol/errors.js'
import { mac, randomBytes } from '../protocol/identity.js'
import type { Logger } from '../protocol/log.js'
import { decode, encode, isRendezvousFrame, MAX_UDP_FRAME_BYTES, opened, type Message } from '../protocol/rendezvous.js'
import { isStunRequestShaped } from '../protocol/stun-request.js'
import type { RefusalLog } from '../common/refusal-log.js'
import type { Cluster } from './cluster.js'
import type { ServerMetrics } from './metrics.js'
import type { Registry, RegRef } from './registry.js'
import { StunResponder, type StunAddresses, type StunSlot } from './stun-responder.js'

/** UDP receive buffer we ask for: at 5k heartbeats/s the default 208 KiB covers ~30 ms of pause (a GC). */
export const UDP_RECV_BUFFER_BYTES = 4 * 1024 * 1024

export interface UdpSocketsComponents {
  log: Logger
  refusals: Pick<RefusalLog, 'refused'>
  registry: Pick<Registry, 'byTokenBytes' | 'epochOf' | 'acceptHeartbeat' | 'udpIs' | 'setUdp' | 'setV6' | 'touch' | 'peer'>
  cluster: Pick<Cluster, 'online'> | null
  metrics: Pick<ServerMetrics, 'stunRequest'> | null
}

export class UdpSockets {
  private udp: dgram.Socket | null = null
  private udpAlt: dgram.Socket | null = null
  /** --host6: heartbeats here give the agent its IPv6 candidate (protocol/ipv6.ts); STUN too. */
  private udp6: dgram.Socket | null = null
  /** STUN answers, and the UDP socket of each of its slots. */
  private readonly stun: StunResponder
  private readonly bySlot = new Map<StunSlot, dgram.Socket>()
  /** Heartbeat keys are derived from this and the registration (never stored per agent). */
  private readonly keySecret = randomBytes(32)

  constructor(
    private readonly init: StunAddresses & { host6?: string | null },
    private readonly c: UdpSocketsComponents
  ) {
    this.stun = new StunResponder(init)
  }

  /** Binds every slot's socket; on failure the caller's close() releases those that did bind. */
  async listen(): Promise<void> {
    this.udp = await bindUdp(this.init.host, this.init.port, (msg, rinfo) => this.onDatagram(this.udp!, msg, rinfo))
    if (this.init.altPort) {
      this.udpAlt = await bindUdp(this.init.host, this.init.altPort, (msg, rinfo) => this.onDatagram(this.udpAlt!, msg, rinfo))
    }
    if (this.init.host6) this.udp6 = await bindUdp(this.init.host6, this.init.port, (msg, rinfo) => this.onDatagram(this.udp6!, msg, rinfo))
    this.bySlot.set('main', this.udp)
    if (this.udpAlt) this.bySlot.set('alt-port', this.udpAlt)
    for (const slot of this.stun.slots().filter((s) => s === 'alt-ip' || s === 'alt-both')) {
      const at = this.stun.address(slot)
      const sock: dgram.Socket = await bindUdp(at.host, at.port, (msg, rinfo) => this.onDatagram(sock, msg, rinfo))
      this.bySlot.set(slot, sock)
    }
  }

  close(): void {
    for (const [slot, s] of this.bySlot) if (slot === 'alt-ip' || slot === 'alt-both') s.close()
    this.bySlot.clear()
    this.udp?.close()
    this.udpAlt?.close()
    this.udp6?.close()
    this.udp = this.udpAlt = this.udp6 = null
  }

  /** The main and alt-port sockets' ports (0 and null before listen()). */
  ports(): { udp: number; alt: number | null } {
    return { udp: this.udp?.address().port ?? 0, alt: this.udpAlt?.address().port ?? null }
  }

  /** The IPv6 socket's endpoint (--host6), which REGISTER_ACK names; null without one. */
  v6Endpoint(): Endpoint | null {
    return this.udp6 ? { host: this.init.host6!, port: this.udp6.address().port } : null
  }

  /** The key that seals one registration's heartbeats in its current session (REGISTER_ACK hands it out). */
  heartbeatKey(ref: RegRef, token: Uint8Array): Buffer {
    const epoch = Buffer.alloc(4)
    epoch.writeUInt32BE(this.c.registry.epochOf(ref))
    return mac(this.keySecret, token, epoch)
  }

  private onDatagram(sock: dgram.Socket, buf: Buffer, rinfo: dgram.RemoteInfo): void {
    const from: Endpoint = { host: rinfo.address, port: rinfo.port }
    try {
      if (isStunRequestShaped(buf)) return this.onStun(sock, buf, from)
      if ((sock !== this.udp && sock !== this.udp6) || !isRendezvousFrame(buf) || buf.length > MAX_UDP_FRAME_BYTES) return
      this.onMessage(decode(buf), from, sock)
    } catch (err) {
      // Malformed input from an unverified (spoofable) source: never answered; counted, one line a second at most.
      this.c.refusals.refused('bad datagram', from, err instanceof NatdError ? err.code : 'BAD_REQUEST', (err as Error).message)
    }
  }

  private onStun(sock: dgram.Socket, buf: Buffer, from: Endpoint): void {
    const at = [...this.bySlot].find(([, s]) => s === sock)?.[0] ?? 'main'
    this.c.metrics?.stunRequest()
    const answer = this.stun.respond(buf, at, from) // see stun-responder.ts: CHANGE-REQUEST, sizes
    // The IPv6 socket has no alternate address or port: it answers plain requests only, itself.
    if (sock === this.udp6) return void (answer?.via === 'main' && this.send(sock, answer.bytes, answer.to))
    if (answer) this.send(this.bySlot.get(answer.via) ?? sock, answer.bytes, answer.to)
  }

  private onMessage(msg: Message, from: Endpoint, sock: dgram.Socket): void {
    // Only sealed heartbeats are answered; registration happens inside the Noise session.
    if (msg.type !== 'heartbeat') return
    const { registry } = this.c
    // The hot path (every agent, every heartbeat interval): one hash, nothing built per agent.
    const ref = registry.byTokenBytes(msg.token)
    if (ref === undefined) return // unknown (the server restarted?): the agent notices its TCP session end
    const key = this.heartbeatKey(ref, msg.token)
    if (!opened(msg, key) || !registry.acceptHeartbeat(ref, msg.seq)) return // forged, or replayed
    let status: 'ok' | 'moved' = 'ok'
    if (sock === this.udp6) {
      // The agent's IPv6 candidate (its IPv4 endpoint stays): verified as the seal is.
      if (registry.setV6(ref, from)) {
        status = 'moved'
        if (this.c.cluster) this.c.cluster.online(registry.peer(ref)!)
      }
    } else if (!registry.udpIs(ref, from)) {
      // The first heartbeat of a session, or a NAT that gave the agent a new mapping.
      registry.setUdp(ref, from)
      status = 'moved'
      if (this.c.cluster) this.c.cluster.online(registry.peer(ref)!) // peers elsewhere punch to the new mapping
    }
    registry.touch(ref)
    this.send(sock, encode({ type: 'heartbeat-ack', seq: msg.seq, status, observed: from, key }), from)
  }

  private send(sock: dgram.Socket, buf: Buffer, to: Endpoint): void {
    sock.send(buf, to.port, to.host, (err) => {
      if (err) this.c.log.debug('udp send failed', { to: `${to.host}:${to.port}`, err: err.message })
    })
  }
}

function bindUdp(host: string, port: number, onMessage: (msg: Buffer, rinfo: dgram.RemoteInfo) => void): Promise<dgram.Socket> {
  const sock = dgram.createSocket({ type: host.includes(':') ? 'udp6' : 'udp4' })
  sock.on('message', onMessage)
  return new Promise((resolve, reject) => {
    sock.once('error', reject)
    sock.bind(port, host, () => {
      sock.off('error', reject)
      sock.on('error', () => undefined)
      try {
        sock.setRecvBufferSize(UDP_RECV_BUFFER_BYTES) // the kernel caps it at net.core.rmem_max
      } catch {
        // keep the default
      }
      resolve(sock)
    })
  })
}
