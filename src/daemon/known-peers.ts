/**
 * Known peers: the keys pinned to names (on first use, or out of band with `natctl
 * trust`), and the agent's PeerPolicy: what an `open` must reach, whether an introduced
 * peer is it, and pinning once a handshake proved a key. Matching itself is
 * protocol/peer-ref.ts; this adds the store, the server's list and the log.
 */
import { systemClock, type Clock } from '../protocol/clock.js'
import { NatdError } from '../protocol/errors.js'
import { isValidName, NAME_RULE } from '../protocol/identity.js'
import type { Logger } from '../protocol/log.js'
import { describePeer, isIdPrefix, isPeerId, isTarget, PEER_ID_CHARS, resolvePeer, type PeerRef, type PeerTarget } from '../protocol/peer-ref.js'
import type { TrustResult } from '../ipc/schema.js'
import type { PeerPolicy, PinSource } from '../tunnel/manager.js'
import type { StateStore } from './config.js'

export interface KnownPeersComponents {
  store: Pick<StateStore, 'dir' | 'knownPeer' | 'knownPeers' | 'pinPeer' | 'unpinPeer' | 'pinCount' | 'stateWarnings'>
  log: Logger
  /** The peers the rendezvous server lists; rejects when it cannot be asked. */
  serverPeers(): Promise<PeerRef[]>
  /** Default systemClock. */
  clock?: Clock
}

/**
 * How long expect() reuses the server's list to check a pinned ID-shaped name against
 * the listed IDs. A forward asks once per accepted connection, and a LIST answer holds
 * up to MAX_LIST_PEERS (2,048) records. A peer that registered in the last 10 s may go
 * unseen by the check for that long; a user copies an ID from natctl peers, which
 * takes longer than that.
 */
export const SERVER_LIST_REUSE_MS = 10_000

/**
 * Whether the pins alone may not settle `typed`: nothing pinned matches, or the text is
 * ID-shaped and the pins read it as a name. Anyone may register any free name, an
 * 8-character ID prefix included, so a stranger pinned under bob's abbreviated ID must
 * not take his place: the listed IDs are checked too (resolvePeer refuses a name that
 * is also the start of another known peer's ID). A pinned abbreviated ID needs no list.
 */
function needsServerList(typed: string, pinned: PeerTarget | null): boolean {
  return pinned === null || (pinned.name !== null && isIdPrefix(typed))
}

/**
 * Pins made on first use for peers that opened a tunnel to us stop here. Any registered
 * stranger can open a tunnel to us under a fresh name (or a malicious server introduce
 * fake peers), and each was pinned: config.json grew without bound (~90 bytes a pin), and
 * each pin rewrote and schema-checked all of it, on the event loop (measured: 1.6 ms a pin
 * at 1,000 pins, 63 ms at 5,000, on a loaded 2-core machine), and a file past
 * CONFIG_JSON_MAX_BYTES would stop natd from starting. Past this many pins, an inbound
 * stranger's tunnel works but its key is not pinned (logged once per start, a state
 * warning in `natctl status`). Pins of peers we chose (tunnels we open, forward targets,
 * allow entries, `natctl trust`) are never capped: strangers filling the store must not
 * turn pinning off for them (review 6), and their number is the owner's to decide.
 */
export const MAX_PINS_ON_FIRST_USE = 4_096

export class KnownPeers implements PeerPolicy {
  /** The "too many pins" warning was logged and shown (once per start: strangers can make it repeat). */
  private pinsFullLogged = false
  /** The server's list as recentServerPeers() last asked for it. */
  private listedRecently: { at: number; peers: Promise<PeerRef[]> } | null = null

  constructor(private readonly c: KnownPeersComponents) {}

  /** Pinned peers, by name. */
  list(): PeerRef[] {
    return this.c.store.knownPeers()
  }

  isPinned(p: PeerRef): boolean {
    return this.c.store.knownPeer(p.name) === p.id
  }

  /**
   * What `open(typed)` must reach. Pinned peers first; the server's list only when they
   * do not settle it: an abbreviated ID, or ID-shaped text that the pins settle as a
   * name (it may also be the start of a listed peer's ID: see needsServerList). A name
   * nobody pinned yet is expected by name alone (its key is pinned on first use). Throws
   * PEER_UNKNOWN, or INVALID_ARGUMENT for text that could mean several known peers.
   */
  async expect(typed: string): Promise<PeerTarget> {
    const pinned = this.list()
    let target = resolvePeer(typed, pinned)
    if (needsServerList(typed, target)) {
      const listed = target?.id ? await this.recentServerPeers() : await this.c.serverPeers().catch(() => [])
      target = resolvePeer(typed, [...pinned, ...listed])
    }
    if (target === null) throw new NatdError('PEER_UNKNOWN', `no known peer has an ID starting with ${typed} (natctl peers lists them)`)
    return target
  }

  /**
   * The server's list for the collision check of a pinned ID-shaped name, fetched at most
   * once per SERVER_LIST_REUSE_MS: expect() runs for every connection a forward accepts,
   * and a forward to a pinned peer named like `database` must not cost a LIST each.
   * An unreachable server gives [] (the pins stand, as for any other name).
   */
  private recentServerPeers(): Promise<PeerRef[]> {
    const now = (this.c.clock ?? systemClock).now()
    if (this.listedRecently === null || now - this.listedRecently.at >= SERVER_LIST_REUSE_MS) {
      this.listedRecently = { at: now, peers: this.c.serverPeers().catch(() => []) }
    }
    return this.listedRecently.peers
  }

