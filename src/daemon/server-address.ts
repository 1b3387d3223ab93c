/**
 * The rendezvous server as the user names it: `host[:port][#KEY]`, where KEY is the
 * server's public key as a peer ID (`natd-rendezvous --print-key`). One parser and one
 * resolver for the whole agent (registration, NAT checks, netcheck).
 *
 * Several instances of one deployment (natd-rendezvous --redis): a list,
 * `host[:port],host[:port]…[#KEY]`, and/or a name with several A records. They share one
 * key (one #KEY pins them all). The agent registers with one, its home (server-choice.ts).
 *
 * A name gives its A records and its AAAA records (a server started with --host6 is
 * reachable over IPv6 too): an IPv6-only host registers over IPv6 with the same
 * `--server NAME` as everyone else. A dual-stack agent still registers over IPv4 when it
 * can (server-choice.ts ranks IPv4 first: its IPv4 mapping is what IPv4 peers punch to)
 * and learns the server's IPv6 socket from REGISTER_ACK, under the Noise session, not
 * from DNS. What a resolver's answer can make us do: dial at most
 * MAX_ADDRESSES_PER_NAME addresses of each family per name, MAX_SERVERS in all, once
 * each (the ranking's TCP connect), all at the port the user gave.
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

/** Instances named in one --server, at most (a list is typed by hand); also the most addresses all its names may resolve to. */
export const MAX_SERVERS = 16

/** Addresses of one family kept from one name's answer: a deployment has a few instances, and each is dialed once when ranking. */
export const MAX_ADDRESSES_PER_NAME = 4

/** Looks `host` up in one address family (A: 4, AAAA: 6), the resolver's order kept. Injected in tests. */
export type Resolve = (host: string, family: 4 | 6) => Promise<string[]>

/** The system resolver (getaddrinfo: /etc/hosts, then DNS), as every other program on the host resolves. */
export const systemResolve: Resolve = async (host, family) => (await dns.lookup(host, { family, all: true })).map((a) => a.address)

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
  // An IPv6 literal (or a name's AAAA record) is reached from the agent's IPv6 socket (ipv6-socket.ts).
  let key: Buffer | null = null
  if (hash >= 0) {
    key = parsePeerId(spec.slice(hash + 1))
    if (!key) throw new NatdError('INVALID_ARGUMENT', `--server: ${JSON.stringify(spec.slice(hash + 1))} is not a server key (52 characters a-z2-7, as natd-rendezvous --print-key prints it)`)
  }
  return { text, host: ep.host, port: ep.port, key }
}

/**
 * A name's addresses: its A records, then its AAAA records (each family looked up at
 * once, at most MAX_ADDRESSES_PER_NAME of each; v4-mapped answers dropped). Rejects
 * only when neither family gives an address.
 */
async function lookupBoth(host: string, resolve: Resolve): Promise<string[]> {
  const [a, aaaa] = await Promise.allSettled([resolve(host, 4), resolve(host, 6)])
  const v4 = a.status === 'fulfilled' ? a.value.filter((h) => net.isIPv4(h)).slice(0, MAX_ADDRESSES_PER_NAME) : []
  const v6 = aaaa.status === 'fulfilled' ? aaaa.value.filter((h) => net.isIPv6(h) && !h.includes('.')).slice(0, MAX_ADDRESSES_PER_NAME) : []
  if (!v4.length && !v6.length) throw a.status === 'rejected' ? a.reason : aaaa.status === 'rejected' ? aaaa.reason : new Error('no address')
  return [...v4, ...v6]
}

/**
 * Every endpoint of every server named (a name's A and AAAA records), in the order
 * given, without repeats, at most MAX_SERVERS. server-choice.ts ranks them.
 */
export async function resolveServers(spec: ServerSpec, resolve: Resolve = systemResolve): Promise<Endpoint[]> {
  const out: Endpoint[] = []
  let lastErr: unknown = null
  for (const { host, port } of [{ host: spec.host, port: spec.port }, ...(spec.alternates ?? [])]) {
    let hosts: string[]
    try {
      hosts = net.isIP(host) ? [host] : await lookupBoth(host, resolve)
    } catch (err) {
      lastErr = err
      continue
    }
    for (const h of hosts) if (out.length < MAX_SERVERS && !out.some((e) => e.host === h && e.port === port)) out.push({ host: h, port })
  }
  if (!out.length) throw new NatdError('SERVER_UNREACHABLE', `cannot resolve ${spec.text}: ${(lastErr as Error | null)?.message ?? 'no address'}`, { cause: lastErr })
  return out
}

/** The server's endpoint: an IP literal as given (IPv4 or IPv6), else a name's first A record, or its first AAAA record when it has none. */
export async function resolveServer(spec: ServerSpec, resolve: Resolve = systemResolve): Promise<Endpoint> {
  if (net.isIP(spec.host)) return { host: spec.host, port: spec.port }
  try {
    const [address] = await lookupBoth(spec.host, resolve)
    return { host: address!, port: spec.port }
  } catch (err) {
    throw new NatdError('SERVER_UNREACHABLE', `cannot resolve ${spec.host}: ${(err as Error).message}`, { cause: err })
  }
}
