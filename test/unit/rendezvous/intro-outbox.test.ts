/**
 * IntroOutbox (src/rendezvous/intro-outbox.ts): an introduction sent to an agent's control
 * connection is sent again when the agent registers on a new one within REDELIVER_MS, once,
 * and never to the connection it went to; what it holds is bounded per agent and in all.
 */
import { describe, expect, it } from 'vitest'
import type { OutgoingMessage } from '../../../src/protocol/rendezvous.js'
import { IntroOutbox, REDELIVER_MAX, REDELIVER_MS, REDELIVER_PER_AGENT, type IntroductionMessage } from '../../../src/rendezvous/intro-outbox.js'
import type { TcpConn } from '../../../src/rendezvous/tcp-gate.js'
import { FakeClock } from '../helpers.js'

const conn = (n: number): TcpConn => ({ remote: { host: '192.0.2.1', port: 40_000 + n } }) as unknown as TcpConn
const intro = (n: number): IntroductionMessage =>
  ({ type: 'introduction', reqId: 0, introId: Buffer.alloc(16, n), punchKey: Buffer.alloc(32, n), initiator: false, via: 'auto', peer: { name: 'alice' } }) as unknown as IntroductionMessage

function setup() {
  const clock = new FakeClock()
  const sent: { to: TcpConn; msg: OutgoingMessage }[] = []
  const outbox = new IntroOutbox({ clock, gate: { send: (to, msg) => sent.push({ to, msg }) } })
  return { clock, sent, outbox }
}

describe('IntroOutbox', () => {
  it('sends at once, and again on the agent\'s new control connection when it registers within REDELIVER_MS (once)', () => {
    const s = setup()
    const [old, fresh] = [conn(1), conn(2)]
    s.outbox.send(7, old, intro(1))
    expect(s.sent).toEqual([{ to: old, msg: intro(1) }])
    s.clock.t += REDELIVER_MS - 1
    expect(s.outbox.redeliver(7, fresh)).toBe(1)
    expect(s.sent.at(-1)).toEqual({ to: fresh, msg: intro(1) })
    expect(s.outbox.redeliver(7, conn(3))).toBe(0) // once
    expect(s.outbox.size).toBe(0)
  })

  it('not to the connection it went to (a registration refreshed on the same one), nor another agent\'s, nor after REDELIVER_MS', () => {
    const s = setup()
    const c = conn(1)
    s.outbox.send(7, c, intro(1))
    expect(s.outbox.redeliver(7, c)).toBe(0)
    expect(s.outbox.redeliver(8, conn(2))).toBe(0)
    s.clock.t += REDELIVER_MS
    expect(s.outbox.redeliver(7, conn(2))).toBe(0)
    expect(s.sent).toHaveLength(1)
  })

  it('holds the newest REDELIVER_PER_AGENT per agent and REDELIVER_MAX in all; the sweep forgets the old ones', () => {
    const s = setup()
    for (let i = 0; i < REDELIVER_PER_AGENT + 3; i++) s.outbox.send(7, conn(1), intro(i))
    expect(s.outbox.size).toBe(REDELIVER_PER_AGENT)
    s.outbox.redeliver(7, conn(2))
    expect(s.sent.slice(-REDELIVER_PER_AGENT).map((x) => x.msg)).toEqual(Array.from({ length: REDELIVER_PER_AGENT }, (_, i) => intro(i + 3)))
    for (let ref = 0; ref < REDELIVER_MAX; ref++) s.outbox.send(ref, conn(1), intro(1))
    s.outbox.send(REDELIVER_MAX, conn(1), intro(1)) // sent, not held
    expect(s.outbox.size).toBe(REDELIVER_MAX)
    expect(s.outbox.redeliver(REDELIVER_MAX, conn(2))).toBe(0)
    s.clock.t += REDELIVER_MS
    s.outbox.sweep()
    expect(s.outbox.size).toBe(0)
  })
})
