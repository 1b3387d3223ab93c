/**
 * The ways to a peer that an introduction allows, each ending in a session authenticated
 * as that peer: punched UDP (plain, birthday or spray, then UDX), punched TCP, and the
 * rendezvous server's relay. The manager races them (manager.ts).
 */
import SecretStream from '@hyperswarm/secret-stream'
import type UDX from 'udx-native'
import type { UDXSocket, UDXStream } from 'udx-native'
import { formatEndpoint, isIPv6, sameEndpoint, type Endpoint } from '../protocol/endpoint.js'
import { NatdError } from '../protocol/errors.js'
import { peerId, timingSafeEqual, type KeyPair } from '../protocol/identity.js'
import type { Random, TimerClock } from '../protocol/clock.js'
import type { Logger } from '../protocol/log.js'
import { lanCandidates, mappedCandidates } from '../protocol/lan.js'
import { sameLanV6, v6Candidates } from '../protocol/ipv6.js'
import { decode, type NatVerdict, type PeerRecord, type Via } from '../protocol/rendezvous.js'
import type { PunchBudget, RefusalLog } from './budget.js'
import { BIRTHDAY_SOCKETS, Puncher, type Candidate, type PunchStrategy } from './punch.js'
import { connectRelay } from './relay-client.js'
import { punchTcp } from './tcp-punch.js'
import type { PathKind } from './tunnel.js'

/** A puncher keeps answering late probes this long after it finished. */
export const PUNCHER_LINGER_MS = 5_000
/**
 * LAN candidates one punch tries, of the MAX_LAN_CANDIDATES (8) an introduction may
 * carry: the addresses are the peer's word, and a host's first few interfaces are
 * where a same-LAN peer is.
 */
export const PUNCH_LAN_CANDIDATES = 4

/**
 * The LAN candidates of `peer` a punch tries (private, at most PUNCH_LAN_CANDIDATES, not
 * the public one): its unique-local IPv6 ones on our own LAN first (`ours6`, our
 * unique-local addresses: protocol/ipv6.ts sameLanV6), then its private IPv4 ones.
 */
function lanOf(peer: PeerRecord, publicEp: Endpoint | null, ours6: readonly string[]): Endpoint[] {
  const lan = lanCandidates(peer.lan).filter((e) => !sameEndpoint(e, publicEp))
  return [...sameLanV6(lan, ours6), ...lan.filter((e) => !isIPv6(e.host))].slice(0, PUNCH_LAN_CANDIDATES)
}

/**
 * Ports `peer`'s gateway mapped for it, at the address the server saw it at: tried for the
 * whole punch, at full TTL from the first probe (punch.ts Candidate.mapped). That endpoint
 * itself included: a gateway like miniupnpd sends the mapped port's outbound traffic from
 * it, so the server saw the mapping, and it is still one (it takes probes unasked).
 */
function mappedOf(peer: PeerRecord, publicEp: Endpoint | null): Endpoint[] {
  return mappedCandidates(peer.lan, publicEp?.host)
}

/** `peer`'s IPv6 candidates (protocol/ipv6.ts), when we have an IPv6 socket to reach them. */
function v6Of(peer: PeerRecord, socket6: UDXSocket | null): Endpoint[] {
  return socket6 ? v6Candidates(peer.lan) : []
}

/** Whether `peer` offers an IPv6 candidate (path-plan.ts: then its NAT does not matter for that path). */
export function offersV6(peer: PeerRecord): boolean {
  return v6Candidates(peer.lan).length > 0
}

/** Whether `peer` offers a port its gateway mapped (for UDP or TCP), its public endpoint included. */
export function offersMapping(peer: PeerRecord): boolean {
  return mappedOf(peer, peer.udp).length > 0 || mappedOf(peer, peer.tcp).length > 0
}

export interface Introduction {
  introId: Uint8Array
  /** Seals the punching probes of this introduction (known to the two agents and the server). */
  punchKey: Uint8Array
  initiator: boolean
  via: Via
  peer: PeerRecord
  /** The rendezvous instance holding the relay permit when it is not ours (several instances on Redis); null = ours. */
  relay?: Endpoint | null
}

