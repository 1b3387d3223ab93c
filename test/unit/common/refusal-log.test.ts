// The one refusal log (src/common/refusal-log.ts) the server, an agent's punching budget
// and an agent's dropped datagrams share, on fake timers: the first of a kind at once,
// then a count per window and kind, whatever the rate or the number of sources.
import { afterEach, describe, expect, it, vi } from 'vitest'
import { RefusalLog } from '../../../src/common/refusal-log.js'
import type { Logger } from '../../../src/protocol/log.js'

type Line = [level: string, message: string, fields: Record<string, unknown>]

function recorder(): { log: Logger; lines: Line[] } {
  const lines: Line[] = []
  const at = (level: string) => (message: string, fields: Record<string, unknown> = {}) => lines.push([level, message, fields])
  const log: Logger = { error: at('error'), warn: at('warn'), info: at('info'), debug: at('debug'), child: () => log }
  return { log, lines }
}

describe('RefusalLog', () => {
  afterEach(() => vi.useRealTimers())

  it('10,000 refusals of 4 kinds from 5,000 addresses: 4 lines at once, then one count per kind at the end of the window', () => {
    vi.useFakeTimers()
    const { log, lines } = recorder()
    const r = new RefusalLog(log, { windowMs: 1_000, level: 'info' })
    for (let i = 0; i < 10_000; i++) {
      r.refused(i % 2 ? 'bad tcp frame' : 'registration refused', { host: '192.0.2.1', port: i % 5_000 }, i % 4 < 2 ? 'BAD_REQUEST' : 'UNAUTHORIZED', `reason ${i}`)
    }
    expect(lines.map(([level, m, f]) => [level, m, f.what, f.code, f.from])).toEqual([
      ['info', 'refused', 'registration refused', 'BAD_REQUEST', '192.0.2.1:0'],
      ['info', 'refused', 'bad tcp frame', 'BAD_REQUEST', '192.0.2.1:1'],
      ['info', 'refused', 'registration refused', 'UNAUTHORIZED', '192.0.2.1:2'],
      ['info', 'refused', 'bad tcp frame', 'UNAUTHORIZED', '192.0.2.1:3']
    ])
    expect(lines[0]![2].reason).toBe('reason 0')
    vi.advanceTimersByTime(999)
    expect(lines).toHaveLength(4)
    vi.advanceTimersByTime(1)
    const again = lines.slice(4)
    expect(again.map(([, m, f]) => [m, f.what, f.code, f.count])).toEqual([
      ['refused again', 'registration refused', 'BAD_REQUEST', 2_499],
      ['refused again', 'bad tcp frame', 'BAD_REQUEST', 2_499],
      ['refused again', 'registration refused', 'UNAUTHORIZED', 2_499],
      ['refused again', 'bad tcp frame', 'UNAUTHORIZED', 2_499]
    ])
    expect(again[3]![2]).toMatchObject({ sources: 1_250, names: ['192.0.2.1:7', '192.0.2.1:11', '192.0.2.1:15', '192.0.2.1:19', '192.0.2.1:23'], last: { from: '192.0.2.1:4999', reason: 'reason 9999' }, windowMs: 1_000 })
    vi.advanceTimersByTime(10_000)
    expect(lines).toHaveLength(8) // nothing counted: nothing logged
  })

  it('a kind quiet for a whole window is forgotten: its next refusal is logged at once again', () => {
    vi.useFakeTimers()
    const { log, lines } = recorder()
    const r = new RefusalLog(log, { windowMs: 1_000, level: 'debug' })
    r.refused('unsealed datagram', '198.51.100.1:3478', 'UNAUTHORIZED')
    r.refused('unsealed datagram', '198.51.100.1:3478', 'UNAUTHORIZED')
    vi.advanceTimersByTime(1_000) // the count
    expect(lines.map(([level, m, f]) => [level, m, f.count])).toEqual([['debug', 'refused', undefined], ['debug', 'refused again', 1]])
    vi.advanceTimersByTime(1_000) // a quiet window
    r.refused('unsealed datagram', '198.51.100.1:3478', 'UNAUTHORIZED')
    expect(lines.at(-1)).toEqual(['debug', 'refused', { what: 'unsealed datagram', code: 'UNAUTHORIZED', from: '198.51.100.1:3478' }])
  })

  it('flush() logs what is counted at once and leaves no timer', () => {
    vi.useFakeTimers()
    const { log, lines } = recorder()
    const r = new RefusalLog(log, { windowMs: 10_000, level: 'warn' })
    for (let i = 0; i < 3; i++) r.refused('introductions', 'mallory', 'RATE_LIMITED')
    r.flush()
    expect(lines.map(([, m, f]) => [m, f.count])).toEqual([['refused', undefined], ['refused again', 2]])
    expect(vi.getTimerCount()).toBe(0)
  })
})
