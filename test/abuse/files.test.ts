// Abuse rows for messages and files (issue "Abuse resistance: files and messages"), on
// loopback: two agents' Files/Messages over a real Mux pair on an in-memory pipe (as in
// test/unit/daemon/files.test.ts), and for row 1 a real API socket and data socket that
// the real natctl (dist/cli/main.js) talks to, run as user nobody.
//
//   natctl (nobody | root) ──API socket + data socket──▶ alice: Files ── Mux ═══ pipe ═══ Mux ── bob: Files, Messages
//
// Each row records what it measured now beside the "before" (test/abuse/record.ts).
import { spawn, spawnSync } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { Files, FILE_SERVICE } from '../../src/daemon/files.js'
import { Messages, MESSAGE_SERVICE } from '../../src/daemon/messages.js'
import { FileStreamServer, dataSocketPath } from '../../src/ipc/file-stream.js'
import type { Handlers } from '../../src/ipc/server.js'
import { ApiServer } from '../../src/ipc/server.js'
import type { FileSendResult } from '../../src/ipc/schema.js'
import { NatdError } from '../../src/protocol/errors.js'
import { silentLogger } from '../../src/protocol/log.js'
import { decodeTransfer, encodeTransfer, type TransferFrame } from '../../src/protocol/transfer.js'
import { ChannelReader } from '../../src/daemon/channel-frames.js'
import { UNSAFE_NAME_CHARS } from '../../src/daemon/file-transfer.js'
import { NOT_ALLOWED_MESSAGE } from '../../src/daemon/file-receiver.js'
import { MAX_NAME_BYTES, partialKey } from '../../src/daemon/file-names.js'
import type { TunnelManager } from '../../src/tunnel/manager.js'
import { Mux } from '../../src/tunnel/mux.js'
import { messagePipe } from '../unit/tunnel/pipe.js'
import { upTunnel } from '../unit/helpers.js'
import { openFileStream, openToSend, streamFile } from '../../src/ipc/file-stream.js'
import { recordAbuse } from './record.js'

const ALICE = { name: 'alice', id: 'a'.repeat(52) }
const BOB = { name: 'bob', id: 'b'.repeat(51) + 'q' }
const ROOT = path.resolve(import.meta.dirname, '../..')
const NATCTL = path.join(ROOT, 'dist/cli/main.js')
const KiB = 1024
const known = { list: () => [ALICE, BOB], resolveKey: async () => ({ ...ALICE }) }

const cleanups: Array<() => void | Promise<void>> = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

interface World {
  tmp: string
  aliceDir: string
  alice: Files
  bob: Files
  bobMessages: Messages
  aliceMessages: Messages
  muxA: Mux
  streams: FileStreamServer
  apiSocket: string
}

async function world(): Promise<World> {
  const pipe = messagePipe()
  const muxA = new Mux(pipe.a, true, silentLogger)
  const muxB = new Mux(pipe.b, false, silentLogger)
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-abuse-files-'))
  fs.chmodSync(tmp, 0o755)
  const aliceDir = path.join(tmp, 'alice')
  const bobDir = path.join(tmp, 'bob')
  fs.mkdirSync(aliceDir, { mode: 0o700 })
  fs.mkdirSync(bobDir, { mode: 0o700 })
  const apiSocket = path.join(tmp, 'run', 'natd.sock')
  fs.mkdirSync(path.dirname(apiSocket), { mode: 0o750 })
  const streams = new FileStreamServer(dataSocketPath(apiSocket), silentLogger)
  cleanups.push(() => {
    streams.stop()
    muxA.close('test over')
    muxB.close('test over')
    fs.rmSync(tmp, { recursive: true, force: true })
  })
  const tunnelToBob = upTunnel(BOB, muxA)
  const tunnelToAlice = upTunnel(ALICE, muxB)
  const tunnels = { open: async () => ({ tunnel: tunnelToBob, tookMs: 0, reused: true }) } as unknown as TunnelManager
  const files = (dir: string, self: { name: string; id: string }): Files =>
    new Files({ dir, tunnels, log: silentLogger, selfName: self.name, selfId: self.id, known, onReceived: () => undefined, onProgress: () => undefined })
  const alice = files(aliceDir, ALICE)
  const bob = files(bobDir, BOB)
  const messages = (dir: string, self: { name: string; id: string }, policy: Files): Messages =>
    new Messages({ dir, tunnels, log: silentLogger, selfName: self.name, selfId: self.id, known, onMessage: () => undefined, quotas: () => policy.quotas })
  const bobMessages = messages(bobDir, BOB, bob)
  muxB.on('open', (req) => {
    if (req.service === FILE_SERVICE) bob.onChannel(tunnelToAlice, req)
    if (req.service === MESSAGE_SERVICE) bobMessages.onChannel(tunnelToAlice, req)
  })
  return { tmp, aliceDir, alice, bob, bobMessages, aliceMessages: messages(aliceDir, ALICE, alice), muxA, streams, apiSocket }
}

