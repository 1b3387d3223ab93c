/**
 * Moves a tunnel to a late path of its introduction (path-race.ts hands them over;
 * manager.ts owns the tunnels). One switch at a time per tunnel: each late path waits
 * for the one before it (review 3 #3b: two at once made the initiator write two "this
 * one" pings, the second switch was refused and the responder followed both).
 *
 *   initiator: wait until the peer answered on the tunnel, and no switch of ours is pending ─▶ still better than the tunnel's path?
 *              ─▶ "this one" (a PING, its first frame there) ─▶ upgrade()   (else drop)
 *   responder: the path landed because that frame came on it: follow, unranked;
 *              cannot follow ─▶ drop it and migrate now (the peer left the old session)
 *
 * No I/O of its own: the tunnel and the path are passed in, so it is unit-tested with fakes.
 */
import type { Logger } from '../protocol/log.js'
import { encodeMux } from '../protocol/mux.js'
import type { PathKind, Transport } from '../protocol/tunnel-snapshot.js'
import type { Endpoint } from '../protocol/endpoint.js'
import { pathRank } from './path-race.js'
import { asResume } from './resume.js'

/** What a late switch needs of a tunnel (tunnel.ts). */
export interface SwitchingTunnel<S> {
  readonly isUp: boolean
  readonly path: PathKind
  readonly transport: Transport
  readonly mux: { readonly switchPending: boolean }
  switchSettled(): Promise<void>
  heardFromPeer(): Promise<void>
  upgrade(next: S, path: PathKind, remote: Endpoint, transport: Transport): boolean
  leftBehind(reason: string): void
  once(event: 'closed', listener: () => void): unknown
}

/** A late path (paths.ts Established). */
export interface LatePath<S extends { write(buf: Buffer): unknown; destroy(): void }> {
  session: S
  path: PathKind
  transport: Transport
  remote: Endpoint
  punchMs: number
  release?: () => void
  first?: Buffer
}

export interface LateSwitchComponents<T> {
  log: Logger
  /** Whether `tunnel` is still the peer's tunnel (not closed, not replaced). */
  current(tunnel: T): boolean
}

export class LateSwitches<S extends { write(buf: Buffer): unknown; destroy(): void }, T extends SwitchingTunnel<S>> {
  /** The late switch each tunnel is making, or last made: the next one waits for it. */
  private readonly turns = new WeakMap<T, Promise<boolean>>()

  constructor(private readonly c: LateSwitchComponents<T>) {}

  /**
   * Moves `tunnel` (null: it was not made) to `late` in its turn: true when it did, false
   * when `late` was dropped. Never rejects. Also how a relayed tunnel takes the winner of
   * an upgrade introduction (manager.ts keep()), so that too waits for a late switch.
   */
  add(tunnel: T | null, late: LatePath<S>, initiator: boolean, peer: string): Promise<boolean> {
    if (!tunnel) return this.switch(null, late, initiator, peer)
    const turn = (this.turns.get(tunnel) ?? Promise.resolve(true)).then(() => this.switch(tunnel, late, initiator, peer)).catch(() => false)
    this.turns.set(tunnel, turn)
    return turn
  }

  private async switch(tunnel: T | null, late: LatePath<S>, initiator: boolean, peer: string): Promise<boolean> {
    const drop = (why: string): false => {
      late.session.destroy()
      late.release?.()
      this.c.log.debug('late path dropped', { peer, path: late.path, transport: late.transport, why })
      return false
    }
    const usable = (t: T | null): t is T => t !== null && t.isUp && this.c.current(t)
    if (!usable(tunnel)) return drop('the tunnel is not up')
    if (!initiator && asResume(late.first) !== null) {
      tunnel.leftBehind('the peer moved to a path we dropped')
      return drop('a RESUME on a late path')
    }
    // The responder makes its tunnel of the first session a first frame of ours comes on:
    // until it answered on the winner, a late "this one" could overtake the winner's.
    if (initiator) {
      await tunnel.heardFromPeer()
      if (!usable(tunnel)) return drop('the tunnel is not up')
    }
    // One switch at a time (mux.ts): wait until the peer has switched to the last one.
    while (tunnel.mux.switchPending) {
      await tunnel.switchSettled()
      if (!usable(tunnel)) return drop('the tunnel is not up')
    }
    if (initiator) {
      if (pathRank(late) <= pathRank(tunnel)) return drop(`the tunnel is on ${tunnel.path}`)
      late.session.write(encodeMux({ type: 'ping', channel: 0, seq: 0 })) // "this one": upgrade() takes it (checked above, nothing awaited since)
    }
    if (!tunnel.upgrade(late.session, late.path, late.remote, late.transport)) {
      if (!initiator) tunnel.leftBehind('the peer moved to a path we could not follow')
      return drop('the tunnel refused the switch')
    }
    if (late.release) tunnel.once('closed', late.release)
    this.c.log.info('moved to a late path', { peer, path: late.path, transport: late.transport, punchMs: late.punchMs })
    return true
  }
}
