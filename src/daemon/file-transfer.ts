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
import type { Duplex } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { NatdError, toNatdError } from '../protocol/errors.js'
import type { FileSendResult, PartialFile } from '../ipc/schema.js'
import { systemClock, type Timer, type TimerClock } from '../protocol/clock.js'
import type { Logger } from '../protocol/log.js'
import { encodeTransfer, MAX_FILE_BYTES, type TransferFrame } from '../protocol/transfer.js'
import type { TunnelManager } from '../tunnel/manager.js'
import type { OpenRequest } from '../tunnel/mux.js'
import type { MuxChannel } from '../tunnel/mux-channel.js'
import type { Tunnel } from '../tunnel/tunnel.js'
import { SHA256_BYTES } from '../ipc/file-stream.js'
import { ChannelReader, destroyOnAbort, refusal, withDeadline } from './channel-frames.js'
import { MigrationDeadline } from '../tunnel/migration-deadline.js'
import { PEER_REFUSAL_LOG, RefusalLog } from '../common/refusal-log.js'
import { fsyncDir } from '../common/state-files.js'

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
 * Either end cuts a transfer off after this long without a byte of progress (a sender that
 * announced more than it sends, a stalled caller): TIMEOUT on both ends. Long enough for a
 * relayed path to recover from a loss burst; files.policy `stallTimeoutMs` changes it.
 */
export const STALL_TIMEOUT_MS = 30_000
/** After a stall's REFUSE the receiver resets the channel this much later (the frame leaves first). */
export const STALL_RESET_DELAY_MS = 100
/**
 * A received file must leave this share of the inbox's file system free. Every key has
 * its own quota and keys are free to make, so per-peer quotas alone let strangers fill
 * the disk; this keeps room for the rest of the machine (natd runs as its own user, so
 * root's reserved blocks are not ours to count on). Past it: NO_SPACE.
 */
export const INBOX_FREE_RESERVE = 0.05

/**
 * Characters a received name may not keep, each replaced by `_`: C0 controls and DEL
 * (U+0000–U+001F, U+007F), C1 controls (U+0080–U+009F), the bidirectional controls
 * (U+061C, U+200E–U+200F, U+202A–U+202E, U+2066–U+2069) that make `txt.exe` display as
 * `exe.txt`, other invisible format characters (U+200B–U+200D, U+2060, U+FEFF), the line
 * and paragraph separators (U+2028–U+2029), and lone surrogates.
 */
// eslint-disable-next-line no-control-regex -- matching the control characters is the point
export const UNSAFE_NAME_CHARS = /[\u0000-\u001f\u007f-\u009f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ud800-\udfff]/gu

/**
 * A peer's name for a file made safe to create in the inbox and to show in a terminal:
 * path separators, `.` and `..` segments, UNSAFE_NAME_CHARS and leading dots go; what is
 * left is one plain file name (`../../etc/evil` → `etc_evil`, `a\u202Etxt.exe` →
 * `a_txt.exe`), never empty, at most MAX_NAME_BYTES.
 */
