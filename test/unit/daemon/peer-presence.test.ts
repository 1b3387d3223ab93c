// Why a peer is offline (src/daemon/peer-presence.ts): the server's reason in its peer
// event ('bye', 'expired'), 'server-lost' when our own session ended, and peers that come
// back with the list after we registered again.
import { describe, expect, it } from 'vitest'
import { PeerPresence, type DownReason } from '../../../src/daemon/peer-presence.js'
import { peerId } from '../../../src/protocol/identity.js'
import type { PeerRecord } from '../../../src/protocol/rendezvous.js'

function peer(n: number, online = true): PeerRecord {
  return { publicKey: new Uint8Array(32).fill(n), name: `p${n}`, online, lastSeenAgoMs: 0, nat: 'easy', udp: null, tcp: null, lan: [] }
}

function setUp(max?: number) {
  const events: Array<[string, string, DownReason | null]> = []
  const p = new PeerPresence((event, rec, reason) => events.push([event, rec.name, reason]), max)
  return { p, events }
}

describe('PeerPresence', () => {
  it("the server's reason goes with peer.down and stays for `peers` until the peer is back", () => {
    const { p, events } = setUp()
    p.onEvent('up', peer(1))
    p.onEvent('up', peer(2))
    p.onEvent('down', peer(1, false), 'bye')
    p.onEvent('down', peer(2, false), 'expired')
    expect(events).toEqual([['up', 'p1', null], ['up', 'p2', null], ['down', 'p1', 'bye'], ['down', 'p2', 'expired']])
    expect(p.reason(peerId(peer(1).publicKey))).toBe('bye')
    expect(p.reason(peerId(peer(2).publicKey))).toBe('expired')
    p.onEvent('up', peer(1))
    expect(p.reason(peerId(peer(1).publicKey))).toBeNull()
    expect(p.reason(peerId(peer(3).publicKey))).toBeNull() // never seen go
  })

  it("our session lost: every peer online for us goes down 'server-lost' (once); registered again, the list brings the online ones up", () => {
    const { p, events } = setUp()
    p.onEvent('up', peer(1))
    p.onEvent('up', peer(2))
    p.onEvent('down', peer(2, false), 'bye')
    events.length = 0
    expect(p.wantsList).toBe(false)
    p.serverLost()
    p.serverLost() // backoff after backoff: nothing more
    expect(events).toEqual([['down', 'p1', 'server-lost']])
    expect(p.reason(peerId(peer(1).publicKey))).toBe('server-lost')
    expect(p.reason(peerId(peer(2).publicKey))).toBe('bye')
    expect(p.wantsList).toBe(true)
    events.length = 0
    p.listed([peer(1), peer(3, false)])
    expect(events).toEqual([['up', 'p1', null]])
    expect(p.wantsList).toBe(false)
    expect(p.reason(peerId(peer(1).publicKey))).toBeNull()
  })

  it("peers already online when we first register are held silently, and losing the server then says 'server-lost' for them", () => {
    const { p, events } = setUp()
    p.listed([peer(1), peer(2, false)], false)
    expect(events).toEqual([])
    p.serverLost()
    expect(events).toEqual([['down', 'p1', 'server-lost']])
    expect(p.wantsList).toBe(true)
  })

  it('holds at most `max` peers and reasons: the oldest reason is forgotten first', () => {
    const { p } = setUp(2)
    for (const n of [1, 2, 3]) p.onEvent('down', peer(n, false), 'expired')
    expect(p.reason(peerId(peer(1).publicKey))).toBeNull()
    expect(p.reason(peerId(peer(3).publicKey))).toBe('expired')
  })
})
