/**
 * `natctl netcheck`'s port-mapping line, like `tailscale netcheck`'s "PortMapping: …":
 * which of PCP, NAT-PMP (src/portmap/port-mapper.ts) and UPnP IGD (upnp-client.ts) the
 * default gateway answers, probed from throwaway sockets. It only asks; it maps nothing.
 * And the sockets the agent's port mappings (port-mapping.ts) talk to the gateway on.
 *
 * The gateway is the IPv4 default route's (Linux: /proc/net/route); the address we probe
 * from is the one the kernel picks to reach it (a connected UDP socket's local address),
 * which PCP needs as its client IP.
 */
import dgram from 'node:dgram'
import { randomBytes } from 'node:crypto'
import fs from 'node:fs/promises'
import type { PortMappingReport } from '../ipc/schema.js'
import { systemRandom } from '../protocol/clock.js'
import { probeGateway } from '../portmap/gateway-probe.js'
import { PORT_MAPPING_PORT } from '../portmap/natpmp.js'
import { PortMapper, type PortMapping } from '../portmap/port-mapper.js'
import { SSDP_MULTICAST, SSDP_MULTICAST_TTL, SSDP_PORT } from '../portmap/upnp.js'
import { UpnpClient, type SsdpDestination } from '../portmap/upnp-client.js'
import { gatewayHttp } from './gateway-http.js'

/**
 * The IPv4 default gateway in /proc/net/route's text, or null (the lowest metric wins).
 * Addresses there are hex in host (little-endian) order: 010200C0 is 192.0.2.1.
 */
export function defaultGatewayOf(procNetRoute: string): string | null {
  let best: { gw: string; metric: number } | null = null
  for (const line of procNetRoute.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/)
    if (f.length < 8 || f[1] !== '00000000' || f[7] !== '00000000') continue
    const flags = parseInt(f[3]!, 16)
    if (!(flags & 0x1) || !(flags & 0x2)) continue // RTF_UP and RTF_GATEWAY
    const hex = f[2]!
    if (!/^[0-9a-fA-F]{8}$/.test(hex)) continue
    const gw = [6, 4, 2, 0].map((i) => parseInt(hex.slice(i, i + 2), 16)).join('.')
    const metric = Number(f[6])
    if (!best || metric < best.metric) best = { gw, metric }
  }
  return best?.gw ?? null
}

export interface GatewayClient {
  gateway: string
  mapper: PortMapper
  /** UPnP IGD; absent: not asked. */
  upnp?: UpnpClient | null
  close: () => void
}

/**
 * A PortMapper on a UDP socket connected to the default gateway's port 5351, and a
 * UpnpClient on another (SSDP answers may come from any port of the gateway's address,
 * and the search also goes to SSDP's multicast group);
 * null: no default route. Never rejects.
 */
export async function gatewayClient(): Promise<GatewayClient | null> {
  const gateway = defaultGatewayOf(await fs.readFile('/proc/net/route', 'utf8').catch(() => ''))
  if (!gateway) return null
  const sock = dgram.createSocket('udp4')
  const ssdp = dgram.createSocket('udp4')
  // An ICMP port unreachable from a gateway without the service: just no answer.
  sock.on('error', () => undefined)
  ssdp.on('error', () => undefined)
  const close = (): void => {
    for (const s of [sock, ssdp]) {
      try {
        s.close()
      } catch {
        // not bound yet, or closed already
      }
    }
  }
  try {
    await settled(sock, (done) => sock.connect(PORT_MAPPING_PORT, gateway, done))
    const localIp = sock.address().address
    const mapper = new PortMapper({ gateway, localIp }, { send: (buf) => sock.send(buf), randomBytes: (n) => randomBytes(n) })
    sock.on('message', (msg, rinfo) => mapper.onMessage(msg, { host: rinfo.address, port: rinfo.port }))
    await settled(ssdp, (done) => ssdp.bind(0, localIp, done))
    // The multicast search leaves by the interface that reaches the gateway (the default
    // route's), with SSDP's TTL 2, and does not come back to us.
    // A host that cannot send multicast still searches by unicast (and maps by PCP).
    let multicast = true
    try {
      ssdp.setMulticastInterface(localIp)
      ssdp.setMulticastTTL(SSDP_MULTICAST_TTL)
      ssdp.setMulticastLoopback(false)
    } catch {
      multicast = false
    }
    const sendSsdp = (buf: Uint8Array, to: SsdpDestination): void => {
      if (to === 'gateway') ssdp.send(buf, SSDP_PORT, gateway, () => undefined)
      else if (multicast) ssdp.send(buf, SSDP_PORT, SSDP_MULTICAST, () => undefined)
    }
    const upnp = new UpnpClient({ gateway, localIp }, { sendSsdp, http: gatewayHttp(gateway), random: systemRandom })
    ssdp.on('message', (msg, rinfo) => upnp.onSsdpMessage(msg, { host: rinfo.address, port: rinfo.port }))
    return { gateway, mapper, upnp, close }
  } catch {
    close()
    return null
  }
}

/**
 * Runs a socket's bind or connect: resolves when it is done, rejects on the 'error' it
 * reports instead (a socket reports failure only as an event: without this, the
 * start would wait for ever).
 */
function settled(socket: dgram.Socket, start: (done: () => void) => void): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    socket.once('error', reject)
    start(() => {
      socket.off('error', reject)
      resolve()
    })
  })
}

/** Removes `m` by the protocol that made it. */
export function unmap(client: GatewayClient, m: PortMapping): Promise<void> {
  if (m.via !== 'upnp') return client.mapper.unmap(m)
  return client.upnp ? client.upnp.unmap(m) : Promise.reject(new Error('no UPnP client'))
}

/** Which port-mapping protocols the default gateway answers (all three, each waited for). Never rejects. */
export async function probePortMapping(signal?: AbortSignal): Promise<PortMappingReport> {
  const client = await gatewayClient()
  if (!client) return { gateway: null, pcp: false, natPmp: false, upnp: false, externalIp: null }
  try {
    const { pcp, natPmp, upnp, externalIp } = await probeGateway(client.mapper, client.upnp ?? null, signal ? { signal } : {})
    return { gateway: client.gateway, pcp, natPmp, upnp, externalIp }
  } finally {
    client.close()
  }
}
