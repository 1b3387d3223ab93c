/**
 * The relay: when no direct path can be punched, two agents that were introduced to
 * each other both open a TCP connection to the server and bind it to the introduction
 * (RELAY); the server then forwards RELAY_DATA frames between them as they are. The
 * Noise session runs end to end between the agents, so the relay sees ciphertext only.
 *
 * Limits per relayed tunnel (bytes, seconds, rate) and on the number of tunnels; a
 * limit reached ends both sides with RELAY_END RELAY_LIMIT, never a silent hang.
 * The raw-byte path that passes frames on as they come is relay-pass-through.ts.
 */
import type net from 'node:net'
import type { Clock, Logger } from '../protocol/log.js'
import { NatdError } from '../protocol/errors.js'
import { verify } from '../protocol/identity.js'
import { encode, frame, MSG, relaySigned, type Message } from '../protocol/rendezvous.js'
import { passThrough } from './relay-pass-through.js'
import { END_LINGER_MS } from './tcp-gate.js'
import { systemTimers, type Timer, type Timers } from './timers.js'

/**
 * A relay permission lives this long after the introduction that granted it; a side
 * bound to it is closed when it expires unpaired (absolute: prune() does it, once a
 * second from the server's sweep, however the side trickles).
 */
export const RELAY_BIND_TIMEOUT_MS = 30_000
/**
 * What one side may have the server hold before its peer binds (its Noise handshake
 * start; frames plus a partial frame): at RELAY_EARLY_PAUSE_BYTES the server stops
 * reading the socket until the pairing, and one more read (≤ 64 KiB, libuv's read
 * size) keeps it within RELAY_EARLY_MAX_BYTES.
 */
export const RELAY_EARLY_MAX_BYTES = 256 * 1024
export const RELAY_EARLY_PAUSE_BYTES = RELAY_EARLY_MAX_BYTES - 64 * 1024
/**
 * What all unpaired sides together may have the server hold. Per side the bound is
 * RELAY_EARLY_MAX_BYTES, but sides come from many keys and addresses (65,536 permits,
 * two sides each: 32 GiB). Past this every unpaired side stops being read, and a new one
 * is paused as it binds, until pairs start or sides go. An honest side sends only the
 * start of its Noise handshake (< 1 KiB) before its peer binds, so it loses nothing:
 * it waits for the pairing, as it does anyway. The total stays within this plus one read
 * (≤ 64 KiB) per side bound while it was reached.
 */
export const RELAY_EARLY_TOTAL_MAX_BYTES = 64 * 1024 ** 2
/** Relay permissions pending at once, all keys together: × ~0.3 KiB each, ≤ ~20 MiB. */
export const MAX_RELAY_PERMITS = 65_536
/** Relay permissions one key may hold at once (the agent that asked for the introduction). */
export const DEFAULT_RELAY_PERMITS_PER_KEY = 32
/** The window of the per-direction rate limit (RelayLimits.rate is bytes per this). */
const RATE_WINDOW_MS = 1_000

export interface RelayLimits {
  maxBytes: number
  maxSeconds: number
  /** Bytes per second per direction. */
  rate: number
  maxTunnels: number
  /** Permissions one key may hold at once (--relay-max-permits); default DEFAULT_RELAY_PERMITS_PER_KEY. */
  maxPermitsPerKey?: number
  /** Bytes all unpaired sides together may have held; default RELAY_EARLY_TOTAL_MAX_BYTES (tests lower it). */
  maxEarlyTotalBytes?: number
}

export const DEFAULT_RELAY_LIMITS: RelayLimits = {
  maxBytes: 1024 ** 3, // 1 GiB a tunnel: plenty for a session, bounded for the operator
  maxSeconds: 2 * 3600,
  rate: 8 * 1024 ** 2,
  maxTunnels: 100
}

interface Side {
  socket: net.Socket
  /** Frames that arrived after RELAY and before the pairing (the peer was not bound yet). */
  early: Buffer[]
  earlyBytes: number
  /** held() stopped reading it until the pairing. */
  held: boolean
}

interface Pending {
  expires: number
  /** Whose permission count this holds (the initiator's key, hex). */
  owner: string
  names: [string, string]
  /** The keys of the introduced agents (initiator, responder): only they may bind a side. */
  keys: [Uint8Array, Uint8Array]
  initiator: Side | null
  responder: Side | null
}

