/** Output helpers for natctl: plain tables for people, JSON for scripts. */
import type { ErrorCode } from '../protocol/errors.js'
import type { PingResult, PortMappingStatus } from '../ipc/schema.js'
import { UNSAFE_TEXT_CHARS } from '../protocol/unsafe-text.js'

/**
 * What a peer, the server or a gateway chose (a name, a reason, a message's line) as natctl
 * prints it: the characters a terminal acts on or hides (UNSAFE_TEXT_CHARS: ESC, CR, BEL,
 * newline, C1, bidi and invisible format characters) are shown escaped, `\u001b`, so the
 * text cannot move the cursor, rewrite a line, set the clipboard (OSC 52) or start a line
 * of its own. `--json` goes through jsonOut() below (JSON.stringify escapes only C0).
 */
export function shown(s: string): string {
  return escaped(s, '')
}

/**
 * JSON for --json: JSON.stringify escapes only U+0000-U+001F, so the rest of
 * UNSAFE_TEXT_CHARS (DEL, C1, bidi and invisible format characters, U+2028/9) is escaped
 * here too (the same JSON value: a parser reads the same text back).
 */
export function jsonOut(value: unknown, indent?: number): string {
  return escaped(JSON.stringify(value, null, indent), '\n') // the newlines of its indentation; those in strings are escaped already
}

/** Continuation lines of a multi-line message start with this, so none reads as a message's header. */
export const CONTINUATION_INDENT = '    '

/**
 * A message's text as natctl prints it: its newlines (and CRLFs) stay line breaks, each
 * continuation line indented by CONTINUATION_INDENT; tabs stay tabs (they move to a tab
 * stop, and nothing a peer sends can set one); every other character of UNSAFE_TEXT_CHARS
 * is escaped as shown() does.
 */
export function shownText(text: string): string {
  return escaped(text.replace(/\r\n/g, '\n'), '\t\n').replaceAll('\n', `\n${CONTINUATION_INDENT}`)
}

/**
 * A whole human output, last: natctl's own line breaks and tabs stay, anything else a
 * field brought in is escaped (a second net behind shown(): its output has nothing left to escape).
 */
export function shownOutput(s: string): string {
  return escaped(s, '\t\n')
}

function escaped(s: string, keep: string): string {
  return s.replace(UNSAFE_TEXT_CHARS, (c) => (keep.includes(c) ? c : `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`))
}

/** An allow-list peer as people read it: `bob (6flxk45n…)`, or `bob (unresolved)` for an old entry that matches nobody. */
export function peerLabel(p: { name: string; id: string | null }): string {
  if (p.id === null) return `${shown(p.name)} (unresolved)`
  return p.name ? `${shown(p.name)} (${p.id.slice(0, 8)}…)` : `${p.id.slice(0, 8)}…`
}

/** Columns padded to their widest cell; every cell goes through shown() (a peer's name cannot break a row). */
export function table(headers: string[], rows: (string | number | null)[][]): string {
  const cells = [headers, ...rows.map((r) => r.map((c) => (c === null ? '-' : shown(String(c)))))]
  const widths = headers.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)))
  return cells.map((r) => r.map((c, i) => (i === r.length - 1 ? c : (c ?? '').padEnd(widths[i]!))).join('  ')).join('\n')
}

// natctl reads the wall clock itself (Date.now() - a timestamp natd returned) to say how
// long ago: a one-shot display for a person, not a decision, so it injects no clock.
export function ago(ms: number | null): string {
  if (ms === null) return '-'
  if (ms < 2000) return 'now'
  if (ms < 120_000) return `${Math.round(ms / 1000)}s ago`
  if (ms < 7_200_000) return `${Math.round(ms / 60_000)}m ago`
  if (ms < 172_800_000) return `${Math.round(ms / 3_600_000)}h ago`
  return `${Math.round(ms / 86_400_000)}d ago`
}

export function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let i = 0
  let v = n
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024
    i++
  }
  return i === 0 ? `${n} B` : `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`
}

/** A span ahead, coarse: `45s`, `12m`, `1h 59m`. */
export function span(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000))
  if (s < 120) return `${s}s`
  const m = Math.floor(s / 60)
  return m < 60 ? `${m}m` : `${Math.floor(m / 60)}h ${m % 60}m`
}

/**
 * `natctl ping`'s line for one pong; a call that first waited for its migrating tunnel to
 * resume says so (the round trip is the new path's, the wait is not in it).
 */
export function pongLine(r: PingResult): string {
  const line = `pong from ${shown(r.peer)} (${r.path} ${r.remote}) in ${r.rttMs} ms`
  return r.waitedMs > 0 ? `${line} after waiting ${(r.waitedMs / 1000).toFixed(1)} s for the tunnel to resume` : line
}

/**
 * `natctl status`'s port-mapping line: what the gateway mapped, for how long, or why
 * nothing; after failed attempts, when natd asks the gateway again.
 */
export function portMappingLine(p: PortMappingStatus): string {
  const retry = p.retryInMs === null ? '' : `; next try in ${span(p.retryInMs)}`
  switch (p.state) {
    case 'off':
      return 'off (--no-port-mapping)'
    case 'probing':
      return p.gateway ? `asking the gateway ${p.gateway}` : 'asking the default gateway'
    case 'none':
      return `none: ${shown(p.reason ?? 'no mapping')}${retry}`
    case 'mapped': {
      const via = p.via === 'pcp' ? 'PCP' : p.via === 'upnp' ? 'UPnP' : 'NAT-PMP'
      const ports = [p.udp && `${p.udp} (udp)`, p.tcp && `${p.tcp} (tcp)`].filter(Boolean).join(', ')
      const renewal = p.retryInMs === null ? '' : `; renewal failed${retry}`
      return `${via} ${ports}, gateway ${p.gateway ?? '-'}, lease ends in ${span(p.expiresInMs ?? 0)} unless renewed${renewal}`
    }
  }
}

/**
 * natctl's line for a failed command (on stderr). natd's message may carry a peer's or the
 * server's words (a peer's REFUSE, a GOODBYE reason, a server ERROR), so it is shown().
 */
export function errorLine(e: { code: ErrorCode; message: string }): string {
  return `natctl: ${shown(e.message)}${e.code === 'NOT_RUNNING' || e.code === 'PERMISSION_DENIED' ? '' : ` [${e.code}]`}`
}
