// File transfer (src/daemon/files.ts, file-transfer.ts) between two Files instances over a
// real Mux pair on an in-memory message pipe; the tunnel manager is a stub that hands out
// that one tunnel. Also the pure parts: name sanitising and free names.
//
//   alice: Files.send ── Mux A ═══ pipe ═══ Mux B ── Files: bob (inbox in a temp dir)
import { execFileSync } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import fs from 'node:fs'
import fsp from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { Readable } from 'node:stream'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { PARTIAL_MAX_AGE_MS, partialKey, sanitizeName, suffixedName, transferIdOf } from '../../../src/daemon/file-transfer.js'
import { SYNC_EVERY_BYTES } from '../../../src/daemon/file-body.js'
import { DEFAULT_MAX_FILE_BYTES, DEFAULT_QUOTAS, Files, FILE_SERVICE, type FilesComponents } from '../../../src/daemon/files.js'
import { asyncStateIo, writeFileAtomicAsync, type StateLogIo } from '../../../src/common/state-files.js'
import { FileStreamServer, openFileStream, openToSend, streamFile } from '../../../src/ipc/file-stream.js'
import type { FileProgress, FileSendResult, ReceivedFile } from '../../../src/ipc/schema.js'
import { NatdError } from '../../../src/protocol/errors.js'
import { silentLogger } from '../../../src/protocol/log.js'
import { resolvePeer } from '../../../src/protocol/peer-ref.js'
import type { TunnelManager } from '../../../src/tunnel/manager.js'
import { Mux } from '../../../src/tunnel/mux.js'
import { MuxChannel } from '../../../src/tunnel/mux-channel.js'
import { decodeTransfer, encodeTransfer } from '../../../src/protocol/transfer.js'
import { messagePipe, type MessagePipe } from '../tunnel/pipe.js'
import { upTunnel } from '../helpers.js'


const ALICE = { name: 'alice', id: 'a'.repeat(52) }
const BOB = { name: 'bob', id: 'b'.repeat(51) + 'q' }
const CAROL = { name: 'carol', id: 'c'.repeat(51) + 'q' }
/** Shares alice's first 10 characters: what an attacker grinds a key for. */
const LOOKALIKE = { name: 'alice_', id: 'a'.repeat(10) + 'b'.repeat(41) + 'q' }

/** The keys bob's agent knows (KnownPeers.resolveKey in miniature). */
const known = {
  list: () => [ALICE],
  resolveKey: async (typed: string) => {
    const t = resolvePeer(typed, [ALICE, CAROL])
    const ref = [ALICE, CAROL].find((p) => p.id === t?.id)
    if (!ref) throw new NatdError('PEER_UNKNOWN', `no key known for ${typed}`)
    return { ...ref }
  }
}
const KiB = 1024
const MiB = 1024 * KiB

describe('sanitizeName', () => {
  it.each([
    ['report.pdf', 'report.pdf'],
    ['../../etc/evil', 'etc_evil'],
    ['/etc/passwd', 'etc_passwd'],
    ['..', 'file'],
    ['', 'file'],
    ['./a/./b', 'a_b'],
    ['a\\..\\b', 'a_b'],
    ['.bashrc', '_bashrc'],
    ['..hidden', '__hidden'],
    ['new\nline\u0000.txt', 'new_line_.txt'],
    ['photos/2026/a.jpg', 'photos_2026_a.jpg'],
    ['invoice\u202Efdp.exe', 'invoice_fdp.exe'],
    ['a\u2066b\u2069c\u200Fd\u061Ce', 'a_b_c_d_e'],
    ['c1\u0085\u009b.txt', 'c1__.txt'],
    ['zw\u200Bj\uFEFF.txt', 'zw_j_.txt'],
    ['lone\uD800.txt', 'lone_.txt'],
    ['naïve café 日本.txt', 'naïve café 日本.txt']
  ])('%j → %j', (input, want) => {
    expect(sanitizeName(input)).toBe(want)
  })

  it('keeps names within 200 bytes, extension included', () => {
    const long = `${'é'.repeat(300)}.tar.gz`
    const out = sanitizeName(long)
    expect(Buffer.byteLength(out)).toBeLessThanOrEqual(200)
    expect(out.endsWith('.gz')).toBe(true)
  })

  it('suffixes before the extension', () => {
    expect([0, 1, 2].map((i) => suffixedName('a.txt', i))).toEqual(['a.txt', 'a-1.txt', 'a-2.txt'])
    expect(suffixedName('README', 3)).toBe('README-3')
  })
})

interface World {
  streams: FileStreamServer
  pipe: MessagePipe
  tmp: string
  alice: Files
  bob: Files
  bobDir: string
  received: ReceivedFile[]
  progress: FileProgress[]
  /** Bytes alice's side wrote onto the pipe. */
  sentOnWire: () => number
  /** The session dies as a tunnel sees it: both muxes close. */
  cut: (reason: string) => void
  /** Alice's end of the mux, for raw frames. */
  muxA: Mux
}

const cleanups: Array<() => void> = []
afterEach(() => {
  vi.restoreAllMocks()
  for (const c of cleanups.splice(0)) c()
})

