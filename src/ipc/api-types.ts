/**
 * What the local API carries: every method's parameters and result, and the events
 * subscribers receive (types only; docs/API.md documents the same for programs in other
 * languages). schema.ts re-exports them beside the runtime checks of the same.
 */
import type { ErrorCode } from '../protocol/errors.js'
import type { NatVerdict } from '../protocol/rendezvous.js'
import type { FilteringBehaviour, MappingBehaviour } from '../protocol/stun.js'
import type { PathKind, TunnelSnapshot } from '../protocol/tunnel-snapshot.js'
import type { Via } from '../protocol/via.js'

export type ServerState = 'connecting' | 'registered' | 'backoff' | 'stopped'
export type { PathKind }
/** What `open` may ask for: every Via but 'direct', which only the agent's path upgrades use. */
export type OpenVia = Exclude<Via, 'direct'>

export interface StatusResult {
  version: string
  name: string
  id: string
  server: string
  /** The server key this agent holds: pinned by `--server …#KEY` ('flag') or on first contact ('first-use'). */
  serverKey: { id: string; pinned: 'flag' | 'first-use' } | null
  serverState: ServerState
  registered: boolean
  lastError: { code: ErrorCode | string; message: string } | null
  lastHeartbeatAgoMs: number | null
  serverRttMs: number | null
  publicUdp: string | null
  publicTcp: string | null
  /** Our IPv6 endpoint as the server's IPv6 socket sees it: our IPv6 candidate (docs/API.md#status); null without one. */
  publicUdp6: string | null
  localUdpPort: number
  lan: string[]
  nat: string
  /** TTL of the first punching probes, learnt from the server's distance (2 unless it is near: docs/API.md#status). */
  firstProbeTtl: number
  uptimeMs: number
  tunnels: number
  /** The gateway's port mapping of our ports (PCP, NAT-PMP or UPnP IGD), or why there is none. */
  portMapping: PortMappingStatus
  /** Problems with the agent's state files found at start, for someone to look at (e.g. a learnt.json that did not read); empty when none. */
  stateWarnings: string[]
}

/** A live port mapping, or why there is none (status; see docs/API.md#status). */
export interface PortMappingStatus {
  /** off: --no-port-mapping; probing: asking the gateway; mapped; none: see reason. */
  state: 'off' | 'probing' | 'mapped' | 'none'
  /** The IPv4 default gateway asked; null: none (yet). */
  gateway: string | null
  via: 'pcp' | 'nat-pmp' | 'upnp' | null
  /** The external endpoint peers can reach our UDP port at. */
  udp: string | null
  /** The same for our TCP port, when the gateway mapped it. */
  tcp: string | null
  /** Until the lease ends, if natd could not renew it (it renews at half-life). */
  expiresInMs: number | null
  /**
   * Until natd asks the gateway again after failed attempts (a refusal, no answer, no
   * gateway): 1 min after the first, doubling per failure up to 30 min; null when the
   * latest attempt succeeded.
   */
  retryInMs: number | null
  reason: string | null
}

export interface PeerInfo {
  name: string
  id: string
  online: boolean
  /** null for a pinned peer the server did not list. */
  lastSeenAgoMs: number | null
  /** Its key is pinned to its name (first use, or peer.trust). */
  pinned: boolean
  endpoint: string | null
  tcpEndpoint: string | null
  lan: string[]
  nat: string
  tunnel: PathKind | null
  /**
   * Why it is offline: 'bye' (its natd said goodbye), 'expired' (the server stopped
   * hearing it), 'server-lost' (our own session with the server ended), 'unknown' (an
   * older server, or gone before we started); null while online.
   */
  downReason: 'bye' | 'expired' | 'server-lost' | 'unknown' | null
}

/** A tunnel in `tunnels` and `open`: what Tunnel.snapshot() returns, as it is. */
export type TunnelInfo = TunnelSnapshot

export interface OpenResult extends TunnelInfo {
  tookMs: number
  reused: boolean
}

