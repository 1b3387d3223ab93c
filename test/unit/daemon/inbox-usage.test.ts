import fs from 'node:fs'
import fsp from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { InboxUsage } from '../../../src/daemon/inbox-usage.js'
import { PARTIAL_MAX_AGE_MS, PartialPruner, UPKEEP_INTERVAL_MS } from '../../../src/daemon/partial-pruner.js'
import { candidateNames } from '../../../src/daemon/file-place.js'
import { MAX_NAME_SUFFIX, RANDOM_NAME_TRIES } from '../../../src/daemon/file-names.js'
import { FakeClock, recordingLog } from '../helpers.js'

const A = 'a'.repeat(52)
const C = 'c'.repeat(52)
const key = (peer: string, n: number): string => `${peer}.${String(n).padStart(64, '0')}`

const cleanups: Array<() => void> = []
afterEach(() => {
  for (const c of cleanups.splice(0)) c()
})

/** An inbox in a tmp dir: `received` files (listed in files.jsonl) and `partials` (key → bytes) on disk. */
function inbox(received: Array<{ name: string; fromId: string; bytes: number }> = [], partials: Record<string, number> = {}): { dir: string; inbox: string; list: string; open: () => InboxUsage } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-usage-'))
  cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }))
  const box = path.join(dir, 'inbox')
  fs.mkdirSync(path.join(box, '.partial'), { recursive: true })
  const list = path.join(dir, 'files.jsonl')
  const lines = received.map((f) => {
    fs.writeFileSync(path.join(box, f.name), Buffer.alloc(f.bytes))
    return JSON.stringify({ name: f.name, path: path.join(box, f.name), size: f.bytes, fromId: f.fromId })
  })
  fs.writeFileSync(list, lines.join('\n') + '\n{"torn')
  for (const [k, bytes] of Object.entries(partials)) fs.writeFileSync(path.join(box, '.partial', k), Buffer.alloc(bytes))
  return { dir, inbox: box, list, open: () => new InboxUsage(box, list, (err) => { throw err }) }
}

describe('InboxUsage', () => {
  it('is built at start from files.jsonl and the partials on disk: deleted files do not count, a path listed twice counts once', async () => {
    const box = inbox(
      [
        { name: 'one', fromId: A, bytes: 10 },
        { name: 'two', fromId: A, bytes: 20 },
        { name: 'three', fromId: C, bytes: 5 }
      ],
      { [key(A, 1)]: 7, [key(C, 1)]: 0 }
    )
    fs.rmSync(path.join(box.inbox, 'two'))
    fs.appendFileSync(box.list, '\n' + JSON.stringify({ path: path.join(box.inbox, 'three'), fromId: C }) + '\n')
    const u = box.open()
    await u.ready
    expect(u.of(A)).toEqual({ files: 2, bytes: 17, partials: 1 })
    expect(u.of(C)).toEqual({ files: 2, bytes: 5, partials: 1 })
    expect(u.total).toBe(4)
  })

  it('follows transfers: a reserved partial leaves its sender\'s quota and stays in the total; settled, it counts again with its bytes, or goes', async () => {
    const u = inbox([], { [key(A, 1)]: 100 }).open()
    await u.ready
    expect(u.reserve(key(A, 1), A)).toBe(100)
    expect(u.of(A)).toEqual({ files: 0, bytes: 0, partials: 0 })
    expect(u.total).toBe(1)
    u.settle(key(A, 1), 250, 1_000)
    expect(u.of(A)).toEqual({ files: 1, bytes: 250, partials: 1 })
    expect(u.reserve(key(A, 2), A)).toBeNull()
    expect(u.total).toBe(2)
    u.settle(key(A, 2), null, 2_000) // closed before any byte: removed
    expect(u.has(key(A, 2))).toBe(false)
    u.reserve(key(A, 1), A)
    u.settle(key(A, 1), null, 3_000)
    u.placed('/inbox/f', A, 250) // the partial became a file
    expect(u.of(A)).toEqual({ files: 1, bytes: 250, partials: 0 })
    u.placed('/inbox/f', C, 9) // the user deleted it and another file took its name
    expect(u.of(A)).toEqual({ files: 0, bytes: 0, partials: 0 })
    expect(u.of(C)).toEqual({ files: 1, bytes: 9, partials: 0 })
    expect(u.total).toBe(1)
  })

  it('names the oldest partial of a peer past a cap, never one being received', async () => {
    const u = inbox().open()
    await u.ready
    for (let i = 1; i <= 3; i++) {
      u.reserve(key(A, i), A)
      u.settle(key(A, i), 1, i * 1_000)
    }
    expect(u.oldestBeyond(A, 3)).toBeNull()
    expect(u.oldestBeyond(A, 2)).toBe(key(A, 1))
    u.reserve(key(A, 1), A)
    expect(u.oldestBeyond(A, 1)).toBe(key(A, 2))
    expect(u.drop(key(A, 1))).toBe(false) // being received
    expect(u.drop(key(A, 2))).toBe(true)
    expect(u.of(A)).toEqual({ files: 1, bytes: 1, partials: 1 })
  })

  it('matches the disk after a restart, and recheck() forgets what the user deleted', async () => {
    const box = inbox([{ name: 'kept', fromId: A, bytes: 4 }])
    const u = box.open()
    await u.ready
    fs.writeFileSync(path.join(box.inbox, '.partial', key(A, 9)), Buffer.alloc(3))
    u.reserve(key(A, 9), A)
    u.settle(key(A, 9), 3, Date.now())
    fs.writeFileSync(path.join(box.inbox, 'new'), Buffer.alloc(6))
    fs.appendFileSync(box.list, '\n' + JSON.stringify({ path: path.join(box.inbox, 'new'), fromId: A }) + '\n')
    u.placed(path.join(box.inbox, 'new'), A, 6)
    const again = box.open()
    await again.ready
    expect(again.of(A)).toEqual(u.of(A))
    expect(again.of(A)).toEqual({ files: 3, bytes: 13, partials: 1 })
    fs.rmSync(path.join(box.inbox, 'kept'))
    fs.rmSync(path.join(box.inbox, '.partial', key(A, 9)))
    expect(u.of(A).files).toBe(3) // natd has not looked yet: no stat per offer
    await u.recheck()
    expect(u.of(A)).toEqual({ files: 1, bytes: 6, partials: 0 })
  })

  it('recheck() keeps the size of a transfer that began and ended while it stat\'ed the partial, not the size it saw before', async () => {
    const box = inbox([], { [key(A, 1)]: 100 })
    const file = path.join(box.inbox, '.partial', key(A, 1))
    const old = new Date(Date.now() - PARTIAL_MAX_AGE_MS - 60_000)
    fs.utimesSync(file, old, old)
    const u = box.open()
    await u.ready
    // The recheck's stat of the partial sees the disk before the transfer and answers once the test says so.
    const gate: { answer?: () => void } = {}
    const realStat = fsp.stat.bind(fsp)
    const stat = vi.spyOn(fsp, 'stat').mockImplementation(async (p, opts) => {
      const st = await realStat(p, opts)
      if (p === file) await new Promise<void>((resolve) => (gate.answer = resolve))
      return st
    })
    cleanups.push(() => stat.mockRestore())
    const recheck = u.recheck()
    while (!gate.answer) await new Promise((r) => setImmediate(r))
    expect(u.reserve(key(A, 1), A)).toBe(100) // a resume begins…
    fs.appendFileSync(file, Buffer.alloc(200))
    u.settle(key(A, 1), 300, Date.now()) // …and is cut off again, 300 bytes on disk
    gate.answer()
    await recheck
    expect(u.of(A)).toEqual({ files: 1, bytes: 300, partials: 1 })
    expect(u.stale(Date.now() - PARTIAL_MAX_AGE_MS, 10)).toEqual([]) // touched just now, not a week ago
  })
})

