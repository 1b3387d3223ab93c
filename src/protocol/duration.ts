/** Durations as people write them on the command line: `500ms`, `20s`, `5m`, `1h`, `90d`, or plain seconds. */
const UNITS_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }

export function parseDuration(text: string | number): number {
  if (typeof text === 'number') {
    if (!Number.isFinite(text) || text < 0) throw new RangeError(`bad duration ${text}`)
    return text * 1000
  }
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$/.exec(text.trim())
  if (!m) throw new RangeError(`bad duration ${JSON.stringify(text)}: use e.g. 500ms, 20s, 5m, 90d`)
  return Math.round(Number(m[1]) * UNITS_MS[m[2] ?? 's']!)
}

export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)}ms`
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)}s`
  const s = Math.round(ms / 1000)
  if (s < 3600) return `${Math.floor(s / 60)}m${s % 60}s`
  const m = Math.round(s / 60)
  return `${Math.floor(m / 60)}h${m % 60}m`
}

const BYTE_UNITS: Record<string, number> = { '': 1, b: 1, k: 1e3, kb: 1e3, kib: 1024, m: 1e6, mb: 1e6, mib: 1024 ** 2, g: 1e9, gb: 1e9, gib: 1024 ** 3, t: 1e12, tb: 1e12, tib: 1024 ** 4 }

/** Sizes as people write them: `65536`, `64KiB`, `10MB`, `1GiB` (case-insensitive). */
export function parseBytes(text: string | number): number {
  if (typeof text === 'number') {
    if (!Number.isFinite(text) || text < 0) throw new RangeError(`bad size ${text}`)
    return Math.round(text)
  }
  const m = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/i.exec(text.trim())
  const unit = m ? BYTE_UNITS[m[2]!.toLowerCase()] : undefined
  if (!m || unit === undefined) throw new RangeError(`bad size ${JSON.stringify(text)}: use e.g. 65536, 64KiB, 10MB, 1GiB`)
  return Math.round(Number(m[1]) * unit)
}
