/**
 * Allow lists (`expose --allow`, `files policy --allow`) hold whole peer keys. A name
 * given on the command line is resolved to a key when the entry is added
 * (KnownPeers.resolveKey); matching compares whole IDs (protocol/peer-ref.ts sameId),
 * never a prefix and never a name.
 *
 * Entries stored before allow lists held keys are bare strings (a name or an ID
 * prefix); the config file may hold them too. They are migrated against the pinned
 * peers: one that cannot be resolved stays `{name, id: null}`, shown as unresolved, and
 * matches nobody. That is the safe choice: admitting by name would let any key that
 * gets introduced under the name in, and refusing tells the owner to pin the peer
 * (`natctl trust NAME ID`) and add it again.
 */
import { NatdError } from '../protocol/errors.js'
import { isPeerId, resolvePeer, sameId, type PeerRef } from '../protocol/peer-ref.js'

export interface AllowEntry {
  /** The peer's name when the entry was made ('' when only an ID was given and no name is known). */
  name: string
  /** The whole peer ID; null for an entry that could not be resolved (it matches nobody). */
  id: string | null
}

/** Whether `peer` may in: an empty list admits every peer; otherwise its whole ID must be listed. */
export function admits(allow: readonly AllowEntry[], peer: { id: string }): boolean {
  return allow.length === 0 || namesPeer(allow, peer.id)
}

/** Whether `allow` names the peer by its whole key (an empty list, open to every peer, names nobody). */
export function namesPeer(allow: readonly AllowEntry[], peerId: string): boolean {
  return allow.some((e) => sameId(e.id, peerId))
}

/** An entry as stored now, or as natd stored it before (a bare name, ID or ID prefix), against the pinned peers. */
export function migrateAllowEntry(raw: unknown, pinned: readonly PeerRef[]): AllowEntry {
  let typed: string
  if (typeof raw === 'object' && raw !== null) {
    const o = raw as { name?: unknown; id?: unknown }
    const name = typeof o.name === 'string' ? o.name : ''
    if (typeof o.id === 'string' && isPeerId(o.id)) return { name: name || (pinned.find((p) => p.id === o.id)?.name ?? ''), id: o.id }
    typed = name
  } else {
    typed = String(raw)
  }
  try {
    const t = resolvePeer(typed, pinned)
    if (t?.id) return { name: t.name ?? pinned.find((p) => p.id === t.id)?.name ?? '', id: t.id }
  } catch {
    // ambiguous or malformed: unresolved
  }
  return { name: typed, id: null }
}

/** Whether an entry is already in the current form (a key, or a known-unresolved name). */
export function isCurrent(raw: unknown): raw is AllowEntry {
  return typeof raw === 'object' && raw !== null && typeof (raw as AllowEntry).name === 'string' && ((raw as AllowEntry).id === null || typeof (raw as AllowEntry).id === 'string')
}

/**
 * For the warning about an entry that admits nobody: why it has no key (no pinned key, or
 * text that could mean several pinned peers: resolvePeer's message names them), and what
 * to run. `readd` is the command that adds an allow entry again (`natctl expose add 22 --allow`).
 */
export function unresolvedAdvice(name: string, pinned: readonly PeerRef[], readd: string): { why: string; hint: string } {
  try {
    resolvePeer(name, pinned)
  } catch (err) {
    if (err instanceof NatdError) return { why: err.message, hint: `${readd} FULL_ID of the peer you mean (natctl peers shows it)` }
  }
  return { why: 'no pinned key', hint: `natctl trust ${name} PEER_ID, then ${readd} ${name}` }
}
