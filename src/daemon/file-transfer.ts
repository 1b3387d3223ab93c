/**
 * One file over a `file` channel (frames in protocol/transfer.ts):
 *
 *   sender                                   receiver
 *   OFFER id,size,name        ─────────────▶ policy (peer, size), free space,
 *                             ◀───────────── ACCEPT offset (bytes of .partial/<key> it has) | REFUSE code
 *   bytes [offset, size)      ─────────────▶ appended to .partial/<key>, hashed as they come
 *   END sha256 of [0, size)   ─────────────▶ compared with its own
 *                             ◀───────────── DONE name (sha256 matched, fsynced, linked to a free name) | REFUSE CORRUPT…
 *
 * The sender reads the file once, hashing as it sends (on a resume it first hashes what
 * the receiver already has). The partial is keyed by the sender's ID and the transfer ID
 * (a hash of sender, name, size, mtime and inode), so running `natctl cp` again after a
 * lost path or a killed daemon resumes where the receiver's disk stopped, and a changed
 * file starts afresh; a change that kept size and mtime ends in CORRUPT, never in a mix.
 */
import { createHash } from 'node:crypto'
import { once } from 'node:events'
import fs from 'node:fs'
import path from 'node:path'
import { pipeline } from 'node:stream/promises'
import { NatdError, toNatdError } from '../protocol/errors.js'
import type { FileSendResult } from '../ipc/schema.js'
import type { Logger } from '../protocol/log.js'
import { encodeTransfer, MAX_FILE_BYTES, type TransferFrame } from '../protocol/transfer.js'
import type { TunnelManager } from '../tunnel/manager.js'
import type { MuxChannel, OpenRequest } from '../tunnel/mux.js'
import type { Tunnel } from '../tunnel/tunnel.js'
import { ChannelReader, refusal, withDeadline } from './channel-frames.js'
import { fsyncDir } from './state-files.js'

export const FILE_SERVICE = 'file'
/** The receiver waits this long for the OFFER after the channel opens. */
export const OFFER_TIMEOUT_MS = 10_000
/** Longest name the receiver keeps, in UTF-8 bytes (room left for a `-NNN` suffix under NAME_MAX 255). */
export const MAX_NAME_BYTES = 200
/** Free names tried (`a.txt`, `a-1.txt`, …) before giving up. */
export const MAX_NAME_SUFFIX = 9_999
/** Read size for sending and hashing: large enough to keep the channel's 4 MiB window full. */
export const READ_CHUNK_BYTES = 1024 * 1024
/** After a refusal mid-transfer the receiver ends the channel; it resets it after this if the sender does not. */
export const REFUSE_LINGER_MS = 5_000
/** A partial untouched this long (its transfer never retried, or its file changed) is removed when the next file arrives. */
export const PARTIAL_MAX_AGE_MS = 7 * 24 * 3600_000

/**
 * A peer's name for a file made safe to create in the inbox: path separators, `.` and
 * `..` segments, control characters and leading dots go; what is left is one plain file
 * name (`../../etc/evil` → `etc_evil`), never empty, at most MAX_NAME_BYTES.
 */
export function sanitizeName(name: string): string {
  const segments = name
    .split(/[/\\]+/)
    .map((s) => [...s].map((ch) => (ch.charCodeAt(0) < 0x20 || ch.charCodeAt(0) === 0x7f ? '_' : ch)).join('').trim())
    .filter((s) => s !== '' && s !== '.' && s !== '..')
  let out = segments.join('_').replace(/^\.+/, (dots) => '_'.repeat(dots.length))
  if (Buffer.byteLength(out) > MAX_NAME_BYTES) {
    const ext = path.extname(out).slice(0, 16)
    let stem = out.slice(0, out.length - ext.length)
    while (Buffer.byteLength(stem + ext) > MAX_NAME_BYTES) stem = stem.slice(0, -1)
    out = stem + ext
  }
  return out || 'file'
}

/** `report.pdf`, then `report-1.pdf`, `report-2.pdf`, … */
export function suffixedName(name: string, i: number): string {
  if (i === 0) return name
  const ext = path.extname(name)
  return `${name.slice(0, name.length - ext.length)}-${i}${ext}`
}

/** sha256 of a file's bytes [0, end) (the whole file when end is omitted). */
export async function hashFile(file: string, end?: number): Promise<ReturnType<typeof createHash>> {
  const h = createHash('sha256')
  if (end === 0) return h
  const stream = fs.createReadStream(file, { highWaterMark: READ_CHUNK_BYTES, ...(end === undefined ? {} : { end: end - 1 }) })
  for await (const chunk of stream) h.update(chunk as Buffer)
  return h
}

