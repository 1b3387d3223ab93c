/**
 * Tunnels by peer: opens them on request (asks the server for an introduction, punches,
 * authenticates), accepts the other side of introductions, keeps one tunnel per peer,
 * and reports state changes. Sockets, keys and the introducer are injected.
 */
import { EventEmitter } from 'node:events'
import SecretStream from '@hyperswarm/secret-stream'
import type UDX from 'udx-native'
import type { UDXSocket, UDXStream } from 'udx-native'
import { formatEndpoint, sameEndpoint, type Endpoint } from '../protocol/endpoint.js'
import { NatdError, toNatdError } from '../protocol/errors.js'
import { peerId, timingSafeEqual, type KeyPair } from '../protocol/identity.js'
import type { Clock, Logger } from '../protocol/log.js'
import { decode, type PeerRecord, type Via } from '../protocol/rendezvous.js'
import { Puncher, type Candidate } from './punch.js'
import { Tunnel, type PathKind, type TunnelTiming } from './tunnel.js'
import type { OpenRequest } from './mux.js'

/** A puncher keeps answering late probes this long after it finished. */
export const PUNCHER_LINGER_MS = 5_000

export interface Introduction {
  introId: Uint8Array
  initiator: boolean
  via: Via
  peer: PeerRecord
}

export interface TunnelManagerComponents {
  udx: UDX
  socket: UDXSocket
  keyPair: KeyPair
  clock: Clock
  log: Logger
  /** Asks the rendezvous server to introduce us to `target` (both sides get candidates at once). */
  introduce(target: string, via: Via): Promise<Introduction>
  /** Throws KEY_MISMATCH when another ID is pinned to this name. */
  checkPeerKey(name: string, id: string): void
  /** Pins a peer's ID to its name (first use), once its key is proven. */
  pinPeerKey(name: string, id: string): void
  /** A peer asks to open a channel to one of our ports. */
  onChannel(tunnel: Tunnel, req: OpenRequest): void
}

export interface OpenOutcome {
  tunnel: Tunnel
  tookMs: number
  reused: boolean
}

interface ManagerEvents {
  up: [tunnel: Tunnel]
  down: [tunnel: Tunnel, reason: string]
}

export class TunnelManager extends EventEmitter<ManagerEvents> {
  private readonly tunnels = new Map<string, Tunnel>()
  private readonly opening = new Map<string, Promise<OpenOutcome>>()
  private readonly punchers = new Map<string, Puncher>()
  private nextStreamId = 1 + Math.floor(Math.random() * 0x3fffffff)
  private closed = false

  constructor(
    private readonly timing: TunnelTiming,
    private readonly c: TunnelManagerComponents
  ) {
    super()
  }

  /** Live tunnel to a peer, by name or ID. */
  get(peer: string): Tunnel | undefined {
    for (const t of this.tunnels.values()) if (t.peer.name === peer || t.peer.id === peer || (peer.length >= 8 && t.peer.id.startsWith(peer))) return t
    return undefined
  }

  list(): Tunnel[] {
    return [...this.tunnels.values()]
  }

  /** Opens a tunnel to `peer` or returns the open one (idempotent); concurrent calls share one attempt. */
  async open(peer: string, via: Via, timeoutMs: number): Promise<OpenOutcome> {
    const existing = this.get(peer)
    if (existing) return { tunnel: existing, tookMs: 0, reused: true }
    if (via === 'tcp' || via === 'relay') throw new NatdError('UNSUPPORTED_PATH', `--via ${via} is not supported by this build yet; use udp or auto`)
    const pending = this.opening.get(peer)
    if (pending) return pending
    const attempt = (async (): Promise<OpenOutcome> => {
      const started = this.c.clock.now()
      const intro = await this.c.introduce(peer, via)
      const tunnel = await this.establish(intro, Math.max(1, timeoutMs - (this.c.clock.now() - started)))
      return { tunnel, tookMs: this.c.clock.now() - started, reused: false }
    })()
    this.opening.set(peer, attempt)
    try {
      return await attempt
    } finally {
      this.opening.delete(peer)
    }
  }

  /** The server introduced a peer that wants a tunnel to us. Never rejects. */
  accept(intro: Introduction, timeoutMs: number): void {
    this.establish(intro, timeoutMs).catch((err: unknown) => {
      const e = toNatdError(err)
      this.c.log.warn('incoming tunnel failed', { peer: intro.peer.name, code: e.code, err: e.message })
    })
  }

  /** Datagrams of type PROBE from the shared socket. */
  onProbe(buf: Buffer, from: Endpoint): void {
    let msg
    try {
      msg = decode(buf)
    } catch {
      return
    }
    if (msg.type !== 'probe') return
    this.punchers.get(Buffer.from(msg.introId).toString('hex'))?.onProbe(msg, from)
  }

  close(peer: string, reason = 'closed by user'): boolean {
    const t = this.get(peer)
    if (!t) return false
    t.close(reason)
    return true
  }

