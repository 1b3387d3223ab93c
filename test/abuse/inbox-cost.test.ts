// Abuse rows for the inbox's cost (review 7 #3 and "name squatting"), on loopback: bob's
// Files behind a real Mux pair on an in-memory pipe, strangers speaking the file protocol
// raw (OFFER, then drop the channel), as test/abuse/files.test.ts does.
//
//   stranger (raw frames) ── Mux ═══ pipe ═══ Mux ── bob: Files (inbox in a tmp dir)
//
// Before: each OFFER re-read files.jsonl and stat'ed every partial of every peer on the
// event loop (10,001 statSync calls, 148 ms, per offer with 10,000 partials), an empty
// partial was kept 7 days (one key left 1,000 for the price of OPENs), nothing capped the
// inbox across keys, and a name took up to 10,000 link() calls (`report-1.pdf` …).
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import fsp from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { afterEach, expect, it, vi } from 'vitest'
import { Files, FILE_SERVICE, INBOX_FILES_MAX } from '../../src/daemon/files.js'
import { ChannelReader } from '../../src/daemon/channel-frames.js'
import { partialKey, MAX_NAME_SUFFIX, RANDOM_NAME_TRIES, suffixedName } from '../../src/daemon/file-names.js'
import { placeFile } from '../../src/daemon/file-place.js'
import { PARTIALS_PER_PEER } from '../../src/daemon/file-receiver.js'
import { silentLogger } from '../../src/protocol/log.js'
import { encodeTransfer, type TransferFrame } from '../../src/protocol/transfer.js'
import type { TunnelManager } from '../../src/tunnel/manager.js'
import { Mux } from '../../src/tunnel/mux.js'
import { connect } from './files-peer.js'
import { recordAbuse } from './record.js'

const BOB = { name: 'bob', id: 'b'.repeat(51) + 'q' }
const known = { list: () => [BOB], resolveKey: async () => ({ ...BOB }) }
/** Keys that each leave their whole quota of partials (the review's ten keys). */
const KEYS = 10
/** What one refused or accepted offer may cost in file-system calls, whatever the inbox holds (it needs about 10 for its own partial). */
const FS_CALLS_PER_OFFER_BOUND = 50

const cleanups: Array<() => void> = []
afterEach(() => {
  vi.restoreAllMocks()
  for (const c of cleanups.splice(0).reverse()) c()
})

function keyOf(i: number): { name: string; id: string } {
  return { name: `stranger${i}`, id: String.fromCharCode(99 + i).repeat(52) }
}

function bobIn(tmp: string): Files {
  const dir = path.join(tmp, 'bob')
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
  return new Files({ dir, tunnels: {} as unknown as TunnelManager, log: silentLogger, selfName: BOB.name, selfId: BOB.id, known, onReceived: () => undefined, onProgress: () => undefined })
}


async function offer(mux: Mux, size: number, name = 'x'): Promise<{ answer: TransferFrame; ch: ReturnType<Mux['openChannel']> }> {
  const ch = mux.openChannel(0, FILE_SERVICE)
  ch.on('error', () => undefined)
  await ch.opened
  const reader = new ChannelReader(ch)
  ch.write(encodeTransfer({ type: 'offer', transferId: randomBytes(32), size, name }))
  return { answer: await reader.frame(), ch }
}

function tmpDir(): string {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-inbox-cost-'))
  cleanups.push(() => fs.rmSync(tmp, { recursive: true, force: true }))
  return tmp
}

/** Counts the file-system calls (sync and async) made while `fn` runs. */
async function fsCalls(fn: () => Promise<void>): Promise<number> {
  const spies = [
    ...(['statSync', 'lstatSync', 'fstatSync', 'readdirSync', 'readFileSync', 'statfsSync', 'openSync', 'existsSync'] as const).map((m) => vi.spyOn(fs, m)),
    ...(['stat', 'lstat', 'readdir', 'readFile', 'rm', 'link', 'mkdir', 'open'] as const).map((m) => vi.spyOn(fsp, m))
  ]
  await fn()
  const n = spies.reduce((sum, s) => sum + s.mock.calls.length, 0)
  for (const s of spies) s.mockRestore()
  return n
}

