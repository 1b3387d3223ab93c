/**
 * The rendezvous server as the user names it: `host[:port][#KEY]`, where KEY is the
 * server's public key as a peer ID (`natd-rendezvous --print-key`). One parser and one
 * resolver for the whole agent (registration, NAT checks, netcheck).
 *
 * Several instances of one deployment (natd-rendezvous --redis): a list,
 * `host[:port],host[:port]…[#KEY]`, and/or a name with several A records. They share one
 * key (one #KEY pins them all). The agent registers with one, its home (server-choice.ts).
 */
import dns from 'node:dns/promises'
import net from 'node:net'
import { parseEndpoint, type Endpoint } from '../protocol/endpoint.js'
import { NatdError } from '../protocol/errors.js'
import { parsePeerId } from '../protocol/identity.js'

export const DEFAULT_SERVER_PORT = 3478

export interface ServerSpec {
  /** `host[:port]` as given, without the key. */
  text: string
  host: string
  port: number
  /** The pinned server key, when the user gave one. */
  key: Buffer | null
  /** A list: the instances after the first (host and port above); absent for one server. */
  alternates?: { host: string; port: number }[]
}

/** Instances named in one --server, at most (a list is typed by hand). */
export const MAX_SERVERS = 16

/** Parses `host[:port][#KEY]` or a comma-separated list of them; throws NatdError INVALID_ARGUMENT with what is wrong. */
export function parseServerSpec(spec: string): ServerSpec {
  if (!spec.includes(',')) return parseOne(spec)
  const parts = spec.split(',').map((p) => p.trim())
  if (parts.length > MAX_SERVERS) throw new NatdError('INVALID_ARGUMENT', `--server: at most ${MAX_SERVERS} servers in a list`)
  const specs = parts.map(parseOne)
  const keys = specs.map((s) => s.key).filter((k): k is Buffer => k !== null)
  if (keys.some((k) => !k.equals(keys[0]!))) throw new NatdError('INVALID_ARGUMENT', '--server: the servers of one list are one deployment and share one key; two different keys were given')
  const [first, ...rest] = specs
  return { text: specs.map((s) => s.text).join(','), host: first!.host, port: first!.port, key: keys[0] ?? null, alternates: rest.map(({ host, port }) => ({ host, port })) }
}

function parseOne(spec: string): ServerSpec {
  const hash = spec.indexOf('#')
  const text = hash >= 0 ? spec.slice(0, hash) : spec
  let ep: Endpoint
  try {
    ep = parseEndpoint(text, DEFAULT_SERVER_PORT)
  } catch (err) {
    throw new NatdError('INVALID_ARGUMENT', `--server: ${(err as Error).message}`, { cause: err })
  }
  // An IPv6 literal is reached from the agent's IPv6 socket (ipv6-socket.ts): an IPv6-only
  // host names its server so. A name is still resolved to its A records only.
  let key: Buffer | null = null
  if (hash >= 0) {
    key = parsePeerId(spec.slice(hash + 1))
    if (!key) throw new NatdError('INVALID_ARGUMENT', `--server: ${JSON.stringify(spec.slice(hash + 1))} is not a server key (52 characters a-z2-7, as natd-rendezvous --print-key prints it)`)
  }
  return { text, host: ep.host, port: ep.port, key }
}

/** Every IPv4 endpoint of every server named (a name's every A record), in the order given, without repeats. */
export async function resolveServers(spec: ServerSpec): Promise<Endpoint[]> {
  const out: Endpoint[] = []
  let lastErr: unknown = null
  for (const { host, port } of [{ host: spec.host, port: spec.port }, ...(spec.alternates ?? [])]) {
    let hosts: string[]
    try {
      hosts = net.isIP(host) ? [host] : (await dns.lookup(host, { family: 4, all: true })).map((a) => a.address)
    } catch (err) {
      lastErr = err
      continue
    }
    for (const h of hosts) if (!out.some((e) => e.host === h && e.port === port)) out.push({ host: h, port })
  }
  if (!out.length) throw new NatdError('SERVER_UNREACHABLE', `cannot resolve ${spec.text}: ${(lastErr as Error | null)?.message ?? 'no address'}`, { cause: lastErr })
  return out
}

/** The server's endpoint: an IP literal as given (IPv4 or IPv6), a name's first A record. */
export async function resolveServer(spec: ServerSpec): Promise<Endpoint> {
  if (net.isIP(spec.host)) return { host: spec.host, port: spec.port }
  try {
    const { address } = await dns.lookup(spec.host, { family: 4 })
    return { host: address, port: spec.port }
  } catch (err) {
    throw new NatdError('SERVER_UNREACHABLE', `cannot resolve ${spec.host}: ${(err as Error).message}`, { cause: err })
  }
}
