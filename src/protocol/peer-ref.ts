/**
 * The one answer to "is this peer that peer", for the whole agent. Pure: no store, no
 * server; callers pass the peers they know (pinned ones first).
 *
 * What a user types for a peer is one of:
 *   - a name (`bob`): names are aliases the server binds to keys (identity.ts NAME_RULE);
 *   - a full peer ID: the 52-character base32 of the 32-byte Ed25519 key (peerId());
 *   - an abbreviated ID of at least MIN_ID_PREFIX_CHARS characters, accepted only when
 *     exactly one known peer's ID starts with it, and no other peer has it as its name.
 *
 * Once resolved, a peer is matched by its whole ID, never by a prefix; a name is
 * compared only as a whole, and only where the user named the peer (an `open bob` must
 * reach a peer named exactly `bob`). Access decisions (allow lists) compare IDs alone.
 */
import { NatdError } from './errors.js'
import { isValidName } from './identity.js'

/** Characters of a full peer ID: 256 bits in base32 (51 × 5 = 255, plus one character for the last bit). */
export const PEER_ID_CHARS = 52
/** Shortest abbreviated ID accepted (40 bits: a collision among a few peers is unlikely, and refused anyway). */
export const MIN_ID_PREFIX_CHARS = 8

/** A last character holds one key bit and four zero bits: 'a' (0) or 'q' (16). */
export const PEER_ID_PATTERN = /^[a-z2-7]{51}[aq]$/
export const ID_PREFIX_PATTERN = new RegExp(`^[a-z2-7]{${MIN_ID_PREFIX_CHARS},${PEER_ID_CHARS}}$`)

/** A peer with a proven or pinned key: its name and its whole ID. */
export interface PeerRef {
  name: string
  id: string
}

/**
 * What a tunnel must reach: the name the user gave (null when they gave an ID) and the
 * key it must hold (null when no key is known yet: the name is pinned on first use).
 * At least one of the two is set.
 */
export interface PeerTarget {
  name: string | null
  id: string | null
}

export function isPeerId(s: string): boolean {
  return PEER_ID_PATTERN.test(s)
}

/** A string that may be an abbreviated (or full) peer ID. */
export function isIdPrefix(s: string): boolean {
  return ID_PREFIX_PATTERN.test(s)
}

/** `bob (6flxk45n…)`, or `6flxk45n…` for a peer without a name. */
export function describePeer(p: { name: string; id: string | null }): string {
  if (p.id === null) return `${p.name} (unresolved)`
  return p.name ? `${p.name} (${p.id.slice(0, 8)}…)` : `${p.id.slice(0, 8)}…`
}

/**
 * Resolves what a user typed against `known` (in order of trust: pinned peers first,
 * then what the server lists; the first entry with a name wins). Returns the target,
 * or null when an abbreviated ID matches no known peer. Throws INVALID_ARGUMENT for
 * text that is no name or ID, and for text that could mean several known peers (the
 * message lists them and says what to type instead).
 *
 *   full ID           → { name: null, id }
 *   name              → { name, id: the known key, or null }
 *   abbreviated ID    → { name: null, id: the one known ID it starts }
 *
 * A full ID is always an ID (a name has at most 32 characters, identity.ts). Any other
 * ID-shaped text (8+ of a-z2-7) may also be a name, and anyone may register any free name:
 * a stranger named after the 8 characters natctl shows of bob's ID (review 9). Such text
 * is taken as a name only when no other known peer's ID starts with it, and as an
 * abbreviated ID only when exactly one known ID starts with it and no other peer has it
 * as its name; otherwise it is refused as ambiguous. Whatever names strangers choose,
 * the full ID (or a prefix long enough to be no name: 33+ characters) always settles it.
 */
export function resolvePeer(typed: string, known: readonly PeerRef[]): PeerTarget | null {
  if (isPeerId(typed)) return { name: null, id: typed }
  const named = isValidName(typed) ? known.find((p) => p.name === typed) : undefined
  const ids = isIdPrefix(typed) ? [...new Set(known.filter((p) => p.id.startsWith(typed)).map((p) => p.id))] : []
  const candidates = named ? [named.id, ...ids.filter((id) => id !== named.id)] : ids
  if (candidates.length > 1) throw ambiguous(typed, candidates, named, known)
  if (named) return { name: typed, id: named.id }
  if (ids.length === 1) return { name: null, id: ids[0]! }
  if (isValidName(typed)) return { name: typed, id: null }
  if (isIdPrefix(typed)) return null
  throw new NatdError('INVALID_ARGUMENT', `${JSON.stringify(typed)} is no peer name (${'a-z, 0-9, - and _'}) or peer ID (at least ${MIN_ID_PREFIX_CHARS} base32 characters)`)
}

/** INVALID_ARGUMENT naming every peer `typed` could mean: by name, by the start of its ID. */
function ambiguous(typed: string, ids: readonly string[], named: PeerRef | undefined, known: readonly PeerRef[]): NatdError {
  const describe = (id: string): string => describePeer({ name: known.find((p) => p.id === id && p.name)?.name ?? '', id })
  const byId = ids.filter((id) => id !== named?.id).map(describe).join(', ')
  const which = named ? `the name of ${describePeer(named)}, and the start of the ID of ${byId}` : byId
  return new NatdError('INVALID_ARGUMENT', `${typed} matches ${ids.length} peers: ${which}; type more of the ID of the one you mean, or its full ID (natctl peers shows them)`)
}

/** Whether `peer` is the target: the whole ID when one is expected, the whole name when one was given. */
export function isTarget(peer: PeerRef, target: PeerTarget): boolean {
  return (target.id === null || peer.id === target.id) && (target.name === null || peer.name === target.name)
}

/** Whether two IDs are the same peer: whole, well-formed IDs only (a prefix or a name never matches). */
export function sameId(a: string | null, b: string | null): boolean {
  return a !== null && b !== null && isPeerId(a) && a === b
}
