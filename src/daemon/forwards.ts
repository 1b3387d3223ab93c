/**
 * Port forwards (`natctl forward`): a local TCP listener whose connections become
 * channels to a peer's exposed port, over the peer's tunnel (opened on the first
 * connection). Forwards persist in the state store and come back after a restart.
 */
import net from 'node:net'
import { PEER_REFUSAL_LOG, RefusalLog } from '../common/refusal-log.js'
import { systemClock, type TimerClock } from '../protocol/clock.js'
import { NatdError, toNatdError } from '../protocol/errors.js'
import type { Logger } from '../protocol/log.js'
import type { ForwardInfo } from '../ipc/schema.js'
import type { TunnelManager } from '../tunnel/manager.js'
import { MigrationDeadline } from '../tunnel/migration-deadline.js'
import type { ForwardSpec, StateStore } from './config.js'
import { join, reset } from './pipe.js'

/**
 * A forwarded connection waits this long for the tunnel, then as long again for the
 * peer's accept of its channel (the channel-open timeout): longer than the peer's own
 * connect to the exposed service (EXPOSE_CONNECT_TIMEOUT_MS, 10 s) plus round trips, so a
 * slow service comes back as CONNECT_FAILED rather than as our timeout. Time while the
 * tunnel migrates does not count (up to tunnel/migration-deadline.ts
 * MIGRATION_PAUSE_MAX_MS, 90 s, in all): the OPEN goes out when it resumes. Past it, or
 * when the channel is refused or its tunnel gives up or closes (at once), the local
 * connection is reset (RST).
 */
export const FORWARD_OPEN_TIMEOUT_MS = 15_000

interface Active {
  spec: ForwardSpec
  server: net.Server
  connections: Set<net.Socket>
}

export interface ForwardsComponents {
  store: StateStore
  tunnels: TunnelManager
  log: Logger
  selfName: string
  selfId: string
  /** Throws PEER_UNKNOWN when the server knows no such peer (skipped when unregistered). */
  checkPeer(peer: string): Promise<void>
  /** The open deadline's timer; default systemClock. */
  clock?: TimerClock
}

export class Forwards {
  private readonly active = new Map<number, Active>()
  /** Stored forwards whose port could not be bound, with the error (shown by `forward ls`). */
  private readonly failed = new Map<number, string>()
  /**
   * Forwarded connections that failed (the peer refused, no tunnel): any local user may
   * connect to a forward's port as fast as it likes, so they are counted, not logged each
   * (review 9 #3); the first of each code is logged at once.
   */
  private readonly failures: RefusalLog

  constructor(private readonly c: ForwardsComponents) {
    this.failures = new RefusalLog(c.log, PEER_REFUSAL_LOG, c.clock ?? systemClock)
  }

  /** Starts every stored forward; a port that cannot be bound is logged and kept for later. */
  async start(): Promise<void> {
    for (const spec of this.c.store.forwards) {
      try {
        await this.listen(spec)
      } catch (err) {
        this.failed.set(spec.localPort, (err as Error).message)
        this.c.log.error('cannot restore forward', { localPort: spec.localPort, peer: spec.peer, err: (err as Error).message })
      }
    }
  }

  list(): ForwardInfo[] {
    return this.c.store.forwards.map((spec) => {
      const a = this.active.get(spec.localPort)
      return { ...spec, connections: a?.connections.size ?? 0, listening: a !== undefined, error: a ? null : (this.failed.get(spec.localPort) ?? null) }
    })
  }

  async add(spec: ForwardSpec): Promise<ForwardInfo> {
    if (spec.peer === this.c.selfName || spec.peer === this.c.selfId) throw new NatdError('INVALID_ARGUMENT', 'cannot forward to yourself')
    if (!net.isIP(spec.bind)) throw new NatdError('INVALID_ARGUMENT', `--bind must be an IP address, not ${JSON.stringify(spec.bind)}`)
    if (this.c.store.forwards.some((f) => f.localPort === spec.localPort)) {
      throw new NatdError('PORT_IN_USE', `port ${spec.localPort} is already forwarded (natctl forward rm ${spec.localPort} first)`)
    }
    await this.c.checkPeer(spec.peer)
    await this.listen(spec) // throws PORT_IN_USE before anything is stored
    try {
      this.c.store.setForwards([...this.c.store.forwards, spec]) // INVALID_ARGUMENT if conf's schema refuses it
    } catch (err) {
      this.close(spec.localPort)
      throw err
    }
    this.c.log.info('forward added', { ...spec })
    return { ...spec, connections: 0, listening: true, error: null }
  }