describe('PartialPruner', () => {
  it('removes partials a week old on its timer, off the offers; recent ones and ones being received stay', async () => {
    const now = Date.now()
    const box = inbox([], { [key(C, 1)]: 5, [key(C, 2)]: 5, [key(C, 3)]: 5 })
    const old = new Date(now - PARTIAL_MAX_AGE_MS - 60_000)
    for (const n of [1, 3]) fs.utimesSync(path.join(box.inbox, '.partial', key(C, n)), old, old)
    const u = box.open()
    await u.ready
    u.reserve(key(C, 3), C) // a resume of an old one is under way
    const clock = new FakeClock(now)
    const { log, lines } = recordingLog()
    const pruner = new PartialPruner(() => box.inbox, u, clock, log)
    pruner.start()
    clock.advance(UPKEEP_INTERVAL_MS - 1)
    await new Promise((r) => setTimeout(r, 50))
    expect(fs.readdirSync(path.join(box.inbox, '.partial'))).toHaveLength(3)
    clock.advance(1) // due: the timer starts the run, onUpkeepDue() joins it
    await pruner.onUpkeepDue()
    expect(fs.readdirSync(path.join(box.inbox, '.partial')).sort()).toEqual([key(C, 2), key(C, 3)])
    expect(u.of(C)).toEqual({ files: 1, bytes: 5, partials: 1 })
    expect(lines).toEqual([{ level: 'info', msg: 'removed a partial file', fields: { partial: key(C, 1).slice(0, 16), reason: 'age', maxAgeDays: 7 } }])
    pruner.stop()
    expect(clock.pending).toBe(0)
  })

  it('says why it removed a partial: the per-peer cap is not the 7-day age (and at debug: a peer causes it per offer)', async () => {
    const box = inbox([], { [key(A, 1)]: 5 })
    const u = box.open()
    await u.ready
    const { log, lines } = recordingLog()
    await new PartialPruner(() => box.inbox, u, new FakeClock(Date.now()), log).remove(key(A, 1), 'per-peer-cap')
    expect(fs.readdirSync(path.join(box.inbox, '.partial'))).toEqual([])
    expect(lines).toEqual([{ level: 'debug', msg: 'removed a partial file', fields: { partial: key(A, 1).slice(0, 16), reason: 'per-peer-cap' } }])
  })
})

describe('candidateNames', () => {
  it('tries the name, nine numbered ones, then random 64-bit suffixes: a bounded number of link() calls', () => {
    const names = candidateNames('report.pdf', (n) => Buffer.alloc(n, 0xab))
    expect(names).toHaveLength(MAX_NAME_SUFFIX + 1 + RANDOM_NAME_TRIES)
    expect(names.slice(0, 3)).toEqual(['report.pdf', 'report-1.pdf', 'report-2.pdf'])
    expect(names[MAX_NAME_SUFFIX]).toBe('report-9.pdf')
    expect(names[MAX_NAME_SUFFIX + 1]).toBe(`report-${'ab'.repeat(8)}.pdf`)
  })
})
