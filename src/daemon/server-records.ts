/**
 * What the agent takes of the server's peer records (PEERS, PEER_EVENT, INTRODUCTION): a
 * record whose name is not a valid name (isValidName: `[a-z0-9][a-z0-9_-]{0,31}`) is
 * refused. The server refuses such names at REGISTER, so only a server that lies sends
 * one, and its name would reach `natctl peers`, `status` and `messages` and the pins.
 * Such a record is dropped from lists and lookups, its events are ignored, and an
 * introduction carrying it is refused (the caller's open fails with PEER_MISMATCH; the
 * other side's is not accepted).
 */
import { isValidName, peerId } from '../protocol/identity.js'
import type { Logger } from '../protocol/log.js'
import type { PeerRecord } from '../protocol/rendezvous.js'

/** True when the record's name is a valid name; else logs the refusal (once per record) and returns false. */
export function namedRecord(p: PeerRecord, log: Logger, what: string): boolean {
  if (isValidName(p.name)) return true
  // The name goes in a field as JSON escapes it (a log line for journald, never raw to a terminal).
  log.warn('server sent a peer record with an invalid name: refused', { what, id: peerId(p.publicKey).slice(0, 8), name: JSON.stringify(p.name.slice(0, 64)) })
  return false
}