interface Active {
  names: [string, string]
  a: net.Socket
  b: net.Socket
  bytes: number
  timer: Timer
  ended: boolean
  /**
   * The sides in the middle of a frame we pass to them (bytes of its body still to come
   * from the other side). A side in it when a limit ends the tunnel gets `bye` only once
   * that frame is whole: a RELAY_END written mid-frame would be read as the frame's body,
   * and the agent would see a broken stream instead of the limit.
   */
  midFrame: Set<net.Socket>
  /** The RELAY_END RELAY_LIMIT both sides get, once a limit ended the tunnel. */
  bye: Buffer | null
}

export class Relay {
  private readonly pending = new Map<string, Pending>()
  private readonly active = new Set<Active>()
  /** Bound sides waiting for their peer, by socket. */
  private readonly unpaired = new Map<net.Socket, Side>()
  private readonly permitsByKey = new Map<string, number>()
  private earlyTotal = 0

  constructor(
    private readonly limits: RelayLimits,
    private readonly clock: Clock,
    private readonly log: Logger,
    private readonly timers: Timers = systemTimers
  ) {}

  get tunnels(): number {
    return this.active.size
  }

  /** Payload bytes relayed since start, all tunnels (metrics). */
  bytesRelayed = 0

  /** Introductions that allow relaying and are not yet bound on both sides (nor expired and pruned). */
  get permits(): number {
    return this.pending.size
  }

  /** Bytes held for sides not yet paired (RELAY_EARLY_MAX_BYTES each at most). */
  get earlyBytes(): number {
    return this.earlyTotal
  }

  /**
   * The server introduced these two agents with a path that may need the relay. Throws
   * NatdError RELAY_LIMIT when the initiator already holds its maximum of permissions,
   * or the relay holds MAX_RELAY_PERMITS.
   */
  allow(introId: Uint8Array, names: [string, string], keys: [Uint8Array, Uint8Array]): void {
    this.prune()
    const owner = Buffer.from(keys[0]).toString('hex')
    const held = this.permitsByKey.get(owner) ?? 0
    const max = this.limits.maxPermitsPerKey ?? DEFAULT_RELAY_PERMITS_PER_KEY
    if (held >= max) throw new NatdError('RELAY_LIMIT', `you already hold ${max} relay permissions not yet used; they expire ${RELAY_BIND_TIMEOUT_MS / 1000} s after their introduction`)
    if (this.pending.size >= MAX_RELAY_PERMITS) throw new NatdError('RELAY_LIMIT', 'the relay holds its maximum of pending permissions; try again shortly')
    this.permitsByKey.set(owner, held + 1)
    this.pending.set(Buffer.from(introId).toString('hex'), { expires: this.clock.now() + RELAY_BIND_TIMEOUT_MS, owner, names, keys, initiator: null, responder: null })
  }

  private forget(key: string, p: Pending): void {
    this.pending.delete(key)
    const n = (this.permitsByKey.get(p.owner) ?? 1) - 1
    if (n > 0) this.permitsByKey.set(p.owner, n)
    else this.permitsByKey.delete(p.owner)
  }

  private dropSide(side: Side | null): void {
    if (!side || this.unpaired.get(side.socket) !== side) return
    this.unpaired.delete(side.socket)
    this.earlyTotal -= side.earlyBytes
    side.early = []
    side.earlyBytes = 0
  }

  /**
   * Forgets the permissions whose bind timeout has passed. Called per introduction and by
   * the server's sweep: a burst of introductions (tens of thousands a second on a big
   * server) would otherwise stay in memory until the next introduction.
   */
  prune(): void {
    const now = this.clock.now()
    // Entries expire in insertion order (one fixed lifetime), so stop at the first live one:
    // a walk over every pending entry per introduction cost the server its CPU at scale.
    for (const [k, p] of this.pending) {
      if (p.expires >= now) break
      this.forget(k, p)
      // A side bound to it whose peer never came: closed now, however it trickled.
      for (const side of [p.initiator, p.responder]) {
        if (!side) continue
        this.dropSide(side)
        side.socket.destroy()
      }
    }
  }

