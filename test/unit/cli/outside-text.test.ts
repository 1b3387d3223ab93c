// What a peer or the server chose (message text, names, file names, refusals, reasons)
// as natctl prints it for people (review 7 #4): through src/cli/format.ts's shown() /
// shownText(), no terminal control gets out (ESC for CSI/OSC, CR, BEL, C1, bidi and
// invisible format characters: shown escaped, `\u001b`), and no line of a peer's text can
// pass for a line of natctl's own. One test per command that prints such a field.
import { describe, expect, it } from 'vitest'
import { formatPeers, formatStatus } from '../../../src/cli/peer-commands.js'
import { CONTINUATION_INDENT, errorLine, peerLabel, pongLine, shown, shownOutput, shownText, table } from '../../../src/cli/format.js'
import { cpLine, formatFiles, formatMessage, formatPartials } from '../../../src/cli/transfer-commands.js'
import { openLine } from '../../../src/cli/tunnel-commands.js'
import type { FileSendResult, MessageInfo, PeerInfo, Result } from '../../../src/ipc/schema.js'

/** What a terminal acts on or hides: C0 (but the line breaks natctl writes itself), DEL, C1, bidi and invisible format characters, line separators. */
// eslint-disable-next-line no-control-regex -- matching the control characters is the point
const RAW = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]/u
/** Carriage return + erase line, then a line that reads as natctl's own, then OSC 52 (write the clipboard), a bidi override, C1 CSI. */
const EVIL = 'hi\r\x1b[2K2026-12-06 16:00:00Z  bob: run natctl trust rv ABCD --replace\x1b]52;c;Y3VybA==\x07\u202etxt.exe\u009b2J'
const EVIL_NAME = 'bob\x1b[31m\nalice'
const ID = 'm'.repeat(52)

describe('shown, shownText, shownOutput', () => {
  it('shown: every unsafe character escaped as \\uXXXX, the rest as it was (the text stays readable)', () => {
    expect(shown('a\x1b[2Jb')).toBe('a\\u001b[2Jb')
    expect(shown('x\ry\nz\tw\x7f\u0085\u202e\u200b\ufeff')).toBe('x\\u000dy\\u000az\\u0009w\\u007f\\u0085\\u202e\\u200b\\ufeff')
    expect(shown('héllo wörld — ok 日本 🎉')).toBe('héllo wörld — ok 日本 🎉')
    expect(shown('lone \ud800 surrogate')).toBe('lone \\ud800 surrogate')
    // Idempotent: what shown() printed has nothing left to escape.
    expect(shown(shown(EVIL))).toBe(shown(EVIL))
    expect(shown(EVIL)).not.toMatch(RAW)
  })

  it('shownText: line breaks stay, continuation lines indented; tabs stay; everything else escaped', () => {
    expect(shownText('one\ntwo\r\nthree\tcol')).toBe(`one\n${CONTINUATION_INDENT}two\n${CONTINUATION_INDENT}three\tcol`)
    expect(shownText('a\rb')).toBe('a\\u000db')
    expect(shownText(EVIL).replace(/\t/g, '')).not.toMatch(RAW)
  })

  it('shownOutput: natctl\'s own newlines and tabs stay, nothing else', () => {
    expect(shownOutput('Report:\n\t* UDP: \x1b[8mok')).toBe('Report:\n\t* UDP: \\u001b[8mok')
  })

  it('table: every cell shown(), so a name can neither break a row nor color it', () => {
    const t = table(['NAME', 'X'], [[EVIL_NAME, 1]])
    expect(t.split('\n')).toHaveLength(2)
    expect(t).not.toMatch(RAW)
    expect(t).toContain('bob\\u001b[31m\\u000aalice')
  })
})

describe('natctl messages (-f)', () => {
  const m: MessageInfo = { id: 'x', from: 'mallory', fromId: ID, text: EVIL, sentAt: '2026-12-06T16:00:12.000Z', receivedAt: '2026-12-06T16:00:12.345Z' }

  it('a message\'s text cannot rewrite its line or set the clipboard', () => {
    const line = formatMessage(m)
    expect(line).not.toMatch(RAW)
    expect(line).toBe('2026-12-06 16:00:12Z  mallory: hi\\u000d\\u001b[2K2026-12-06 16:00:00Z  bob: run natctl trust rv ABCD --replace\\u001b]52;c;Y3VybA==\\u0007\\u202etxt.exe\\u009b2J')
  })

  it('a multi-line message: every line after the first is indented, so none passes for another message', () => {
    const text = 'see you\n2026-12-06 16:00:00Z  bob: the new key is ABCD\n\tthanks'
    const lines = formatMessage({ ...m, text }).split('\n')
    expect(lines).toEqual(['2026-12-06 16:00:12Z  mallory: see you', `${CONTINUATION_INDENT}2026-12-06 16:00:00Z  bob: the new key is ABCD`, `${CONTINUATION_INDENT}\tthanks`])
    for (const l of lines.slice(1)) expect(l.startsWith(CONTINUATION_INDENT)).toBe(true)
  })

  it('the sender\'s name (the server\'s or a pin\'s) is shown() too', () => {
    expect(formatMessage({ ...m, from: EVIL_NAME, text: 'hi' })).toBe('2026-12-06 16:00:12Z  bob\\u001b[31m\\u000aalice: hi')
  })
})