function world(sender: { name: string; id: string } = ALICE, opts: { bobInbox?: (tmp: string) => string; bobWrites?: Pick<FilesComponents, 'writePolicy' | 'io'> } = {}): World {
  const pipe = messagePipe()
  const muxA = new Mux(pipe.a, true, silentLogger)
  const muxB = new Mux(pipe.b, false, silentLogger)
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-files-'))
  const aliceDir = path.join(tmp, 'alice')
  const bobDir = path.join(tmp, 'bob')
  fs.mkdirSync(aliceDir)
  fs.mkdirSync(bobDir)
  const streams = new FileStreamServer(path.join(tmp, 'api.sock.data'), silentLogger)
  cleanups.push(() => {
    streams.stop()
    muxA.close('test over')
    muxB.close('test over')
    fs.rmSync(tmp, { recursive: true, force: true })
  })
  let wire = 0
  pipe.tap = (from, frame) => {
    if (from === 'a') wire += frame.length
  }
  const tunnelToBob = upTunnel(BOB, muxA)
  const tunnelToAlice = upTunnel(sender, muxB)
  const tunnels = { open: async () => ({ tunnel: tunnelToBob, tookMs: 0, reused: true }) } as unknown as TunnelManager
  const received: ReceivedFile[] = []
  const progress: FileProgress[] = []
  const make = (dir: string, self: { name: string; id: string }, inbox = ''): Files =>
    new Files({ dir, inbox, tunnels, log: silentLogger, selfName: self.name, selfId: self.id, known, onReceived: (f) => received.push(f), onProgress: (p) => progress.push(p), ...(self === BOB ? opts.bobWrites : {}) })
  const bob = make(bobDir, BOB, opts.bobInbox?.(tmp) ?? '')
  muxB.on('open', (req) => {
    if (req.service === FILE_SERVICE) bob.onChannel(tunnelToAlice, req)
  })
  const cut = (reason: string): void => {
    muxA.close(reason)
    muxB.close(reason)
  }
  return { streams, pipe, tmp, alice: make(aliceDir, ALICE), bob, bobDir, received, progress, sentOnWire: () => wire, cut, muxA }
}

function file(dir: string, name: string, bytes: number | Buffer): { path: string; data: Buffer; sha256: string } {
  const data = typeof bytes === 'number' ? randomBytes(bytes) : bytes
  const p = path.join(dir, name)
  fs.writeFileSync(p, data)
  return { path: p, data, sha256: createHash('sha256').update(data).digest('hex') }
}

/** Where bob keeps the partial of alice's transfer of the file at `file` (as it is now) under `name`. */
function partialOf(w: World, name: string, file: string): string {
  const transferId = transferIdOf(ALICE.id, name, fs.statSync(file)).toString('hex')
  return path.join(w.bob.inbox, '.partial', partialKey(ALICE.id, transferId))
}

/** Puts `bytes` where bob keeps the partial of the file at `file` (an earlier, interrupted attempt); returns its path. */
function putPartial(w: World, name: string, file: string, bytes: Buffer): string {
  const partial = partialOf(w, name, file)
  fs.mkdirSync(path.dirname(partial), { recursive: true })
  fs.writeFileSync(partial, bytes)
  return partial
}

/** Runs `fn` with a world whose bob's inbox is on a tmpfs of `size` (root only), unmounted after. */
async function withTmpfsInbox(size: string, fn: (w: World, inbox: string) => Promise<void>): Promise<void> {
  let inbox = ''
  const w = world(ALICE, { bobInbox: (tmp) => (inbox = path.join(tmp, `tmpfs-${size}`)) })
  fs.mkdirSync(inbox)
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', inbox])
  try {
    await fn(w, inbox)
  } finally {
    // Transfers still open (a test that failed, or one that leaves them in flight) close their partials first.
    w.cut('test over')
    await new Promise((r) => setTimeout(r, 100))
    execFileSync('umount', [inbox])
  }
}

/** A raw OFFER on a new channel, as a hostile sender makes it; resolves with bob's first answer (accept or refuse), the channel left open. */
async function offer(w: World, size: number, name: string): Promise<{ type: string; code?: string; message?: string }> {
  const ch = w.muxA.openChannel(0, FILE_SERVICE)
  await ch.opened
  ch.write(encodeTransfer({ type: 'offer', transferId: randomBytes(32), size, name }))
  return decodeTransfer(await new Promise<Buffer>((resolve) => ch.once('data', resolve))) as { type: string; code?: string; message?: string }
}

/** Lets the event loop turn (timers, I/O callbacks) for a moment. */
const turn = (): Promise<void> => new Promise((resolve) => setTimeout(resolve, 20))

/** What natctl cp does for one file (transfer-commands.ts sendOne): open it with our rights, stream it on the data socket. */
async function send(w: World, p: string, name = ''): Promise<FileSendResult> {
  if (!w.streams.listening) await w.streams.start()
  const opened = await openToSend(p)
  const { socket, token } = await openFileStream(w.streams.socketPath.replace(/\.data$/, ''))
  let local: unknown = null
  const streaming = streamFile(socket, opened, p).catch((err: unknown) => (local = err))
  try {
    return await w.alice.send({ peer: 'bob', source: w.streams.take(token), name: name || path.basename(p), size: opened.size, mtimeMs: opened.mtimeMs, dev: opened.dev, ino: opened.ino, path: p, timeoutMs: 2_000 })
  } catch (err) {
    await Promise.race([streaming, new Promise((r) => setTimeout(r, 100))])
    throw local instanceof NatdError && local.code === 'FILE_UNREADABLE' ? local : err
  } finally {
    socket.destroy()
    await opened.handle.close()
  }
}

