// A fake PCP gateway for the port-mapping keeper's tests (port-mapping*.test.ts): it
// grants or refuses MAP requests, keeps an epoch, and records what it was asked.
import type { SilentGatewayCache } from '../../../src/daemon/port-mapping.js'
import { PortMapper } from '../../../src/portmap/port-mapper.js'
import { hex } from '../helpers.js'

export const GW = { host: '10.1.0.1', port: 5351 }

/** A PCP gateway granting `lifetimeS` (or refusing with `result`), and what it was asked. */
export function fakeGateway(o: { pcp: boolean; lifetimeS?: number }) {
  // at: the (fake) clock time of the request
  const asked: Array<{ op: number; lifetimeS: number; nonce: string; protocol: number; at: number }> = []
  let sent = 0
  // gateway: the default gateway connect() finds (null: no default route).
  const g = { result: 0, pcp: o.pcp, epoch: 1, external: 'c6120102', portOffset: 0, mapDelayMs: 0, gateway: GW.host as string | null }
  let closed = 0
  let connects = 0
  const mapper: PortMapper = new PortMapper({ gateway: GW.host, localIp: '10.1.0.2' }, {
    randomBytes: (n) => Buffer.alloc(n, 9),
    send: (b) => {
      const req = Buffer.from(b)
      sent++
      if (req[0] !== 2 || !g.pcp) return // no NAT-PMP here, and PCP only when asked for
      asked.push({ op: req[1]!, lifetimeS: req.readUInt32BE(4), nonce: req.subarray(24, 36).toString('hex'), protocol: req[36] ?? 0, at: Date.now() })
      const granted = req[1] === 1 && req.readUInt32BE(4) > 0 ? (o.lifetimeS ?? 7200) : 0
      const head = Buffer.concat([hex(`02 ${(0x80 | req[1]!).toString(16)} 00`), Buffer.from([req[1] === 1 ? g.result : 0]), Buffer.alloc(4), Buffer.alloc(4), Buffer.alloc(12)])
      head.writeUInt32BE(granted, 4)
      head.writeUInt32BE(g.epoch, 8)
      const payload = req[1] === 1 ? Buffer.from(req.subarray(24, 60)) : Buffer.alloc(0)
      if (payload.length) {
        payload.set(hex(g.external), 32)
        payload.writeUInt16BE(payload.readUInt16BE(18) + g.portOffset, 18)
      }
      const answer = (): void => mapper.onMessage(Buffer.concat([head, payload]), GW)
      if (req[1] === 1 && g.mapDelayMs > 0) setTimeout(answer, g.mapDelayMs)
      else queueMicrotask(answer)
    }
  })
  return {
    g,
    asked,
    maps: (protocol = 17) => asked.filter((a) => a.op === 1 && a.protocol === protocol),
    /** Datagrams of any protocol sent to the gateway, answered or not. */
    sent: () => sent,
    closed: () => closed,
    connects: () => connects,
    connect: async () => {
      connects++
      return g.gateway === null ? null : { gateway: g.gateway, mapper, close: () => void closed++ }
    }
  }
}

export function memoryCache(initial: string | null = null): SilentGatewayCache & { value: string | null } {
  const c = {
    value: initial,
    get: () => c.value,
    set: (v: string | null) => void (c.value = v)
  }
  return c
}
