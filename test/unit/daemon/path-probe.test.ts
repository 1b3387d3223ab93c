// daemon/path-probe.ts: a path check's heartbeat and ping, with a stub control
// connection and a fake clock. Tested: both answers settle it at once ('moved' or 'same',
// 'alive'); none by the deadline (4 of the server's round trips, at least 500 ms) is
// 'unanswered' and 'lost'; a closed control connection settles it at once; nothing is
// left waiting (timers, listeners) after it.
import { EventEmitter } from 'node:events'
import { describe, expect, it } from 'vitest'
import { PathProbe, PROBE_ANSWER_MIN_MS, PROBE_ANSWER_RTTS, type ProbeSession } from '../../../src/daemon/path-probe.js'
import { FakeClock } from '../helpers.js'

const SERVER = { host: '203.0.113.1', port: 3478 }

function session(rttMs: number | null): ProbeSession & { control: EventEmitter & ProbeSession['control']; pings: number[]; heartbeats: number } {
  const control = Object.assign(new EventEmitter(), { pings: [] as number[] })
  const s = {
    control: Object.assign(control, {
      send: async (m: { type: string; seq?: number }) => {
        if (m.type === 'ping') s.pings.push(m.seq!)
      }
    }) as unknown as EventEmitter & ProbeSession['control'],
    server: SERVER,
    rttMs,
    pings: [] as number[],
    heartbeats: 0,
    sendHeartbeat: () => ++s.heartbeats + 40
  }
  return s
}

describe('PathProbe', () => {
  it("settles as soon as both answers came: the heartbeat's status and the pong", async () => {
    const clock = new FakeClock()
    const probe = new PathProbe(clock)
    const s = session(20)
    const r = probe.run(s)
    expect(s.pings).toEqual([41]) // the ping carries the heartbeat's sequence number
    probe.onAck(41, 'moved')
    probe.onPong(41)
    expect(await r).toEqual({ mapping: 'moved', control: 'alive', waitedMs: PROBE_ANSWER_MIN_MS })
    expect(clock.pending).toBe(0)
    expect(s.control.listenerCount('close')).toBe(0)
  })

  it("waits PROBE_ANSWER_RTTS round trips (at least PROBE_ANSWER_MIN_MS): nothing by then is 'unanswered' and 'lost'; another probe's answers do not count", async () => {
    const clock = new FakeClock()
    const probe = new PathProbe(clock)
    const s = session(300)
    const r = probe.run(s)
    probe.onAck(7, 'ok')
    probe.onPong(7)
    clock.advance(PROBE_ANSWER_RTTS * 300 - 1)
    probe.onAck(41, 'ok') // the heartbeat answered, the ping not
    clock.advance(1)
    expect(await r).toEqual({ mapping: 'same', control: 'lost', waitedMs: PROBE_ANSWER_RTTS * 300 })
    expect(clock.pending).toBe(0)
  })

  it('a control connection that closes settles it at once', async () => {
    const clock = new FakeClock()
    const probe = new PathProbe(clock)
    const s = session(null)
    const r = probe.run(s)
    s.control.emit('close')
    expect(await r).toEqual({ mapping: 'unanswered', control: 'lost', waitedMs: PROBE_ANSWER_MIN_MS })
    expect(clock.pending).toBe(0)
  })
})
