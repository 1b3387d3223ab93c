// review8 #1: several new attempts of one transfer, offered while an older attempt is
// being received, all supersede that one and then all run at once on the same partial
// (FileReceiver.receive: `if (previous) { destroy; await previous.done }` lets each
// waiter through; none of them supersedes the others). Their bodies append to the same
// inode; the first to finish links it into the inbox and says DONE, the others keep
// appending into the placed file. The file on disk is K × its announced size (past
// maxSizeBytes and the sender's byte quota, which each attempt was checked against
// with the others left out as "the same transfer"), and its bytes are not the sha256
// natd verified and listed.
//
// (review 8; the repro of the fix in the commit that added this file.)
import { createHash, randomBytes } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, expect, it } from 'vitest'
import { Files, FILE_SERVICE } from '../../src/daemon/files.js'
import { ChannelReader } from '../../src/daemon/channel-frames.js'
import { silentLogger } from '../../src/protocol/log.js'
import { encodeTransfer, type TransferFrame } from '../../src/protocol/transfer.js'
import type { TunnelManager } from '../../src/tunnel/manager.js'
import { Mux } from '../../src/tunnel/mux.js'
import { connect } from './files-peer.js'

const BOB = { name: 'bob', id: 'b'.repeat(51) + 'q' }
const MALLORY = { name: 'mallory', id: 'm'.repeat(52) }
const known = { list: () => [BOB], resolveKey: async () => ({ ...BOB }) }
const cleanups: Array<() => void> = []
afterEach(() => {
  for (const c of cleanups.splice(0).reverse()) c()
})

it('new attempts of one transfer offered together do not all run on the same partial: the placed file is the bytes verified', async () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-review8-'))
  cleanups.push(() => fs.rmSync(tmp, { recursive: true, force: true }))
  const dir = path.join(tmp, 'bob')
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
  const received: Array<{ path: string; size: number; sha256: string }> = []
  const bob = new Files({ dir, tunnels: {} as unknown as TunnelManager, log: silentLogger, selfName: BOB.name, selfId: BOB.id, known, onReceived: (f) => received.push(f), onProgress: () => undefined })
  const SIZE = 256 * 1024
  await bob.setPolicy({ maxSizeBytes: SIZE })
  await bob.counted()

  const theirs = connect(bob, MALLORY, cleanups)

  const transferId = randomBytes(32)
  const content = randomBytes(SIZE)
  const sha256 = createHash('sha256').update(content).digest()
  const attempt = async (): Promise<{ ch: ReturnType<Mux['openChannel']>; reader: ChannelReader; answer: TransferFrame }> => {
    const ch = theirs.openChannel(0, FILE_SERVICE)
    ch.on('error', () => undefined)
    await ch.opened
    const reader = new ChannelReader(ch)
    ch.write(encodeTransfer({ type: 'offer', transferId, size: SIZE, name: 'report.pdf' }))
    return { ch, reader, answer: await reader.frame().catch((e: unknown) => ({ type: "reset", e }) as unknown as TransferFrame) }
  }

  // An attempt being received (it sent nothing yet), then four more of the same transfer at once.
  const first = await attempt()
  expect(first.answer).toMatchObject({ type: 'accept', offset: 0 })
  const K = 4
  const retries = await Promise.all(Array.from({ length: K }, () => attempt()))
  const accepted = retries.filter((r) => r.answer.type === 'accept')
  // Each retry sends the whole file and its sha256, as an honest sender's would.
  for (const r of accepted) r.ch.write(content)
  for (const r of accepted) r.ch.write(encodeTransfer({ type: 'end', sha256 }))
  const answers = await Promise.all(accepted.map((r) => r.reader.frame().catch((e: unknown) => ({ type: 'error', e }))))
  await new Promise((r) => setTimeout(r, 200))

  const onDisk = received.map((f) => fs.readFileSync(f.path))
  console.log(`accepted at once: ${accepted.length} of ${K}; answers: ${answers.map((a) => ('code' in a ? `${a.type} ${String(a.code)}` : a.type)).join(', ')}`)
  console.log(`listed: ${received.map((f) => `${path.basename(f.path)} ${f.size} B`).join(', ')}; on disk: ${onDisk.map((b) => `${b.length} B sha256 ${createHash('sha256').update(b).digest('hex') === sha256.toString('hex') ? 'ok' : 'WRONG'}`).join(', ')}; usage counted: ${JSON.stringify(bob.usage(MALLORY.id))}; partials left: ${bob.partials().length}`)
  // What natd listed and verified is what is on the disk, no file is larger than maxSizeBytes, and one transfer is one file.
  for (const b of onDisk) {
    expect(b.length).toBe(SIZE)
    expect(createHash('sha256').update(b).digest('hex')).toBe(sha256.toString('hex'))
  }
  expect(received.length).toBe(1)
}, 30_000)