export interface PathComponents {
  udx: UDX
  socket: UDXSocket
  /** The IPv6 socket (daemon/ipv6-socket.ts): probes and streams to a peer's IPv6 candidates; null = no IPv6. */
  socket6?: UDXSocket | null
  keyPair: KeyPair
  clock: TimerClock
  /** Chance: the first stream id, punching spray ports, TCP retry jitter. */
  random: Random
  log: Logger
  /** What our NAT check concluded (easy, hard, none, unknown). */
  natVerdict(): NatVerdict
  /** The rendezvous server's address (it relays), null while unknown. */
  relayServer(): Endpoint | null
  /** Local port of the TCP control connection (TCP punching reuses it); 0 when there is none. */
  localTcpPort(): number
  /** Whether our gateway holds a port mapping for us (then even a hard peer can punch to us). */
  hasPortMapping?(): boolean
  /** Whether we have IPv6: an IPv6 socket and a global address (path-plan.ts). */
  hasIPv6?(): boolean
  /** Our unique-local IPv6 addresses (a peer's IPv6 LAN candidates must share a /64 with one); default none. */
  ulaAddresses?(): string[]
  /** TTL of the first probes towards a peer at `peerHost` (hop-check.ts); default FIRST_PROBE_TTL. */
  firstProbeTtl?(peerHost?: string): number
}

export interface Established {
  session: SecretStream
  path: PathKind
  transport: 'udp' | 'tcp'
  remote: Endpoint
  punchMs: number
  /** Probes (UDP) or SYNs (TCP) this side sent while punching. */
  sent?: number
  strategy?: PunchStrategy
  /** Releases what the path holds beyond the session (a birthday socket). */
  release?: () => void
  /** On the responder: the initiator's first frame ("this one": a PING, or a RESUME). */
  first?: Buffer
}

export class Paths {
  private readonly punchers = new Map<string, Puncher>()
  private nextStreamId: number

