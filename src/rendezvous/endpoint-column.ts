/**
 * One endpoint (or none) per registry slot. IPv4 is packed into typed arrays (u32
 * address, u16 port: 7 bytes a slot with its kind) instead of an `{host, port}` object and
 * its host string (~80 B); anything else (IPv6) is rare and kept aside as an object.
 */
import type { Endpoint } from '../protocol/endpoint.js'

const NONE = 0
const IPV4 = 4
const OTHER = 6

export class EndpointColumn {
  private kind = new Uint8Array(0)
  private addr = new Uint32Array(0)
  private port = new Uint16Array(0)
  private readonly other = new Map<number, Endpoint>()

  /** Makes room for slots below `capacity`, keeping what is stored. */
  grow(capacity: number): void {
    this.kind = grown(this.kind, new Uint8Array(capacity))
    this.addr = grown(this.addr, new Uint32Array(capacity))
    this.port = grown(this.port, new Uint16Array(capacity))
  }

  set(slot: number, ep: Endpoint | null): void {
    if (this.kind[slot] === OTHER) this.other.delete(slot)
    const addr = ep ? ipv4ToU32(ep.host) : -1
    if (!ep) {
      this.kind[slot] = NONE
    } else if (addr >= 0) {
      this.kind[slot] = IPV4
      this.addr[slot] = addr
      this.port[slot] = ep.port
    } else {
      this.kind[slot] = OTHER
      this.other.set(slot, { host: ep.host, port: ep.port })
    }
  }

  get(slot: number): Endpoint | null {
    switch (this.kind[slot]) {
      case IPV4:
        return { host: u32ToIpv4(this.addr[slot]!), port: this.port[slot]! }
      case OTHER:
        return this.other.get(slot) ?? null
      default:
        return null
    }
  }

  /** Whether the slot holds exactly `ep` (without building an Endpoint: the heartbeat path). */
  is(slot: number, ep: Endpoint): boolean {
    switch (this.kind[slot]) {
      case IPV4:
        return this.port[slot] === ep.port && this.addr[slot] === ipv4ToU32(ep.host)
      case OTHER: {
        const mine = this.other.get(slot)
        return mine?.port === ep.port && mine.host === ep.host
      }
      default:
        return false
    }
  }
}

/** `into` with the start of `from` copied over it. */
export function grown<T extends Uint8Array | Uint16Array | Uint32Array | Float64Array>(from: T, into: T): T {
  into.set(from)
  return into
}

/**
 * The dotted quad as a u32, or -1 when `host` is not one in canonical form (no leading
 * zeros: u32ToIpv4 must give back the same string), e.g. IPv6 or a v4-mapped address.
 */
function ipv4ToU32(host: string): number {
  let value = 0
  let part = 0
  let digits = 0
  let dots = 0
  for (let i = 0; i < host.length; i++) {
    const c = host.charCodeAt(i)
    if (c === 46 /* . */) {
      if (digits === 0 || ++dots > 3) return -1
      value = value * 256 + part
      part = digits = 0
    } else if (c >= 48 && c <= 57 && digits < 3 && !(digits > 0 && part === 0)) {
      part = part * 10 + (c - 48)
      digits++
      if (part > 255) return -1
    } else {
      return -1
    }
  }
  if (dots !== 3 || digits === 0) return -1
  return value * 256 + part
}

function u32ToIpv4(value: number): string {
  return `${value >>> 24}.${(value >>> 16) & 255}.${(value >>> 8) & 255}.${value & 255}`
}
