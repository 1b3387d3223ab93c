/**
 * What peers may reach on this host (`natctl expose`). Default deny: a channel to a port
 * that is not exposed, or not to that peer, is refused with NOT_EXPOSED and logged.
 */
import net from 'node:net'
import { NatdError } from '../protocol/errors.js'
import { isValidName } from '../protocol/identity.js'
import type { Logger } from '../protocol/log.js'
import type { ExposeInfo } from '../ipc/schema.js'
import type { OpenRequest } from '../tunnel/mux.js'
import type { Tunnel } from '../tunnel/tunnel.js'
import type { ExposeSpec, StateStore } from './config.js'
import { join } from './pipe.js'

/** Connecting to the exposed local service must finish within this. */
export const EXPOSE_CONNECT_TIMEOUT_MS = 10_000

export class Exposes {
  constructor(
    private readonly store: StateStore,
    private readonly log: Logger
  ) {}

  list(): ExposeInfo[] {
    return this.store.exposes
  }

  /** Adds or replaces the exposure of `port`. */
  add(spec: ExposeSpec): ExposeInfo {
    if (!net.isIP(spec.host)) throw new NatdError('INVALID_ARGUMENT', `--host must be an IP address, not ${JSON.stringify(spec.host)}`)
    for (const p of spec.allow) if (!isValidName(p) && !/^[a-z2-7]{8,52}$/.test(p)) throw new NatdError('INVALID_ARGUMENT', `--allow ${JSON.stringify(p)} is not a peer name or ID`)
    const rest = this.store.exposes.filter((e) => e.port !== spec.port)
    this.store.setExposes([...rest, spec].sort((a, b) => a.port - b.port))
    this.log.info('port exposed', { ...spec })
    return spec
  }

  remove(port: number): ExposeInfo {
    const spec = this.store.exposes.find((e) => e.port === port)
    if (!spec) throw new NatdError('INVALID_ARGUMENT', `port ${port} is not exposed`)
    this.store.setExposes(this.store.exposes.filter((e) => e.port !== port))
    this.log.info('port unexposed', { ...spec })
    return spec
  }

  /** A peer opens a channel to `req.port`. */
  onChannel(tunnel: Tunnel, req: OpenRequest): void {
    const peer = tunnel.peer
    const spec = this.store.exposes.find((e) => e.port === req.port)
    if (!spec || (spec.allow.length > 0 && !spec.allow.some((a) => a === peer.name || peer.id.startsWith(a)))) {
      this.log.warn('NOT_EXPOSED: refused a connection from a peer', { peer: peer.name, port: req.port })
      req.reject('NOT_EXPOSED', `port ${req.port} is not exposed to ${peer.name}`)
      return
    }
    // Half-open both ways: a client that shuts down its sending side still gets the whole reply.
    const sock = net.connect({ port: spec.port, host: spec.host, allowHalfOpen: true })
    sock.setNoDelay(true)
    const timer = setTimeout(() => sock.destroy(new Error('connect timeout')), EXPOSE_CONNECT_TIMEOUT_MS)
    sock.once('connect', () => {
      clearTimeout(timer)
      req.accept()
      join(sock, req.channel)
    })
    sock.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer)
      if (sock.connecting || !sock.remoteAddress) {
        this.log.warn('exposed service unreachable', { peer: peer.name, port: spec.port, host: spec.host, err: err.code ?? err.message })
        req.reject('CONNECT_FAILED', `nothing answers on ${spec.host}:${spec.port} at the peer (${err.code ?? err.message})`)
      }
    })
  }
}
