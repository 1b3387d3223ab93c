// The receiver's memory of stored message IDs (src/daemon/message-ids.ts): scoped per
// sender, persisted and seeded from the inbox (a restart still dedupes), and bounded per
// sender, in all, and in time.
import fs from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { DEDUPE_IDS_PER_PEER, DEDUPE_MAX_IDS, DEDUPE_WINDOW_MS, MESSAGE_IDS_FILE, MessageIds } from '../../../src/daemon/message-ids.js'
import { tempDirs } from '../helpers.js'

const T0 = 1_700_000_000_000
const A = 'a'.repeat(52)
const B = 'b'.repeat(52)
const id = (n: number): string => n.toString(16).padStart(32, '0')

const tmp = tempDirs('natd-ids-')

describe('MessageIds', () => {
  it('an ID counts only with its sender, and survives a restart (file 0600) and the inbox being cleared', async () => {
    const dir = tmp()
    const ids = new MessageIds(dir, [], T0)
    ids.add({ from: A, id: id(1), at: T0 })
    expect(ids.has(A, id(1), T0)).toBe(true)
    expect(ids.has(B, id(1), T0)).toBe(false)
    await ids.flushed() // written behind
    expect((fs.statSync(path.join(dir, MESSAGE_IDS_FILE)).mode & 0o777).toString(8)).toBe('600')
    const again = new MessageIds(dir, [], T0 + 1) // restarted, inbox empty (cleared)
    expect(again.has(A, id(1), T0 + 1)).toBe(true)
    expect(again.has(B, id(1), T0 + 1)).toBe(false)
  })

  it('is seeded from the inbox too (a crash between the message and its line here), and skips torn or hostile lines', () => {
    const dir = tmp()
    fs.writeFileSync(path.join(dir, MESSAGE_IDS_FILE), `{"from":"${A}","id":"${id(2)}","at":${T0}}\n{"from":"x/y","id":"${id(3)}","at":${T0}}\n[1,2]\n{"from":"${A}","id":"${id(4)}","at":"soon"}\n{"from":"${A}","i`)
    const ids = new MessageIds(dir, [{ from: B, id: id(5), at: T0 }], T0)
    expect(ids.size).toBe(2)
    expect(ids.has(A, id(2), T0)).toBe(true)
    expect(ids.has(B, id(5), T0)).toBe(true)
    expect(ids.has('x', id(3), T0)).toBe(false)
  })

  it('forgets an ID after the window', async () => {
    const ids = new MessageIds(tmp(), [], T0)
    ids.add({ from: A, id: id(1), at: T0 })
    ids.add({ from: A, id: id(2), at: T0 + 1_000 })
    expect(ids.has(A, id(1), T0 + DEDUPE_WINDOW_MS)).toBe(true)
    expect(ids.has(A, id(1), T0 + DEDUPE_WINDOW_MS + 1)).toBe(false)
    expect(ids.has(A, id(2), T0 + DEDUPE_WINDOW_MS + 1)).toBe(true)
    await ids.flushed() // its lines land before the directory goes
  })

  it('keeps a sender\'s newest `perPeer` (others keep theirs), and compacts its file', async () => {
    const dir = tmp()
    const perPeer = 8 // DEDUPE_IDS_PER_PEER in use; small here, as each add is fsynced
    const ids = new MessageIds(dir, [], T0, { perPeer })
    ids.add({ from: B, id: id(0), at: T0 })
    for (let i = 1; i <= perPeer * 3; i++) ids.add({ from: A, id: id(i), at: T0 + i })
    expect(ids.size).toBe(perPeer + 1)
    expect(ids.has(A, id(perPeer * 2), T0)).toBe(false)
    expect(ids.has(A, id(perPeer * 2 + 1), T0)).toBe(true)
    expect(ids.has(B, id(0), T0)).toBe(true)
    await ids.flushed()
    const lines = fs.readFileSync(path.join(dir, MESSAGE_IDS_FILE), 'utf8').trim().split('\n').length
    expect(lines).toBeLessThanOrEqual(2 * (perPeer + 1))
    const again = new MessageIds(dir, [], T0, { perPeer })
    expect(again.size).toBe(perPeer + 1)
    expect(again.has(A, id(perPeer * 3), T0)).toBe(true)
    expect(DEDUPE_IDS_PER_PEER).toBeGreaterThanOrEqual(1_000) // more than the default inbox quota per peer
  })

  it('holds at most DEDUPE_MAX_IDS in all, however many senders: the oldest go first', () => {
    const senders = Math.ceil((DEDUPE_MAX_IDS + 10) / 10)
    const inbox = []
    for (let s = 0; s < senders; s++) for (let i = 0; i < 10; i++) inbox.push({ from: `p${s}`, id: id(i), at: T0 + s * 10 + i })
    const ids = new MessageIds(tmp(), inbox, T0)
    expect(ids.size).toBe(DEDUPE_MAX_IDS)
    expect(ids.has('p0', id(0), T0)).toBe(false)
    expect(ids.has(`p${senders - 1}`, id(9), T0)).toBe(true)
  })
})