export interface PingResult {
  peer: string
  path: PathKind
  remote: string
  rttMs: number
  /** Time the call waited for a migrating tunnel to resume before its round trip (0 when it was up). */
  waitedMs: number
}

/** RFC 4787 NAT behaviours as `netcheck` reports them (see docs/API.md#netcheck). */
export type { FilteringBehaviour, MappingBehaviour }

/** What the default gateway offers for port mapping (netcheck; see docs/API.md#netcheck). */
export interface PortMappingReport {
  /** The IPv4 default gateway; null: no default route. */
  gateway: string | null
  pcp: boolean
  natPmp: boolean
  /** It answered a UPnP IGD search and has a port-mapping service (WANIPConnection or WANPPPConnection). */
  upnp: boolean
  /** The gateway's external address, from NAT-PMP, else from UPnP. */
  externalIp: string | null
}

export interface NetcheckResult {
  udp: boolean
  tcp: boolean
  server: string
  serverOtherAddress: string | null
  serverRttMs: number | null
  localPort: number
  publicUdp: string | null
  publicTcp: string | null
  portPreserved: boolean | null
  mapping: MappingBehaviour
  filtering: FilteringBehaviour
  nat: NatVerdict
  previousNat: string
  natChanged: boolean
  probes: {
    primary: string | null
    otherIp: string | null
    otherIpAndPort: string | null
    otherPort: string | null
    filterChangeIpAndPort: boolean | null
    filterChangePort: boolean | null
  }
  portMapping: PortMappingReport
  tookMs: number
}

export interface ForwardInfo {
  localPort: number
  bind: string
  peer: string
  remotePort: number
  connections: number
  /** natd listens on the port now; false for a stored forward whose port could not be bound (see `error`). */
  listening: boolean
  /** Why it is not listening (the bind error), or null. */
  error: string | null
}

/** An allow-list entry: a peer by whole key; `id` null for an old entry that could not be resolved (it matches nobody). */
export interface AllowedPeer {
  name: string
  id: string | null
}

export interface ExposeInfo {
  port: number
  host: string
  allow: AllowedPeer[] // empty = every peer
}

/** A message in the inbox (`messages`, event `message`). */
export interface MessageInfo {
  id: string
  from: string
  fromId: string
  text: string
  sentAt: string
  receivedAt: string
}

export interface MessageSendResult {
  id: string
  peer: string
  sentAt: string
  tookMs: number
  /** The peer had this message ID from us already (a retry): acknowledged, not stored twice. */
  duplicate: boolean
}

/** A file received into the inbox (`files`, event `file`). */
export interface ReceivedFile {
  name: string
  path: string
  size: number
  from: string
  fromId: string
  receivedAt: string
  sha256: string
  transferId: string
}

export interface FileSendResult {
  transferId: string
  peer: string
  path: string
  name: string
  savedAs: string
  size: number
  sha256: string
  /** Bytes the receiver already had (a resumed transfer), not sent again. */
  offset: number
  /** Bytes sent by this call. */
  sent: number
  tookMs: number
  tunnel: PathKind
}

/** Event `file.progress`: a file being sent. */
export interface FileProgress {
  transferId: string
  peer: string
  path: string
  name: string
  size: number
  offset: number
  sent: number
}

/** A partial file in the inbox (`files.partials`): a transfer cut off, kept for a resume until it is PARTIAL_MAX_AGE_MS old. */
export interface PartialFile {
  key: string
  /** The sender's whole ID. */
  fromId: string
  /** As the sender offered it (made safe); '' when natd has not seen the offer since it started. */
  name: string
  bytes: number
  updatedAt: string
  /** Being received now. */
  active: boolean
}