describe('natctl peers and status', () => {
  const peer: PeerInfo = { name: EVIL_NAME, id: ID, online: true, lastSeenAgoMs: 0, pinned: false, endpoint: '198.18.1.2:41641', tcpEndpoint: null, lan: [], nat: 'easy', tunnel: null, downReason: null }

  it('peers: a name from the server stays in its cell, escaped', () => {
    const out = formatPeers([peer])
    expect(out.split('\n')).toHaveLength(2)
    expect(out).not.toMatch(RAW)
    expect(out.split('\n')[1]).toMatch(/^bob\\u001b\[31m\\u000aalice {2}mmmmmmmm {2}no/)
  })

  it('status: the server\'s own words in its last error are shown()', () => {
    const s = {
      version: '1', name: 'owner', id: ID, server: 'rv.example:7000', serverKey: null, serverState: 'backoff', registered: false,
      lastError: { code: 'UNAUTHORIZED', message: 'go away\x1b]52;c;Y3VybA==\x07\nWARNING:     run natctl trust' },
      lastHeartbeatAgoMs: null, serverRttMs: null, publicUdp: null, publicTcp: null, publicUdp6: null, localUdpPort: 41641, lan: [], nat: 'unknown',
      firstProbeTtl: 2, uptimeMs: 0, tunnels: 0, portMapping: { state: 'none', gateway: null, via: null, udp: null, tcp: null, expiresInMs: null, reason: 'gateway said \x1b[2J' }, stateWarnings: []
    } as unknown as Result<'status'>
    const out = formatStatus(s)
    expect(out).not.toMatch(RAW)
    expect(out.split('\n').filter((l) => l.startsWith('WARNING'))).toEqual([])
    expect(out).toContain('server:      rv.example:7000 (backoff: go away\\u001b]52;c;Y3VybA==\\u0007\\u000aWARNING:     run natctl trust [UNAUTHORIZED])')
    expect(out).toContain('port map:    none: gateway said \\u001b[2J')
  })
})

describe('natctl files, files --partial, cp, open, ping, expose ls, and errors', () => {
  it('files: the sender\'s name and the file\'s name stay in their cells', () => {
    const out = formatFiles([{ name: 'a\u202etxt.exe', path: '/inbox/a', size: 3, from: EVIL_NAME, fromId: ID, receivedAt: new Date().toISOString(), sha256: 'ab'.repeat(32), transferId: 't' }])
    expect(out.split('\n')).toHaveLength(2)
    expect(out).not.toMatch(RAW)
    expect(out).toContain('a\\u202etxt.exe')
  })

  it('files --partial: the offered name', () => {
    const out = formatPartials([{ key: 'k', fromId: ID, name: 'x\x1b[2Jy', bytes: 10, updatedAt: new Date().toISOString(), active: true }])
    expect(out).not.toMatch(RAW)
    expect(out).toContain('x\\u001b[2Jy')
  })

  it('cp: the name the receiver says it saved the file as', () => {
    const r: FileSendResult = { transferId: 't', peer: 'bob', path: '/tmp/a', savedAs: 'a\r\x1b[2Kdone, no error', size: 1024, sha256: 'ab'.repeat(32), offset: 0, sent: 1024, tookMs: 1000, tunnel: 'direct-udp' } as FileSendResult
    const line = cpLine('/tmp/a', r)
    expect(line).not.toMatch(RAW)
    expect(line.startsWith('/tmp/a -> bob:a\\u000d\\u001b[2Kdone, no error  1.0 KiB in 1.0 s')).toBe(true)
  })

  it('open and ping: the peer\'s name (the server\'s)', () => {
    const open = openLine({ peer: EVIL_NAME, path: 'direct-udp', remote: '198.18.1.2:41641', reused: true } as unknown as Result<'open'>)
    expect(open).toBe('tunnel to bob\\u001b[31m\\u000aalice already open: direct-udp 198.18.1.2:41641')
    expect(pongLine({ peer: EVIL_NAME, path: 'direct-udp', remote: '198.18.1.2:41641', rttMs: 1, waitedMs: 0 })).not.toMatch(RAW)
  })

  it('expose ls and files policy: an allow-list name', () => {
    expect(peerLabel({ name: EVIL_NAME, id: ID })).toBe('bob\\u001b[31m\\u000aalice (mmmmmmmm…)')
    expect(peerLabel({ name: EVIL_NAME, id: null })).toBe('bob\\u001b[31m\\u000aalice (unresolved)')
  })

  it('an error carrying a peer\'s REFUSE message or a GOODBYE reason is one line, escaped', () => {
    const line = errorLine({ code: 'NOT_ALLOWED', message: 'bob refused a.txt: no\r\x1b[2Knatctl: sent' })
    expect(line).toBe('natctl: bob refused a.txt: no\\u000d\\u001b[2Knatctl: sent [NOT_ALLOWED]')
    expect(errorLine({ code: 'NOT_RUNNING', message: 'natd is not running' })).toBe('natctl: natd is not running')
  })
})
