// The sender's outbox (src/daemon/outbox.ts): the unsettled ID of a text to a peer is lent
// to the next send of it (after a restart too), never to a send under way; settled, the
// same text gets a new ID; the log stays bounded; written off the event loop.
import fs from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import type { StateLogIo } from '../../../src/common/state-files.js'
import { Outbox, OUTBOX_FILE, OUTBOX_MAX, OUTBOX_TTL_MS } from '../../../src/daemon/outbox.js'
import { tempDirs } from '../helpers.js'

const T0 = 1_700_000_000_000
const BOB = 'b'.repeat(52)
const CAROL = 'c'.repeat(52)

const tmp = tempDirs('natd-outbox-')

describe('Outbox', () => {
  it('lends an unsettled ID to the same text for the same peer, across a restart; not while it is under way; not after the TTL', async () => {
    const dir = tmp()
    const box = new Outbox(dir)
    const first = await box.take(BOB, 'hi', T0)
    expect(first.id).toMatch(/^[0-9a-f]{32}$/)
    expect((await box.take(BOB, 'hi', T0)).id).not.toBe(first.id) // two sends at once are two messages
    expect((await box.take(CAROL, 'hi', T0)).id).not.toBe(first.id)
    expect((await box.take(BOB, 'hi!', T0)).id).not.toBe(first.id)
    first.release()
    expect((fs.statSync(path.join(dir, OUTBOX_FILE)).mode & 0o777).toString(8)).toBe('600')
    const restarted = new Outbox(dir)
    expect((await restarted.take(BOB, 'hi', T0 + 1)).id).toBe(first.id)
    expect((await new Outbox(dir).take(BOB, 'hi', T0 + OUTBOX_TTL_MS + 1)).id).not.toBe(first.id)
  })

  it('a settled ID is not lent again, across a restart; the log is compacted and holds at most OUTBOX_MAX', async () => {
    const dir = tmp()
    const box = new Outbox(dir)
    const p = await box.take(BOB, 'hi', T0)
    p.settle()
    p.release()
    await box.flushed()
    expect((await new Outbox(dir).take(BOB, 'hi', T0)).id).not.toBe(p.id)
    const busy = new Outbox(dir)
    for (let i = 0; i < 100; i++) {
      const q = await busy.take(BOB, `m${i}`, T0)
      q.settle()
      q.release()
    }
    await busy.flushed()
    expect(fs.readFileSync(path.join(dir, OUTBOX_FILE), 'utf8').trim().split('\n').length).toBeLessThanOrEqual(2 * 64 + 2)
    const max = 10 // OUTBOX_MAX in use; small here, as each new entry is fsynced
    const small = new Outbox(dir, max)
    for (let i = 0; i < max + 5; i++) (await small.take(CAROL, `u${i}`, T0)).release()
    expect(small.size).toBe(max)
    expect(new Outbox(dir, max).size).toBe(max)
    expect(OUTBOX_MAX).toBe(1_000)
  })

  // Issue 17: a send's ID is fsynced before the message leaves; on a disk that stalls that
  // must hold this send, not the event loop (the agent's heartbeats and API).
  it('take() resolves once its entry is written, off the event loop; a failed write is STATE_WRITE_FAILED and lends nothing', async () => {
    const dir = tmp()
    let release!: (err?: Error) => void
    const writes: Array<{ text: string; sync: boolean }> = []
    const io: StateLogIo = {
      append: (_f, text, sync) => {
        writes.push({ text, sync })
        return new Promise<void>((resolve, reject) => (release = (err) => (err ? reject(err) : resolve())))
      },
      replace: () => Promise.resolve(),
      fsync: () => Promise.resolve()
    }
    const box = new Outbox(dir, OUTBOX_MAX, io)
    let taken = false
    const first = box.take(BOB, 'hi', T0).then((p) => ((taken = true), p))
    await new Promise((resolve) => setTimeout(resolve, 20)) // the event loop turns while the write hangs
    expect(taken).toBe(false)
    expect(writes).toEqual([{ text: expect.stringContaining('"peer"'), sync: true }])
    expect(fs.existsSync(path.join(dir, OUTBOX_FILE))).toBe(false) // nothing written on the event loop
    release()
    expect((await first).id).toMatch(/^[0-9a-f]{32}$/)
    const failed = box.take(CAROL, 'hi', T0)
    await new Promise((resolve) => setTimeout(resolve, 0))
    release(new Error('EIO'))
    await expect(failed).rejects.toMatchObject({ code: 'STATE_WRITE_FAILED' })
    expect(box.size).toBe(1) // the failed entry is not kept
  })
})