  /** Says goodbye on every tunnel (daemon shutdown). */
  closeAll(reason: string): void {
    this.closed = true
    for (const t of this.tunnels.values()) t.close(reason)
  }

  private async establish(intro: Introduction, timeoutMs: number): Promise<Tunnel> {
    if (this.closed) throw new NatdError('TUNNEL_CLOSED', 'shutting down')
    const log = this.c.log
    const id = peerId(intro.peer.publicKey)
    const name = intro.peer.name
    this.c.checkPeerKey(name, id)
    const deadline = this.c.clock.now() + timeoutMs
    const introKey = Buffer.from(intro.introId).toString('hex')
    const streamId = this.allocStreamId()
    // A host without NAT reports its public address as a LAN address too: that one is public.
    const candidates: Candidate[] = [
      ...intro.peer.lan.filter((e) => !sameEndpoint(e, intro.peer.udp)).map((endpoint) => ({ endpoint, kind: 'lan' as const })),
      ...(intro.peer.udp ? [{ endpoint: intro.peer.udp, kind: 'public' as const }] : [])
    ]
    const socket = this.c.socket
    const puncher: Puncher = new Puncher(
      { introId: intro.introId, initiator: intro.initiator, candidates, localStreamId: streamId, deadlineMs: timeoutMs },
      { send: (buf, to, ttl) => socket.trySend(buf, to.port, to.host, ttl), clock: this.c.clock, log: log.child({ peer: name }) }
    )
    const raw: UDXStream = this.c.udx.createStream(streamId, {
      // The responder attaches its stream to the initiator's first packet, if it comes
      // from an endpoint that sent a valid probe for this introduction (true = drop).
      firewall: (sock, port, host) => {
        if (intro.initiator || !puncher.accept({ host, port })) return true
        raw.connect(sock, puncher.remoteStream, port, host)
        return false
      }
    })
    raw.on('error', (err: Error) => log.debug('stream error', { peer: name, err: err.message }))
    this.punchers.set(introKey, puncher)
    let session: SecretStream | null = null
    try {
      const punched = await puncher.run()
      if (intro.initiator) raw.connect(socket, punched.remoteStreamId, punched.endpoint.port, punched.endpoint.host)
      const path: PathKind = punched.kind === 'lan' ? 'lan' : 'direct-udp'
      session = new SecretStream(intro.initiator, raw, { keyPair: this.c.keyPair })
      const s = session
      const opened = await Promise.race([
        s.opened,
        new Promise<false>((resolve) => setTimeout(() => resolve(false), Math.max(1, deadline - this.c.clock.now())).unref())
      ])
      if (!opened) throw new NatdError('PUNCH_FAILED', `punched ${path} ${formatEndpoint(punched.endpoint)} but the encrypted handshake with ${name} did not complete`)
      if (!s.remotePublicKey || !timingSafeEqual(s.remotePublicKey, intro.peer.publicKey)) {
        log.error('peer presented another key', { peer: name, want: id.slice(0, 8), got: s.remotePublicKey ? peerId(s.remotePublicKey).slice(0, 8) : null })
        throw new NatdError('KEY_MISMATCH', `${name} presented a key other than the one the server bound to its name`)
      }
      this.c.pinPeerKey(name, id)
      const tunnel = new Tunnel({ name, id }, path, punched.endpoint, introKey, intro.initiator, s as never, this.timing, this.c.clock, log.child({ peer: name }))
      tunnel.mux.on('open', (req) => this.c.onChannel(tunnel, req))
      this.register(tunnel)
      log.info('tunnel up', { peer: name, path, remote: formatEndpoint(punched.endpoint), punchMs: punched.tookMs, probes: punched.probesSent, initiator: intro.initiator })
      return this.get(id) ?? tunnel
    } catch (err) {
      puncher.stop()
      session?.destroy()
      raw.destroy()
      throw err
    } finally {
      setTimeout(() => this.punchers.delete(introKey), PUNCHER_LINGER_MS).unref()
    }
  }

  /** One tunnel per peer: when both sides opened at once, both keep the smaller introduction id. */
  private register(tunnel: Tunnel): void {
    const current = this.tunnels.get(tunnel.peer.id)
    if (current?.isUp) {
      if (current.introKey < tunnel.introKey) {
        tunnel.close('duplicate tunnel', { goodbye: false })
        return
      }
      current.close('replaced by a newer tunnel', { goodbye: false })
    }
    this.tunnels.set(tunnel.peer.id, tunnel)
    tunnel.once('closed', (reason) => {
      if (this.tunnels.get(tunnel.peer.id) === tunnel) this.tunnels.delete(tunnel.peer.id)
      this.emit('down', tunnel, reason)
    })
    this.emit('up', tunnel)
  }

  private allocStreamId(): number {
    const id = this.nextStreamId
    this.nextStreamId = (this.nextStreamId % 0x7fffffff) + 1
    return id
  }
}