  /**
   * An introduced peer, before any packet is sent to it. Throws KEY_MISMATCH when its
   * name is pinned to another key (both directions), PEER_MISMATCH when it is not the
   * peer we asked for (`expected`, null for a peer that asked for us).
   */
  check(peer: PeerRef, expected: PeerTarget | null): void {
    const pinned = this.c.store.knownPeer(peer.name)
    if (pinned !== undefined && pinned !== peer.id) {
      this.c.log.error('KEY_MISMATCH: a peer presents another key under a pinned name', { peer: peer.name, pinned: pinned.slice(0, 8), presented: peer.id.slice(0, 8) })
      throw new NatdError(
        'KEY_MISMATCH',
        `${peer.name} now presents key ${peer.id.slice(0, 8)}, but ${pinned.slice(0, 8)} is pinned; if ${peer.name} really changed its key, check the new ID with its owner (natctl status there) and run natctl trust ${peer.name} ${peer.id} --replace`
      )
    }
    if (expected !== null && !isTarget(peer, expected)) {
      const asked = expected.name ?? `${expected.id!.slice(0, 8)}…`
      this.c.log.error('PEER_MISMATCH: the server introduced another peer than the one asked for', {
        asked: expected.name,
        askedId: expected.id?.slice(0, 8) ?? null,
        introduced: peer.name,
        introducedId: peer.id.slice(0, 8)
      })
      throw new NatdError('PEER_MISMATCH', `asked for ${asked}, but the server introduced ${describePeer(peer)}: refused`)
    }
  }

  /**
   * Pins a peer's key to its name on first use, once the handshake proved the key. A peer
   * that opened the tunnel to us (`by` 'inbound') is not pinned past MAX_PINS_ON_FIRST_USE
   * pins (the tunnel goes on, unpinned: see there); a peer we chose always is.
   */
  pin(peer: PeerRef, by: PinSource): void {
    if (this.c.store.knownPeer(peer.name) !== undefined) return
    if (by === 'inbound' && this.c.store.pinCount >= MAX_PINS_ON_FIRST_USE) {
      if (!this.pinsFullLogged) {
        this.c.log.warn('peer key not pinned: too many pins', { peer: peer.name, id: peer.id.slice(0, 8), pins: this.c.store.pinCount, max: MAX_PINS_ON_FIRST_USE, hint: 'natctl untrust removes pins' })
        this.c.store.stateWarnings.push(
          `${MAX_PINS_ON_FIRST_USE} peer keys are pinned: peers that open tunnels to us under new names are no longer pinned on first use (peers we open tunnels to, forward to or allow still are); natctl peers lists the pins, natctl untrust removes them`
        )
      }
      this.pinsFullLogged = true
      return
    }
    this.c.store.pinPeer(peer.name, peer.id)
    this.c.log.info('peer key pinned', { peer: peer.name, id: peer.id.slice(0, 8), by })
  }

  /** `natctl trust NAME ID`: pins out of band; another ID already pinned needs `replace`. */
  trust(name: string, id: string, replace: boolean): TrustResult {
    if (!isValidName(name)) throw new NatdError('INVALID_ARGUMENT', `${JSON.stringify(name)} is not a peer name: ${NAME_RULE}`)
    if (!isPeerId(id)) throw new NatdError('INVALID_ARGUMENT', `${JSON.stringify(id)} is not a full peer ID (${PEER_ID_CHARS} base32 characters, as natctl status shows it)`)
    const current = this.c.store.knownPeer(name)
    if (current === id) return { name, id, replaced: null }
    if (current !== undefined && !replace) {
      throw new NatdError('KEY_MISMATCH', `${name} is pinned to ${current.slice(0, 8)}…, not ${id.slice(0, 8)}…; add --replace to pin the new ID`)
    }
    this.c.store.pinPeer(name, id)
    if (current === undefined) this.c.log.info('peer key pinned', { peer: name, id: id.slice(0, 8), by: 'trust' })
    else this.c.log.warn('pinned peer key replaced', { peer: name, from: current.slice(0, 8), to: id.slice(0, 8) })
    return { name, id, replaced: current ?? null }
  }

  /** `natctl untrust NAME`: forgets the pin (the next tunnel pins again on first use). */
  untrust(name: string): PeerRef {
    const id = this.c.store.knownPeer(name)
    if (id === undefined) throw new NatdError('PEER_UNKNOWN', `${name} is not pinned (natctl peers shows the pinned ones)`)
    this.c.store.unpinPeer(name)
    this.c.log.info('peer key unpinned', { peer: name, id: id.slice(0, 8) })
    return { name, id }
  }

  /**
   * A peer for an allow list: its whole key. A name is the pinned key, else the key the
   * server lists for it (then pinned); an ID, full or abbreviated, must be known. An
   * ID-shaped name is checked against the server's list (fresh: adding an entry is rare)
   * even when pinned: INVALID_ARGUMENT when it is also the start of another peer's ID.
   * Throws PEER_UNKNOWN when no key is known: an allow list never holds a bare name.
   */
  async resolveKey(typed: string): Promise<PeerRef> {
    const pinned = this.list()
    const local = resolvePeer(typed, pinned)
    if (local?.id && !needsServerList(typed, local)) return { name: local.name ?? pinned.find((p) => p.id === local.id)?.name ?? '', id: local.id }
    const listed = await this.c.serverPeers().catch(() => [] as PeerRef[])
    const target = resolvePeer(typed, [...pinned, ...listed])
    if (!target?.id) {
      throw new NatdError('PEER_UNKNOWN', `no key known for ${typed}: the server does not list it and it is not pinned (natctl trust ${isValidName(typed) ? typed : 'NAME'} PEER_ID pins it)`)
    }
    const name = target.name ?? [...pinned, ...listed].find((p) => p.id === target.id && p.name)?.name ?? ''
    if (target.name !== null) this.pin({ name: target.name, id: target.id }, 'ours')
    return { name, id: target.id }
  }
}