/** alice's API: file.send and files as natd wires them (agent.ts); the rest is not needed here. */
async function serveApi(w: World): Promise<void> {
  const handlers = new Proxy({} as Handlers, {
    get: (_, method: string) => {
      if (method === 'file.send') return (p: Parameters<Handlers['file.send']>[0]) => w.alice.send({ ...p, source: w.streams.take(p.source) })
      return () => {
        throw new NatdError('INVALID_ARGUMENT', `${method} is not wired in this test`)
      }
    }
  })
  const api = new ApiServer(w.apiSocket, handlers, silentLogger)
  await api.start()
  await w.streams.start()
  cleanups.push(() => api.stop())
  // A member of group natd: the sockets' group is nogroup, and natctl runs as nobody:nogroup.
  const nogroup = Number(spawnSync('getent', ['group', 'nogroup'], { encoding: 'utf8' }).stdout.split(':')[2])
  fs.chmodSync(path.dirname(w.apiSocket), 0o750)
  fs.chownSync(path.dirname(w.apiSocket), 0, nogroup)
  for (const s of [w.apiSocket, dataSocketPath(w.apiSocket)]) fs.chownSync(s, 0, nogroup)
}

/** Runs natctl in a child (asynchronously: natd's side runs in this process). */
function natctl(w: World, args: string[], asNobody: boolean): Promise<{ status: number | null; stderr: string }> {
  const argv = [process.execPath, NATCTL, '--socket', w.apiSocket, ...args]
  const cmd = asNobody ? ['setpriv', '--reuid=nobody', '--regid=nogroup', '--clear-groups', ...argv] : argv
  return new Promise((resolve) => {
    const child = spawn(cmd[0]!, cmd.slice(1), { stdio: ['ignore', 'ignore', 'pipe'], timeout: 20_000 })
    let stderr = ''
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()))
    child.on('close', (status) => resolve({ status, stderr }))
  })
}

/** What natctl cp does for one file (transfer-commands.ts sendOne), in-process. */
async function send(w: World, file: string, name: string): Promise<FileSendResult> {
  if (!w.streams.listening) await w.streams.start()
  const opened = await openToSend(file)
  const { socket, token } = await openFileStream(w.apiSocket)
  void streamFile(socket, opened, file).catch(() => undefined)
  try {
    return await w.alice.send({ peer: 'bob', source: w.streams.take(token), name, size: opened.size, mtimeMs: opened.mtimeMs, dev: opened.dev, ino: opened.ino, path: file, timeoutMs: 5_000 })
  } finally {
    socket.destroy()
    await opened.handle.close()
  }
}

/** A sender that writes the file protocol by hand (file-transfer.ts): OFFER, then `bytes` as it likes, then its verdict. */
async function rawSend(w: World, o: { name: string; size: number; bytes: Buffer; end?: boolean; transferId?: Buffer }): Promise<TransferFrame> {
  const ch = w.muxA.openChannel(0, FILE_SERVICE)
  await ch.opened
  const reader = new ChannelReader(ch)
  ch.write(encodeTransfer({ type: 'offer', transferId: o.transferId ?? randomBytes(32), size: o.size, name: o.name }))
  const answer = await reader.frame()
  if (answer.type !== 'accept') return answer
  ch.write(o.bytes)
  if (o.end ?? true) ch.write(encodeTransfer({ type: 'end', sha256: createHash('sha256').update(o.bytes.subarray(0, o.size)).digest() }))
  const verdict = await reader.frame()
  ch.destroy()
  return verdict
}