/** Per-peer limits on what a peer may leave in our inbox (files.policy; defaults in docs/API.md). */
export interface Quotas {
  /** Files from one peer in the inbox (received ones still there, plus partials). */
  filesPerPeer: number
  /** Their bytes. */
  fileBytesPerPeer: number
  /** Messages from one peer in messages.jsonl. */
  messagesPerPeer: number
  /** Their text, in UTF-8 bytes. */
  messageBytesPerPeer: number
  /** A transfer that makes no progress for this long is cut off (TIMEOUT on both ends). */
  stallTimeoutMs: number
}

export interface FilesPolicy extends Quotas {
  allow: AllowedPeer[] // empty = every peer
  maxSizeBytes: number
  /** Set by the operator only (natd --inbox or "inbox" in the config file), never over the API. */
  inbox: string
}

/** file.send: natd sends the bytes the caller streams on the data connection `source` (ipc/file-stream.ts); it opens no file. */
export interface FileSendParams {
  peer: string
  /** The data connection's token. */
  source: string
  /** The name the peer gets. */
  name: string
  size: number
  mtimeMs: number
  dev: number
  ino: number
  /** The caller's path, only to label results and file.progress events; natd never opens it. */
  path: string
  timeoutMs: number
}

/** files.policy: absent or null = unchanged. */
export type FilesPolicyParams = { allow: string[] | null; maxSizeBytes: number | null; inbox: string | null } & { [K in keyof Quotas]: number | null }

export interface TrustResult {
  name: string
  id: string
  /** The ID pinned before, when `replace` changed it; null otherwise. */
  replaced: string | null
}

export interface Methods {
  status: { params: Record<string, never>; result: StatusResult }
  peers: { params: Record<string, never>; result: PeerInfo[] }
  'peer.trust': { params: { name: string; id: string; replace: boolean }; result: TrustResult }
  'peer.untrust': { params: { name: string }; result: { name: string; id: string } }
  subscribe: { params: { events: EventName[] }; result: { subscribed: EventName[] } }
  'auth.challenge': { params: Record<string, never>; result: { nonce: string } }
  'auth.prove': { params: { uid: number; path: string }; result: { uid: number } }
  open: { params: { peer: string; via: OpenVia; timeoutMs: number }; result: OpenResult }
  close: { params: { peer: string }; result: { closed: boolean } }
  tunnels: { params: Record<string, never>; result: TunnelInfo[] }
  ping: { params: { peer: string; timeoutMs: number }; result: PingResult }
  netcheck: { params: Record<string, never>; result: NetcheckResult }
  'forward.add': { params: { localPort: number; peer: string; remotePort: number; bind: string }; result: ForwardInfo }
  'forward.ls': { params: Record<string, never>; result: ForwardInfo[] }
  'forward.rm': { params: { localPort: number }; result: { removed: ForwardInfo } }
  'expose.add': { params: { port: number; host: string; allow: string[] }; result: ExposeInfo }
  'expose.ls': { params: Record<string, never>; result: ExposeInfo[] }
  'expose.rm': { params: { port: number }; result: { removed: ExposeInfo } }
  'message.send': { params: { peer: string; text: string; timeoutMs: number; id: string | null }; result: MessageSendResult }
  messages: { params: { from: string; limit: number }; result: MessageInfo[] }
  'messages.clear': { params: { from: string }; result: { removed: number } }
  'file.send': { params: FileSendParams; result: FileSendResult }
  files: { params: Record<string, never>; result: ReceivedFile[] }
  'files.partials': { params: Record<string, never>; result: PartialFile[] }
  'files.policy': { params: FilesPolicyParams; result: FilesPolicy }
}

export type MethodName = keyof Methods
export type Params<M extends MethodName> = Methods[M]['params']
export type Result<M extends MethodName> = Methods[M]['result']

export interface Events {
  'peer.up': PeerInfo
  'peer.down': PeerInfo
  'server.state': { state: ServerState; error: { code: string; message: string } | null }
  'tunnel.state': { peer: string; id: string; state: 'up' | 'migrating' | 'down'; path: PathKind | null; remote: string | null; reason: string | null }
  message: MessageInfo
  file: ReceivedFile
  'file.progress': FileProgress
}
export type EventName = keyof Events
