// natctl cp's progress line (src/cli/progress.ts) and argument parsing
// (src/cli/transfer-commands.ts): what a user sees on a terminal, nothing when piped.
import { describe, expect, it } from 'vitest'
import { formatEta, ProgressBar, renderProgress } from '../../../src/cli/progress.js'
import { parseCpArgs } from '../../../src/cli/transfer-commands.js'

const MiB = 1024 * 1024
const usage = (m: string): Error => new Error(`usage: ${m}`)

describe('progress line', () => {
  it('shows the bar, percent, bytes, rate and ETA', () => {
    const line = renderProgress({ label: 'big.bin', done: 64 * MiB, total: 256 * MiB, rate: 32 * MiB, columns: 100 })
    expect(line).toBe('big.bin [######------------------]  25%  64 MiB / 256 MiB  32 MiB/s  ETA 00:06')
  })

  it('cuts a long label to the terminal width and has no ETA before there is a rate', () => {
    const line = renderProgress({ label: 'x'.repeat(200), done: 0, total: MiB, rate: null, columns: 80 })
    expect(line.length).toBeLessThanOrEqual(80)
    expect(line.startsWith('…x')).toBe(true)
    expect(line.endsWith(' [------------------------]   0%  0 B / 1.0 MiB  -  ETA --:--')).toBe(true)
    expect(renderProgress({ label: 'e', done: 0, total: 0, rate: null, columns: 80 })).toMatch(/100%/)
  })

  it('formats ETAs', () => {
    expect([0.2, 59, 61, 3_700].map(formatEta)).toEqual(['00:01', '00:59', '01:01', '1:01:40'])
    expect(formatEta(Infinity)).toBe('--:--')
  })

  it('draws on a TTY (throttled, resumed bytes counted) and writes nothing when piped', () => {
    const writes: string[] = []
    let t = 1_000
    const tty = new ProgressBar({ isTTY: true, columns: 100, write: (s: string) => writes.push(s) }, 'f', () => t)
    tty.update(10 * MiB, 0, 20 * MiB)
    t += 50
    tty.update(10 * MiB, MiB, 20 * MiB) // within REDRAW_INTERVAL_MS: skipped
    t += 950
    tty.update(10 * MiB, 5 * MiB, 20 * MiB)
    tty.clear()
    expect(writes).toHaveLength(3)
    expect(writes[1]).toBe('\rf [##################------]  75%  15 MiB / 20 MiB  5.0 MiB/s  ETA 00:01\x1b[K')
    expect(writes[2]).toBe('\r\x1b[K')
    const piped: string[] = []
    const bar = new ProgressBar({ isTTY: false, write: (s: string) => piped.push(s) }, 'f')
    bar.update(0, MiB, 2 * MiB, true)
    bar.clear()
    expect(piped).toEqual([])
  })
})

describe('natctl cp arguments', () => {
  it('splits FILE... PEER: and FILE PEER:NAME', () => {
    expect(parseCpArgs(['a', 'b', 'bob:'], usage)).toEqual({ sources: ['a', 'b'], peer: 'bob', name: '' })
    expect(parseCpArgs(['a', 'bob:../../etc/evil'], usage)).toEqual({ sources: ['a'], peer: 'bob', name: '../../etc/evil' })
    expect(() => parseCpArgs(['a'], usage)).toThrow(/at least one file/)
    expect(() => parseCpArgs(['a', 'bob'], usage)).toThrow(/PEER:/)
    expect(() => parseCpArgs(['a', 'b', 'bob:x'], usage)).toThrow(/names one file/)
  })
})