const settle = (ms = 100): Promise<void> => new Promise((r) => setTimeout(r, ms))

it('a stranger that takes ACCEPT and drops the channel leaves no partial; one that leaves a byte in each keeps at most PARTIALS_PER_PEER', async () => {
  const tmp = tmpDir()
  const bob = bobIn(tmp)
  const mallory = keyOf(0)
  const mux = connect(bob, mallory, cleanups)
  const OFFERS = 200
  for (let done = 0; done < OFFERS; done += 50) {
    const batch = await Promise.all(Array.from({ length: 50 }, () => offer(mux, 1024)))
    for (const b of batch) {
      expect(b.answer.type).toBe('accept')
      b.ch.destroy()
    }
    await settle(20)
  }
  await settle()
  expect(bob.partials()).toEqual([])
  expect(bob.usage(mallory.id)).toEqual({ files: 0, bytes: 0, partials: 0 })
  recordAbuse({ row: 'stranger leaves empty partials (ACCEPT, then drop; review 7 #3)', metric: `partials kept after ${OFFERS} offers`, before: '200 (1,000 per key, kept 7 days)', now: bob.partials().length, unit: 'partials', bound: '0' })

  // One byte each: kept for a resume, but only the newest PARTIALS_PER_PEER.
  const CUT = PARTIALS_PER_PEER + 8
  const cut = await Promise.all(Array.from({ length: CUT }, () => offer(mux, 1024)))
  for (const c of cut) c.ch.write(Buffer.from('x'))
  // Each byte on bob's disk before its channel drops (a loaded machine may take a while).
  for (const until = Date.now() + 20_000; bob.partials().filter((p) => p.bytes === 1).length < CUT && Date.now() < until; ) await settle(20)
  for (const c of cut) c.ch.destroy()
  await settle(300)
  const kept = bob.partials()
  expect(kept.every((p) => p.bytes === 1 && !p.active)).toBe(true)
  expect(kept.length).toBe(PARTIALS_PER_PEER)
  expect(bob.usage(mallory.id)).toEqual({ files: PARTIALS_PER_PEER, bytes: PARTIALS_PER_PEER, partials: PARTIALS_PER_PEER })
  recordAbuse({ row: 'stranger leaves one-byte partials (review 7 #3)', metric: `partials kept of ${CUT} cut off`, before: `${CUT} (up to 1,000 per key)`, now: kept.length, unit: 'partials', bound: `${PARTIALS_PER_PEER}` })
}, 60_000)