export function sanitizeName(name: string): string {
  const segments = name
    .split(/[/\\]+/)
    .map((s) => s.replace(UNSAFE_NAME_CHARS, '_').trim())
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

/** What sendFile resolves with: the API's result without what the caller adds. */
export type SendOutcome = Omit<FileSendResult, 'path' | 'tookMs'>

export interface SendSpec {
  peer: string
  /** The name the receiver gets (the caller's file name, or the one it chose). */
  name: string
  /** What the caller says of the file it opened: size, mtime and inode make the transfer ID. */
  size: number
  mtimeMs: number
  ino: number
  /**
   * The caller's bytes (ipc/file-stream.ts): natd writes `OFFSET n\n`, then reads exactly
   * size − n bytes and the sha256 of the whole file. natd never opens the file itself.
   */
  source: Duplex
  timeoutMs: number
  /** Aborts when the caller went away: the open stops, or the transfer ends (the receiver keeps its partial). */
  signal?: AbortSignal | undefined
  /** Called as bytes leave (offset is what the receiver already had). */
  onProgress(p: { transferId: string; peer: string; name: string; size: number; offset: number; sent: number }): void
}

/** The caller's side of the data connection ended before its bytes and digest did. */
function sourceGone(err: unknown): NatdError {
  if (err instanceof NatdError && err.code !== 'TUNNEL_CLOSED') return err
  return new NatdError('FILE_UNREADABLE', 'the caller stopped streaming the file (it changed, could not be read, or natctl went away)', { cause: err })
}

/** Sends one file to a peer from the caller's stream; resolves once the peer verified and stored it. */
export async function sendFile(spec: SendSpec, c: { tunnels: TunnelManager; selfId: string; log: Logger; stallTimeoutMs?: number; clock?: TimerClock }): Promise<SendOutcome> {
  const { size, name } = spec
  if (size > MAX_FILE_BYTES) throw new NatdError('TOO_LARGE', `${name} is larger than 256 TiB`)
  if (Buffer.byteLength(name) > 255) throw new NatdError('INVALID_ARGUMENT', 'the file name is longer than 255 bytes')
  const transferId = transferIdOf(c.selfId, name, spec)
  const idHex = transferId.toString('hex')
  const stallMs = c.stallTimeoutMs ?? STALL_TIMEOUT_MS

  const clock = c.clock ?? systemClock
  const started = clock.now()
  const left = (): number => Math.max(1, spec.timeoutMs - (clock.now() - started))
  const { tunnel } = await c.tunnels.open(spec.peer, 'auto', spec.timeoutMs, spec.signal)
  const peer = tunnel.peer.name
  const ch = tunnel.mux.openChannel(0, FILE_SERVICE)
  const unwatch = destroyOnAbort(ch, spec.signal, `sending ${name}`)
  const reader = new ChannelReader(ch)
  const source = new ChannelReader(spec.source)
  // What is left of the timeout for the offer; time while the tunnel migrates does not count (migration-deadline.ts).
  const offerBy = new MigrationDeadline(clock, left(), tunnel)
  try {
    await withDeadline(ch.opened, offerBy.remaining, ch, `${peer}'s answer to the file channel`, clock, tunnel)
    ch.write(encodeTransfer({ type: 'offer', transferId, size, name }))
    const answer = await withDeadline(reader.frame('the answer to the offer'), offerBy.remaining, ch, `${peer}'s answer to the offer`, clock, tunnel)
    offerBy.stop()
    if (answer.type === 'refuse') throw refusal(answer.code, `${peer} refused ${name}: ${answer.message}`)
    if (answer.type !== 'accept' || answer.offset > size) throw new NatdError('BAD_REQUEST', `${peer} answered the offer with ${answer.type}`)
    const offset = answer.offset
    c.log.info('file transfer started', { peer, name, size, offset, transferId: idHex.slice(0, 16) })
    // The receiver answers after END, or early with a REFUSE (disk full, quota, stalled…).
    const reply = reader.frame('the receiver\'s verdict')
    reply.catch(() => undefined) // awaited below; a failed read surfaces there
    spec.source.write(`OFFSET ${offset}\n`)
    let sent = 0
    const progress = (): void => spec.onProgress({ transferId: idHex, peer, name, size, offset, sent })
    progress()
    // No progress for stallMs, whichever side stalls (the caller stops streaming, or the peer
    // stops taking bytes): both connections end with TIMEOUT; the peer keeps its partial.
    const watch = new StallWatch(clock, stallMs, () => {
      const err = new NatdError('TIMEOUT', `no progress sending ${name} for ${stallMs} ms (${sent} of ${size - offset} bytes passed on)`)
      spec.source.destroy(err)
      ch.destroy(err)
    }, () => tunnel.isMigrating)
    const body = (async () => {
      try {
        await pipeline(
          source.raw(size - offset),
          async function* (chunks: AsyncIterable<Buffer>) {
            for await (const chunk of chunks) {
              sent += chunk.length
              watch.touch()
              progress()
              yield chunk
            }
          },
          ch,
          { end: false }
        )
        const parts: Buffer[] = []
        for await (const part of source.raw(SHA256_BYTES)) parts.push(part)
        const digest = Buffer.concat(parts)
        ch.write(encodeTransfer({ type: 'end', sha256: digest }))
        return digest
      } catch (err) {
        throw ch.destroyed ? err : sourceGone(err)
      } finally {
        watch.stop()
      }
    })()
    body.catch(() => undefined)
    const first = await Promise.race([body.then(() => null), reply])
    if (first !== null && first.type !== 'done') throw refusalOf(first, peer, name)
    const sha256 = await body
    const verdict = first ?? (await reply)
    if (verdict.type !== 'done') throw refusalOf(verdict, peer, name)
    ch.end()
    c.log.info('file sent', { peer, name, size, offset, sent, savedAs: verdict.name, transferId: idHex.slice(0, 16) })
    return { transferId: idHex, peer, tunnel: tunnel.path, name, savedAs: verdict.name, size, sha256: sha256.toString('hex'), offset, sent }
  } catch (err) {
    ch.destroy()
    if (spec.signal?.aborted) throw new NatdError('ABORTED', `sending ${name} was cancelled by its caller`, { cause: err })
    throw toNatdError(err, 'TUNNEL_CLOSED')
  } finally {
    offerBy.stop()
    unwatch()
    spec.source.destroy()
  }
}

/**
 * Calls `onExpired` when `touch()` was not called for `ms` (a transfer phase that made no
 * progress). Time while `waiting()` holds (the tunnel is migrating: its path is gone and
 * the bytes wait for a new one, tunnel.ts) is no stall: the watch starts over.
 * touch() runs per chunk, so it only notes the time; the timer, when it fires early,
 * waits again for what is left.
 */
export class StallWatch {
  private timer: Timer | null = null
  private last: number

  constructor(
    private readonly clock: TimerClock,
    private readonly ms: number,
    private readonly onExpired: () => void,
    private readonly waiting: () => boolean = () => false
  ) {
    this.last = clock.hrNow()
    this.arm(ms)
  }

  touch(): void {
    this.last = this.clock.hrNow()
  }

  stop(): void {
    this.clock.clear(this.timer)
    this.timer = null
  }

  private arm(ms: number): void {
    this.timer = this.clock.setTimeout(() => this.onStallExpired(), ms)
  }

  private onStallExpired(): void {
    const quiet = this.clock.hrNow() - this.last
    if (quiet < this.ms) return this.arm(this.ms - quiet)
    if (this.waiting()) {
      this.last = this.clock.hrNow()
      return this.arm(this.ms)
    }
    this.timer = null
    this.onExpired()
  }
}

export interface ReceivePolicy {
  allowed(peer: { name: string; id: string }): boolean
  maxSizeBytes: number
  inbox: string
  stallTimeoutMs: number
  /**
   * Throws QUOTA_EXCEEDED when `peer` storing `size` more bytes goes over its quota, with
   * `inFlight` (the peer's other transfers being received, at their announced sizes).
   */
  checkQuota(peer: { name: string; id: string }, size: number, inFlight: { files: number; bytes: number }): void
}

export interface StoredFile {
  name: string
  path: string
  size: number
  sha256: string
  transferId: string
}

export const PARTIAL_DIR = '.partial'

/** A partial's file name: the sender's whole ID (so quotas and listings know whose), a dot, a hash of sender and transfer. */
export function partialKey(peerId: string, transferId: string): string {
  return `${peerId}.${createHash('sha256').update(`${peerId}\0${transferId}`).digest('hex')}`
}

function partialSize(file: string): number {
  try {
    return fs.statSync(file).size
  } catch {
    return 0
  }
}

/** The receiving side: partials, verification, placement. */
export class FileReceiver {
  /** Receives in progress, by partial key: a re-run of the same transfer supersedes the old one. */
  private readonly active = new Map<string, { channel: MuxChannel; done: Promise<void> }>()
  /** The (sanitised) names of partials seen since natd started, for listing. */
  private readonly names = new Map<string, string>()
  /**
   * Transfers accepted and not yet ended, at their announced sizes: they count in their
   * sender's quota and against the free space, so that many transfers at once (a tunnel
   * carries up to 4,096 channels) cannot each pass a check the others will break.
   */
  private readonly inFlight = new Map<MuxChannel, { peerId: string; key: string; size: number; partial: string }>()

  /** Files not received (policy, quota, stalls…): a peer may cause them as fast as it opens channels. */
  private readonly refusals: RefusalLog

  constructor(
    private readonly policy: () => ReceivePolicy,
    private readonly log: Logger,
    private readonly onStored: (f: StoredFile, from: Tunnel['peer']) => void,
    private readonly clock: TimerClock = systemClock
  ) {
    this.refusals = new RefusalLog(log, PEER_REFUSAL_LOG, clock)
  }

  /** A peer opened a `file` channel. Never throws. */
  onChannel(tunnel: Tunnel, req: OpenRequest): void {
    req.accept()
    const ch = req.channel
    void this.receive(tunnel, ch).catch((err: unknown) => {
      const e = toNatdError(err)
      this.refusals.refused('file', tunnel.peer.name, e.code, e.message)
      if (ch.destroyed) return
      ch.end(encodeTransfer({ type: 'refuse', code: e.code, message: e.message }))
      this.clock.setTimeout(() => ch.destroy(), REFUSE_LINGER_MS).unref()
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
      throw new NatdError('NOT_ALLOWED', `this agent does not accept files from ${peer.name} (natctl files policy --allow)`)
    }
    if (offer.size > policy.maxSizeBytes) {
      throw new NatdError('TOO_LARGE', `${offer.size} bytes is more than the ${policy.maxSizeBytes} this agent accepts`)
    }
    const transferId = Buffer.from(offer.transferId).toString('hex')
    const key = partialKey(peer.id, transferId)
    const partial = path.join(policy.inbox, PARTIAL_DIR, key)
    // Another attempt of this same transfer is superseded below: it does not count.
    const others = [...this.inFlight.values()].filter((t) => t.peerId === peer.id && t.key !== key)
    policy.checkQuota(peer, offer.size - partialSize(partial), { files: others.length, bytes: others.reduce((sum, t) => sum + t.size, 0) })
    this.inFlight.set(ch, { peerId: peer.id, key, size: offer.size, partial })
    try {
      const previous = this.active.get(key)
      if (previous) {
        previous.channel.destroy(new NatdError('TUNNEL_CLOSED', 'superseded by a new attempt of the same transfer'))
        await previous.done
      }
      let release!: () => void
      const done = new Promise<void>((resolve) => (release = resolve))
      this.active.set(key, { channel: ch, done })
      try {
        await this.store(tunnel, ch, reader, { ...offer, name, transferId, key }, policy)
      } finally {
        if (this.active.get(key)?.channel === ch) this.active.delete(key)
        release()
      }
    } finally {
      this.inFlight.delete(ch)
    }
  }

  private async store(
    tunnel: Tunnel,
    ch: MuxChannel,
    reader: ChannelReader,
    offer: { name: string; size: number; transferId: string; key: string },
    policy: ReceivePolicy
  ): Promise<void> {
    const peer = tunnel.peer
    const inbox = policy.inbox
    const partialDir = path.join(inbox, PARTIAL_DIR)
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
    const fsStat = fs.statfsSync(inbox)
    // What the other transfers being received will still write (another attempt of this one is superseded).
    let promised = 0
    for (const [c, t] of this.inFlight) if (c !== ch && t.key !== offer.key) promised += Math.max(0, t.size - partialSize(t.partial))
    const reserve = Math.ceil(fsStat.blocks * fsStat.bsize * INBOX_FREE_RESERVE)
    const room = fsStat.bavail * fsStat.bsize - promised - reserve
    if (room < offer.size - offset) {
      throw new NatdError('NO_SPACE', `no room for ${offer.size - offset} bytes in the inbox (${Math.max(0, room)} free, after ${promised} promised to other transfers and ${INBOX_FREE_RESERVE * 100}% of the disk kept free)`)
    }
    // What we hold goes into the sha256 the sender's is compared with: a partial we cannot
    // read back is said at once (an empty hash here would turn into a misleading CORRUPT
    // after the whole rest was sent). The peer gets no path or errno, the log gets both.
    let hash: Awaited<ReturnType<typeof hashFile>>
    try {
      hash = await hashFile(partial, offset)
    } catch (err) {
      this.log.error('cannot read back a partial file to resume it', { peer: peer.name, name: offer.name, partial, have: offset, err: (err as Error).message })
      throw new NatdError('PARTIAL_UNREADABLE', `the receiver cannot read back the ${offset} bytes of ${offer.name} it already holds; its operator must check its inbox (its log says why)`, { cause: err })
    }
    ch.write(encodeTransfer({ type: 'accept', offset }))
    this.log.info('file transfer accepted', { peer: peer.name, name: offer.name, size: offer.size, offset })
    this.names.set(offer.key, offer.name)
    const out = fs.createWriteStream(partial, { flags: 'a', mode: 0o600, flush: true })
    // A stall: tell the sender (REFUSE TIMEOUT), then reset the channel, which ends the
    // read the pipeline is blocked in. The frame goes out before the reset, in order.
    let stalled: NatdError | null = null
    const stallMs = policy.stallTimeoutMs
    const watch = new StallWatch(this.clock, stallMs, () => {
      stalled = new NatdError('TIMEOUT', `${peer.name} sent no byte of ${offer.name} for ${stallMs} ms (${offer.size - offset} announced); the partial is kept for a resume and listed by natctl files --partial`)
      ch.end(encodeTransfer({ type: 'refuse', code: stalled.code, message: stalled.message }))
      this.clock.setTimeout(() => ch.destroy(stalled ?? undefined), STALL_RESET_DELAY_MS).unref()
    }, () => tunnel.isMigrating)
    try {
      await pipeline(
        reader.raw(offer.size - offset),
        async function* (chunks: AsyncIterable<Buffer>) {
          for await (const chunk of chunks) {
            watch.touch()
            hash.update(chunk)
            yield chunk
          }
        },
        out
      )
    } catch (err) {
      watch.stop()
      if (!out.closed) await once(out, 'close')
      if (stalled) {
        throw stalled
      }
      const e = err as NodeJS.ErrnoException
      if (e.code === 'ENOSPC' || e.code === 'EDQUOT') {
        fs.rmSync(partial, { force: true })
        throw new NatdError('NO_SPACE', 'the receiver\'s disk is full; nothing was kept', { cause: err })
      }
      // The path is gone: keep the partial, so the next attempt resumes.
      this.log.info('file transfer interrupted', { peer: peer.name, name: offer.name, have: fs.statSync(partial).size, size: offer.size })
      throw toNatdError(err, 'TUNNEL_CLOSED')
    }
    watch.stop()
    const end = await withDeadline(reader.frame('the sha256 after the file'), Math.min(OFFER_TIMEOUT_MS, stallMs), ch, 'the sha256 after the file')
    if (end.type !== 'end') throw new NatdError('BAD_REQUEST', `expected the file's sha256 after its bytes, got ${end.type}`)
    const sha256 = hash.digest()
    if (!sha256.equals(end.sha256)) {
      fs.rmSync(partial, { force: true })
      throw new NatdError('CORRUPT', `the bytes received do not match the sha256 of ${offer.name}; nothing was kept, send it again`)
    }
    const final = this.place(partial, inbox, offer.name)
    this.names.delete(offer.key)
    const stored: StoredFile = { name: path.basename(final), path: final, size: offer.size, sha256: sha256.toString('hex'), transferId: offer.transferId }
    this.onStored(stored, peer)
    ch.end(encodeTransfer({ type: 'done', name: stored.name }))
  }

  /** Partials in `inbox`: what natctl files --partial lists. */
  partials(inbox: string): PartialFile[] {
    const dir = path.join(inbox, PARTIAL_DIR)
    let names: string[]
    try {
      names = fs.readdirSync(dir)
    } catch {
      return []
    }
    const out: PartialFile[] = []
    for (const key of names) {
      try {
        const st = fs.statSync(path.join(dir, key))
        out.push({ key, fromId: key.split('.')[0] ?? '', name: this.names.get(key) ?? '', bytes: st.size, updatedAt: st.mtime.toISOString(), active: this.active.has(key) })
      } catch {
        // gone meanwhile
      }
    }
    return out
  }

  /** Removes partials nobody came back for in PARTIAL_MAX_AGE_MS (never one being received). */
  private prunePartials(dir: string): void {
    const cutoff = this.clock.now() - PARTIAL_MAX_AGE_MS // wall time (the clock's now), as the file system's mtime it is compared with
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
