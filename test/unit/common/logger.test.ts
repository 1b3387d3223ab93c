// The logger natd and natd-rendezvous build (src/common/logger.ts): one line per event, syslog priorities for the
// journal, no colour unless on a TTY, and $JOURNAL_STREAM checked against the real stdout.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { PassThrough } from 'node:stream'
import { describe, expect, it } from 'vitest'
import { createLogger, isJournalStream, type LogLevel } from '../../../src/common/logger.js'

function capture(opts: { level: LogLevel; tty: boolean; journal: boolean }): { log: ReturnType<typeof createLogger>; lines: () => string[] } {
  const stream = new PassThrough()
  let text = ''
  stream.on('data', (d: Buffer) => (text += d.toString()))
  const log = createLogger({ ...opts, stream })
  return { log, lines: () => text.split('\n').filter(Boolean) }
}

const ESC = '\u001b['

describe('createLogger', () => {
  it('journal: each line starts with its syslog priority, JSON with the fields, no timestamp, no colour', () => {
    const { log, lines } = capture({ level: 'debug', tty: false, journal: true })
    const child = log.child({ component: 'tunnel' })
    child.error('tunnel failed', { peer: 'bob', err: 'line one\nline two' })
    child.warn('fell back to relay', { peer: 'bob' })
    child.info('tunnel up', { peer: 'bob', rttMs: 7 })
    child.debug('probe sent', { ttl: 2 })
    const out = lines()
    expect(out.map((l) => l.slice(0, 3))).toEqual(['<3>', '<4>', '<6>', '<7>'])
    expect(out).toHaveLength(4) // a newline inside a field stays inside its line
    expect(JSON.parse(out[2]!.slice(3))).toEqual({ level: 'info', message: 'tunnel up', component: 'tunnel', peer: 'bob', rttMs: 7 })
    expect(out.some((l) => l.includes(ESC) || l.includes('timestamp'))).toBe(false)
  })

  it('a file or pipe: JSON lines with a timestamp, no priority prefix, no colour', () => {
    const { log, lines } = capture({ level: 'info', tty: false, journal: false })
    log.info('natd started', { name: 'alice' })
    log.debug('not shown')
    const [line, ...rest] = lines()
    expect(rest).toEqual([])
    expect(line).toMatch(/^\{/)
    expect(line).not.toContain(ESC)
    expect(JSON.parse(line!)).toMatchObject({ level: 'info', message: 'natd started', name: 'alice', timestamp: expect.any(String) })
  })

  it('a TTY: short human lines, with colour', () => {
    const { log, lines } = capture({ level: 'info', tty: true, journal: false })
    log.child({ component: 'agent' }).info('natd started', { name: 'alice' })
    expect(lines()[0]).toMatch(/^\d\d:\d\d:\d\d\.\d{3} .*info.* \[agent\] natd started name=alice$/)
    expect(lines()[0]).toContain(ESC)
  })

  it('a TTY: a field with a control character (a peer\'s words) is written escaped, as JSON', () => {
    const { log, lines } = capture({ level: 'info', tty: true, journal: false })
    log.info('refused', { reason: 'no\r\u001b[2Kall good\u0007', peer: 'bob' })
    expect(lines()).toHaveLength(1)
    expect(lines()[0]).toContain('reason="no\\r\\u001b[2Kall good\\u0007" peer=bob')
  })

  it('the level changes at run time (SIGHUP), children included', () => {
    const { log, lines } = capture({ level: 'info', tty: false, journal: true })
    const child = log.child({ component: 'x' })
    child.debug('hidden')
    log.level = 'debug'
    child.debug('shown')
    expect(lines().map((l) => (JSON.parse(l.slice(3)) as { message: string }).message)).toEqual(['shown'])
  })
})

describe('isJournalStream', () => {
  it('is true only when $JOURNAL_STREAM names the device and inode of that fd', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-log-'))
    const fd = fs.openSync(path.join(dir, 'out'), 'w')
    try {
      const st = fs.fstatSync(fd, { bigint: true })
      expect(isJournalStream({ JOURNAL_STREAM: `${st.dev}:${st.ino}` }, fd)).toBe(true)
      expect(isJournalStream({ JOURNAL_STREAM: `${st.dev}:${st.ino + 1n}` }, fd)).toBe(false) // inherited, but stdout went elsewhere
      expect(isJournalStream({}, fd)).toBe(false)
      expect(isJournalStream({ JOURNAL_STREAM: 'garbage' }, fd)).toBe(false)
    } finally {
      fs.closeSync(fd)
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })
})