it(`an offer costs O(1) file-system calls with ${KEYS} keys' quotas of partials in the inbox, and the inbox-wide cap refuses a fresh key`, async () => {
  const tmp = tmpDir()
  // Ten keys' partials, as each would leave them (one byte each, within their quota): on disk before natd starts.
  const partialDir = path.join(tmp, 'bob', 'inbox', '.partial')
  fs.mkdirSync(partialDir, { recursive: true, mode: 0o700 })
  const quota = INBOX_FILES_MAX / KEYS
  for (let k = 0; k < KEYS; k++) {
    for (let i = 0; i < quota; i++) fs.writeFileSync(path.join(partialDir, partialKey(keyOf(k).id, randomBytes(32).toString('hex'))), 'x')
  }
  const bob = bobIn(tmp)
  await bob.counted() // built at start, off the event loop
  expect(bob.usage(keyOf(0).id)).toEqual({ files: quota, bytes: quota, partials: quota })
  await bob.setPolicy({ allow: null, maxSizeBytes: null, inbox: null, filesPerPeer: quota })

  // A key at its quota: refused, at a cost that does not grow with the inbox.
  const mallory = connect(bob, keyOf(0), cleanups)
  const OFFERS = 20
  let answers: TransferFrame[] = []
  const refusedCalls = await fsCalls(async () => {
    answers = (await Promise.all(Array.from({ length: OFFERS }, () => offer(mallory, 1024)))).map((a) => a.answer)
  })
  for (const a of answers) expect(a).toMatchObject({ type: 'refuse', code: 'QUOTA_EXCEEDED' })
  expect(refusedCalls / OFFERS).toBeLessThan(FS_CALLS_PER_OFFER_BOUND)

  // A fresh key: the inbox holds INBOX_FILES_MAX files and partials, so it is full for everyone.
  const fresh = connect(bob, { name: 'fresh', id: 'z'.repeat(52) }, cleanups)
  let full: TransferFrame | null = null
  const fullCalls = await fsCalls(async () => {
    full = (await offer(fresh, 1024)).answer
  })
  expect(full).toMatchObject({ type: 'refuse', code: 'QUOTA_EXCEEDED', message: expect.stringMatching(/inbox is full: all peers together hold 10000 files and partials, at most 10000/) })
  expect(fullCalls).toBeLessThan(FS_CALLS_PER_OFFER_BOUND)

  // The user deletes one and looks (natctl files): room for one more, and that accepted offer too costs O(1).
  fs.rmSync(path.join(partialDir, fs.readdirSync(partialDir)[0] ?? ''))
  bob.list()
  await bob.counted()
  let accepted: { answer: TransferFrame; ch: ReturnType<Mux['openChannel']> } | null = null
  const acceptedCalls = await fsCalls(async () => {
    accepted = await offer(fresh, 1024)
  })
  expect(accepted!.answer.type).toBe('accept')
  expect(acceptedCalls).toBeLessThan(FS_CALLS_PER_OFFER_BOUND)
  accepted!.ch.destroy()
  console.log(`${fs.readdirSync(partialDir).length} partials in the inbox: ${(refusedCalls / OFFERS).toFixed(1)} file-system calls per refused offer, ${fullCalls} for an inbox-full refusal, ${acceptedCalls} for an accepted offer`)
  recordAbuse({ row: `offers with ${KEYS} keys' partials in the inbox (review 7 #3)`, metric: 'file-system calls per refused offer', before: '10,001 statSync (148 ms of blocked event loop each)', now: refusedCalls / OFFERS, unit: 'calls', bound: `< ${FS_CALLS_PER_OFFER_BOUND}` })
  recordAbuse({ row: `offers with ${KEYS} keys' partials in the inbox (review 7 #3)`, metric: 'file-system calls per accepted offer', before: '20,002 statSync + 2 readdir', now: acceptedCalls, unit: 'calls', bound: `< ${FS_CALLS_PER_OFFER_BOUND}` })
  recordAbuse({ row: 'fresh keys fill the inbox (review 7 #3)', metric: 'files and partials all strangers may leave', before: 'unbounded (1,000 per fresh key)', now: INBOX_FILES_MAX, unit: 'files', bound: `${INBOX_FILES_MAX}, then QUOTA_EXCEEDED "inbox is full"` })
}, 120_000)

it('name squatting: with `report.pdf` … `report-9.pdf` taken, a later report.pdf still gets a name, in a bounded number of link() calls', async () => {
  const tmp = tmpDir()
  const inbox = path.join(tmp, 'inbox')
  fs.mkdirSync(inbox)
  for (let i = 0; i <= MAX_NAME_SUFFIX; i++) fs.writeFileSync(path.join(inbox, suffixedName('report.pdf', i)), 'squatted')
  const partial = path.join(tmp, 'partial')
  fs.writeFileSync(partial, 'the real report')
  const link = vi.spyOn(fsp, 'link')
  const placed = await placeFile(partial, inbox, 'report.pdf')
  expect(path.basename(placed)).toMatch(/^report-[0-9a-f]{16}\.pdf$/)
  expect(fs.readFileSync(placed, 'utf8')).toBe('the real report')
  expect(fs.existsSync(partial)).toBe(false)
  expect(link.mock.calls.length).toBe(MAX_NAME_SUFFIX + 2)
  expect(link.mock.calls.length).toBeLessThanOrEqual(MAX_NAME_SUFFIX + 1 + RANDOM_NAME_TRIES)
  recordAbuse({ row: 'name squatting (review 7, also noticed)', metric: 'link() calls to place a file whose names are taken', before: '10,000, then "no free name"', now: link.mock.calls.length, unit: 'calls', bound: `<= ${MAX_NAME_SUFFIX + 1 + RANDOM_NAME_TRIES}, and a name` })
})
