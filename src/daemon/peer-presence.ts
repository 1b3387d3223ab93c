/**
 * Which peers are online for us, and why each offline one went (issue #15): the reason
 * the server gave in its peer event ('bye': the peer's natd said goodbye; 'expired': the
 * server stopped hearing it), or 'server-lost' when our own session with the server
 * ended (we cannot vouch for anyone then). peer.down events, `peers` and `open` read the
 * same registry, so they agree; this adds the why.
 *
 *   server peer event up/down ──▶ peer.up / peer.down {downReason}
 *   our session lost ──▶ peer.down {downReason: 'server-lost'} for each peer online for us
 *   registered again ──▶ the server's list: peer.up for each online one
 *
 * Bounds: at most MAX_LIST_PEERS peers held online and as many reasons remembered (the
 * oldest forgotten first: 'unknown' then); the server decides who is listed.
 */
import { peerId } from '../protocol/identity.js'
import { MAX_LIST_PEERS, type PeerDownReason, type PeerRecord } from '../protocol/rendezvous.js'

export type DownReason = PeerDownReason | 'server-lost'

export type PresenceEmit = (event: 'up' | 'down', peer: PeerRecord, reason: DownReason | null) => void

export class PeerPresence {
  private readonly online = new Map<string, PeerRecord>()
  private readonly reasons = new Map<string, DownReason>()
  /** Our session ended with peers online: the next registration lists them again. */
  private lost = false

  constructor(
    private readonly emit: PresenceEmit,
    private readonly max = MAX_LIST_PEERS
  ) {}

  /** The server's peer event. */
  onEvent(event: 'up' | 'down', peer: PeerRecord, reason: PeerDownReason = 'unknown'): void {
    const id = peerId(peer.publicKey)
    if (event === 'up') {
      this.setOnline(id, peer)
      this.emit('up', peer, null)
      return
    }
    this.online.delete(id)
    this.remember(id, reason)
    this.emit('down', peer, reason)
  }

  /** Our session with the server ended: every peer online for us is down, 'server-lost'. */
  serverLost(): void {
    for (const [id, p] of this.online) {
      this.remember(id, 'server-lost')
      this.emit('down', { ...p, online: false }, 'server-lost')
    }
    this.lost = this.lost || this.online.size > 0
    this.online.clear()
  }

  /** Whether the next registration should list the peers again (after serverLost). */
  get wantsList(): boolean {
    return this.lost
  }

  /**
   * The server's list after each registration: every online peer is held (so losing the
   * server says 'server-lost' for it too); after a lost session (`announce`, wantsList)
   * each one comes up again.
   */
  listed(peers: PeerRecord[], announce = true): void {
    this.lost = false
    for (const p of peers) {
      const id = peerId(p.publicKey)
      if (!p.online || this.online.has(id)) continue
      this.setOnline(id, p)
      if (announce) this.emit('up', p, null)
    }
  }

  /** Why `id` is offline: null when it is online or we never saw it go. */
  reason(id: string): DownReason | null {
    return this.online.has(id) ? null : (this.reasons.get(id) ?? null)
  }

  private setOnline(id: string, p: PeerRecord): void {
    this.reasons.delete(id)
    this.online.delete(id)
    if (this.online.size >= this.max) this.online.delete(this.online.keys().next().value!)
    this.online.set(id, p)
  }

  private remember(id: string, reason: DownReason): void {
    this.reasons.delete(id)
    if (this.reasons.size >= this.max) this.reasons.delete(this.reasons.keys().next().value!)
    this.reasons.set(id, reason)
  }
}