  constructor(
    private readonly c: PathComponents,
    private readonly budget: PunchBudget,
    private readonly refusals: RefusalLog
  ) {
    // A random start: stream ids of this run do not repeat a previous run's (stale packets).
    this.nextStreamId = 1 + Math.floor(c.random() * 0x3fffffff)
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

  /**
   * Resolves once `session` is authenticated as the introduced peer and, on the
   * responder, chosen by the initiator: then with the initiator's first frame.
   */
  private async authenticate(session: SecretStream, intro: Introduction, deadline: number, what: string, signal: AbortSignal): Promise<Buffer | undefined> {
    const left = (): number => Math.max(1, deadline - this.c.clock.now())
    const opened = await Promise.race([session.opened, this.c.clock.sleep(left(), signal).then(() => false)])
    if (!opened) {
      if (signal.aborted) throw new NatdError('ABORTED', `${what}, but another path won`)
      throw new NatdError('PUNCH_TIMEOUT', `${what}, but the encrypted handshake with ${intro.peer.name} did not complete in time`)
    }
    if (!session.remotePublicKey || !timingSafeEqual(session.remotePublicKey, intro.peer.publicKey)) {
      this.c.log.error('KEY_MISMATCH: peer presented another key', { peer: intro.peer.name, want: peerId(intro.peer.publicKey).slice(0, 8), got: session.remotePublicKey ? peerId(session.remotePublicKey).slice(0, 8) : null })
      throw new NatdError('KEY_MISMATCH', `${intro.peer.name} presented a key other than the one the server bound to its name`)
    }
    if (intro.initiator) return undefined
    // 'timeout': the initiator chose no path in time; 'other': it chose another (it closed this one, or we gave up).
    let first: Buffer | undefined
    const chosen = await new Promise<true | 'timeout' | 'other'>((resolve) => {
      const onData = (buf: Buffer): void => {
        first = buf
        done(true)
      }
      const timer = this.c.clock.setTimeout(() => done('timeout'), left())
      const done = (v: true | 'timeout' | 'other'): void => {
        this.c.clock.clear(timer)
        session.off('data', onData)
        session.off('close', onClose)
        signal.removeEventListener('abort', onClose)
        if (v === true) session.pause() // hold further frames until the tunnel's mux listens
        resolve(v)
      }
      const onClose = (): void => done('other')
      session.once('data', onData)
      session.once('close', onClose)
      signal.addEventListener('abort', onClose, { once: true })
    })
    if (chosen === 'timeout') throw new NatdError('PUNCH_TIMEOUT', `${what}, but ${intro.peer.name} chose no path in time`)
    if (chosen === 'other') throw new NatdError('ABORTED', `${what}, but ${intro.peer.name} chose another path`)
    return first
  }

  /**
   * Whether udp() and tcp() would punch a LAN candidate of the introduced peer (kind
   * 'lan': only then can they give a `lan` path; path-race.ts keeps a late attempt only
   * if it can beat the winner).
   */
  lanReach(intro: Introduction): { udp: boolean; tcp: boolean } {
    const udp = lanOf(intro.peer, intro.peer.udp, this.ours6()).some((e) => this.c.socket6 || !isIPv6(e.host))
    const tcp = sameLanV6(intro.peer.lan, this.ours6()).length > 0 || lanOf(intro.peer, intro.peer.tcp, []).length > 0
    return { udp, tcp }
  }

  /** Punches UDP the way the plan says (path-plan.ts: normal, birthday or spray; `search` when a mapped endpoint does not answer, punch.ts). */
  async udp(intro: Introduction, strategy: PunchStrategy, timeoutMs: number, signal: AbortSignal, search: PunchStrategy | null = null): Promise<Established> {
    const log = this.c.log
    const name = intro.peer.name
    const deadline = this.c.clock.now() + timeoutMs
    const introKey = Buffer.from(intro.introId).toString('hex')
    const streamId = this.allocStreamId()
    // A host without NAT reports its public address as a LAN address too: that one is public.
    const socket = this.c.socket
    const socket6 = this.c.socket6 ?? null
    const candidates: Candidate[] = [
      ...lanOf(intro.peer, intro.peer.udp, this.ours6()).map((endpoint) => ({ endpoint, kind: 'lan' as const })),
      ...v6Of(intro.peer, socket6).map((endpoint) => ({ endpoint, kind: 'public' as const })),
      // Before the public endpoint: the Puncher keeps the first of two equal candidates.
      ...mappedOf(intro.peer, intro.peer.udp).map((endpoint) => ({ endpoint, kind: 'public' as const, mapped: true })),
      ...(intro.peer.udp ? [{ endpoint: intro.peer.udp, kind: 'public' as const }] : [])
    ].filter((c) => socket6 || !isIPv6(c.endpoint.host)) // without an IPv6 socket, no IPv6 candidate
    const id = peerId(intro.peer.publicKey)
    // Birthday sockets: index i (1-based) is sockets[i - 1] (birthday(i)); index 0 is the agent's socket.
    const birthdaySlot = (): ReturnType<PunchBudget['birthday']> => {
      const granted = this.budget.birthday(id)
      if (!granted) this.refusals.note('BUSY', 'birthday punch', name)
      return granted
    }
    // A search after a mapped punch (punch.ts MAPPED_PUNCH_MS) takes its slot only then, and goes on without sockets when refused.
    let slot = strategy === 'birthday' ? birthdaySlot() : null
    if (strategy === 'birthday' && !slot) throw new NatdError('BUSY', `already ${this.budget.init.birthdayPunches} birthday punches at once (or one with ${name}); each holds ${BIRTHDAY_SOCKETS} sockets`)
    // Each opened at its first probe (punch.ts probes from BIRTHDAY_BATCH of them per turn of the event loop, after
    // the agent's socket): binding all of them at once held the loop for as long as the punch to a peer without NAT takes.
    const sockets: UDXSocket[] = []
    let released = false
    const birthday = (i: number): UDXSocket | null => {
      if (released) return sockets[i - 1] ?? null
      while (sockets.length < Math.min(i, BIRTHDAY_SOCKETS)) sockets.push(this.openBirthdaySocket(sockets.length + 1, (buf, from, index) => this.onBirthdayDatagram(introKey, buf, from, index)))
      return sockets[i - 1] ?? null
    }
    // Index 0 is the agent's socket of the destination's family; birthday sockets are IPv4.
    const socketAt = (i: number, to: Endpoint): UDXSocket | null => (isIPv6(to.host) ? (i === 0 ? socket6 : null) : i === 0 ? socket : slot ? birthday(i) : null)
    const indexOf = (sock: UDXSocket): number => (sock === socket || sock === socket6 ? 0 : sockets.indexOf(sock) + 1)
    const puncher: Puncher = new Puncher(
      { introId: intro.introId, punchKey: intro.punchKey, initiator: intro.initiator, candidates, localStreamId: streamId, deadlineMs: timeoutMs, strategy, search, sprayHost: intro.peer.udp?.host, sockets: slot ? BIRTHDAY_SOCKETS : 0, peerOpen: intro.peer.nat === 'none', ...(this.c.firstProbeTtl ? { firstTtl: this.c.firstProbeTtl(intro.peer.udp?.host) } : {}) },
      {
        send: (buf, to, ttl, i = 0) => {
          if (this.budget.probe(id)) socketAt(i, to)?.trySend(buf, to.port, to.host, ttl)
          else this.refusals.note('RATE_LIMITED', 'punch probes', name)
        },
        clock: this.c.clock,
        random: this.c.random,
        log: log.child({ peer: name }),
        birthdaySockets: () => {
          slot = released ? null : birthdaySlot()
          return slot ? BIRTHDAY_SOCKETS : 0
        }
      }
    )
    const raw: UDXStream = this.c.udx.createStream(streamId, {
      // The responder attaches its stream to the initiator's first packet, if it comes
      // from an endpoint that sent a valid probe for this introduction (true = drop).
      firewall: (sock, port, host) => {
        if (intro.initiator || !puncher.accept({ host, port }, indexOf(sock))) return true
        raw.connect(sock, puncher.remoteStream, port, host)
        return false
      }
    })
    let keep = -1 // the birthday socket the path uses, if any
    const release = (): void => {
      released = true
      for (const [i, s] of sockets.entries()) if (i + 1 !== keep) void s.close()
      slot?.release() // the one socket kept goes with the tunnel
    }
    raw.on('error', (err: Error) => log.debug('stream error', { peer: name, err: err.message }))
    this.punchers.set(introKey, puncher)
    let session: SecretStream | null = null
    try {
      const punched = await puncher.run(signal)
      keep = punched.socket
      release() // every birthday socket but the winner
      if (intro.initiator) raw.connect(socketAt(punched.socket, punched.endpoint)!, punched.remoteStreamId, punched.endpoint.port, punched.endpoint.host)
      const path: PathKind = punched.kind === 'lan' ? 'lan' : 'direct-udp'
      session = new SecretStream(intro.initiator, raw, { keyPair: this.c.keyPair })
      session.on('error', () => undefined)
      const first = await this.authenticate(session, intro, deadline, `punched ${path} ${formatEndpoint(punched.endpoint)}`, signal)
      if (signal.aborted) throw new NatdError('ABORTED', 'another path won')
      const winner = keep > 0 ? sockets[keep - 1] : undefined
      return { session, path, transport: 'udp', remote: punched.endpoint, punchMs: punched.tookMs, sent: punched.probesSent, strategy, ...(winner ? { release: () => void winner.close() } : {}), ...(first ? { first } : {}) }
    } catch (err) {
      puncher.stop()
      session?.destroy()
      raw.destroy()
      keep = -1
      release()
      throw err
    } finally {
      this.c.clock.setTimeout(() => this.punchers.delete(introKey), PUNCHER_LINGER_MS).unref()
    }
  }

  private openBirthdaySocket(i: number, onDatagram: (buf: Buffer, from: Endpoint, index: number) => void): UDXSocket {
    const s = this.c.udx.createSocket()
    s.bind(0, '0.0.0.0')
    s.on('message', (buf, rinfo) => onDatagram(buf, { host: rinfo.host, port: rinfo.port }, i))
    s.on('error', () => undefined)
    return s
  }

  private onBirthdayDatagram(introKey: string, buf: Buffer, from: Endpoint, index: number): void {
    let msg
    try {
      msg = decode(buf)
    } catch {
      return
    }
    if (msg.type === 'probe' && Buffer.from(msg.introId).toString('hex') === introKey) this.punchers.get(introKey)?.onProbe(msg, from, index)
  }

  async relay(intro: Introduction, timeoutMs: number, signal: AbortSignal): Promise<Established> {
    const server = intro.relay ?? this.c.relayServer()
    if (!server) throw new NatdError('PUNCH_FAILED', 'no rendezvous server to relay through')
    const started = this.c.clock.now()
    const stream = await connectRelay(server, intro.introId, intro.initiator, this.c.keyPair, timeoutMs, signal, this.c.clock)
    const session = new SecretStream(intro.initiator, stream, { keyPair: this.c.keyPair })
    session.on('error', () => undefined)
    let first: Buffer | undefined
    try {
      first = await this.authenticate(session, intro, started + timeoutMs, `relayed through ${formatEndpoint(server)}`, signal)
      if (signal.aborted) throw new NatdError('ABORTED', 'another path won')
    } catch (err) {
      session.destroy()
      throw err
    }
    return { session, path: 'relay', transport: 'tcp', remote: server, punchMs: this.c.clock.now() - started, ...(first ? { first } : {}) }
  }

  /**
   * Punches TCP by simultaneous open (tcp-punch.ts). Over IPv6 only when the peer is on
   * our IPv6 LAN (its unique-local candidates, kind 'lan') or both sides have IPv6 (its
   * IPv6 candidates): from our IPv6 UDP socket's port number to the peer's, which is its
   * TCP port too (no NAT maps an IPv6 port, and the peer punches from its IPv6 socket's
   * number as we do). One kind of candidate at a time: two connections could both get
   * through, and each side could settle on a different one.
   */
  async tcp(intro: Introduction, timeoutMs: number, signal: AbortSignal): Promise<Established> {
    const socket6 = this.c.socket6 ?? null
    const lan6 = sameLanV6(intro.peer.lan, this.ours6())
    const v6 = lan6.length || !this.c.hasIPv6?.() ? [] : v6Of(intro.peer, socket6)
    const over6: Candidate[] = lan6.length ? lan6.map((endpoint) => ({ endpoint, kind: 'lan' as const })) : v6.map((endpoint) => ({ endpoint, kind: 'public' as const }))
    const localPort = over6.length ? socket6!.address().port : this.c.localTcpPort()
    if (!localPort) throw new NatdError('PUNCH_FAILED', 'no TCP control connection to punch from')
    const tcp = intro.peer.tcp
    const candidates: Candidate[] = over6.length
      ? over6
      : [
          ...lanOf(intro.peer, tcp, []).map((endpoint) => ({ endpoint, kind: 'lan' as const })),
          ...mappedOf(intro.peer, tcp)
            .filter((e) => !sameEndpoint(e, tcp))
            .map((endpoint) => ({ endpoint, kind: 'public' as const })),
          ...(tcp ? [{ endpoint: tcp, kind: 'public' as const }] : [])
        ]
    const deadline = this.c.clock.now() + timeoutMs
    const gate = this.budget.synGate(peerId(intro.peer.publicKey))
    const punched = await punchTcp(
      { localPort, candidates, initiator: intro.initiator, deadlineMs: timeoutMs, expectedKey: intro.peer.publicKey },
      {
        keyPair: this.c.keyPair,
        clock: this.c.clock,
        random: this.c.random,
        log: this.c.log.child({ peer: intro.peer.name }),
        synWaitMs: () => {
          const wait = gate()
          if (wait > 0) this.refusals.note('RATE_LIMITED', 'TCP SYNs (delayed)', intro.peer.name)
          return wait
        }
      },
      signal
    )
    const path: PathKind = punched.kind === 'lan' ? 'lan' : 'direct-tcp'
    let first: Buffer | undefined
    try {
      first = await this.authenticate(punched.session, intro, deadline, `punched ${path} ${formatEndpoint(punched.endpoint)}`, signal)
      if (signal.aborted) throw new NatdError('ABORTED', 'another path won')
    } catch (err) {
      punched.session.destroy()
      throw err
    }
    return { session: punched.session, path, transport: 'tcp', remote: punched.endpoint, punchMs: punched.tookMs, sent: punched.attempts, ...(first ? { first } : {}) }
  }

  /** Our unique-local IPv6 addresses, when we have an IPv6 socket to reach a peer's. */
  private ours6(): string[] {
    return this.c.socket6 ? (this.c.ulaAddresses?.() ?? []) : []
  }

  private allocStreamId(): number {
    const id = this.nextStreamId
    this.nextStreamId = (this.nextStreamId % 0x7fffffff) + 1
    return id
  }
}