/** The sender's name for this version of a file: what a resume must match. */
export function transferIdOf(senderId: string, name: string, st: Pick<fs.Stats, 'size' | 'mtimeMs' | 'ino'>): Buffer {
  return createHash('sha256').update(`natd-transfer\0${senderId}\0${name}\0${st.size}\0${st.mtimeMs}\0${st.ino}`).digest()
}

/** The error for a reply that is not the one expected: the peer's REFUSE, or BAD_REQUEST. */
function refusalOf(f: TransferFrame, peer: string, name: string): NatdError {
  return f.type === 'refuse' ? refusal(f.code, `${peer} refused ${name}: ${f.message}`) : new NatdError('BAD_REQUEST', `${peer} answered the file with ${f.type}`)
}

/** Maps a local file's error to FILE_UNREADABLE with a message a user understands. */
function unreadable(file: string, err: unknown): NatdError {
  const e = err as NodeJS.ErrnoException
  if (err instanceof NatdError) return err
  const why = e.code === 'ENOENT' ? 'no such file' : e.code === 'EACCES' || e.code === 'EPERM' ? 'permission denied (natd must be able to read it)' : e.code === 'EISDIR' ? 'is a directory (use -r)' : (e.code ?? e.message)
  return new NatdError('FILE_UNREADABLE', `${file}: ${why}`, { cause: err })
}

/** What sendFile resolves with: the API's result without what the caller adds. */
export type SendOutcome = Omit<FileSendResult, 'path' | 'tookMs'>

export interface SendSpec {
  peer: string
  file: string
  name: string
  timeoutMs: number
  /** Called as bytes leave (offset is what the receiver already had). */
  onProgress(p: { transferId: string; peer: string; name: string; size: number; offset: number; sent: number }): void
}

/** Sends one file to a peer; resolves once the peer verified and stored it. */
export async function sendFile(spec: SendSpec, c: { tunnels: TunnelManager; selfId: string; log: Logger }): Promise<SendOutcome> {
  const { file } = spec
  if (!path.isAbsolute(file)) throw new NatdError('INVALID_ARGUMENT', `the path must be absolute, not ${JSON.stringify(file)}`)
  let st: fs.Stats
  try {
    st = await fs.promises.stat(file)
    if (st.isDirectory()) throw new NatdError('FILE_UNREADABLE', `${file} is a directory (natctl cp -r sends what is in it)`)
    if (!st.isFile()) throw new NatdError('FILE_UNREADABLE', `${file} is not a regular file`)
    await fs.promises.access(file, fs.constants.R_OK)
  } catch (err) {
    throw unreadable(file, err)
  }
  if (st.size > MAX_FILE_BYTES) throw new NatdError('TOO_LARGE', `${file} is larger than 256 TiB`)
  const name = spec.name || path.basename(file)
  if (Buffer.byteLength(name) > 255) throw new NatdError('INVALID_ARGUMENT', 'the file name is longer than 255 bytes')
  const size = st.size
  const transferId = transferIdOf(c.selfId, name, st)
  const idHex = transferId.toString('hex')

  const started = Date.now()
  const left = (): number => Math.max(1, spec.timeoutMs - (Date.now() - started))
  const { tunnel } = await c.tunnels.open(spec.peer, 'auto', spec.timeoutMs)
  const peer = tunnel.peer.name
  const ch = tunnel.mux.openChannel(0, FILE_SERVICE)
  const reader = new ChannelReader(ch)
  let source: fs.ReadStream | null = null
  try {
    await withDeadline(ch.opened, left(), ch, `${peer}'s answer to the file channel`)
    ch.write(encodeTransfer({ type: 'offer', transferId, size, name }))
    const answer = await withDeadline(reader.frame('the answer to the offer'), left(), ch, `${peer}'s answer to the offer`)
    if (answer.type === 'refuse') throw refusal(answer.code, `${peer} refused ${name}: ${answer.message}`)
    if (answer.type !== 'accept' || answer.offset > size) throw new NatdError('BAD_REQUEST', `${peer} answered the offer with ${answer.type}`)
    const offset = answer.offset
    c.log.info('file transfer started', { peer, name, size, offset, transferId: idHex.slice(0, 16) })
    // The receiver answers after END, or early with a REFUSE (disk full…).
    const reply = reader.frame('the receiver\'s verdict')
    reply.catch(() => undefined) // awaited below; a failed read surfaces there
    const hash = await hashFile(file, offset).catch((err: unknown) => Promise.reject(unreadable(file, err)))
    let sent = 0
    const progress = (): void => spec.onProgress({ transferId: idHex, peer, name, size, offset, sent })
    progress()
    let body: Promise<void> = Promise.resolve()
    if (offset < size) {
      const src = fs.createReadStream(file, { start: offset, end: size - 1, highWaterMark: READ_CHUNK_BYTES })
      source = src
      src.on('data', (chunk) => {
        hash.update(chunk)
        sent += chunk.length
        progress()
      })
      body = pipeline(src, ch, { end: false }).catch((err: unknown) => {
        throw (err as NodeJS.ErrnoException).syscall === 'read' || (err as NodeJS.ErrnoException).syscall === 'open' ? unreadable(file, err) : err
      })
    }
    let sha256 = Buffer.alloc(0)
    const finish = async (): Promise<TransferFrame> => {
      const after = await fs.promises.stat(file).catch((err: unknown) => Promise.reject(unreadable(file, err)))
      if (after.size !== st.size || after.mtimeMs !== st.mtimeMs || sent !== size - offset) throw new NatdError('FILE_UNREADABLE', `${file} changed while natd sent it; send it again when it is complete`)
      sha256 = hash.digest()
      ch.write(encodeTransfer({ type: 'end', sha256 }))
      return reply
    }
    const verdict = await Promise.race([body.then(finish), reply])
    if (verdict.type !== 'done') throw refusalOf(verdict, peer, name)
    ch.end()
    c.log.info('file sent', { peer, name, size, offset, sent, savedAs: verdict.name, transferId: idHex.slice(0, 16) })
    return { transferId: idHex, peer, tunnel: tunnel.path, name, savedAs: verdict.name, size, sha256: sha256.toString('hex'), offset, sent }
  } catch (err) {
    source?.destroy()
    ch.destroy()
    throw toNatdError(err, 'TUNNEL_CLOSED')
  }
}

