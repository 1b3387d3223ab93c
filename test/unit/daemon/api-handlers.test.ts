// The API's method table (src/daemon/api-handlers.ts) over stub parts: before the agent
// started a part, its methods fail with NOT_REGISTERED; `peers` lists the server's peers
// and the pinned ones it did not list, online first, with the tunnel each has.
import { describe, expect, it } from 'vitest'
import { apiHandlers, type AgentParts } from '../../../src/daemon/api-handlers.js'
import { peerId } from '../../../src/protocol/identity.js'
import type { PeerRecord } from '../../../src/protocol/rendezvous.js'
import { NatdError } from '../../../src/protocol/errors.js'
import type { StatusResult } from '../../../src/ipc/schema.js'

const KEY = (n: number): Uint8Array => new Uint8Array(32).fill(n)
const record = (name: string, n: number, online: boolean): PeerRecord =>
  ({ name, publicKey: KEY(n), online, lastSeenAgoMs: online ? 0 : 5_000, udp: { host: '203.0.113.7', port: 4000 + n }, tcp: null, lan: [], nat: 'easy' }) as unknown as PeerRecord

function parts(over: Partial<AgentParts> = {}): AgentParts {
  return {
    status: () => ({ name: 'alice' }) as StatusResult,
    client: null,
    tunnels: null,
    forwards: null,
    messages: null,
    files: null,
    streams: null,
    nat: null,
    exposes: { list: () => [] } as never,
    known: { list: () => [], isPinned: () => false } as never,
    durable: () => Promise.resolve(),
    ...over
  }
}

const CTX = { socket: null as never, signal: new AbortController().signal }

const codeOf = async (p: unknown): Promise<string> => {
  try {
    await p
    return 'resolved'
  } catch (err) {
    return err instanceof NatdError ? `${err.code}: ${err.message}` : String(err)
  }
}

describe('apiHandlers', () => {
  it('before start: status and exposes answer; what needs a started part is NOT_REGISTERED "not started"', async () => {
    const h = apiHandlers(() => parts())
    expect(h.status({} as never, CTX)).toEqual({ name: 'alice' })
    expect(h['expose.ls']({} as never, CTX)).toEqual([])
    const calls = [
      () => h.peers({} as never, CTX),
      () => h.open({ peer: 'bob', via: 'auto', timeoutMs: 1 }, CTX),
      () => h.tunnels({} as never, CTX),
      () => h.netcheck({} as never, CTX),
      () => h['forward.ls']({} as never, CTX),
      () => h['message.send']({ peer: 'bob', text: 'x', timeoutMs: 1, id: null }, CTX),
      () => h.files({} as never, CTX)
    ]
    for (const call of calls) expect(await codeOf((async () => call())())).toBe('NOT_REGISTERED: not started')
  })

  it('peers: the server\'s list plus pinned peers it did not list, online first, then by name, with their tunnel', async () => {
    const carol = { name: 'carol', id: peerId(KEY(3)) }
    const h = apiHandlers(() =>
      parts({
        client: { list: async () => [record('dave', 4, false), record('bob', 2, true)] } as never,
        known: { list: () => [carol, { name: 'bob', id: peerId(KEY(2)) }], isPinned: (p: { name: string }) => p.name === 'bob' } as never,
        tunnels: { get: (id: string) => (id === peerId(KEY(2)) ? { path: 'direct-udp' } : undefined) } as never
      })
    )
    const peers = await h.peers({} as never, CTX)
    expect(peers.map((p) => [p.name, p.online, p.pinned, p.tunnel, p.endpoint])).toEqual([
      ['bob', true, true, 'direct-udp', '203.0.113.7:4002'],
      ['carol', false, true, null, null],
      ['dave', false, false, null, '203.0.113.7:4004']
    ])
  })

  it('a config change answers only once it is on disk (durable), and with STATE_WRITE_FAILED when its write failed', async () => {
    let release: () => void = () => undefined
    const onDisk = new Promise<void>((resolve) => (release = resolve))
    const spec = { localPort: 8080, peer: 'bob', remotePort: 80, bind: '127.0.0.1' }
    const forwards = { add: (s: typeof spec) => ({ ...s, connections: 0, listening: true, error: null }), remove: () => spec } as never
    const h = apiHandlers(() => parts({ forwards, durable: () => onDisk }))
    let answered = false
    const call = Promise.resolve(h['forward.add'](spec, CTX)).then((r) => ((answered = true), r))
    await new Promise((resolve) => setTimeout(resolve, 20))
    expect(answered).toBe(false) // in effect, not yet on disk
    release()
    expect(await call).toMatchObject({ localPort: 8080, listening: true })
    const failing = apiHandlers(() => parts({ forwards, known: { trust: () => ({ name: 'bob', id: 'x', replaced: null }) } as never, durable: () => Promise.reject(new NatdError('STATE_WRITE_FAILED', 'disk full')) }))
    expect(await codeOf(failing['forward.rm']({ localPort: 8080 }, CTX))).toBe('STATE_WRITE_FAILED: disk full')
    expect(await codeOf(failing['peer.trust']({ name: 'bob', id: 'x', replace: false }, CTX))).toBe('STATE_WRITE_FAILED: disk full')
  })
})