  /**
   * A connection sent RELAY: binds it. Throws NatdError when the introduction is
   * unknown, expired or already bound on that side, the relay is full, or the RELAY is
   * not signed (over this connection's challenge `nonce`) by the agent introduced on
   * that side: knowing an introduction's ID is not enough to take its place.
   */
  bind(msg: Extract<Message, { type: 'relay' }>, nonce: Uint8Array, socket: net.Socket): void {
    const key = Buffer.from(msg.introId).toString('hex')
    const p = this.pending.get(key)
    if (!p || p.expires < this.clock.now()) throw new NatdError('PEER_UNKNOWN', 'no such introduction to relay (expired, or never made with relay allowed)')
    const side = msg.initiator ? 'initiator' : 'responder'
    if (!verify(relaySigned(nonce, msg.introId, msg.initiator), msg.signature, p.keys[msg.initiator ? 0 : 1])) {
      throw new NatdError('UNAUTHORIZED', `the ${side} side of this introduction must be bound by the agent introduced there`)
    }
    if (p[side]) throw new NatdError('BAD_REQUEST', `the ${side} side of this introduction is already bound`)
    if (this.active.size >= this.limits.maxTunnels) throw new NatdError('RELAY_LIMIT', `the relay already carries its maximum of ${this.limits.maxTunnels} tunnels`)
    const s: Side = { socket, early: [], earlyBytes: 0, held: false }
    p[side] = s
    this.unpaired.set(socket, s)
    if (this.earlyFull()) this.hold(s)
    socket.once('close', () => this.dropSide(s))
    // A connection the peer never joins must not stay open: it gets the bind timeout.
    socket.setTimeout(Math.max(1, p.expires - this.clock.now()), () => socket.destroy())
    if (p.initiator && p.responder) {
      this.forget(key, p)
      this.start(p.names, p.initiator, p.responder)
    }
  }

  /** A frame body arrived on a connection that sent RELAY. */
  onFrame(socket: net.Socket, body: Buffer): void {
    const route = this.routes.get(socket)
    if (route) return route(body)
    // Not paired yet: keep it (the start of the Noise handshake); held() pauses the socket past its budget.
    const side = this.unpaired.get(socket)
    if (!side) return
    side.early.push(body)
    side.earlyBytes += body.length
    this.earlyTotal += body.length
  }

  /**
   * After each read on a relay connection: with `partialBytes` (a frame still coming)
   * and its early frames at RELAY_EARLY_PAUSE_BYTES before the pairing, stop reading it
   * (backpressure: its TCP window fills; start() reads on).
   */
  held(socket: net.Socket, partialBytes: number): void {
    const side = this.unpaired.get(socket)
    if (side && side.earlyBytes + partialBytes >= RELAY_EARLY_PAUSE_BYTES) this.hold(side)
    // All unpaired sides together at their bound: none is read until pairs start (start() reads on).
    if (side && this.earlyFull()) for (const s of this.unpaired.values()) if (!s.held) this.hold(s)
  }

  private earlyFull(): boolean {
    return this.earlyTotal >= (this.limits.maxEarlyTotalBytes ?? RELAY_EARLY_TOTAL_MAX_BYTES)
  }

  private hold(side: Side): void {
    side.held = true
    side.socket.pause()
  }

  private readonly routes = new Map<net.Socket, (body: Buffer) => void>()
  /** The same paths for raw bytes once paired (onBytes): frames pass through without being reassembled. */
  private readonly passes = new Map<net.Socket, (chunk: Buffer, maxFrameBytes: number) => void>()

  /** Whether `socket` is one side of a paired tunnel: its bytes may go to onBytes(). */
  relaying(socket: net.Socket): boolean {
    return this.passes.has(socket)
  }

  /**
   * Bytes read on a paired side, starting at a frame boundary (the caller hands over what
   * its frame splitter held first). RELAY_DATA frames pass on as slices of the reads (their
   * header checked, their bytes counted, never copied or reassembled); other frames are
   * dropped, as onFrame() does. A length over `maxFrameBytes` throws ProtocolError.
   */
  onBytes(socket: net.Socket, chunk: Buffer, maxFrameBytes: number): void {
    this.passes.get(socket)?.(chunk, maxFrameBytes)
  }