export interface ReceivePolicy {
  allowed(peer: { name: string; id: string }): boolean
  maxSizeBytes: number
  inbox: string
}

export interface StoredFile {
  name: string
  path: string
  size: number
  sha256: string
  transferId: string
}

/** The receiving side: partials, verification, placement. */
export class FileReceiver {
  /** Receives in progress, by partial key: a re-run of the same transfer supersedes the old one. */
  private readonly active = new Map<string, { channel: MuxChannel; done: Promise<void> }>()

  constructor(
    private readonly policy: () => ReceivePolicy,
    private readonly log: Logger,
    private readonly onStored: (f: StoredFile, from: Tunnel['peer']) => void
  ) {}

  /** A peer opened a `file` channel. Never throws. */
  onChannel(tunnel: Tunnel, req: OpenRequest): void {
    req.accept()
    const ch = req.channel
    void this.receive(tunnel, ch).catch((err: unknown) => {
      const e = toNatdError(err)
      this.log.warn('file not received', { peer: tunnel.peer.name, code: e.code, err: e.message })
      if (ch.destroyed) return
      ch.end(encodeTransfer({ type: 'refuse', code: e.code, message: e.message }))
      setTimeout(() => ch.destroy(), REFUSE_LINGER_MS).unref()
    })
  }

  private async receive(tunnel: Tunnel, ch: MuxChannel): Promise<void> {
    const peer = tunnel.peer
    const reader = new ChannelReader(ch)
    const offer = await withDeadline(reader.frame('the offer'), OFFER_TIMEOUT_MS, ch, 'the offer')
    if (offer.type !== 'offer') throw new NatdError('BAD_REQUEST', `expected an offer, got ${offer.type}`)
    const policy = this.policy()
    const name = sanitizeName(offer.name)
    if (!policy.allowed(peer)) {
      this.log.warn('NOT_ALLOWED: refused a file from a peer', { peer: peer.name, name, size: offer.size })
      throw new NatdError('NOT_ALLOWED', `this agent does not accept files from ${peer.name} (natctl files policy --allow)`)
    }
    if (offer.size > policy.maxSizeBytes) {
      this.log.warn('TOO_LARGE: refused a file from a peer', { peer: peer.name, name, size: offer.size, maxSizeBytes: policy.maxSizeBytes })
      throw new NatdError('TOO_LARGE', `${offer.size} bytes is more than the ${policy.maxSizeBytes} this agent accepts`)
    }
    const transferId = Buffer.from(offer.transferId).toString('hex')
    const key = createHash('sha256').update(`${peer.id}\0${transferId}`).digest('hex')
    const previous = this.active.get(key)
    if (previous) {
      previous.channel.destroy(new NatdError('TUNNEL_CLOSED', 'superseded by a new attempt of the same transfer'))
      await previous.done
    }
    let release!: () => void
    const done = new Promise<void>((resolve) => (release = resolve))
    this.active.set(key, { channel: ch, done })
    try {
      await this.store(peer, ch, reader, { ...offer, name, transferId, key }, policy.inbox)
    } finally {
      if (this.active.get(key)?.channel === ch) this.active.delete(key)
      release()
    }
  }

