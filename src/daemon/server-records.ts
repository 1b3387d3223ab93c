/**
 * What the agent takes of the server's peer records (PEERS, PEER_EVENT, INTRODUCTION): a
 * record whose name is not a valid name (isValidName: `[a-z0-9][a-z0-9_-]{0,31}`) is
 * refused. The server refuses such names at REGISTER, so only a server that lies sends
 * one, and its name would reach `natctl peers`, `status` and `messages` and the pins.
 * Such a record is dropped from lists and lookups, its events are ignored, and an
 * introduction carrying it is refused (the caller's open fails with PEER_MISMATCH; the
 * other side's is not accepted).
 */
import type { RefusalLog, RefusalLogInit } from '../common/refusal-log.js'
import { isValidName, peerId } from '../protocol/identity.js'
import type { PeerRecord } from '../protocol/rendezvous.js'

/**
 * How such records are logged (common/refusal-log.ts): the server pushes PEER_EVENTs and
 * introductions when it likes, so a lying one could send them at its link's speed; the
 * first is logged at once, more are counted every 10 s (review 9 #3).
 */
export const SERVER_RECORD_LOG: RefusalLogInit = Object.freeze({ windowMs: 10_000, level: 'warn' })

/** True when the record's name is a valid name; else counts the refusal and returns false. */
export function namedRecord(p: PeerRecord, refusals: Pick<RefusalLog, 'refused'>, server: string, what: string): boolean {
  if (isValidName(p.name)) return true
  // The name goes in a field as JSON escapes it (a log line for journald, never raw to a terminal).
  refusals.refused(`peer record with an invalid name (${what})`, server, 'BAD_REQUEST', `${peerId(p.publicKey).slice(0, 8)} named ${JSON.stringify(p.name.slice(0, 64))}`)
  return false
}
