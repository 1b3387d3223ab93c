// Name bindings (src/rendezvous/name-store.ts, file-name-store.ts): the in-memory store,
// and the JSON-lines file a server replays on start (a restart), compacts, appends to, and
// polls for lines another process (`natd-rendezvous names rm`) appended.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { appendJsonLine } from '../../../src/common/state-files.js'
import { silentLogger, type Logger } from '../../../src/protocol/log.js'
import { FileNameStore, NAMES_FILE, SEEN_WRITE_INTERVAL_MS } from '../../../src/rendezvous/file-name-store.js'
import { MemoryNameStore } from '../../../src/rendezvous/name-store.js'

const A = Buffer.alloc(32, 1)
const B = Buffer.alloc(32, 2)
const DAY_MS = 24 * 3_600_000
const T0 = Date.UTC(2026, 0, 1)

/** A logger that keeps its warnings. */
function recordingLogger(): Logger & { warnings: Array<{ msg: string; fields: unknown }> } {
  const warnings: Array<{ msg: string; fields: unknown }> = []
  const log: Logger & { warnings: typeof warnings } = {
    ...silentLogger,
    warnings,
    warn: (msg: string, fields?: unknown) => void warnings.push({ msg, fields }),
    child: () => log
  } as Logger & { warnings: typeof warnings }
  return log
}

describe('MemoryNameStore', () => {
  it('binds, finds by name and by key, moves a key to a new name, releases', () => {
    const s = new MemoryNameStore()
    s.bind('alice', A, T0)
    expect(s.get('alice')).toEqual({ name: 'alice', publicKey: new Uint8Array(A), boundAt: T0, lastSeenAt: T0 })
    expect(s.nameOf(A)).toBe('alice')
    expect(s.nameOf(B)).toBeUndefined()
    s.seen('alice', T0 + 5)
    s.seen('alice', T0 + 1) // never backwards
    expect(s.get('alice')?.lastSeenAt).toBe(T0 + 5)
    s.bind('alice2', A, T0 + 10) // a key holds one name: alice is released
    expect(s.get('alice')).toBeUndefined()
    expect(s.nameOf(A)).toBe('alice2')
    expect(s.release('alice2')).toBe(true)
    expect(s.release('alice2')).toBe(false)
    expect(s.list()).toEqual([])
  })

  it('holds thousands of bindings through growth and reuse', () => {
    const s = new MemoryNameStore()
    const key = (i: number): Buffer => Buffer.concat([Buffer.from(Uint32Array.of(i).buffer), Buffer.alloc(28, 9)])
    for (let i = 0; i < 5_000; i++) s.bind(`n${i}`, key(i), i)
    for (let i = 0; i < 5_000; i += 2) s.release(`n${i}`)
    for (let i = 0; i < 5_000; i += 2) s.bind(`m${i}`, key(i), i)
    for (let i = 0; i < 5_000; i++) expect(s.nameOf(key(i))).toBe(i % 2 ? `n${i}` : `m${i}`)
    expect(s.size).toBe(5_000)
  })
})

