/**
 * The rendezvous server as the user names it: `host[:port][#KEY]`, where KEY is the
 * server's public key as a peer ID (`natd-rendezvous --print-key`). One parser and one
 * resolver for the whole agent (registration, NAT checks, netcheck).
 */
import dns from 'node:dns/promises'
import net from 'node:net'
import { isIPv6, parseEndpoint, type Endpoint } from '../protocol/endpoint.js'
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
}

/** Parses `host[:port][#KEY]`; throws NatdError INVALID_ARGUMENT with what is wrong. */
export function parseServerSpec(spec: string): ServerSpec {
  const hash = spec.indexOf('#')
  const text = hash >= 0 ? spec.slice(0, hash) : spec
  let ep: Endpoint
  try {
    ep = parseEndpoint(text, DEFAULT_SERVER_PORT)
  } catch (err) {
    throw new NatdError('INVALID_ARGUMENT', `--server: ${(err as Error).message}`, { cause: err })
  }
  // The agent's one UDP socket is IPv4 (the mapping the server sees is the one peers punch to).
  if (isIPv6(ep.host)) throw new NatdError('INVALID_ARGUMENT', `--server: ${ep.host} is an IPv6 address; the agent reaches the server over IPv4 (give its IPv4 address or a name with an A record)`)
  let key: Buffer | null = null
  if (hash >= 0) {
    key = parsePeerId(spec.slice(hash + 1))
    if (!key) throw new NatdError('INVALID_ARGUMENT', `--server: ${JSON.stringify(spec.slice(hash + 1))} is not a server key (52 characters a-z2-7, as natd-rendezvous --print-key prints it)`)
  }
  return { text, host: ep.host, port: ep.port, key }
}

/** The server's IPv4 endpoint (the agent's socket is IPv4). */
export async function resolveServer(spec: ServerSpec): Promise<Endpoint> {
  if (net.isIP(spec.host)) return { host: spec.host, port: spec.port }
  try {
    const { address } = await dns.lookup(spec.host, { family: 4 })
    return { host: address, port: spec.port }
  } catch (err) {
    throw new NatdError('SERVER_UNREACHABLE', `cannot resolve ${spec.host}: ${(err as Error).message}`, { cause: err })
  }
}
