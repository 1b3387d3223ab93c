// daemon/heartbeat6.ts: the IPv6 heartbeat goes to the server's IPv6 socket only when
// there is one (and it is not the IPv4 one), IPv6 is on, and no IPv4 heartbeat went out
// in the last HEARTBEAT6_QUIET_MS (it shares their sequence numbers); only the ack of the
// one in flight sets our IPv6 endpoint.
import { describe, expect, it } from 'vitest'
import { Heartbeat6, HEARTBEAT6_QUIET_MS } from '../../../src/daemon/heartbeat6.js'
import type { Endpoint } from '../../../src/protocol/endpoint.js'
import { silentLogger } from '../../../src/protocol/log.js'
import { decode } from '../../../src/protocol/rendezvous.js'
import { seq } from '../helpers.js'

const SERVER = { host: '203.0.113.1', port: 3478 }
const SERVER6 = { host: '2001:db8::1', port: 3478 }
const ME6 = { host: '2001:db8::20', port: 4000 }

function setUp(enabled = true) {
  const sent: Array<{ seq: number; to: Endpoint }> = []
  const hb = new Heartbeat6({ send: (buf, to) => sent.push({ seq: (decode(Buffer.from(buf)) as { seq: number }).seq, to }) }, () => enabled, silentLogger)
  let next = 10
  const session = (inFlightSentAt: number[], now = 100_000) => ({ token: seq(1, 16), udpKey: seq(2, 32), server: SERVER, inFlightSentAt, now, nextSeq: () => ++next })
  return { hb, sent, session }
}

describe('Heartbeat6', () => {
  it('sends to server6 with the next sequence number, unless an IPv4 heartbeat went out within HEARTBEAT6_QUIET_MS', () => {
    const { hb, sent, session } = setUp()
    hb.send(session([])) // no server6 yet
    hb.reset(SERVER6)
    hb.send(session([100_000 - HEARTBEAT6_QUIET_MS + 1]))
    expect(sent).toEqual([])
    hb.send(session([100_000 - HEARTBEAT6_QUIET_MS]))
    expect(sent).toEqual([{ seq: 11, to: SERVER6 }])
  })

  it('sends nothing with IPv6 off or a server6 that is the IPv4 endpoint', () => {
    const off = setUp(false)
    off.hb.reset(SERVER6)
    off.hb.send(off.session([]))
    const same = setUp()
    same.hb.reset(SERVER)
    same.hb.send(same.session([]))
    expect([...off.sent, ...same.sent]).toEqual([])
  })

  it('takes our IPv6 endpoint from the ack of the heartbeat in flight only; a new registration forgets it', () => {
    const { hb, session } = setUp()
    hb.reset(SERVER6)
    hb.send(session([]))
    const ack = { type: 'heartbeat-ack', status: 'ok', observed: ME6, covered: new Uint8Array(0), tag: new Uint8Array(0) } as const
    hb.onAck({ ...ack, seq: 10 })
    expect(hb.udp6).toBeNull()
    hb.onAck({ ...ack, seq: 11 })
    expect(hb.udp6).toEqual(ME6)
    expect(hb.isFromServer6(SERVER6, SERVER)).toBe(true)
    expect(hb.isFromServer6(SERVER, SERVER)).toBe(false)
    hb.reset(null)
    expect(hb.udp6).toBeNull()
  })
})
