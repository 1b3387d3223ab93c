/**
 * The IPv6 heartbeat: the same sealed heartbeat as the IPv4 one, sent from our IPv6
 * socket to the server's (REGISTER_ACK's server6); the source the server sees becomes our
 * IPv6 candidate (protocol/ipv6.ts). Unanswered, it costs nothing: IPv6 is an extra path.
 *
 * It shares the session's sequence numbers (the server takes only increasing ones), so it
 * goes once the IPv4 heartbeat was answered and only when no other IPv4 one (a path
 * check's probe) went out in the last HEARTBEAT6_QUIET_MS: it must not overtake one still
 * in flight, or the server would drop that one as a replay. Skipped, it goes with the
 * next answer.
 */
import { formatEndpoint, sameEndpoint, type Endpoint } from '../protocol/endpoint.js'
import type { Logger } from '../protocol/log.js'
import { encode, type Message } from '../protocol/rendezvous.js'
import type { UdpSender } from './server-heartbeats.js'

/** An IPv6 heartbeat waits while an IPv4 one sent this recently is unanswered. */
export const HEARTBEAT6_QUIET_MS = 3_000

/** What a heartbeat needs of the registered session. */
export interface Heartbeat6Session {
  token: Uint8Array
  udpKey: Uint8Array
  /** The server's IPv4 endpoint (a server6 equal to it is no IPv6 socket). */
  server: Endpoint | null
  /** When the IPv4 heartbeats still unanswered were sent. */
  inFlightSentAt: Iterable<number>
  now: number
  /** The session's next heartbeat sequence number. */
  nextSeq(): number
}

export class Heartbeat6 {
  /** Our IPv6 endpoint as the server's IPv6 socket sees it; null while unknown. */
  udp6: Endpoint | null = null
  /** The server's IPv6 socket, null when it has none. */
  server6: Endpoint | null = null
  private seq = 0

  constructor(
    private readonly udp: UdpSender,
    private readonly enabled: () => boolean,
    private readonly log: Logger
  ) {}

  /** A new registration: its server6, and our IPv6 endpoint unknown again. */
  reset(server6: Endpoint | null): void {
    this.server6 = server6
    this.udp6 = null
  }

  /** Whether a datagram from `from` comes from the server's IPv6 socket (and not its IPv4 one). */
  isFromServer6(from: Endpoint, server: Endpoint | null): boolean {
    return !sameEndpoint(from, server) && sameEndpoint(from, this.server6)
  }

  /** After an IPv4 heartbeat's ack: sends ours, unless there is nothing to send to or one in flight. */
  send(s: Heartbeat6Session): void {
    const server6 = this.server6
    if (!server6 || !this.enabled() || sameEndpoint(server6, s.server)) return
    for (const sent of s.inFlightSentAt) if (s.now - sent < HEARTBEAT6_QUIET_MS) return
    this.seq = s.nextSeq()
    this.udp.send(encode({ type: 'heartbeat', token: s.token, seq: this.seq, key: s.udpKey }), server6)
  }

  /** A sealed ack from the server's IPv6 socket (its seal checked by the client). */
  onAck(msg: Extract<Message, { type: 'heartbeat-ack' }>): void {
    if (msg.seq !== this.seq || sameEndpoint(msg.observed, this.udp6)) return
    this.log.info('ipv6 endpoint', { from: formatEndpoint(this.udp6), to: formatEndpoint(msg.observed) })
    this.udp6 = msg.observed
  }
}
