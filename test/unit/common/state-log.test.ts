// common/state-files.ts StateLog: a running agent's JSON-lines files written off the event
// loop, one queue per file (writes land in the order made, never overlap), and an append
// never glued to a torn last line nor leaving half a record behind when it fails.
import fs from 'node:fs'
import path from 'node:path'
import { describe, expect, it, vi } from 'vitest'
import { asyncStateIo, readJsonLines, StateLog, type StateLogIo } from '../../../src/common/state-files.js'
import { tempDirs } from '../helpers.js'

const tmp = tempDirs('natd-statelog-')

describe('StateLog', () => {
  it('runs one write at a time, in order; a write that hangs holds the ones behind it, not the event loop', async () => {
    const started: string[] = []
    const held: Array<() => void> = []
    const io: StateLogIo = {
      append: (_f, text) => {
        started.push(text.trim())
        return new Promise<void>((resolve) => held.push(resolve))
      },
      replace: (_f, text) => {
        started.push(`replace ${text.trim()}`)
        return Promise.resolve()
      },
      fsync: () => Promise.resolve()
    }
    const log = new StateLog('x.jsonl', io)
    const done: string[] = []
    void log.append([1], { sync: true }).then(() => done.push('1'))
    void log.append([2], { sync: true }).then(() => done.push('2'))
    void log.replace('3\n').then(() => done.push('3'))
    expect(log.queued).toBe(3)
    await new Promise((resolve) => setTimeout(resolve, 20)) // timers run while the first write hangs
    expect(started).toEqual(['1'])
    held.shift()!()
    await new Promise((resolve) => setTimeout(resolve, 0))
    expect(started).toEqual(['1', '2'])
    held.shift()!()
    await log.flushed()
    expect(started).toEqual(['1', '2', 'replace 3'])
    expect(done).toEqual(['1', '2', '3'])
    expect(log.queued).toBe(0)
  })

  it('a failed write rejects its caller only; the queue goes on', async () => {
    let n = 0
    const io: StateLogIo = { ...asyncStateIo, append: () => (n++ === 0 ? Promise.reject(new Error('EIO')) : Promise.resolve()) }
    const log = new StateLog('x.jsonl', io)
    const first = log.append([1], { sync: true })
    const second = log.append([2], { sync: true })
    await expect(first).rejects.toThrow('EIO')
    await expect(second).resolves.toBeUndefined()
  })

  it('appends fsynced lines (0600) off the event loop; a torn last line (a crash mid-append) is closed first, so the next record is not lost with it', async () => {
    const dir = tmp()
    const file = path.join(dir, 'm.jsonl')
    const sync = vi.spyOn(fs, 'fsyncSync')
    try {
      await new StateLog(file).append([{ a: 1 }], { sync: true })
      expect(sync).not.toHaveBeenCalled()
    } finally {
      sync.mockRestore()
    }
    expect(fs.statSync(file).mode & 0o777).toBe(0o600)
    fs.appendFileSync(file, '{"a":2,"tor') // natd died mid-append
    await new StateLog(file).append([{ a: 3 }, { a: 4 }], { sync: true })
    expect(readJsonLines(file)).toEqual([{ a: 1 }, { a: 3 }, { a: 4 }])
  })

  it('an append that fails part-way is cut back off: no half record for the next append to join', async () => {
    const dir = tmp()
    const file = path.join(dir, 'm.jsonl')
    const log = new StateLog(file)
    await log.append([{ a: 1 }], { sync: true })
    const size = fs.statSync(file).size
    // The write lands, its fsync fails (EIO): the record is taken back, as its caller hears.
    const fh = await fs.promises.open(file, 'r')
    const proto = Object.getPrototypeOf(fh) as { sync: () => Promise<void> }
    await fh.close()
    const failing = vi.spyOn(proto, 'sync').mockRejectedValueOnce(Object.assign(new Error('EIO'), { code: 'EIO' }))
    try {
      await expect(log.append([{ a: 2 }], { sync: true })).rejects.toThrow('EIO')
    } finally {
      failing.mockRestore()
    }
    expect(fs.statSync(file).size).toBe(size)
    await log.append([{ a: 3 }], { sync: true })
    expect(readJsonLines(file)).toEqual([{ a: 1 }, { a: 3 }])
  })
})