  private async store(
    peer: Tunnel['peer'],
    ch: MuxChannel,
    reader: ChannelReader,
    offer: { name: string; size: number; transferId: string; key: string },
    inbox: string
  ): Promise<void> {
    const partialDir = path.join(inbox, '.partial')
    fs.mkdirSync(partialDir, { recursive: true, mode: 0o700 })
    const partial = path.join(partialDir, offer.key)
    this.prunePartials(partialDir)
    let offset = 0
    try {
      offset = fs.statSync(partial).size
    } catch {
      // nothing yet
    }
    if (offset > offer.size) {
      fs.truncateSync(partial, 0)
      offset = 0
    }
    const free = fs.statfsSync(inbox)
    if (free.bavail * free.bsize < offer.size - offset) {
      throw new NatdError('NO_SPACE', `no room for ${offer.size - offset} bytes in the inbox (${free.bavail * free.bsize} free)`)
    }
    const hash = await hashFile(partial, offset).catch(() => createHash('sha256'))
    ch.write(encodeTransfer({ type: 'accept', offset }))
    this.log.info('file transfer accepted', { peer: peer.name, name: offer.name, size: offer.size, offset })
    const out = fs.createWriteStream(partial, { flags: 'a', mode: 0o600, flush: true })
    try {
      await pipeline(
        reader.raw(offer.size - offset),
        async function* (chunks: AsyncIterable<Buffer>) {
          for await (const chunk of chunks) {
            hash.update(chunk)
            yield chunk
          }
        },
        out
      )
    } catch (err) {
      if (!out.closed) await once(out, 'close')
      const e = err as NodeJS.ErrnoException
      if (e.code === 'ENOSPC' || e.code === 'EDQUOT') {
        fs.rmSync(partial, { force: true })
        throw new NatdError('NO_SPACE', 'the receiver\'s disk is full; nothing was kept', { cause: err })
      }
      // The path is gone: keep the partial, so the next attempt resumes.
      this.log.info('file transfer interrupted', { peer: peer.name, name: offer.name, have: fs.statSync(partial).size, size: offer.size })
      throw toNatdError(err, 'TUNNEL_CLOSED')
    }
    const end = await withDeadline(reader.frame('the sha256 after the file'), OFFER_TIMEOUT_MS, ch, 'the sha256 after the file')
    if (end.type !== 'end') throw new NatdError('BAD_REQUEST', `expected the file's sha256 after its bytes, got ${end.type}`)
    const sha256 = hash.digest()
    if (!sha256.equals(end.sha256)) {
      fs.rmSync(partial, { force: true })
      this.log.warn('CORRUPT: received file does not match its sha256', { peer: peer.name, name: offer.name })
      throw new NatdError('CORRUPT', `the bytes received do not match the sha256 of ${offer.name}; nothing was kept, send it again`)
    }
    const final = this.place(partial, inbox, offer.name)
    const stored: StoredFile = { name: path.basename(final), path: final, size: offer.size, sha256: sha256.toString('hex'), transferId: offer.transferId }
    this.onStored(stored, peer)
    ch.end(encodeTransfer({ type: 'done', name: stored.name }))
  }

  /** Removes partials nobody came back for in PARTIAL_MAX_AGE_MS (never one being received). */
  private prunePartials(dir: string): void {
    const cutoff = Date.now() - PARTIAL_MAX_AGE_MS
    for (const name of fs.readdirSync(dir)) {
      if (this.active.has(name)) continue
      const file = path.join(dir, name)
      try {
        if (fs.statSync(file).mtimeMs >= cutoff) continue
        fs.rmSync(file, { force: true })
        this.log.info('removed a stale partial file', { partial: name.slice(0, 16), days: Math.floor(PARTIAL_MAX_AGE_MS / 86_400_000) })
      } catch {
        // gone already
      }
    }
  }

  /** Links the verified partial to the first free name (never overwriting anything), then drops the partial. */
  private place(partial: string, inbox: string, name: string): string {
    for (let i = 0; i <= MAX_NAME_SUFFIX; i++) {
      const candidate = path.join(inbox, suffixedName(name, i))
      try {
        fs.linkSync(partial, candidate) // fails with EEXIST instead of replacing
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EEXIST') continue
        throw err
      }
      fs.rmSync(partial, { force: true })
      fsyncDir(inbox)
      return candidate
    }
    throw new NatdError('INVALID_ARGUMENT', `no free name for ${name} in ${inbox}`)
  }
}
