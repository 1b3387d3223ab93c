/**
 * The UDP side of a rendezvous session (rendezvous-client.ts): sealed heartbeats to the
 * server from the shared socket (the server learns the mapping peers must punch to), the
 * sealed acks it sends back, and the first heartbeat of a session that tells the server
 * our mapping. Anyone can send a datagram from the server's address, so only acks sealed
 * with the session's key count.
 */
import { formatEndpoint, sameEndpoint, type Endpoint } from '../protocol/endpoint.js'
import { NatdError, toNatdError } from '../protocol/errors.js'
import type { Timer, TimerClock } from '../protocol/clock.js'
import type { Logger } from '../protocol/log.js'
import { decode, encode, opened, type Message } from '../protocol/rendezvous.js'
import { RefusalLog } from '../common/refusal-log.js'
import { Heartbeat6 } from './heartbeat6.js'

/** The first heartbeat of a session (it tells the server our UDP mapping) waits this long for its ack before a retry. */
export const UDP_REQUEST_TIMEOUT_MS = 1_000
export const UDP_REQUEST_TRIES = 3
/** Datagrams dropped from the server's address (anyone can forge them) are counted this long per line (common/refusal-log.ts). */
export const UNSEALED_LOG_MS = 1_000
/** Heartbeats kept waiting for their ack (older ones count as lost). */
const HEARTBEATS_IN_FLIGHT = 8

export interface UdpSender {
  send(buf: Uint8Array, to: Endpoint, ttl?: number): void
}

export type HeartbeatAck = Extract<Message, { type: 'heartbeat-ack' }>

/** What the session does with an answered heartbeat. */
export interface HeartbeatHooks {
  /** Any answered IPv4 heartbeat of ours, with its round trip. */
  acked(rttMs: number): void
  /** An answered heartbeat once the session is bound (not the first one's, which bind() awaits). */
  sessionAck(msg: HeartbeatAck): void
}

export class ServerHeartbeats {
  private token: Uint8Array | null = null
  /** Seals our heartbeats and opens the server's acks (REGISTER_ACK gave it, inside Noise). */
  private udpKey: Uint8Array | null = null
  /** The first heartbeat of a session waits for its ack here. */
  private udpWaiter: ((observed: Endpoint | null) => void) | null = null
  private seq = 0
  private readonly sentAt = new Map<number, number>()
  /** The same heartbeats to the server's IPv6 socket (REGISTER_ACK's server6). */
  private readonly heartbeat6: Heartbeat6
  /** Datagrams from the server's address we drop: forgeries may come by the thousand. */
  private readonly dropped: RefusalLog

  constructor(
    private readonly udp: UdpSender,
    ipv6: () => boolean,
    private readonly hooks: HeartbeatHooks,
    private readonly log: Logger,
    private readonly clock: TimerClock
  ) {
    this.dropped = new RefusalLog(log, { windowMs: UNSEALED_LOG_MS, level: 'debug' }, clock)
    this.heartbeat6 = new Heartbeat6(udp, ipv6, log)
  }

  /** Our IPv6 endpoint as the server's IPv6 socket sees it (our IPv6 candidate, protocol/ipv6.ts); null while unknown. */
  get udp6(): Endpoint | null {
    return this.heartbeat6.udp6
  }

  /** A registration's keys: REGISTER_ACK's token, UDP key and IPv6 socket. */
  registered(token: Uint8Array, udpKey: Uint8Array, server6: Endpoint | null): void {
    this.token = token
    this.udpKey = udpKey
    this.heartbeat6.reset(server6)
  }

  /** Writes out the count of datagrams dropped so far. */
  flush(): void {
    this.dropped.flush()
  }

  /** Datagrams from the shared UDP socket that carry our magic; `server` is the session's server. */
  onDatagram(buf: Buffer, from: Endpoint, server: Endpoint | null): void {
    const v6 = this.heartbeat6.isFromServer6(from, server)
    if (!v6 && !sameEndpoint(from, server)) return
    let msg: Message
    try {
      msg = decode(buf)
    } catch (err) {
      return this.dropped.refused('bad datagram from the server address', from, toNatdError(err, 'BAD_REQUEST').code, (err as Error).message)
    }
    // Only sealed acks count: anyone can send a datagram from the server's address.
    if (msg.type !== 'heartbeat-ack' || !this.udpKey || !opened(msg, this.udpKey)) return this.dropped.refused('unsealed datagram from the server address', from, 'UNAUTHORIZED')

    if (v6) return this.heartbeat6.onAck(msg)
    this.onAck(msg, server)
  }

  /**
   * Tells the server our UDP mapping: the session's first sealed heartbeat, retried;
   * resolves with the endpoint the server saw it come from.
   */
  async bind(server: Endpoint, signal: AbortSignal): Promise<Endpoint | null> {
    for (let i = 0; i < UDP_REQUEST_TRIES; i++) {
      let timer: Timer | null = null
      const acked = new Promise<Endpoint | null | undefined>((resolve) => {
        this.udpWaiter = resolve
        timer = this.clock.setTimeout(() => resolve(undefined), UDP_REQUEST_TIMEOUT_MS).unref()
      })
      this.send(server)
      const observed = await acked
      this.clock.clear(timer)
      this.udpWaiter = null
      if (signal.aborted) throw new NatdError('SERVER_UNREACHABLE', 'stopping')
      if (observed !== undefined) return observed
    }
    throw new NatdError('SERVER_UNREACHABLE', `no UDP answer from ${formatEndpoint(server)} (${UDP_REQUEST_TRIES} heartbeats unanswered; is UDP blocked?)`)
  }

  /** A sealed heartbeat (the server answers only those); returns its sequence number. */
  send(server: Endpoint): number {
    const seq = ++this.seq
    if (!this.token || !this.udpKey) return seq
    this.sentAt.set(seq, this.clock.now())
    if (this.sentAt.size > HEARTBEATS_IN_FLIGHT) this.sentAt.delete(this.sentAt.keys().next().value!)
    this.udp.send(encode({ type: 'heartbeat', token: this.token, seq, key: this.udpKey }), server)
    return seq
  }

  private onAck(msg: HeartbeatAck, server: Endpoint | null): void {
    const sent = this.sentAt.get(msg.seq)
    if (sent === undefined) return
    this.sentAt.delete(msg.seq)
    this.hooks.acked(this.clock.now() - sent)
    if (this.udpWaiter) this.udpWaiter(msg.observed)
    else this.hooks.sessionAck(msg)
    this.send6(server)
  }

  /** The IPv6 heartbeat (heartbeat6.ts), after an IPv4 one was answered. */
  private send6(server: Endpoint | null): void {
    if (!this.token || !this.udpKey) return
    this.heartbeat6.send({ token: this.token, udpKey: this.udpKey, server, inFlightSentAt: this.sentAt.values(), now: this.clock.now(), nextSeq: () => ++this.seq })
  }
}
