/**
 * The control connections of registered agents (src/rendezvous/agent-conns.ts) with a
 * fake gate and fake sockets: a newer registration replaces the older connection, a
 * connection its host ended (FIN) counts as a dead agent and a reset does not, and peer
 * events go to everyone on a small server, to contacts only past BROADCAST_MAX_AGENTS
 * agents online (however few of them hold a connection).
 */
import { describe, expect, it } from 'vitest'
import { decode, type PeerRecord } from '../../../src/protocol/rendezvous.js'
import { AgentConns, BROADCAST_MAX_AGENTS } from '../../../src/rendezvous/agent-conns.js'
import { Contacts } from '../../../src/rendezvous/contacts.js'
import type { RegRef } from '../../../src/rendezvous/registry.js'
import { TCP_KEEPALIVE_MS, type TcpConn } from '../../../src/rendezvous/tcp-gate.js'
import { FakeSocket } from './fake-socket.js'
import { FakeClock } from '../helpers.js'


const conn = (): TcpConn => ({ socket: new FakeSocket().asNet, reg: null, unauth: true }) as TcpConn

const PEER: PeerRecord = { publicKey: Buffer.alloc(32, 5), name: 'carol', online: true, lastSeenAgoMs: 0, nat: 'easy', udp: null, tcp: null, lan: [] }

function setup(): {
  agents: AgentConns
  contacts: Contacts
  calls: string[]
  written: Map<TcpConn, Buffer[]>
  offline: PeerRecord[]
  gate: { conns: Set<TcpConn> }
  registry: { online: number }
} {
  const calls: string[] = []
  const written = new Map<TcpConn, Buffer[]>()
  const offline: PeerRecord[] = []
  const contacts = new Contacts()
  const gate = {
    conns: new Set<TcpConn>(),
    authenticated: (c: TcpConn) => {
      c.unauth = false
    },
    writeSession: (c: TcpConn, bytes: Buffer) => written.set(c, [...(written.get(c) ?? []), bytes])
  }
  const registry = {
    clearTcp: (ref: RegRef) => calls.push(`clearTcp ${ref}`),
    controlLost: (ref: RegRef) => calls.push(`controlLost ${ref}`),
    online: 0
  }
  const cluster = { offline: (r: PeerRecord) => offline.push(r) }
  const agents = new AgentConns({ clock: new FakeClock(), registry, gate, contacts, cluster })
  return { agents, contacts, calls, written, offline, gate, registry }
}

/** `n` agents registered (online), their connections in the gate. */
function registerMany(s: ReturnType<typeof setup>, n: number): TcpConn[] {
  s.registry.online += n
  const conns = Array.from({ length: n }, () => conn())
  conns.forEach((c, ref) => {
    s.gate.conns.add(c)
    s.agents.adopt(c, ref)
  })
  return conns
}

describe('AgentConns', () => {
  it('adopt() makes a connection the agent\'s (authenticated, keepalive); a newer one closes the older', () => {
    const s = setup()
    const [first, second] = [conn(), conn()]
    s.agents.adopt(first, 7)
    expect([first.reg, first.unauth, (first.socket as unknown as FakeSocket).keepAliveMs]).toEqual([7, false, TCP_KEEPALIVE_MS])
    expect(s.agents.of(7)).toBe(first)
    s.agents.adopt(second, 7)
    expect(first.socket.destroyed).toBe(true)
    expect(s.agents.of(7)).toBe(second)
    s.agents.onClose(first) // the old connection's close: nothing to do
    expect(s.calls).toEqual([])
    expect(s.agents.size).toBe(1)
  })

  it('a connection its host ended (FIN) is a lost control connection; a reset only clears the TCP endpoint', () => {
    const s = setup()
    const [ended, reset] = [conn(), conn()]
    s.agents.adopt(ended, 1)
    s.agents.adopt(reset, 2)
    ended.socket.emit('end')
    s.agents.onClose(ended)
    s.agents.onClose(reset)
    expect(s.calls).toEqual(['clearTcp 1', 'controlLost 1', 'clearTcp 2'])
    expect(s.agents.size).toBe(0)
  })

  it('wentDown() tells the cluster and every other registered agent, with the record offline', () => {
    const s = setup()
    const conns = registerMany(s, 3)
    s.gate.conns.add(conn()) // not registered: told nothing
    s.agents.wentDown(0, PEER, 'expired')
    expect(s.offline).toEqual([{ ...PEER, online: false }])
    expect(s.written.has(conns[0]!)).toBe(false)
    for (const c of conns.slice(1)) expect(s.written.get(c)!.map((b) => decode(b))).toEqual([{ type: 'peer-event', event: 'down', peer: { ...PEER, online: false }, reason: 'expired' }])
    expect(s.written.size).toBe(2)
  })

  it(`past BROADCAST_MAX_AGENTS (${BROADCAST_MAX_AGENTS}) connected, events go to the contacts of the agent concerned only`, () => {
    const s = setup()
    const conns = registerMany(s, BROADCAST_MAX_AGENTS + 1)
    s.contacts.add(0, 5)
    s.contacts.add(0, 9)
    s.contacts.addRemote(3, PEER.publicKey)
    s.agents.broadcast(0, { type: 'peer-event', event: 'up', peer: PEER })
    expect([...s.written.keys()]).toEqual([conns[5], conns[9]])
    s.written.clear()
    s.agents.onRemotePeerEvents('up', [PEER])
    expect([...s.written.keys()]).toEqual([conns[3]])
  })

  it(`past BROADCAST_MAX_AGENTS online, events go to contacts only even when few agents hold a connection`, () => {
    const s = setup()
    const conns = registerMany(s, 200) // the capacity bench: 1% of the agents online keep their control connection
    s.registry.online = BROADCAST_MAX_AGENTS + 1
    s.contacts.add(0, 7)
    s.agents.broadcast(0, { type: 'peer-event', event: 'up', peer: PEER })
    s.agents.wentDown(1, PEER, 'expired')
    expect([...s.written.keys()]).toEqual([conns[7]]) // not the 199 others, for the up nor the down (agent 1 has no contacts)
    s.written.clear()
    s.agents.onRemotePeerEvents('up', [PEER])
    expect(s.written.size).toBe(0)
  })

  it(`up to BROADCAST_MAX_AGENTS, another instance's events go to every agent here`, () => {
    const s = setup()
    registerMany(s, 4)
    s.agents.onRemotePeerEvents('down', [{ ...PEER, online: false }])
    expect(s.written.size).toBe(4)
  })
})