const isRoot = process.getuid?.() === 0

describe('abuse: files and messages', () => {
  it.skipIf(!isRoot || !fs.existsSync(NATCTL))('1. cp of a file the caller cannot read, and of natd\'s identity.json: refused with FILE_UNREADABLE', async () => {
    const w = await world()
    await serveApi(w)
    const identity = path.join(w.aliceDir, 'identity.json')
    fs.writeFileSync(identity, JSON.stringify({ publicKey: 'x', secretKey: randomBytes(64).toString('hex') }), { mode: 0o600 })
    const shadow = await natctl(w, ['cp', '/etc/shadow', 'bob:'], true)
    const idByNobody = await natctl(w, ['cp', identity, 'bob:'], true)
    const idByRoot = await natctl(w, ['cp', identity, 'bob:'], false)
    // The socket works for nobody: a file it may read goes through.
    const ok = path.join(w.tmp, 'public.txt')
    fs.writeFileSync(ok, 'anyone may read this', { mode: 0o644 })
    const readable = await natctl(w, ['cp', ok, 'bob:'], true)
    expect(readable).toMatchObject({ status: 0, stderr: '' })
    for (const r of [shadow, idByNobody, idByRoot]) {
      expect(r.status).toBe(1)
      expect(r.stderr).toMatch(/\[FILE_UNREADABLE\]/)
    }
    expect(shadow.stderr).toMatch(/permission denied/)
    expect(idByRoot.stderr).toMatch(/state directory/)
    expect(w.bob.list().map((f) => f.name)).toEqual(['public.txt'])
    const refused = [shadow, idByNobody, idByRoot].filter((r) => r.status !== 0).length
    recordAbuse({ row: 'cp of a file the caller cannot read (/etc/shadow as nobody; natd\'s identity.json as nobody and as root)', metric: 'files natd sent of 3', before: 'natd read and sent them with its own rights (3 of 3)', now: `${3 - refused} of 3 (FILE_UNREADABLE)`, unit: 'files', bound: '0 sent; the caller\'s own readable file still goes' })
  })

  it('2. 1,000 × 16 KB messages from one peer: stored bytes bounded by the per-peer quota', async () => {
    const w = await world()
    const text = 'm'.repeat(16 * KiB)
    const codes: Record<string, number> = {}
    const started = Date.now()
    for (let i = 0; i < 1_000; i++) {
      const code = await w.aliceMessages.send('bob', text, 5_000).then(
        () => 'OK',
        (err: NatdError) => err.code
      )
      codes[code] = (codes[code] ?? 0) + 1
    }
    const stored = fs.statSync(path.join(w.tmp, 'bob', 'messages.jsonl')).size
    const q = w.bob.quotas
    expect(codes.QUOTA_EXCEEDED).toBeGreaterThan(900)
    expect(w.bobMessages.usageOf(ALICE.id).bytes).toBeLessThanOrEqual(q.messageBytesPerPeer)
    expect(stored).toBeLessThan(q.messageBytesPerPeer + 64 * KiB) // the text plus ~200 bytes of JSON per message
    expect(Date.now() - started).toBeLessThan(60_000)
    recordAbuse({ row: '1,000 × 16 KB messages from one peer', metric: 'inbox growth (messages.jsonl)', before: '+16 MB, no quota (and +33 MB RSS with a subscriber that never reads)', now: stored, unit: 'bytes', bound: `≤ messageBytesPerPeer ${q.messageBytesPerPeer} + JSON; ${codes.OK ?? 0} stored, ${codes.QUOTA_EXCEEDED} QUOTA_EXCEEDED; a never-reading subscriber is dropped at MAX_QUEUED_BYTES (1 MiB, the api abuse row)` })
  }, 90_000)

  it('3. a sender that announces more bytes than it sends: both ends cut off within the stall deadline; the partial is listed', async () => {
    const w = await world()
    const STALL_MS = 1_000
    await w.bob.setPolicy({ stallTimeoutMs: STALL_MS })
    await w.alice.setPolicy({ stallTimeoutMs: STALL_MS })
    // Receiver's end: a raw channel that offers 1 MiB and sends 100 KiB.
    const ch = w.muxA.openChannel(0, FILE_SERVICE)
    await ch.opened
    const reader = new ChannelReader(ch)
    ch.write(encodeTransfer({ type: 'offer', transferId: randomBytes(32), size: 1024 * KiB, name: 'liar.bin' }))
    expect(await reader.frame()).toEqual({ type: 'accept', offset: 0 })
    ch.write(randomBytes(100 * KiB))
    const lastByte = Date.now()
    const verdict = await reader.frame()
    const receiverCutMs = Date.now() - lastByte
    expect(verdict).toMatchObject({ type: 'refuse', code: 'TIMEOUT' })
    expect(receiverCutMs).toBeLessThan(STALL_MS + 1_000)
    const until = Date.now() + 1_000 // the receive ends when its channel resets, just after the REFUSE
    while (w.bob.partials().some((p) => p.active) && Date.now() < until) await new Promise((r) => setTimeout(r, 20))
    const partials = w.bob.partials()
    expect(partials).toEqual([expect.objectContaining({ fromId: ALICE.id, name: 'liar.bin', bytes: 100 * KiB, active: false })])

    // Sender's end: a caller (natctl) that announces 1 MiB on the data socket and streams 100 KiB.
    await w.streams.start()
    const { socket, token } = await openFileStream(w.apiSocket)
    socket.once('data', () => socket.write(randomBytes(100 * KiB))) // after OFFSET: some, then nothing
    const t0 = Date.now()
    const err = await w.alice.send({ peer: 'bob', source: w.streams.take(token), name: 'caller-stalls.bin', size: 1024 * KiB, mtimeMs: 1, dev: 1, ino: 1, path: '', timeoutMs: 5_000 }).catch((e: unknown) => e)
    const senderCutMs = Date.now() - t0
    socket.destroy()
    expect(err).toMatchObject({ code: 'TIMEOUT' })
    expect(senderCutMs).toBeLessThan(STALL_MS + 1_000)
    expect(decodeTransfer(encodeTransfer({ type: 'refuse', code: 'TIMEOUT', message: '' }))).toMatchObject({ code: 'TIMEOUT' })
    recordAbuse({ row: 'a sender that announces more bytes than it sends', metric: 'time from the last byte to the cut-off (receiver; sender\'s natd against a stalled caller)', before: 'both ends waited forever; a smaller one left its partial behind', now: `${receiverCutMs}; ${senderCutMs}`, unit: 'ms', bound: `< stallTimeoutMs (${STALL_MS} here, default 30 s) + 1 s; TIMEOUT at both ends; the partial listed by files.partials, counted in the quota` })
  })

  it('4. a received name with U+202E (and C0/C1 controls) is made safe', async () => {
    const w = await world()
    const f = path.join(w.tmp, 'payload')
    fs.writeFileSync(f, 'not a pdf')
    const r = await send(w, f, 'invoice\u202Efdp.exe')
    const c = await send(w, f, 'bell\u0007csi\u009b.txt')
    expect(r.savedAs).toBe('invoice_fdp.exe')
    expect(c.savedAs).toBe('bell_csi_.txt')
    expect(fs.readdirSync(w.bob.inbox).filter((n) => new RegExp(UNSAFE_NAME_CHARS.source, 'u').test(n))).toEqual([])
    recordAbuse({ row: 'a received name with U+202E (RIGHT-TO-LEFT OVERRIDE)', metric: 'stored name of "invoice\\u202Efdp.exe"', before: 'kept: displays as "invoiceexe.pdf"', now: r.savedAs, unit: 'name', bound: 'no C0/C1/bidi/invisible format character in a stored name; each becomes _' })
  })

  it('5. hostile names (../, /, NUL, 255 bytes, "..", ".", "~") land as plain names inside the inbox', async () => {
    const w = await world()
    const names = ['../../escape.txt', '/etc/cron.d/evil', 'a\u0000b.txt', 'x'.repeat(251) + '.txt', '..', '.', '~', '.bashrc', 'dir/../../..//up']
    const saved: string[] = []
    for (const name of names) {
      const v = await rawSend(w, { name, size: 3, bytes: Buffer.from('abc') })
      expect(v).toMatchObject({ type: 'done' })
      saved.push((v as { name: string }).name)
    }
    const inbox = fs.readdirSync(w.bob.inbox).filter((n) => n !== '.partial')
    expect(inbox.sort()).toEqual([...saved].sort())
    for (const n of saved) {
      expect(n).not.toMatch(/[/\0]|^\./)
      expect(Buffer.byteLength(n)).toBeLessThanOrEqual(MAX_NAME_BYTES)
    }
    // Nothing outside the inbox: the whole test directory holds only what the test and natd made.
    expect(fs.existsSync(path.join(w.tmp, 'escape.txt')) || fs.existsSync(path.join(w.tmp, 'bob', 'escape.txt'))).toBe(false)
    recordAbuse({ row: 'received names with ../, /, NUL, 255 bytes, .., ., leading dot', metric: 'files stored outside the inbox or under a dot name', before: '(new row)', now: 0, unit: 'files', bound: `every name one plain file name in the inbox, ≤ MAX_NAME_BYTES ${MAX_NAME_BYTES}: ${saved.map((n) => n.slice(0, 20)).join(' ')}` })
  })

  it('6. a sender that sends more bytes than it announced: BAD_REQUEST, nothing stored, the partial no longer than announced', async () => {
    const w = await world()
    const v = await rawSend(w, { name: 'more.bin', size: 1000, bytes: randomBytes(1000 + 64 * KiB), end: false })
    expect(v).toMatchObject({ type: 'refuse', code: 'BAD_REQUEST' })
    expect(w.bob.list()).toEqual([])
    const partials = w.bob.partials()
    expect(partials.every((p) => p.bytes <= 1000)).toBe(true)
    recordAbuse({ row: 'a sender that sends 64 KiB more than the 1,000 bytes it announced', metric: 'bytes kept', before: '(new row)', now: partials.reduce((n, p) => n + p.bytes, 0), unit: 'bytes', bound: 'BAD_REQUEST after MAX_TAIL_BYTES (1 KiB) past the body; nothing stored, the partial ≤ the announced size' })
  })

  it.skipIf(!isRoot)('7. a local user who can write the inbox plants .partial with a symlink to a file of natd\'s: nothing of it is read, cut or written', async () => {
    const w = await world()
    // An operator's shared inbox (natd --inbox /srv/incoming, mode 1777): a local user creates .partial first.
    const inbox = w.bob.inbox
    fs.mkdirSync(inbox, { recursive: true, mode: 0o1777 })
    fs.chmodSync(inbox, 0o1777)
    const victim = path.join(w.tmp, 'bob', 'identity.json')
    const secret = JSON.stringify({ secretKey: randomBytes(64).toString('hex') })
    fs.writeFileSync(victim, secret, { mode: 0o600 })
    const partialDir = path.join(inbox, '.partial')
    fs.mkdirSync(partialDir)
    fs.chmodSync(partialDir, 0o777)
    const nobody = Number(spawnSync('id', ['-u', 'nobody'], { encoding: 'utf8' }).stdout)
    fs.chownSync(partialDir, nobody, nobody)
    // The key is predictable: the sender's ID and its own transfer ID.
    const transferId = randomBytes(32)
    fs.symlinkSync(victim, path.join(partialDir, partialKey(ALICE.id, transferId.toString('hex'))))
    const small = await rawSend(w, { name: 'cut.bin', size: 10, bytes: Buffer.from('0123456789'), transferId })
    const large = await rawSend(w, { name: 'grow.bin', size: 10 * KiB, bytes: randomBytes(10 * KiB), transferId })
    expect(fs.readFileSync(victim, 'utf8')).toBe(secret)
    expect(small).toMatchObject({ type: 'refuse', code: 'PARTIAL_UNREADABLE' })
    expect(large).toMatchObject({ type: 'refuse', code: 'PARTIAL_UNREADABLE' })
    expect(w.bob.list()).toEqual([])
    // natd's own .partial (0700, its owner) works again.
    fs.rmSync(partialDir, { recursive: true })
    expect(await rawSend(w, { name: 'ok.bin', size: 3, bytes: Buffer.from('abc') })).toMatchObject({ type: 'done' })
    recordAbuse({ row: 'a local user plants inbox/.partial (theirs) with a symlink at a partial\'s predictable name', metric: 'bytes of the symlink\'s target cut or appended', before: 'truncated to 0 by a smaller offer, or the peer\'s bytes appended by a larger one', now: 0, unit: 'bytes', bound: 'a .partial that is not a directory of natd\'s uid without group/other write: PARTIAL_UNREADABLE, nothing opened; partials opened O_NOFOLLOW' })
  })

  it.skipIf(!isRoot)('7b. an inbox others may write (not natd\'s own sticky directory): every offer is refused, nothing is created', async () => {
    const w = await world()
    const inbox = w.bob.inbox
    fs.mkdirSync(inbox, { recursive: true })
    const nobody = Number(spawnSync('id', ['-u', 'nobody'], { encoding: 'utf8' }).stdout)
    // 0777: anyone may rename .partial away and put a symlink in its place; 1777 of another
    // user: its owner may.
    for (const [mode, owner] of [[0o777, 0], [0o1777, nobody]] as const) {
      fs.chownSync(inbox, owner, owner)
      fs.chmodSync(inbox, mode)
      const v = await rawSend(w, { name: 'x.bin', size: 3, bytes: Buffer.from('abc') })
      expect(v, mode.toString(8)).toMatchObject({ type: 'refuse', code: 'PARTIAL_UNREADABLE' })
      expect(fs.existsSync(path.join(inbox, '.partial'))).toBe(false) // nothing made in it
    }
    // natd's own sticky directory, or one only natd writes: received.
    fs.chownSync(inbox, 0, 0)
    for (const mode of [0o1777, 0o755]) {
      fs.chmodSync(inbox, mode)
      expect(await rawSend(w, { name: `ok-${mode.toString(8)}.bin`, size: 3, bytes: Buffer.from('abc') })).toMatchObject({ type: 'done' })
    }
  })

  it.skipIf(!isRoot)('7c. an inbox whose parent others may write: refused, so nobody can swap it for a symlink to natd\'s state directory', async () => {
    const w = await world()
    const inbox = w.bob.inbox
    const parent = path.dirname(inbox) // the operator's --inbox /srv/shared/incoming, with /srv/shared 0777
    fs.mkdirSync(inbox, { recursive: true, mode: 0o755 })
    fs.chmodSync(parent, 0o777)
    expect(await rawSend(w, { name: 'first.bin', size: 3, bytes: Buffer.from('abc') })).toMatchObject({ type: 'refuse', code: 'PARTIAL_UNREADABLE' })
    // A local user renames the inbox away and puts a symlink to natd's state directory in
    // its place (a directory natd reads its trust from: learnt.json pins peers' keys).
    const state = path.join(w.tmp, 'state')
    fs.mkdirSync(state, { mode: 0o700 })
    fs.renameSync(inbox, `${inbox}.old`)
    fs.symlinkSync(state, inbox)
    const v = await rawSend(w, { name: 'learnt.json', size: 2, bytes: Buffer.from('{}') })
    expect(v).toMatchObject({ type: 'refuse', code: 'PARTIAL_UNREADABLE' })
    expect(fs.readdirSync(state)).toEqual([])
    // The same symlink in a parent only natd writes is the operator's choice: received.
    fs.chmodSync(parent, 0o700)
    expect(await rawSend(w, { name: 'ok.bin', size: 3, bytes: Buffer.from('abc') })).toMatchObject({ type: 'done' })
    recordAbuse({ row: 'a local user who may write the inbox\'s parent swaps the inbox for a symlink to natd\'s state directory', metric: 'files a peer placed in the state directory', before: '1 (learnt.json, which pins keys)', now: fs.existsSync(path.join(state, 'learnt.json')) ? 1 : 0, unit: 'files', bound: 'every offer refused (PARTIAL_UNREADABLE) while a parent of the inbox (or of the symlink that is the inbox) lets others rename its entries' })
  })

  it('8. 40 offers at once, each stalling after ACCEPT: no more accepted than the peer\'s file quota', async () => {
    const w = await world()
    await w.bob.setPolicy({ filesPerPeer: 10 })
    const chans = await Promise.all(
      Array.from({ length: 40 }, async (_, i) => {
        const ch = w.muxA.openChannel(0, FILE_SERVICE)
        await ch.opened
        const reader = new ChannelReader(ch)
        ch.write(encodeTransfer({ type: 'offer', transferId: randomBytes(32), size: 1024 * KiB, name: `f${i}` }))
        return { ch, answer: await reader.frame() }
      })
    )
    const accepted = chans.filter((c) => c.answer.type === 'accept').length
    const refused = chans.filter((c) => c.answer.type === 'refuse' && c.answer.code === 'QUOTA_EXCEEDED').length
    for (const c of chans) c.ch.destroy()
    expect(accepted).toBeLessThanOrEqual(10)
    expect(accepted + refused).toBe(40)
    recordAbuse({ row: '40 file offers at once from one peer, each stalling after ACCEPT (quota 10 files)', metric: 'offers accepted', before: 'each passed its own quota check (4,096 × 1 GiB against 4 GiB)', now: accepted, unit: 'offers', bound: '≤ filesPerPeer; the rest QUOTA_EXCEEDED; each accepted one ends at the stall deadline' })
  })

  it('9. a registered stranger (not in the allow list) opens 64 file channels and streams into each without waiting: NOT_ALLOWED at OPEN, no window, nothing held', async () => {
    const w = await world()
    await w.bob.setPolicy({ allow: ['alice'] }) // alice only
    const STRANGER = { name: 'mallory', id: 'm'.repeat(52) }
    const pipe = messagePipe()
    const muxS = new Mux(pipe.a, true, silentLogger)
    const muxV = new Mux(pipe.b, false, silentLogger)
    cleanups.push(() => {
      muxS.close('test over')
      muxV.close('test over')
    })
    const fromStranger = upTunnel(STRANGER, muxV)
    muxV.on('open', (req) => w.bob.onChannel(fromStranger, req))
    const CHANNELS = 64
    const answers = await Promise.all(
      Array.from({ length: CHANNELS }, (_, i) => {
        const ch = muxS.openChannel(0, FILE_SERVICE)
        ch.on('error', () => undefined)
        ch.write(encodeTransfer({ type: 'offer', transferId: randomBytes(32), size: 1024 * KiB, name: `push${i}.bin` }))
        ch.write(randomBytes(1024 * KiB)) // does not wait for ACCEPT
        return ch.opened.then(() => 'opened', (err: unknown) => err)
      })
    )
    // Refused at OPEN, as an older sender sees it too (the reset's code): the window was never granted.
    for (const a of answers) expect(a).toMatchObject({ code: 'NOT_ALLOWED', message: NOT_ALLOWED_MESSAGE })
    expect(muxV.size).toBe(0) // at once, not REFUSE_LINGER_MS later
    expect(muxV.bytesIn).toBeLessThan(CHANNELS * KiB) // OPENs and the offers' frames at most, never the streamed bytes
    expect(fs.existsSync(w.bob.inbox) ? fs.readdirSync(w.bob.inbox).filter((n) => n !== '.partial') : []).toEqual([])
    expect(w.bob.partials()).toEqual([])
    recordAbuse({ row: 'a stranger opens 64 file channels and streams 1 MiB into each without waiting for ACCEPT', metric: 'bytes the receiver took in from the stranger (OPENs included)', before: 'up to the 4 MiB window per channel (× 4,096 channels) for REFUSE_LINGER_MS (5 s)', now: muxV.bytesIn, unit: 'bytes', bound: 'NOT_ALLOWED at OPEN: no window is granted, the channel is gone at once' })
  })
})
