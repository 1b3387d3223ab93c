/**
 * Peer records and introductions as the instances of a shared registry pass them through
 * Redis (redis-cluster.ts): JSON, parsed and bounded like wire input, since whatever comes
 * back from Redis may be corrupt.
 */
import type { Endpoint } from '../protocol/endpoint.js'
import { DATAGRAM_KEY_BYTES, INTRO_ID_BYTES, KEY_BYTES, NAT_VERDICTS, type NatVerdict, type PeerRecord } from '../protocol/rendezvous.js'
import { VIAS, type Via } from '../protocol/via.js'
import { hexBytes, isJsonObject as isObject, parseJson } from '../common/untrusted-json.js'
import type { RemoteIntroduction } from './cluster.js'

/** Records per flush pipeline and per published event: bounds one message and one burst. */
export const BATCH = 500
/** A message from Redis larger than this is ignored (a record is < 1 KiB; events carry BATCH). */
export const MAX_MESSAGE_CHARS = 1_000_000

export interface RecordJson {
  k: string
  n: string
  nat: string
  u: [string, number] | null
  t: [string, number] | null
  l: [string, number][]
}

export function recordJson(r: PeerRecord): RecordJson {
  const ep = (e: Endpoint | null): [string, number] | null => (e ? [e.host, e.port] : null)
  return { k: hex(r.publicKey), n: r.name, nat: r.nat, u: ep(r.udp), t: ep(r.tcp), l: r.lan.map((e) => [e.host, e.port]) }
}

export function parseRecord(raw: string): PeerRecord | null {
  return raw.length <= MAX_MESSAGE_CHARS ? recordFromJson(parseJson(raw)) : null
}

export function recordFromJson(v: unknown): PeerRecord | null {
  if (!isObject(v) || typeof v.k !== 'string' || !/^[0-9a-f]{64}$/.test(v.k) || typeof v.n !== 'string' || v.n.length > 255) return null
  if (!(NAT_VERDICTS as readonly string[]).includes(v.nat as string)) return null
  const udp = endpointFrom(v.u)
  const tcp = endpointFrom(v.t)
  if (udp === undefined || tcp === undefined || !Array.isArray(v.l) || v.l.length > 16) return null
  const lan: Endpoint[] = []
  for (const e of v.l) {
    const ep = endpointFrom(e)
    if (!ep) return null
    lan.push(ep)
  }
  return { publicKey: Buffer.from(v.k, 'hex'), name: v.n, online: true, lastSeenAgoMs: 0, nat: v.nat as NatVerdict, udp, tcp, lan }
}

/** An endpoint, null for none, undefined when malformed. */
function endpointFrom(v: unknown): Endpoint | null | undefined {
  if (v === null) return null
  if (Array.isArray(v) && v.length === 2 && typeof v[0] === 'string' && v[0].length <= 64 && Number.isInteger(v[1]) && v[1] > 0 && v[1] < 65536) {
    return { host: v[0], port: v[1] as number }
  }
  if (isObject(v) && typeof v.host === 'string' && v.host.length <= 64 && Number.isInteger(v.port) && (v.port as number) > 0 && (v.port as number) < 65536) {
    return { host: v.host, port: v.port as number }
  }
  return undefined
}

/** An introduction for another instance's agent, as published on its channel. */
export function introductionJson(intro: RemoteIntroduction): string {
  return JSON.stringify({
    t: hex(intro.targetKey),
    id: hex(intro.introId),
    pk: hex(intro.punchKey),
    via: intro.via,
    from: recordJson(intro.from),
    relay: intro.relay
  })
}

export function parseIntroduction(raw: string): RemoteIntroduction | null {
  const v = raw.length <= MAX_MESSAGE_CHARS ? parseJson(raw) : null
  if (!isObject(v)) return null
  const from = recordFromJson(v.from)
  const relay = endpointFrom(v.relay)
  const targetKey = hexBytes(v.t, KEY_BYTES)
  const introId = hexBytes(v.id, INTRO_ID_BYTES)
  const punchKey = hexBytes(v.pk, DATAGRAM_KEY_BYTES)
  if (!from || relay === undefined || !targetKey || !introId || !punchKey || !(VIAS as readonly string[]).includes(v.via as string)) return null
  return { targetKey, introId, punchKey, via: v.via as Via, from, relay }
}

export function hex(b: Uint8Array): string {
  return Buffer.from(b).toString('hex')
}
