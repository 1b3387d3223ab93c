/**
 * Several natd-rendezvous instances sharing one registry (`--redis URL`). The server's
 * own Registry (registry.ts) stays the store of the agents THIS instance holds, with its
 * heartbeat hot path untouched; a Cluster is what the instance asks about everyone else
 * and tells everyone else about its own agents:
 *
 *   - name bindings, claimed atomically deployment-wide (the Registry's NameStore is
 *     then a cache of them);
 *   - peer records of online agents and which instance holds each (written in batches:
 *     heartbeats never become shared writes);
 *   - introductions routed to the instance holding the target;
 *   - peer up/down events, including those of an instance that died.
 *
 * Without --redis there is no Cluster (server.ts holds null) and nothing here runs.
 * Per instance stays per instance: sockets, STUN, control connections, relay sessions
 * and their limits. A relayed tunnel runs on the initiator's instance; the introduction
 * names it to the target (INTRODUCTION's relay field).
 */
import type { Endpoint } from '../protocol/endpoint.js'
import type { PeerRecord, Via } from '../protocol/rendezvous.js'

/** An introduction crossing instances: the initiator's instance sends it to the target's. */
export interface RemoteIntroduction {
  /** The agent to introduce (its public key; the receiving instance checks it holds it). */
  targetKey: Uint8Array
  introId: Uint8Array
  punchKey: Uint8Array
  via: Via
  /** The initiator, as its instance sees it now. */
  from: PeerRecord
  /** Where the relay permit waits (the initiator's instance), or null without relaying. */
  relay: Endpoint | null
}

/** A peer held by another instance. */
export interface RemotePeer {
  record: PeerRecord
  instance: string
}

export interface ClusterHandlers {
  /** An introduction for an agent this instance holds (it may have gone since). */
  onIntroduction(intro: RemoteIntroduction): void
  /** Agents held by other instances came up or went down (a dead instance's go down together). */
  onPeerEvents(event: 'up' | 'down', peers: PeerRecord[]): void
  /** Agents this instance holds registered with another since (failed over): they are no longer ours. */
  onMoved(peers: PeerRecord[]): void
}

export interface Cluster {
  /** This instance's ID (random per start: a restarted instance is a new one). */
  readonly instance: string
  /** The address agents dial for this instance (named in introductions as the relay). */
  readonly advertise: Endpoint
  start(handlers: ClusterHandlers): Promise<void>
  stop(): Promise<void>
  /**
   * Binds `name` to `publicKey` deployment-wide or throws NAME_TAKEN (the Registry's
   * rules: a binding past `nameTtlMs` whose holder is offline is released). Throws
   * TIMEOUT when the shared store cannot be reached.
   */
  claimName(name: string, publicKey: Uint8Array, now: number, nameTtlMs: number): Promise<void>
  /** RELEASE: true when released, false when unbound; UNAUTHORIZED when another key holds it. */
  releaseName(name: string, publicKey: Uint8Array): Promise<boolean>
  /**
   * One of this instance's agents is online with this record (now or after a change):
   * written in the next batch. `registeredAt` when it (re)registered: of two instances
   * holding one key, the later registration wins (instances' clocks must agree, NTP).
   */
  online(record: PeerRecord, registeredAt?: number): void
  /** One of this instance's agents went offline at `now`: removed in the next batch. */
  offline(record: PeerRecord, now: number): void
  /** An online agent held by another instance, by name or full peer ID. */
  find(target: string): Promise<RemotePeer | undefined>
  /** find() for an agent's LOOKUP: apart from the registrations and introductions the instance itself sends. */
  lookup(target: string): Promise<RemotePeer | undefined>
  /** Online agents held by other instances, at most `max` (one read shared by the LISTs of a second or so). */
  list(max: number): Promise<PeerRecord[]>
  /** Sends `intro` to `instance`; false when no instance of that ID listens. */
  introduce(instance: string, intro: RemoteIntroduction): Promise<boolean>
  /** Whether the shared store answered its last request (the rest of the server degrades when not). */
  readonly healthy: boolean
}
