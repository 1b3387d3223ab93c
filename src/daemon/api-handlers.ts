/**
 * The local API's method table (ipc/schema.ts names the methods; docs/API.md documents
 * them) and the views it returns, over the parts of a running agent. A method called
 * before the agent started a part fails with NOT_REGISTERED "not started".
 */
import { systemClock, type TimerClock } from '../protocol/clock.js'
import { formatEndpoint } from '../protocol/endpoint.js'
import { NatdError } from '../protocol/errors.js'
import { peerId } from '../protocol/identity.js'
import type { PeerRecord } from '../protocol/rendezvous.js'
import type { Handlers } from '../ipc/server.js'
import type { FileStreamServer } from '../ipc/file-stream.js'
import type { PeerInfo, StatusResult } from '../ipc/schema.js'
import type { TunnelManager } from '../tunnel/manager.js'
import { pingAcross } from '../tunnel/ping-across.js'
import type { Exposes } from './exposes.js'
import type { Files } from './files.js'
import type { Forwards } from './forwards.js'
import type { KnownPeers } from './known-peers.js'
import type { DownReason, PeerPresence } from './peer-presence.js'
import type { Messages } from './messages.js'
import type { NatMonitor } from './nat-monitor.js'
import type { RendezvousClient } from './rendezvous-client.js'

/** What the API reaches in an agent; the parts start() makes are null before. */
export interface AgentParts {
  status(): StatusResult
  client: RendezvousClient | null
  tunnels: TunnelManager | null
  forwards: Forwards | null
  messages: Messages | null
  files: Files | null
  streams: FileStreamServer | null
  nat: NatMonitor | null
  exposes: Exposes
  known: KnownPeers
  /**
   * Resolves once every config change so far is on disk (config-json.ts); a method that
   * changes config answers only then, or with its STATE_WRITE_FAILED.
   */
  durable(): Promise<void>
  /** Why each offline peer went (peer-presence.ts); absent in tests that need none. */
  presence?: PeerPresence
  /** The agent's clock (a ping's deadline); the system's when absent. */
  clock?: TimerClock
}

function started<T>(part: T | null): T {
  if (!part) throw new NatdError('NOT_REGISTERED', 'not started')
  return part
}

/** A peer as `peers` and the peer.up/down events show it. */
export function peerInfo(p: PeerRecord, known: Pick<KnownPeers, 'isPinned'>, tunnels: Pick<TunnelManager, 'get'> | null, why: (id: string) => DownReason | null = () => null): PeerInfo {
  const id = peerId(p.publicKey)
  return {
    name: p.name,
    id,
    online: p.online,
    lastSeenAgoMs: p.lastSeenAgoMs,
    endpoint: p.udp ? formatEndpoint(p.udp) : null,
    tcpEndpoint: p.tcp ? formatEndpoint(p.tcp) : null,
    lan: p.lan.map(formatEndpoint),
    nat: p.nat,
    pinned: known.isPinned({ name: p.name, id }),
    tunnel: tunnels?.get(id)?.path ?? null,
    downReason: p.online ? null : (why(id) ?? 'unknown')
  }
}

/** The method table; `parts()` is read at each call (parts appear as the agent starts). */
export function apiHandlers(parts: () => AgentParts): Handlers {
  const tunnels = (): TunnelManager => started(parts().tunnels)
  const forwards = (): Forwards => started(parts().forwards)
  /** The change's answer, once the change is on disk. */
  const saved = async <T>(change: T | Promise<T>): Promise<T> => {
    const result = await change
    await parts().durable()
    return result
  }
  return {
    status: () => parts().status(),
    peers: async () => {
      const { client, known, tunnels: live, presence } = parts()
      const why = (id: string): DownReason | null => presence?.reason(id) ?? null
      const peers = (await started(client).list()).map((p) => peerInfo(p, known, live, why))
      // Pinned peers the server did not list (offline and forgotten there, or unknown to it).
      for (const k of known.list()) {
        if (peers.some((p) => p.id === k.id)) continue
        peers.push({ name: k.name, id: k.id, online: false, lastSeenAgoMs: null, endpoint: null, tcpEndpoint: null, lan: [], nat: 'unknown', pinned: true, tunnel: live?.get(k.id)?.path ?? null, downReason: why(k.id) ?? 'unknown' })
      }
      return peers.sort((a, b) => Number(b.online) - Number(a.online) || a.name.localeCompare(b.name))
    },
    'peer.trust': ({ name, id, replace }) => saved(parts().known.trust(name, id, replace)),
    'peer.untrust': ({ name }) => saved(parts().known.untrust(name)),
    subscribe: () => ({ subscribed: [] }), // handled by the API server itself
    open: async ({ peer, via, timeoutMs }, { signal }) => {
      const { tunnel, tookMs, reused } = await tunnels().open(peer, via, timeoutMs, signal)
      return { ...tunnel.snapshot(), tookMs, reused }
    },
    close: ({ peer }) => ({ closed: tunnels().close(peer) }),
    tunnels: () => tunnels().list().map((t) => t.snapshot()),
    ping: async ({ peer, timeoutMs }, { signal }) => {
      if (!tunnels().get(peer)) await tunnels().open(peer, 'auto', timeoutMs, signal)
      const t = tunnels().get(peer)
      if (!t) throw new NatdError('TUNNEL_CLOSED', `no tunnel to ${peer}`)
      // A migrating tunnel is waited for, within timeoutMs, as forwards, messages and files wait (ping-across.ts).
      const { rttMs, waitedMs } = await pingAcross(t, timeoutMs, parts().clock ?? systemClock, signal)
      return { peer: t.peer.name, path: t.path, remote: formatEndpoint(t.remote), rttMs, waitedMs }
    },
    netcheck: () => started(parts().nat).netcheck(),
    'forward.add': (spec) => saved(forwards().add(spec)),
    'forward.ls': () => forwards().list(),
    'forward.rm': ({ localPort }) => saved({ removed: forwards().remove(localPort) }),
    'expose.add': (spec) => saved(parts().exposes.add(spec)),
    'expose.ls': () => parts().exposes.list(),
    'expose.rm': ({ port }) => saved({ removed: parts().exposes.remove(port) }),
    'message.send': ({ peer, text, timeoutMs, id }, { signal }) => started(parts().messages).send(peer, text, timeoutMs, { id: id ?? undefined, signal }),
    messages: ({ from, limit }) => started(parts().messages).list(from, limit),
    'messages.clear': ({ from }) => started(parts().messages).clear(from),
    'file.send': (p, { signal }) => {
      const files = started(parts().files)
      const source = started(parts().streams).take(p.source)
      return files.send({ ...p, source }, signal)
    },
    files: () => started(parts().files).list(),
    'files.partials': () => started(parts().files).partials(),
    'files.policy': (p) => (Object.values(p).every((x) => x === null) ? started(parts().files).policy() : started(parts().files).setPolicy(p))
  }
}