describe('FileNameStore', () => {
  let dir: string
  const open: FileNameStore[] = []
  const file = (): string => path.join(dir, NAMES_FILE)
  const lines = (): Array<Record<string, unknown>> =>
    fs
      .readFileSync(file(), 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Record<string, unknown>)
  const openStore = (log: Logger = silentLogger): FileNameStore => {
    const s = new FileNameStore(dir, log, { pollMs: 0 })
    open.push(s)
    return s
  }
  /** Lets the store's microtask write its lines. */
  const settle = (): Promise<void> => new Promise((resolve) => setImmediate(resolve))

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-names-'))
  })
  afterEach(() => {
    for (const s of open.splice(0)) s.close()
    fs.rmSync(dir, { recursive: true, force: true })
  })

  it('keeps bindings across a reopen (a server restart), in a 0600 file', async () => {
    const s = openStore()
    s.bind('alice', A, T0)
    s.bind('bob', B, T0 + 1)
    s.release('bob')
    await settle()
    s.close()
    expect(fs.statSync(file()).mode & 0o777).toBe(0o600)
    const again = openStore()
    expect(again.get('alice')).toMatchObject({ name: 'alice', boundAt: T0, lastSeenAt: T0 })
    expect(again.nameOf(A)).toBe('alice')
    expect(again.get('bob')).toBeUndefined()
  })

  it('compacts on open: one bind line per binding, with its last-seen time', async () => {
    const s = openStore()
    for (let i = 0; i < 20; i++) s.bind(i % 2 ? 'alice' : 'alice2', A, T0 + i) // each moves A's binding
    s.bind('bob', B, T0)
    s.seen('bob', T0 + SEEN_WRITE_INTERVAL_MS)
    await settle()
    s.close()
    expect(lines().length).toBe(22)
    const again = openStore()
    expect(lines()).toEqual([
      { op: 'bind', name: 'alice', key: A.toString('hex'), t: T0 + 19, seen: T0 + 19 },
      { op: 'bind', name: 'bob', key: B.toString('hex'), t: T0, seen: T0 + SEEN_WRITE_INTERVAL_MS }
    ])
    expect(again.list().map((b) => b.name).sort()).toEqual(['alice', 'bob'])
  })

  it('writes a seen line at most once a day per name', async () => {
    const s = openStore()
    s.bind('alice', A, T0)
    for (let t = T0; t < T0 + 2 * DAY_MS; t += 3_600_000) s.seen('alice', t)
    s.bind('alice', A, T0 + 2 * DAY_MS + 5) // the holder registering again is a seen, not a new bind
    await settle()
    expect(lines().map((l) => l.op)).toEqual(['bind', 'seen', 'seen'])
    expect(s.get('alice')?.boundAt).toBe(T0)
  })

  it('a running store picks up a release line another process appended; its own lines are not applied twice', async () => {
    const log = recordingLogger()
    const s = openStore(log)
    s.bind('alice', A, T0)
    s.bind('bob', B, T0)
    await settle()
    appendJsonLine(file(), { op: 'release', name: 'alice', t: T0 + 1 })
    expect(s.get('alice')).toBeDefined()
    s.poll()
    expect(s.get('alice')).toBeUndefined()
    expect(s.get('bob')).toBeDefined()
    // A half-written line waits for its end.
    fs.appendFileSync(file(), '{"op":"release","name":"bo')
    s.poll()
    expect(s.get('bob')).toBeDefined()
    fs.appendFileSync(file(), 'b","t":1}\n')
    s.poll()
    expect(s.get('bob')).toBeUndefined()
    expect(log.warnings).toEqual([])
  })

  it('the poll timer applies an external release by itself', async () => {
    const s = new FileNameStore(dir, silentLogger, { pollMs: 20 })
    open.push(s)
    s.bind('alice', A, T0)
    await settle()
    appendJsonLine(file(), { op: 'release', name: 'alice', t: T0 + 1 })
    const deadline = Date.now() + 2_000
    while (s.get('alice') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10))
    expect(s.get('alice')).toBeUndefined()
  })

  it('skips malformed lines with a warning, and keeps the rest', () => {
    fs.writeFileSync(
      file(),
      [
        JSON.stringify({ op: 'bind', name: 'alice', key: A.toString('hex'), t: T0 }),
        'not json',
        JSON.stringify({ op: 'bind', name: 'short', key: 'abcd', t: T0 }),
        JSON.stringify({ op: 'explode', name: 'alice', t: T0 }),
        JSON.stringify([1, 2]),
        'null',
        JSON.stringify({ op: 'bind', name: 'bob', key: B.toString('hex'), t: T0 }),
        '{"op":"release","name":"bob"' // torn by a crash
      ].join('\n')
    )
    const log = recordingLogger()
    const s = openStore(log)
    expect(s.list().map((b) => b.name).sort()).toEqual(['alice', 'bob'])
    expect(log.warnings).toHaveLength(1)
    expect(log.warnings[0]).toMatchObject({ msg: 'skipped malformed lines in the names file', fields: { count: 6 } })
    // A malformed line appended later is skipped too.
    fs.appendFileSync(file(), 'garbage\n')
    s.poll()
    expect(log.warnings).toHaveLength(2)
    expect(s.list()).toHaveLength(2)
  })
})
