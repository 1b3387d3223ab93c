// review8 #2: the inbox upkeep forgets a stale partial (InboxUsage.drop) and then removes
// it (fsp.rm in the thread pool); an attempt of that transfer offered in between finds no
// partial in the counters, opens the file still there, resumes at its size, and the rm
// unlinks it under the transfer. The sender sends the rest; at the end the receiver finds
// its partial gone (checkStillOurs: PARTIAL_UNREADABLE, logged as "the inbox's
// partial-file directory changed under a transfer") and the usage counters keep a partial
// of the full announced size that is on no disk (until the next upkeep). Commit 340c959
// said "a new attempt of a transfer whose stale partial is being removed waits for it";
// partial-pruner.ts (fixquota) no longer does.
//
// (review 8; the repro of the fix in the commit that added this file.)
import { createHash, randomBytes } from 'node:crypto'
import fs from 'node:fs'
import fsp from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { afterEach, expect, it, vi } from 'vitest'
import { Files, FILE_SERVICE } from '../../src/daemon/files.js'
import { ChannelReader } from '../../src/daemon/channel-frames.js'
import { partialKey } from '../../src/daemon/file-names.js'
import { PARTIAL_MAX_AGE_MS } from '../../src/daemon/partial-pruner.js'
import { silentLogger } from '../../src/protocol/log.js'
import { encodeTransfer } from '../../src/protocol/transfer.js'
import type { TunnelManager } from '../../src/tunnel/manager.js'
import { connect } from './files-peer.js'

const BOB = { name: 'bob', id: 'b'.repeat(51) + 'q' }
const ALICE = { name: 'alice', id: 'a'.repeat(52) }
const known = { list: () => [BOB], resolveKey: async () => ({ ...BOB }) }
const cleanups: Array<() => void> = []
afterEach(() => {
  vi.restoreAllMocks()
  for (const c of cleanups.splice(0).reverse()) c()
})

it('a resume offered while the upkeep removes its stale partial either waits for the removal or keeps the partial: the transfer ends DONE', async () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-review8-'))
  cleanups.push(() => fs.rmSync(tmp, { recursive: true, force: true }))
  const dir = path.join(tmp, 'bob')
  const SIZE = 64 * 1024
  const HAVE = 1000
  const content = randomBytes(SIZE)
  const transferId = randomBytes(32)
  const key = partialKey(ALICE.id, transferId.toString('hex'))
  // Alice's transfer was cut off 8 days ago after HAVE bytes: a stale partial.
  const partialDir = path.join(dir, 'inbox', '.partial')
  fs.mkdirSync(partialDir, { recursive: true, mode: 0o700 })
  const partial = path.join(partialDir, key)
  fs.writeFileSync(partial, content.subarray(0, HAVE), { mode: 0o600 })
  const old = new Date(Date.now() - PARTIAL_MAX_AGE_MS - 86_400_000)
  fs.utimesSync(partial, old, old)
  const received: Array<{ path: string }> = []
  const bob = new Files({ dir, tunnels: {} as unknown as TunnelManager, log: silentLogger, selfName: BOB.name, selfId: BOB.id, known, onReceived: (f) => received.push(f), onProgress: () => undefined })
  await bob.counted()
  expect(bob.usage(ALICE.id)).toEqual({ files: 1, bytes: HAVE, partials: 1 })

  // The removal of the partial takes a while in the thread pool (busy with other transfers' fsyncs).
  const realRm = fsp.rm.bind(fsp)
  let openGate!: () => void
  const gate = new Promise<void>((r) => (openGate = r))
  let removing = false
  vi.spyOn(fsp, 'rm').mockImplementation(async (p, o) => {
    if (String(p) === partial) {
      removing = true
      await gate
    }
    return realRm(p, o)
  })
  const upkeep = bob.upkeep()
  for (const until = Date.now() + 5000; !removing && Date.now() < until; ) await new Promise((r) => setTimeout(r, 5))
  expect(removing).toBe(true)

  // Alice comes back now: the same transfer.
  const theirs = connect(bob, ALICE, cleanups)
  const ch = theirs.openChannel(0, FILE_SERVICE)
  ch.on('error', () => undefined)
  await ch.opened
  const reader = new ChannelReader(ch)
  ch.write(encodeTransfer({ type: 'offer', transferId, size: SIZE, name: 'video.mp4' }))
  // The receiver answers once it knows where it stands; the removal finishes meanwhile or right after.
  const answerP = reader.frame()
  await new Promise((r) => setTimeout(r, 50))
  openGate()
  await upkeep
  const answer = await answerP
  console.log(`ACCEPT: ${JSON.stringify(answer)}`)
  expect(answer.type).toBe('accept')
  const offset = (answer as { offset: number }).offset
  ch.write(content.subarray(offset))
  ch.write(encodeTransfer({ type: 'end', sha256: createHash('sha256').update(content).digest() }))
  const last = await reader.frame()
  await new Promise((r) => setTimeout(r, 100))
  console.log(`answer after the bytes: ${JSON.stringify(last)}; usage counted: ${JSON.stringify(bob.usage(ALICE.id))}; partials on disk: ${fs.readdirSync(partialDir).length}; files: ${received.length}`)
  expect(last).toMatchObject({ type: 'done' })
  expect(received.length).toBe(1)
  expect(bob.usage(ALICE.id)).toEqual({ files: 1, bytes: SIZE, partials: 0 })
}, 30_000)