  remove(localPort: number): ForwardInfo {
    const spec = this.c.store.forwards.find((f) => f.localPort === localPort)
    if (!spec) throw new NatdError('INVALID_ARGUMENT', `no forward on port ${localPort}`)
    this.close(localPort)
    this.failed.delete(localPort)
    this.c.store.setForwards(this.c.store.forwards.filter((f) => f.localPort !== localPort))
    this.c.log.info('forward removed', { ...spec })
    return { ...spec, connections: 0, listening: false, error: null }
  }

  /** Applies the stored list (after SIGHUP): starts new forwards, stops removed ones, keeps the rest. */
  async reload(): Promise<void> {
    const want = this.c.store.forwards
    for (const port of [...this.active.keys()]) if (!want.some((f) => f.localPort === port)) this.close(port)
    for (const port of [...this.failed.keys()]) if (!want.some((f) => f.localPort === port)) this.failed.delete(port)
    for (const spec of want) {
      if (this.active.has(spec.localPort)) continue
      await this.listen(spec).catch((err: Error) => {
        this.failed.set(spec.localPort, err.message)
        this.c.log.error('cannot start forward', { localPort: spec.localPort, err: err.message })
      })
    }
  }

  stop(): void {
    for (const port of [...this.active.keys()]) this.close(port)
  }

  private close(localPort: number): void {
    const a = this.active.get(localPort)
    if (!a) return
    a.server.close()
    for (const s of a.connections) s.destroy()
    this.active.delete(localPort)
  }

  private listen(spec: ForwardSpec): Promise<void> {
    const a: Active = { spec, server: net.createServer({ allowHalfOpen: true }, (sock) => this.onConnection(a, sock)), connections: new Set() }
    return new Promise((resolve, reject) => {
      a.server.once('error', (err: NodeJS.ErrnoException) => {
        if (err.code === 'EADDRINUSE') reject(new NatdError('PORT_IN_USE', `port ${spec.localPort} on ${spec.bind} is in use`))
        else if (err.code === 'EACCES') reject(new NatdError('PERMISSION_DENIED', `may not listen on port ${spec.localPort} (ports below 1024 need privileges)`))
        else if (err.code === 'EADDRNOTAVAIL') reject(new NatdError('INVALID_ARGUMENT', `${spec.bind} is not an address of this machine`))
        else reject(toNatdError(err))
      })
      a.server.listen({ port: spec.localPort, host: spec.bind }, () => {
        a.server.on('error', (err) => this.c.log.error('forward listener error', { localPort: spec.localPort, err: err.message }))
        this.active.set(spec.localPort, a)
        this.failed.delete(spec.localPort)
        resolve()
      })
    })
  }

  private onConnection(a: Active, sock: net.Socket): void {
    const { spec } = a
    a.connections.add(sock)
    sock.on('close', () => a.connections.delete(sock))
    sock.on('error', () => undefined)
    sock.setNoDelay(true)
    void (async () => {
      const { tunnel } = await this.c.tunnels.open(spec.peer, 'auto', FORWARD_OPEN_TIMEOUT_MS)
      const ch = tunnel.mux.openChannel(spec.remotePort)
      ch.on('error', () => undefined) // reported through `opened` or by join()
      const clock = this.c.clock ?? systemClock
      // Not while the tunnel migrates: the OPEN waits in its replay buffer for the resume (migration-deadline.ts).
      const deadline = new MigrationDeadline(clock, FORWARD_OPEN_TIMEOUT_MS, tunnel, () => ch.destroy(new NatdError('TIMEOUT', `${spec.peer} did not accept the connection in time`)))
      try {
        await ch.opened
      } finally {
        deadline.stop()
      }
      if (sock.destroyed) return ch.destroy()
      join(sock, ch, undefined, clock)
    })().catch((err: unknown) => {
      const e = toNatdError(err)
      this.failures.refused('forwarded connection', spec.peer, e.code, `local port ${spec.localPort} to ${spec.peer}:${spec.remotePort}: ${e.message}`)
      reset(sock) // the application sees ECONNRESET, not an EOF it would take for an empty answer
    })
  }
}
