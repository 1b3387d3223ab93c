// Abuse rows for what a peer can make us hold on the message and file channels we accept
// (review 7, findings 1 and 2): a registered stranger (any key, the default file policy:
// every peer) that sends its one frame (a message, or an offer we refuse) and then pushes
// its whole 4 MiB window without waiting. Bob's real Files/Messages over a real Mux pair
// on an in-memory pipe, the stranger's end driven by hand.
//
//   mallory: raw channels ── Mux ═══ pipe ═══ Mux ── bob: Files (default policy), Messages
//
// What is asserted is what bob holds: bytes left unread in the channels, and the process's
// ArrayBuffer memory after a collection. Each row records what it measured now beside the
// figure before the fix (test/abuse/record.ts).
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import v8 from 'node:v8'
import vm from 'node:vm'
import { afterEach, describe, expect, it } from 'vitest'
import { ChannelReader } from '../../src/daemon/channel-frames.js'
import { Files, FILE_SERVICE } from '../../src/daemon/files.js'
import { REFUSE_LINGER_MS } from '../../src/daemon/file-receiver.js'
import { MESSAGE_ANSWER_LINGER_MS, Messages, MESSAGE_SERVICE } from '../../src/daemon/messages.js'
import { silentLogger } from '../../src/protocol/log.js'
import { encodeTransfer, type TransferFrame } from '../../src/protocol/transfer.js'
import type { TunnelManager } from '../../src/tunnel/manager.js'
import { Mux } from '../../src/tunnel/mux.js'
import type { MuxChannel } from '../../src/tunnel/mux-channel.js'
import { messagePipe, until } from '../unit/tunnel/pipe.js'
import { upTunnel } from '../unit/helpers.js'
import { pushAll } from './push-all.js'
import { recordAbuse } from './record.js'

const MALLORY = { name: 'mallory', id: 'm'.repeat(52) }
const BOB = { name: 'bob', id: 'b'.repeat(51) + 'q' }
const known = { list: () => [BOB], resolveKey: async () => ({ ...BOB }) }
const MiB = 1024 * 1024
const KiB = 1024
/** Channels the stranger opens (a tunnel allows 4,096). */
const CHANNELS = 64
/** What each channel pushes after its frame: just under the 4 MiB window with the frame. */
const PUSHED_BYTES = 4 * (MiB - 64 * KiB)
/** What bob may hold per channel: a frame's worth, not the window. */
const HELD_MAX_PER_CHANNEL = 64 * KiB

v8.setFlagsFromString('--expose-gc')
const gc = vm.runInNewContext('gc') as () => void

/**
 * ArrayBuffer memory of the process after a full collection: what is still referenced.
 * The stranger's mux is made to free its replay buffer first (what it sent, kept until
 * bob acknowledges it: not bob's memory).
 */
async function liveArrayBuffers(muxS: Mux): Promise<number> {
  await until(() => muxS.unacknowledged.bytes === 0, 'bob to acknowledge everything')
  muxS.trimReplay()
  gc()
  gc()
  return process.memoryUsage().arrayBuffers
}

const cleanups: Array<() => void> = []
afterEach(() => {
  for (const c of cleanups.splice(0).reverse()) c()
})

function world(): { tmp: string; muxS: Mux; muxV: Mux; theirs: MuxChannel[] } {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-abuse-window-'))
  fs.mkdirSync(path.join(tmp, 'bob'), { mode: 0o700 })
  const pipe = messagePipe()
  const muxS = new Mux(pipe.a, true, silentLogger)
  const muxV = new Mux(pipe.b, false, silentLogger)
  cleanups.push(() => {
    muxS.close('test over')
    muxV.close('test over')
    fs.rmSync(tmp, { recursive: true, force: true })
  })
  const theirs: MuxChannel[] = []
  muxV.on('open', (req) => theirs.push(req.channel))
  return { tmp, muxS, muxV, theirs }
}

/** Opens CHANNELS channels to `service`, each sending `frame` then PUSHED_BYTES without waiting; resolves with bob's answers. */
function push(muxS: Mux, service: string, frame: () => Buffer): Promise<TransferFrame[]> {
  return Promise.all(
    Array.from({ length: CHANNELS }, async () => {
      const ch = muxS.openChannel(0, service)
      ch.on('error', () => undefined)
      await ch.opened
      const reader = new ChannelReader(ch)
      ch.write(frame(), () => pushAll(ch, PUSHED_BYTES))
      return reader.frame()
    })
  )
}

/**
 * Resolves once everything the stranger pushed has come (it then stops at its window: no
 * credit comes back), or once bob reset a channel at the end of its linger (a loaded
 * machine: what comes after is dropped as DATA for no channel).
 */
