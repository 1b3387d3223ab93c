// Durations as typed on the command line (src/protocol/duration.ts).
import { describe, expect, it } from 'vitest'
import { formatDuration, parseBytes, parseDuration } from '../../../src/protocol/duration.js'

describe('duration', () => {
  it('parses ms, s, m, h, d, fractions and plain seconds', () => {
    expect(parseDuration('500ms')).toBe(500)
    expect(parseDuration('20s')).toBe(20_000)
    expect(parseDuration('5m')).toBe(300_000)
    expect(parseDuration('1h')).toBe(3_600_000)
    expect(parseDuration('90d')).toBe(90 * 86_400_000)
    expect(parseDuration('1.5s')).toBe(1_500)
    expect(parseDuration('0.5ms')).toBe(1) // rounded to whole milliseconds
    expect(parseDuration('20')).toBe(20_000)
    expect(parseDuration(' 7s ')).toBe(7_000)
    expect(parseDuration('0')).toBe(0)
    expect(parseDuration(3)).toBe(3_000)
    expect(parseDuration(0.25)).toBe(250)
  })

  it('refuses negative, unknown units, empty and non-finite input with RangeError', () => {
    for (const bad of ['-1s', '5w', '', 's', '1e3', '1 s', '1.s', 'ms5', '5sec']) expect(() => parseDuration(bad), bad).toThrow(RangeError)
    for (const bad of [-1, Number.NaN, Number.POSITIVE_INFINITY]) expect(() => parseDuration(bad), String(bad)).toThrow(RangeError)
  })

  it('formats for people', () => {
    expect(formatDuration(0)).toBe('0ms')
    expect(formatDuration(999)).toBe('999ms')
    expect(formatDuration(1_000)).toBe('1.0s')
    expect(formatDuration(1_250)).toBe('1.3s')
    expect(formatDuration(12_000)).toBe('12s')
    expect(formatDuration(61_000)).toBe('1m1s')
    expect(formatDuration(3_600_000)).toBe('1h0m')
    expect(formatDuration(3_660_000)).toBe('1h1m')
  })

  it('format then parse stays within the printed precision', () => {
    for (const ms of [5, 1_500, 45_000, 125_000, 7_200_000]) {
      const text = formatDuration(ms).replace(/^(\d+)m(\d+)s$/, (_, m: string, s: string) => `${Number(m) * 60 + Number(s)}s`).replace(/^(\d+)h(\d+)m$/, (_, h: string, m: string) => `${Number(h) * 60 + Number(m)}m`)
      expect(Math.abs(parseDuration(text) - ms), `${ms} -> ${text}`).toBeLessThanOrEqual(500)
    }
  })

  // Seconds are rounded after the minutes are taken: 119,999 ms prints "1m60s".
  it('never prints 60 seconds in a minutes display (119,999 ms -> "2m0s", not "1m60s")', () => {
    expect(formatDuration(119_999)).toBe('2m0s')
  })

  it('parses sizes in bytes, SI and binary units, any case (natctl files policy, natd-rendezvous --relay-*)', () => {
    expect(['1048576', '500MB', '2GiB', '1.5g', '10kib', ' 64 KiB '].map((t) => parseBytes(t))).toEqual([1_048_576, 500e6, 2 * 1024 ** 3, 1.5e9, 10_240, 65_536])
    for (const bad of ['', 'lots', '5 parsecs', '-1', '1e3']) expect(() => parseBytes(bad), bad).toThrow(RangeError)
  })
})