describe('files', () => {
  it('sends a file intact: bob verifies the sha256, stores it 0600 in the inbox, lists it; progress goes out', async () => {
    const w = world()
    const f = file(w.tmp, 'data.bin', 3 * MiB + 17)
    const r = await send(w, f.path)
    expect(r).toMatchObject({ peer: 'bob', name: 'data.bin', savedAs: 'data.bin', size: f.data.length, sha256: f.sha256, offset: 0, sent: f.data.length, tunnel: 'direct-udp', path: f.path })
    const stored = path.join(w.bob.inbox, 'data.bin')
    expect(fs.readFileSync(stored).equals(f.data)).toBe(true)
    expect(fs.statSync(stored).mode & 0o777).toBe(0o600)
    expect(w.bob.list()).toEqual([expect.objectContaining({ name: 'data.bin', path: stored, size: f.data.length, from: 'alice', fromId: ALICE.id, sha256: f.sha256 })])
    expect(w.received).toHaveLength(1)
    expect(w.progress.at(-1)).toMatchObject({ transferId: r.transferId, sent: f.data.length, size: f.data.length })
    expect(fs.readdirSync(path.join(w.bob.inbox, '.partial'))).toEqual([])
  })

  it('the bytes take the direct path (issue 18): the caller\'s reads go into DATA frames, bob takes them straight from the channel', async () => {
    const w = world()
    const writeSpy = vi.spyOn(MuxChannel.prototype, '_write')
    const writevSpy = vi.spyOn(MuxChannel.prototype, '_writev')
    const pushSpy = vi.spyOn(MuxChannel.prototype, 'push')
    const deliverTo = vi.spyOn(MuxChannel.prototype, 'deliverTo')
    const sendSome = vi.spyOn(MuxChannel.prototype, 'sendSome')
    const f = file(w.tmp, 'direct.bin', 6 * MiB + 3)
    expect(await send(w, f.path)).toMatchObject({ sent: f.data.length, sha256: f.sha256 })
    expect(fs.readFileSync(path.join(w.bob.inbox, 'direct.bin')).equals(f.data)).toBe(true)
    const written = [...writeSpy.mock.calls.map((c) => (c[0] as Buffer).length), ...writevSpy.mock.calls.flatMap((c) => (c[0] as Array<{ chunk: Buffer }>).map((x) => x.chunk.length))].reduce((a, b) => a + b, 0)
    const pushed = pushSpy.mock.calls.reduce((sum, c) => sum + (c[0] instanceof Buffer ? c[0].length : 0), 0)
    expect(written).toBeLessThan(KiB) // OFFER, ACCEPT, DONE: the file's bytes never went through a Writable
    expect(pushed).toBeLessThan(KiB) // nor through a Readable
    expect(deliverTo).toHaveBeenCalledTimes(1)
    expect(deliverTo.mock.results[0]?.value).toBe(true)
    expect(sendSome.mock.results.reduce((sum, r) => sum + (r.value as number), 0)).toBeGreaterThanOrEqual(f.data.length)
  })

  it('a byte changed on the way ends in CORRUPT at bob: nothing is kept, and a clean attempt starts afresh', async () => {
    const w = world()
    const f = file(w.tmp, 'flip.bin', 2 * MiB)
    let flipped = false
    w.pipe.tap = (from, frame) => {
      // The mux's DATA frames (type 3) of alice's channel: one payload byte flipped, once.
      if (from === 'a' && frame[0] === 3 && frame.length > 10_000 && !flipped) {
        flipped = true
        frame[frame.length - 7] = frame[frame.length - 7]! ^ 0x40
      }
    }
    await expect(send(w, f.path)).rejects.toMatchObject({ code: 'CORRUPT' })
    expect(flipped).toBe(true)
    expect(fs.readdirSync(w.bob.inbox).filter((n) => n !== '.partial')).toEqual([])
    expect(fs.readdirSync(path.join(w.bob.inbox, '.partial'))).toEqual([])
    w.pipe.tap = null
    expect(await send(w, f.path)).toMatchObject({ offset: 0, savedAs: 'flip.bin', sha256: f.sha256 })
  })

  it('a caller that streams more than the file and its sha256 fails with BAD_REQUEST; bob stores nothing', async () => {
    const w = world()
    await w.streams.start()
    const { socket, token } = await openFileStream(w.streams.socketPath.replace(/\.data$/, ''))
    cleanups.push(() => socket.destroy())
    const data = randomBytes(100 * KiB)
    socket.once('data', () => socket.write(Buffer.concat([data, createHash('sha256').update(data).digest(), Buffer.from('and more')]))) // after OFFSET
    socket.resume()
    const err = await w.alice.send({ peer: 'bob', source: w.streams.take(token), name: 'more.bin', size: data.length, mtimeMs: 1, dev: 1, ino: 1, path: '', timeoutMs: 2_000 }).catch((e: unknown) => e)
    expect(err).toMatchObject({ code: 'BAD_REQUEST', message: expect.stringMatching(/more bytes than the file/) })
    expect(fs.existsSync(path.join(w.bob.inbox, 'more.bin'))).toBe(false)
  })

  it('never overwrites: the same name again gets a suffix; an empty file works', async () => {
    const w = world()
    fs.mkdirSync(w.bob.inbox, { recursive: true })
    fs.writeFileSync(path.join(w.bob.inbox, 'a.txt'), 'mine')
    const f = file(w.tmp, 'a.txt', Buffer.from('theirs'))
    expect((await send(w, f.path)).savedAs).toBe('a-1.txt')
    expect((await send(w, f.path)).savedAs).toBe('a-2.txt')
    expect(fs.readFileSync(path.join(w.bob.inbox, 'a.txt'), 'utf8')).toBe('mine')
    const empty = file(w.tmp, 'empty', Buffer.alloc(0))
    expect(await send(w, empty.path)).toMatchObject({ savedAs: 'empty', size: 0, sent: 0 })
  })

  it('a hostile name lands inside the inbox under a safe name', async () => {
    const w = world()
    const f = file(w.tmp, 'x', Buffer.from('payload'))
    expect((await send(w, f.path, '../../etc/evil')).savedAs).toBe('etc_evil')
    expect(fs.readFileSync(path.join(w.bob.inbox, 'etc_evil'), 'utf8')).toBe('payload')
    expect(fs.readdirSync(w.bobDir).sort()).toEqual(['files.jsonl', 'inbox'])
  })

  it('resumes from the bytes bob already has, sending only the rest', async () => {
    const w = world()
    const f = file(w.tmp, 'big.bin', 2 * MiB)
    const partial = putPartial(w, 'big.bin', f.path, f.data.subarray(0, 1_500_000))
    const r = await send(w, f.path)
    expect(r).toMatchObject({ offset: 1_500_000, sent: f.data.length - 1_500_000, sha256: f.sha256 })
    expect(w.sentOnWire()).toBeLessThan(f.data.length - 1_500_000 + 64 * KiB)
    expect(fs.readFileSync(path.join(w.bob.inbox, 'big.bin')).equals(f.data)).toBe(true)
    expect(fs.existsSync(partial)).toBe(false)
  })

  it('a partial that does not match ends in CORRUPT: nothing is kept, and the next attempt starts afresh', async () => {
    const w = world()
    const f = file(w.tmp, 'c.bin', 256 * KiB)
    const partial = putPartial(w, 'c.bin', f.path, randomBytes(100 * KiB))
    await expect(send(w, f.path)).rejects.toMatchObject({ code: 'CORRUPT' })
    expect(fs.existsSync(partial)).toBe(false)
    expect(fs.existsSync(path.join(w.bob.inbox, 'c.bin'))).toBe(false)
    expect(await send(w, f.path)).toMatchObject({ offset: 0, savedAs: 'c.bin' })
  })

  it('a partial that does not match is emptied at once and removed off the event loop; the sender hears CORRUPT only once it is gone', async () => {
    const w = world()
    const f = file(w.tmp, 'slow-rm.bin', 256 * KiB)
    const partial = putPartial(w, 'slow-rm.bin', f.path, randomBytes(100 * KiB))
    const rm = fsp.rm.bind(fsp)
    const held: Array<() => void> = []
    vi.spyOn(fsp, 'rm').mockImplementation((p, o) => new Promise<void>((resolve, reject) => held.push(() => void rm(p, o).then(resolve, reject))))
    const rmSync = vi.spyOn(fs, 'rmSync')
    let settled = false
    const attempt = send(w, f.path).finally(() => (settled = true))
    for (let i = 0; i < 100 && held.length === 0; i++) await turn()
    expect(held).toHaveLength(1)
    await turn() // the event loop turns while the disk is slow
    expect(settled).toBe(false)
    expect(w.bob.partials()).toEqual([expect.objectContaining({ bytes: 0, active: true })]) // never the wrong bytes, not even now
    held.shift()!()
    await expect(attempt).rejects.toMatchObject({ code: 'CORRUPT' })
    expect(fs.existsSync(partial)).toBe(false)
    expect(rmSync.mock.calls.filter((c) => String(c[0]).startsWith(w.bob.inbox))).toEqual([])
    vi.restoreAllMocks()
    expect(await send(w, f.path)).toMatchObject({ offset: 0, savedAs: 'slow-rm.bin', sha256: f.sha256 })
  })

  it('bob makes its inbox and the partials\' directory (0700) off the event loop when a file comes, not for each channel', async () => {
    const w = world()
    const mkdirSync = vi.spyOn(fs, 'mkdirSync')
    expect(fs.existsSync(w.bob.inbox)).toBe(false)
    await w.bob.setPolicy({ allow: null, maxSizeBytes: KiB, inbox: null })
    expect(await offer(w, 10 * KiB, 'refused.bin')).toMatchObject({ type: 'refuse', code: 'TOO_LARGE' })
    expect(fs.existsSync(w.bob.inbox)).toBe(false) // a refused offer makes nothing
    const f = file(w.tmp, 'first.bin', 512)
    expect(await send(w, f.path)).toMatchObject({ savedAs: 'first.bin' })
    expect(fs.statSync(w.bob.inbox).mode & 0o777).toBe(0o700)
    expect(fs.statSync(path.join(w.bob.inbox, '.partial')).mode & 0o777).toBe(0o700)
    expect(mkdirSync.mock.calls.filter((c) => String(c[0]).startsWith(w.bob.inbox))).toEqual([])
  })

  it('a partial bob cannot read back is PARTIAL_UNREADABLE before any byte goes, not CORRUPT after the whole file', async () => {
    const w = world()
    const f = file(w.tmp, 'u.bin', 512 * KiB)
    const partial = putPartial(w, 'u.bin', f.path, f.data.subarray(0, 100 * KiB))
    // An I/O error reading the partial (root reads through any mode, so the error is made here).
    const read = fs.createReadStream.bind(fs)
    const spy = vi.spyOn(fs, 'createReadStream').mockImplementation(((p: fs.PathLike, o?: object) => {
      if (p !== partial) return read(p, o)
      return new Readable({ read() { this.destroy(Object.assign(new Error(`EIO: i/o error, read '${partial}'`), { code: 'EIO' })) } })
    }) as unknown as typeof fs.createReadStream)
    try {
      const err = (await send(w, f.path).catch((e: unknown) => e)) as NatdError
      expect(err).toMatchObject({ code: 'PARTIAL_UNREADABLE' })
      expect(err.message).toMatch(/^bob refused u\.bin: the receiver cannot read back the 102400 bytes of u\.bin it already holds/)
      expect(err.message).not.toContain(w.tmp) // the sender learns no path of the receiver's
      expect(w.sentOnWire()).toBeLessThan(16 * KiB) // the offer and the refusal, none of the file
    } finally {
      spy.mockRestore()
    }
    expect(fs.readFileSync(partial).equals(f.data.subarray(0, 100 * KiB))).toBe(true) // kept for when the inbox reads again
    expect(await send(w, f.path)).toMatchObject({ offset: 100 * KiB, savedAs: 'u.bin', sha256: f.sha256 })
  })

  it('an early flush the disk failed: the partial is removed (its bytes may be lost under the page cache), the next attempt starts afresh', async () => {
    const w = world()
    const f = file(w.tmp, 'flush.bin', SYNC_EVERY_BYTES + 256 * KiB)
    const spy = vi.spyOn(fs, 'fdatasync').mockImplementation(((_fd: number, cb: (err: NodeJS.ErrnoException | null) => void) => {
      setImmediate(() => cb(Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' })))
    }) as unknown as typeof fs.fdatasync)
    try {
      await expect(send(w, f.path)).rejects.toBeInstanceOf(NatdError)
    } finally {
      spy.mockRestore()
    }
    expect(w.bob.partials()).toEqual([]) // before: 16 MiB kept, which a resume would have trusted
    expect(fs.readdirSync(path.join(w.bob.inbox, '.partial'))).toEqual([])
    expect(await send(w, f.path)).toMatchObject({ offset: 0, savedAs: 'flush.bin', sha256: f.sha256 })
  })

  it('.partial swapped for a symlink while the partial is hashed: nothing is written, cut or removed where it points', async () => {
    const w = world()
    const f = file(w.tmp, 's.bin', 256 * KiB)
    const partial = putPartial(w, 's.bin', f.path, f.data.subarray(0, 64 * KiB))
    const dir = path.dirname(partial)
    const elsewhere = path.join(w.tmp, 'elsewhere')
    fs.mkdirSync(elsewhere)
    const victim = path.join(elsewhere, path.basename(partial)) // a file of natd's, at the name it would open
    fs.writeFileSync(victim, 'natd\'s own')
    // Once the hash has read it, before the rest comes (as a local user who could rename
    // entries of the inbox would).
    const read = fs.createReadStream.bind(fs)
    const spy = vi.spyOn(fs, 'createReadStream').mockImplementation(((p: fs.PathLike, o?: object) => {
      const stream = read(p, o)
      if (p === partial) {
        stream.once('data', () => {
          fs.renameSync(dir, `${dir}-moved`)
          fs.symlinkSync(elsewhere, dir)
        })
      }
      return stream
    }) as unknown as typeof fs.createReadStream)
    try {
      await send(w, f.path).catch((e: unknown) => e)
    } finally {
      spy.mockRestore()
    }
    expect(fs.readdirSync(elsewhere)).toEqual([path.basename(victim)])
    expect(fs.readFileSync(victim, 'utf8')).toBe('natd\'s own')
  })

  it('a file changed since the partial: a new mtime starts afresh; the same size and mtime end in CORRUPT, never a mix', async () => {
    const w = world()
    const f = file(w.tmp, 'v.bin', 512 * KiB)
    putPartial(w, 'v.bin', f.path, f.data.subarray(0, 200 * KiB))
    const v2 = randomBytes(512 * KiB)
    fs.writeFileSync(f.path, v2)
    fs.utimesSync(f.path, new Date(), new Date(Date.now() + 5_000))
    expect(await send(w, f.path)).toMatchObject({ offset: 0, savedAs: 'v.bin', sha256: createHash('sha256').update(v2).digest('hex') })

    const st = fs.statSync(f.path)
    const stale = partialOf(w, 'v.bin', f.path)
    fs.writeFileSync(stale, v2.subarray(0, 200 * KiB))
    fs.writeFileSync(f.path, randomBytes(512 * KiB)) // same size, and the old mtime put back
    fs.utimesSync(f.path, st.atime, st.mtime)
    await expect(send(w, f.path)).rejects.toMatchObject({ code: 'CORRUPT' })
    expect(fs.existsSync(stale)).toBe(false)
  })

  it('a file that grows while it is sent fails with FILE_UNREADABLE; bob keeps nothing under its name', async () => {
    const w = world()
    const f = file(w.tmp, 'grows.bin', 2 * MiB)
    let grown = false
    w.pipe.tap = (from, frame) => {
      if (from === 'a' && frame[0] === 3 && !grown) {
        grown = true
        fs.appendFileSync(f.path, 'more')
      }
    }
    await expect(send(w, f.path)).rejects.toMatchObject({ code: 'FILE_UNREADABLE', message: expect.stringMatching(/changed while it was sent/) })
    expect(fs.existsSync(path.join(w.bob.inbox, 'grows.bin'))).toBe(false)
  })

  it('partials untouched for a week go at the inbox upkeep (not when a file arrives: review 7 #3); recent ones stay', async () => {
    const w = world()
    const dir = path.join(w.bob.inbox, '.partial')
    fs.mkdirSync(dir, { recursive: true })
    const old = path.join(dir, `${CAROL.id}.${'a'.repeat(64)}`)
    const recent = path.join(dir, `${CAROL.id}.${'b'.repeat(64)}`)
    fs.writeFileSync(old, 'abandoned')
    fs.writeFileSync(recent, 'may resume')
    const weekAgo = new Date(Date.now() - PARTIAL_MAX_AGE_MS - 60_000)
    fs.utimesSync(old, weekAgo, weekAgo)
    await send(w, file(w.tmp, 'n.txt', Buffer.from('new')).path)
    expect(fs.readdirSync(dir).sort()).toEqual([path.basename(old), path.basename(recent)])
    await w.bob.upkeep()
    expect(fs.readdirSync(dir)).toEqual([path.basename(recent)])
    expect(w.bob.usage(CAROL.id)).toEqual({ files: 1, bytes: 'may resume'.length, partials: 1 })
  })

  it('the accept policy refuses before any byte of the file is sent; it persists', async () => {
    const w = world()
    const f = file(w.tmp, 'p.bin', 2 * MiB)
    expect(w.bob.policy()).toEqual({ allow: [], maxSizeBytes: DEFAULT_MAX_FILE_BYTES, inbox: path.join(w.bobDir, 'inbox'), ...DEFAULT_QUOTAS })
    await w.bob.setPolicy({ allow: null, maxSizeBytes: MiB, inbox: null })
    await expect(send(w, f.path)).rejects.toMatchObject({ code: 'TOO_LARGE', message: expect.stringMatching(/^bob refused p\.bin: /) })
    expect(await w.bob.setPolicy({ allow: ['carol'], maxSizeBytes: 10 * MiB, inbox: null })).toMatchObject({ allow: [CAROL] })
    await expect(send(w, f.path)).rejects.toMatchObject({ code: 'NOT_ALLOWED', message: expect.stringMatching(/^bob refused p\.bin: the receiving agent does not accept files from this key/) })
    expect(w.sentOnWire()).toBeLessThan(4 * KiB)
    expect(fs.statSync(path.join(w.bobDir, 'files.json')).mode & 0o777).toBe(0o600)
    const again = new Files({ dir: w.bobDir, tunnels: {} as TunnelManager, log: silentLogger, selfName: 'bob', selfId: BOB.id, known, onReceived: () => undefined, onProgress: () => undefined })
    expect(again.policy()).toMatchObject({ allow: [CAROL], maxSizeBytes: 10 * MiB })
    expect(await w.bob.setPolicy({ allow: [ALICE.id.slice(0, 8)], maxSizeBytes: null, inbox: null })).toMatchObject({ allow: [ALICE] })
    expect((await send(w, f.path)).savedAs).toBe('p.bin')
    await expect(w.bob.setPolicy({ allow: ['Not A Name!'], maxSizeBytes: null, inbox: null })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' })
    await expect(w.bob.setPolicy({ allow: ['dave'], maxSizeBytes: null, inbox: null })).rejects.toMatchObject({ code: 'PEER_UNKNOWN' })
  })

  it('the inbox is the operator\'s: files.policy refuses any other, and an inbox stored by an older natd is ignored', async () => {
    const w = world(ALICE, { bobInbox: (tmp) => path.join(tmp, 'chosen') })
    await expect(w.bob.setPolicy({ allow: null, maxSizeBytes: null, inbox: '/etc/cron.d' })).rejects.toMatchObject({ code: 'NOT_ALLOWED', message: expect.stringMatching(/natd --inbox/) })
    expect(w.bob.policy().inbox).toBe(path.join(w.tmp, 'chosen'))
    expect((await send(w, file(w.tmp, 'k.txt', 5).path)).savedAs).toBe('k.txt')
    expect(fs.existsSync(path.join(w.tmp, 'chosen', 'k.txt'))).toBe(true)
    fs.writeFileSync(path.join(w.bobDir, 'files.json'), JSON.stringify({ allow: [], maxSizeBytes: 1000, inbox: '/etc/cron.d' }))
    const again = new Files({ dir: w.bobDir, tunnels: {} as TunnelManager, log: silentLogger, selfName: 'bob', selfId: BOB.id, known, onReceived: () => undefined, onProgress: () => undefined })
    expect(again.policy().inbox).toBe(path.join(w.bobDir, 'inbox'))
    expect(fs.readFileSync(path.join(w.bobDir, 'files.json'), 'utf8')).not.toMatch(/cron/)
  })

  it('what a peer holds is counted in memory: a restarted natd counts the same from the disk; a name squatted ten times over still gets a random one', async () => {
    const w = world()
    const f = file(w.tmp, 'r.txt', 3 * KiB)
    expect((await send(w, f.path)).savedAs).toBe('r.txt')
    for (let i = 1; i <= 9; i++) fs.writeFileSync(path.join(w.bob.inbox, suffixedName('r.txt', i)), 'squatted')
    expect((await send(w, f.path)).savedAs).toMatch(/^r-[0-9a-f]{16}\.txt$/)
    putPartial(w, 'cut.bin', file(w.tmp, 'cut.bin', 10).path, Buffer.alloc(5)) // an earlier natd's interrupted transfer
    const again = new Files({ dir: w.bobDir, tunnels: {} as TunnelManager, log: silentLogger, selfName: 'bob', selfId: BOB.id, known, onReceived: () => undefined, onProgress: () => undefined })
    await again.counted()
    expect(again.usage(ALICE.id)).toEqual({ files: 3, bytes: 6 * KiB + 5, partials: 1 })
    expect(w.bob.usage(ALICE.id)).toEqual({ files: 2, bytes: 6 * KiB, partials: 0 }) // the partial put behind its back: seen at the next natctl files
    w.bob.list()
    await w.bob.counted()
    expect(w.bob.usage(ALICE.id)).toEqual(again.usage(ALICE.id))
  })

  it('per-peer quotas: files past the count or the bytes are refused with QUOTA_EXCEEDED; deleting one frees room', async () => {
    const w = world()
    await w.bob.setPolicy({ allow: null, maxSizeBytes: null, inbox: null, filesPerPeer: 2, fileBytesPerPeer: 100 * KiB })
    const a = await send(w, file(w.tmp, 'q1', 10 * KiB).path)
    await send(w, file(w.tmp, 'q2', 10 * KiB).path)
    await expect(send(w, file(w.tmp, 'q3', 10).path)).rejects.toMatchObject({ code: 'QUOTA_EXCEEDED', message: expect.stringMatching(/2 files/) })
    fs.rmSync(path.join(w.bob.inbox, a.savedAs))
    // natd notices at the next natctl files (or the upkeep, every 10 min), not by a stat per offer.
    w.bob.list()
    await w.bob.counted()
    await expect(send(w, file(w.tmp, 'big', 95 * KiB).path)).rejects.toMatchObject({ code: 'QUOTA_EXCEEDED' })
    expect((await send(w, file(w.tmp, 'q3', 10).path)).savedAs).toBe('q3')
    expect(w.sentOnWire()).toBeLessThan(25 * KiB + 16 * KiB)
  })

  it('transfers at once count in the quota: offers that each fit but together do not are refused with QUOTA_EXCEEDED', async () => {
    const w = world()
    await w.bob.setPolicy({ allow: null, maxSizeBytes: null, inbox: null, filesPerPeer: 3, fileBytesPerPeer: 100 * KiB })
    // Accepted and never finished: both stay in flight, at their announced sizes.
    expect(await offer(w, 60 * KiB, 'a1')).toMatchObject({ type: 'accept' })
    expect(await offer(w, 60 * KiB, 'a2')).toMatchObject({ type: 'refuse', code: 'QUOTA_EXCEEDED', message: expect.stringMatching(/1 of them being received/) })
    expect(await offer(w, 30 * KiB, 'a3')).toMatchObject({ type: 'accept' })
    expect(await offer(w, 1, 'a4')).toMatchObject({ type: 'accept' })
    expect(await offer(w, 1, 'a5')).toMatchObject({ type: 'refuse', code: 'QUOTA_EXCEEDED', message: expect.stringMatching(/3 files/) })
  })

  it.skipIf(process.getuid?.() !== 0)('transfers at once count against the free space, and 5% of the disk stays free', async () => {
    await withTmpfsInbox('1m', async (w) => {
      expect(await offer(w, 600 * KiB, 'b1')).toMatchObject({ type: 'accept' })
      expect(await offer(w, 600 * KiB, 'b2')).toMatchObject({ type: 'refuse', code: 'NO_SPACE', message: expect.stringMatching(/promised to other transfers/) })
      // 1 MiB minus the 600 KiB promised leaves 424 KiB, of which 5% of the disk (51 KiB) is kept.
      expect(await offer(w, 400 * KiB, 'b3')).toMatchObject({ type: 'refuse', code: 'NO_SPACE' })
      expect(await offer(w, 300 * KiB, 'b4')).toMatchObject({ type: 'accept' })
    })
  })

  it('a peer that stops taking bytes: the sender cuts the transfer off with TIMEOUT after stallTimeoutMs without progress', async () => {
    const w = world()
    await w.alice.setPolicy({ stallTimeoutMs: 300 })
    const f = file(w.tmp, 'stuck.bin', 8 * MiB)
    let out = 0
    w.pipe.tap = (from, frame) => {
      if (from === 'a' && (out += frame.length) > 256 * KiB) w.pipe.up = false // past the offer: the path goes silent, the window fills
    }
    const t0 = Date.now()
    const err = await send(w, f.path).catch((e: unknown) => e)
    expect(err).toMatchObject({ code: 'TIMEOUT', message: expect.stringMatching(/no progress sending stuck\.bin for 300 ms/) })
    expect(Date.now() - t0).toBeLessThan(2_000)
  })

  it('natd never sends a file of its own state directory, even to a caller who may read it', async () => {
    const w = world()
    fs.writeFileSync(path.join(w.tmp, 'alice', 'identity.json'), '{"secretKey":"…"}')
    await expect(send(w, path.join(w.tmp, 'alice', 'identity.json'))).rejects.toMatchObject({ code: 'FILE_UNREADABLE', message: expect.stringMatching(/state directory/) })
    expect(w.received).toEqual([])
  })

  it('sends refused from the state directory are logged once, then counted: a local client may ask in a loop (review 9 #3)', async () => {
    const w = world()
    fs.writeFileSync(path.join(w.tmp, 'alice', 'identity.json'), '{"secretKey":"…"}')
    const warn = vi.spyOn(silentLogger, 'warn')
    for (let i = 0; i < 20; i++) await expect(send(w, path.join(w.tmp, 'alice', 'identity.json'))).rejects.toMatchObject({ code: 'FILE_UNREADABLE' })
    expect(warn.mock.calls).toEqual([['refused', expect.objectContaining({ code: 'FILE_UNREADABLE', reason: expect.stringMatching(/identity\.json to bob$/) })]])
  })

  it('an allow list matches whole IDs: a key sharing the first characters of alice\'s ID is refused', async () => {
    const w = world(LOOKALIKE)
    await w.bob.setPolicy({ allow: ['alice'], maxSizeBytes: null, inbox: null })
    await expect(send(w, file(w.tmp, 'x.txt', 10).path)).rejects.toMatchObject({ code: 'NOT_ALLOWED' })
  })

  it('a policy stored with bare names is migrated once: a pinned name gets its key, an unknown one admits nobody', async () => {
    const w = world()
    fs.writeFileSync(path.join(w.bobDir, 'files.json'), JSON.stringify({ allow: ['alice', 'zed'], maxSizeBytes: 1000, inbox: '' }))
    const bob = new Files({ dir: w.bobDir, tunnels: {} as TunnelManager, log: silentLogger, selfName: 'bob', selfId: BOB.id, known, onReceived: () => undefined, onProgress: () => undefined })
    expect(bob.policy().allow).toEqual([ALICE, { name: 'zed', id: null }])
    expect((JSON.parse(fs.readFileSync(path.join(w.bobDir, 'files.json'), 'utf8')) as { allow: unknown }).allow).toEqual([ALICE, { name: 'zed', id: null }])
  })

  it('bad input: a missing file, a directory, a device, yourself, a stale token', async () => {
    const w = world()
    await expect(send(w, path.join(w.tmp, 'nope'))).rejects.toMatchObject({ code: 'FILE_UNREADABLE', message: expect.stringMatching(/no such file/) })
    await expect(send(w, w.tmp)).rejects.toMatchObject({ code: 'FILE_UNREADABLE', message: expect.stringMatching(/directory/) })
    await expect(send(w, '/dev/null')).rejects.toMatchObject({ code: 'FILE_UNREADABLE', message: expect.stringMatching(/not a regular file/) })
    const self = { peer: 'alice', source: process.stdin, name: 'x', size: 1, mtimeMs: 0, dev: 0, ino: 0, path: '', timeoutMs: 1000 }
    await expect(w.alice.send(self as never)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' })
    expect(() => w.streams.take('0'.repeat(32))).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }))
  })

  it('a lost path mid-transfer keeps the partial for the next attempt', async () => {
    const w = world()
    const f = file(w.tmp, 'lost.bin', 8 * MiB)
    const partial = partialOf(w, 'lost.bin', f.path)
    w.pipe.tap = (from) => {
      if (from === 'a' && fs.existsSync(partial) && fs.statSync(partial).size >= MiB) w.pipe.up = false // the path goes silent
    }
    const attempt = send(w, f.path)
    while (w.pipe.up) await new Promise((r) => setTimeout(r, 5))
    await new Promise((r) => setTimeout(r, 50))
    w.cut('path silent') // the tunnel notices
    await expect(attempt).rejects.toMatchObject({ code: 'TUNNEL_CLOSED' })
    await new Promise((r) => setTimeout(r, 50))
    const kept = fs.statSync(partial).size
    expect(kept).toBeGreaterThanOrEqual(MiB)
    expect(kept).toBeLessThan(8 * MiB)
    expect(fs.existsSync(path.join(w.bob.inbox, 'lost.bin'))).toBe(false)
  })

  it.skipIf(process.getuid?.() !== 0)('a disk without room refuses with NO_SPACE before the bytes are sent', async () => {
    await withTmpfsInbox('1m', async (w, small) => {
      const f = file(w.tmp, 'huge.bin', 2 * MiB)
      await expect(send(w, f.path)).rejects.toMatchObject({ code: 'NO_SPACE' })
      expect(w.sentOnWire()).toBeLessThan(4 * KiB)
      expect(fs.readdirSync(small).filter((n) => n !== '.partial')).toEqual([])
    })
  })

  it.skipIf(process.getuid?.() !== 0)('a disk that fills up during the transfer ends in NO_SPACE, and nothing is left behind', async () => {
    await withTmpfsInbox('4m', async (w, small) => {
      const f = file(w.tmp, 'fills.bin', 3 * MiB)
      let filled = false
      w.pipe.tap = (from, frame) => {
        // The first DATA frame: bob has accepted; someone else takes the room now.
        if (from === 'a' && frame[0] === 3 && !filled) {
          filled = true
          try {
            fs.writeFileSync(path.join(small, 'filler'), Buffer.alloc(3 * MiB))
          } catch {
            // full already: fine
          }
        }
      }
      await expect(send(w, f.path)).rejects.toMatchObject({ code: 'NO_SPACE' })
      expect(fs.readdirSync(small).sort()).toEqual(['.partial', 'filler'])
      expect(fs.readdirSync(path.join(small, '.partial'))).toEqual([])
    })
  })

  // Issue 17: files.json and files.jsonl are fsynced before natd answers; a disk that
  // stalls must hold that answer (the API call, the sender's DONE), never the event loop.
  it('a stalled disk holds the policy change\'s answer and the received file\'s DONE, not the agent; a failed policy write is STATE_WRITE_FAILED, in effect all the same', async () => {
    const held: Array<{ go: () => void; fail: (err: Error) => void }> = []
    const hold = (write: () => Promise<void>): Promise<void> => new Promise<void>((resolve, reject) => held.push({ go: () => void write().then(resolve, reject), fail: reject }))
    const untilHeld = async (): Promise<void> => {
      for (let i = 0; i < 100 && held.length === 0; i++) await turn()
      expect(held.length).toBeGreaterThan(0)
    }
    const io: StateLogIo = { ...asyncStateIo, append: (file, text, sync) => hold(() => asyncStateIo.append(file, text, sync)) }
    const w = world(ALICE, { bobWrites: { writePolicy: (file, text) => hold(() => writeFileAtomicAsync(file, text)), io } })
    let answered = false
    const changed = w.bob.setPolicy({ allow: null, maxSizeBytes: 10 * MiB, inbox: null }).then((p) => ((answered = true), p))
    await untilHeld()
    await turn()
    expect(answered).toBe(false) // not before it is on disk
    expect(w.bob.policy().maxSizeBytes).toBe(10 * MiB) // in effect at once
    expect(fs.existsSync(path.join(w.bobDir, 'files.json'))).toBe(false) // nothing written on the event loop
    held.shift()!.go()
    expect(await changed).toMatchObject({ maxSizeBytes: 10 * MiB })
    expect(answered).toBe(true)
    const failed = w.bob.setPolicy({ allow: null, maxSizeBytes: 20 * MiB, inbox: null })
    await untilHeld()
    held.shift()!.fail(new Error('EIO'))
    await expect(failed).rejects.toMatchObject({ code: 'STATE_WRITE_FAILED', message: expect.stringMatching(/in effect but could not be saved/) })
    expect(w.bob.policy().maxSizeBytes).toBe(20 * MiB)
    for (let i = 0; i < 100 && held.length === 0; i++) await turn() // the retry, after BACKGROUND_RETRY_DELAYS_MS[0]
    held.shift()?.go()
    // A received file: DONE (the sender's success) only once its line in files.jsonl is durable.
    const f = file(w.tmp, 'slow.bin', 64 * KiB)
    let done = false
    const sent = send(w, f.path).then((r) => ((done = true), r))
    await untilHeld()
    await turn()
    expect(done).toBe(false)
    expect(w.bob.list()).toEqual([])
    held.shift()!.go()
    expect((await sent).savedAs).toBe('slow.bin')
    expect(w.bob.list()).toEqual([expect.objectContaining({ name: 'slow.bin', sha256: f.sha256 })])
  })
})