async function pushed(w: { muxV: Mux; theirs: MuxChannel[] }): Promise<void> {
  // Or no byte more comes for a while: the stranger waits for credit that never comes.
  let last = -1
  let quiet = 0
  await until(() => {
    quiet = w.muxV.bytesIn === last ? quiet + 1 : 0
    last = w.muxV.bytesIn
    return w.muxV.bytesIn >= CHANNELS * PUSHED_BYTES || w.theirs.some((c) => c.destroyed) || quiet > 200
  }, 'the pushed bytes', 30_000)
}

/** Bytes left unread in bob's channels. */
function heldIn(theirs: MuxChannel[]): number {
  return theirs.reduce((sum, c) => sum + (c.destroyed ? 0 : c.readableLength), 0)
}

describe('abuse: what a peer pushes after its one frame', () => {
  it('1. a stranger whose offers are refused (default policy) pushes its window into 64 channels: nothing of it is held', async () => {
    const w = world()
    const bob = new Files({ dir: path.join(w.tmp, 'bob'), tunnels: {} as TunnelManager, log: silentLogger, selfName: BOB.name, selfId: BOB.id, known, onReceived: () => undefined, onProgress: () => undefined })
    expect(bob.policy().allow).toEqual([]) // the default: every peer
    const fromMallory = upTunnel(MALLORY, w.muxV)
    w.muxV.on('open', (req) => bob.onChannel(fromMallory, req))
    const before = await liveArrayBuffers(w.muxS)
    // Over the 1 GiB default max size: refused after the offer, with the window granted.
    const answers = await push(w.muxS, FILE_SERVICE, () => encodeTransfer({ type: 'offer', transferId: randomBytes(32), size: 2 * 1024 * MiB, name: 'x' }))
    for (const a of answers) expect(a).toMatchObject({ type: 'refuse', code: 'TOO_LARGE' })
    await pushed(w)
    const held = heldIn(w.theirs)
    const grown = await liveArrayBuffers(w.muxS) - before
    expect(held).toBeLessThan(CHANNELS * HELD_MAX_PER_CHANNEL)
    expect(grown).toBeLessThan(8 * MiB)
    recordAbuse({ row: 'a stranger (default file policy) opens 64 file channels, offers 2 GiB (TOO_LARGE) and pushes 3.75 MiB more into each', metric: 'bytes held unread in the refused channels; ArrayBuffer growth of the process', before: '223.5 MiB held unread for REFUSE_LINGER_MS (5 s), up to 4 MiB per channel × 4,096 channels per tunnel', now: `${held}; ${(grown / MiB).toFixed(1)} MiB`, unit: 'bytes', bound: `< ${HELD_MAX_PER_CHANNEL / KiB} KiB per channel held; input dropped from the REFUSE on, credit not returned (the peer stops at its window), channel reset after ${REFUSE_LINGER_MS} ms` })
  }, 60_000)

  it('2. a stranger sends one message 64 times (duplicates: no quota used) and pushes its window after each: nothing is held, the channels close', async () => {
    const w = world()
    const quotas = () => ({ messagesPerPeer: 1000, messageBytesPerPeer: MiB })
    const bob = new Messages({ dir: path.join(w.tmp, 'bob'), tunnels: {} as TunnelManager, log: silentLogger, selfName: BOB.name, selfId: BOB.id, known, onMessage: () => undefined, quotas })
    cleanups.push(() => void bob.flushed())
    const fromMallory = upTunnel(MALLORY, w.muxV)
    w.muxV.on('open', (req) => bob.onChannel(fromMallory, req))
    const messageId = randomBytes(16)
    const started = Date.now()
    const before = await liveArrayBuffers(w.muxS)
    const answers = await push(w.muxS, MESSAGE_SERVICE, () => encodeTransfer({ type: 'message', messageId, sentAt: Date.now(), text: 'hi' }))
    for (const a of answers) expect(a.type).toBe('ack')
    expect(bob.list().length).toBe(1) // one message stored, 63 duplicates
    await pushed(w)
    const held = heldIn(w.theirs)
    const grown = await liveArrayBuffers(w.muxS) - before
    expect(held).toBeLessThan(CHANNELS * HELD_MAX_PER_CHANNEL)
    expect(grown).toBeLessThan(8 * MiB)
    // The stranger never ends its channels: bob resets them once the answer had its time.
    await until(() => w.muxV.size === 0, 'the message channels to close', MESSAGE_ANSWER_LINGER_MS + 5_000)
    const closedMs = Date.now() - started
    recordAbuse({ row: 'a stranger sends 64 duplicate messages (no quota used) and pushes 3.75 MiB more into each channel', metric: 'bytes held unread after the ACKs; ArrayBuffer growth; time until the channels closed', before: '240 MiB held unread, channels never closed (up to 4 MiB × 4,096 channels per tunnel, for the tunnel\'s life)', now: `${held}; ${(grown / MiB).toFixed(1)} MiB; ${closedMs} ms`, unit: 'bytes', bound: `< ${HELD_MAX_PER_CHANNEL / KiB} KiB per channel held; a message channel carries one frame, the rest is dropped; reset ${MESSAGE_ANSWER_LINGER_MS} ms after the answer` })
  }, 60_000)
})