  private start(names: [string, string], a: Side, b: Side): void {
    const t: Active = {
      names,
      a: a.socket,
      b: b.socket,
      bytes: 0,
      ended: false,
      midFrame: new Set(),
      bye: null,
      timer: this.timers.setTimeout(() => this.end(t, `relayed tunnel reached its time limit of ${this.limits.maxSeconds} s`), this.limits.maxSeconds * 1000).unref()
    }
    this.active.add(t)
    a.socket.setTimeout(0)
    b.socket.setTimeout(0)
    const early = [a.early, b.early]
    this.dropSide(a)
    this.dropSide(b)
    const ok = frame(encode({ type: 'relay-ok' }))
    a.socket.write(ok)
    b.socket.write(ok)
    this.log.info('relaying', { a: names[0], b: names[1], tunnels: this.active.size })
    this.pipe(t, a.socket, b.socket)
    this.pipe(t, b.socket, a.socket)
    for (const f of early[0]!) this.routes.get(a.socket)?.(f)
    for (const f of early[1]!) this.routes.get(b.socket)?.(f)
    // Read on from a side held() paused, unless its early frames already filled the other side.
    if (a.held && !b.socket.writableNeedDrain) a.socket.resume()
    if (b.held && !a.socket.writableNeedDrain) b.socket.resume()
  }

  /** Installs the forwarding path from `from` to `to`. */
  private pipe(t: Active, from: net.Socket, to: net.Socket): void {
    const rate = { windowStart: this.clock.now(), windowBytes: 0 }
    this.routes.set(from, (body) => this.relayFrame(t, from, to, body, rate))
    this.passes.set(from, passThrough(t, from, to, (bodyLength) => this.admit(t, from, bodyLength, rate)))
    from.once('close', () => {
      this.routes.delete(from)
      this.passes.delete(from)
      this.end(t, null)
    })
    to.on('drain', () => from.resume())
  }

  private relayFrame(t: Active, from: net.Socket, to: net.Socket, body: Buffer, rate: { windowStart: number; windowBytes: number }): void {
    if (t.ended || body.length < 4 || body[3] !== MSG.RELAY_DATA) return // only data is relayed
    if (!this.admit(t, from, body.length, rate)) return
    const prefix = Buffer.allocUnsafe(4)
    prefix.writeUInt32BE(body.length, 0)
    to.cork()
    to.write(prefix)
    const flowing = to.write(body)
    to.uncork()
    if (!flowing) from.pause() // backpressure: the slow side sets the pace
  }

  /**
   * Counts a RELAY_DATA frame of `bodyLength` bytes against the tunnel's limits: false (and
   * the tunnel ended) past its byte limit; past the rate, `from` stops being read until the
   * second's window ends.
   */
  private admit(t: Active, from: net.Socket, bodyLength: number, rate: { windowStart: number; windowBytes: number }): boolean {
    t.bytes += bodyLength - 4
    this.bytesRelayed += bodyLength - 4
    if (t.bytes > this.limits.maxBytes) {
      this.end(t, `relayed tunnel reached its limit of ${this.limits.maxBytes} bytes`)
      return false
    }
    const now = this.clock.now()
    if (now - rate.windowStart >= RATE_WINDOW_MS) {
      rate.windowStart = now
      rate.windowBytes = 0
    }
    rate.windowBytes += bodyLength
    if (rate.windowBytes > this.limits.rate) {
      // Over the rate: stop reading this side until the window ends.
      from.pause()
      this.timers.setTimeout(() => from.resume(), Math.max(1, RATE_WINDOW_MS - (now - rate.windowStart))).unref()
    }
    return true
  }

  /** Ends a relayed tunnel; with a reason both agents get RELAY_END RELAY_LIMIT first. */
  private end(t: Active, limitReason: string | null): void {
    if (t.ended) return
    t.ended = true
    this.timers.clear(t.timer)
    this.active.delete(t)
    if (limitReason) {
      t.bye = frame(encode({ type: 'relay-end', code: 'RELAY_LIMIT', message: limitReason }))
      // A side in the middle of a frame gets it once the frame is whole (passThrough), or is destroyed at the linger.
      for (const side of [t.a, t.b]) if (!t.midFrame.has(side)) side.end(t.bye)
      this.log.warn('RELAY_LIMIT: ended a relayed tunnel', { a: t.names[0], b: t.names[1], reason: limitReason, bytes: t.bytes })
    } else {
      t.a.end()
      t.b.end()
      this.log.info('relay ended', { a: t.names[0], b: t.names[1], bytes: t.bytes })
    }
    this.timers.setTimeout(() => {
      t.a.destroy()
      t.b.destroy()
    }, END_LINGER_MS).unref()
  }

  /** Closes every relayed tunnel (server shutdown). */
  stop(): void {
    for (const t of [...this.active]) this.end(t, null)
  }
}
