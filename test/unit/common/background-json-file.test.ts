// common/state-files.ts: a background write that fails is tried again a few times
// (BACKGROUND_RETRY_DELAYS_MS, bounded), and a dead natd's temp files are removed at start.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { BackgroundJsonFile } from '../../../src/common/background-json-file.js'
import { removeStaleTemps } from '../../../src/common/state-files.js'

describe('BackgroundJsonFile retries', () => {
  it('a failed write is tried again after each delay, and lands once the disk takes it', async () => {
    const slept: number[] = []
    const errors: string[] = []
    const written: string[] = []
    let fails = 2
    const write = (_file: string, text: string): Promise<void> => {
      if (fails-- > 0) return Promise.reject(new Error('ENOSPC'))
      written.push(text)
      return Promise.resolve()
    }
    const f = new BackgroundJsonFile('x.json', write, (err) => errors.push(err.message), { delaysMs: [1_000, 5_000, 30_000], sleep: (ms) => (slept.push(ms), Promise.resolve()) })
    f.save({ port: 1 })
    await f.flushed()
    expect(errors).toEqual(['ENOSPC', 'ENOSPC'])
    expect(slept).toEqual([1_000, 5_000])
    expect(written.map((t) => JSON.parse(t) as unknown)).toEqual([{ port: 1 }])
  })

  it('gives up after the last delay (bounded); the next save tries again', async () => {
    const slept: number[] = []
    let attempts = 0
    const write = (): Promise<void> => (attempts++, Promise.reject(new Error('EIO')))
    const f = new BackgroundJsonFile('x.json', write, () => undefined, { delaysMs: [1_000, 5_000], sleep: (ms) => (slept.push(ms), Promise.resolve()) })
    f.save({ port: 1 })
    await f.flushed()
    expect(attempts).toBe(3)
    expect(slept).toEqual([1_000, 5_000])
    f.save({ port: 2 })
    await f.flushed()
    expect(attempts).toBe(6)
  })

  it('a newer save made during the wait is what the retry writes', async () => {
    const written: string[] = []
    let fails = 1
    const write = (_file: string, text: string): Promise<void> => {
      if (fails-- > 0) return Promise.reject(new Error('EIO'))
      written.push(text)
      return Promise.resolve()
    }
    const f: BackgroundJsonFile = new BackgroundJsonFile('x.json', write, () => undefined, { delaysMs: [1_000], sleep: () => (f.save({ port: 2 }), Promise.resolve()) })
    f.save({ port: 1 })
    await f.flushed()
    expect(written.map((t) => JSON.parse(t) as unknown)).toEqual([{ port: 2 }])
  })
})

describe('BackgroundJsonFile.durable', () => {
  it('true once the save (or a later one) is on disk; false as soon as an attempt at it failed; true at once when nothing is pending', async () => {
    const gates: Array<{ text: string; done: (err?: Error) => void }> = []
    const write = (_file: string, text: string): Promise<void> => new Promise((resolve, reject) => gates.push({ text, done: (err) => (err ? reject(err) : resolve()) }))
    const f = new BackgroundJsonFile('x.json', write, () => undefined, { delaysMs: [1_000], sleep: () => Promise.resolve() })
    expect(await f.durable()).toBe(true)
    f.save({ n: 1 })
    const first = f.durable()
    f.save({ n: 2 }) // waits behind the first write
    const second = f.durable()
    let settled = 0
    void first.then(() => settled++)
    void second.then(() => settled++)
    await new Promise((resolve) => setTimeout(resolve, 10))
    expect(settled).toBe(0) // nothing on disk yet
    gates.shift()!.done()
    expect(await first).toBe(true)
    await new Promise((resolve) => setTimeout(resolve, 10))
    expect(settled).toBe(1) // {n: 2} is not on disk yet
    gates.shift()!.done(new Error('EIO'))
    expect(await second).toBe(false) // told at the first failure, not after the retries
    const third = f.durable()
    await new Promise((resolve) => setTimeout(resolve, 10))
    gates.shift()!.done() // the retry of {n: 2} lands
    expect(await third).toBe(true)
    expect(await f.durable()).toBe(true)
  })
})

/** `p`, or 'pending' if it has not settled within `ms` (an answer that never comes). */
function within<T>(p: Promise<T>, ms = 200): Promise<T | 'pending'> {
  return Promise.race([p, new Promise<'pending'>((resolve) => setTimeout(() => resolve('pending'), ms))])
}

describe('BackgroundJsonFile.durable after the retries gave up', () => {
  it('a durable() with no new save starts a fresh write of the newest value, and answers (it waited forever)', async () => {
    let diskOk = false
    const written: string[] = []
    const errors: string[] = []
    const write = (_file: string, text: string): Promise<void> => {
      if (!diskOk) return Promise.reject(new Error('EIO'))
      written.push(text)
      return Promise.resolve()
    }
    const f = new BackgroundJsonFile('config.json', write, (err, file) => errors.push(`${file}: ${err.message}`), { delaysMs: [1_000], sleep: () => Promise.resolve() })
    f.save({ pin: 1 })
    await f.flushed() // two attempts, both failed: given up
    expect(f.writing).toBe(false)
    expect(await within(f.durable())).toBe(false) // a fresh write, failed again: told, not left waiting
    expect(errors.at(-1)).toBe('config.json: EIO')
    await f.flushed() // its retries gave up too
    diskOk = true
    expect(await within(f.durable())).toBe(true) // the disk is back: the newest value lands
    expect(written.map((t) => JSON.parse(t) as unknown)).toEqual([{ pin: 1 }])
    expect(await f.durable()).toBe(true)
  })

  it('no waiter is left once the writes stop', async () => {
    const f = new BackgroundJsonFile('x.json', () => Promise.reject(new Error('EIO')), () => undefined, { delaysMs: [], sleep: () => Promise.resolve() })
    f.save({ n: 1 })
    const answers = [f.durable(), f.durable()]
    await f.flushed()
    expect(await within(Promise.all(answers))).toEqual([false, false])
    expect((f as unknown as { waiters: unknown[] }).waiters).toHaveLength(0)
  })
})

describe('removeStaleTemps', () => {
  let dir: string
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-tmps-'))
  })
  afterEach(() => {
    fs.rmSync(dir, { recursive: true, force: true })
  })

  it("removes a dead process's *.bg.tmp files, keeps a live one's and everything else", () => {
    const dead = 'learnt.json.2147483646.bg.tmp' // no such pid
    const live = `learnt.json.${process.ppid}.bg.tmp`
    for (const name of [dead, live, 'learnt.json', 'config.json']) fs.writeFileSync(path.join(dir, name), '{}')
    expect(removeStaleTemps(dir)).toEqual([dead])
    expect(fs.readdirSync(dir).sort()).toEqual(['config.json', 'learnt.json', live].sort())
  })

  it('a missing directory: nothing, no throw', () => {
    expect(removeStaleTemps(path.join(dir, 'nope'))).toEqual([])
  })
})
