/**
 * The receiving side of a file (the protocol: file-transfer.ts): policy, quota and free
 * space before ACCEPT, then the bytes straight from the channel into the partial
 * (file-body.ts: hashed as they come, written in order with bounded writes), the sha256
 * compared, the partial fsynced and linked to a free name.
 */
import { createHash } from 'node:crypto'
import fs from 'node:fs'
import fsp from 'node:fs/promises'
import path from 'node:path'
import { promisify } from 'node:util'
import { NatdError, toNatdError } from '../protocol/errors.js'
import type { PartialFile } from '../ipc/schema.js'
import type { TimerClock } from '../protocol/clock.js'
import type { Logger } from '../protocol/log.js'
import { encodeTransfer } from '../protocol/transfer.js'
import type { OpenRequest } from '../tunnel/mux.js'
import type { MuxChannel } from '../tunnel/mux-channel.js'
import type { Tunnel } from '../tunnel/tunnel.js'
import { ChannelReader, endWith, withDeadline } from './channel-frames.js'
import { PEER_REFUSAL_LOG, RefusalLog } from '../common/refusal-log.js'
import { FileBody } from './file-body.js'
import { partialKey, sanitizeName } from './file-names.js'
import { placeFile } from './file-place.js'
import type { InboxUsage } from './inbox-usage.js'
import { PARTIAL_DIR, PartialDir } from './partial-dir.js'
import type { PartialPruner } from './partial-pruner.js'
import { StallWatch } from './stall-watch.js'

/** The receiver waits this long for the OFFER after the channel opens. */
export const OFFER_TIMEOUT_MS = 10_000
/** Read size for hashing a partial before a resume. */
export const READ_CHUNK_BYTES = 1024 * 1024
/** After a refusal the receiver ends the channel (reading nothing more of it); it resets it after this if the sender does not. */
export const REFUSE_LINGER_MS = 5_000
/**
 * Partials kept from one peer for a resume; past it the oldest goes. With the usage
 * counters an offer no longer costs anything per partial; what is left per partial is an
 * inode and one async stat at start and per upkeep (partial-pruner.ts). natctl cp sends
 * the files of one call one after the other, so an honest sender has one transfer cut
 * off per natctl cp running; 32 leaves room for many at once through one outage, and is
 * 1/30 of the default 1,000 files a peer may hold (review 7 #3: a stranger left 1,000
 * empty partials, the whole quota, at the cost of OPENs).
 */
export const PARTIALS_PER_PEER = 32
/** After a stall's REFUSE the receiver resets the channel this much later (the frame leaves first). */
export const STALL_RESET_DELAY_MS = 100
/**
 * A received file must leave this share of the inbox's file system free. Every key has
 * its own quota and keys are free to make, so per-peer quotas alone let strangers fill
 * the disk; this keeps room for the rest of the machine (natd runs as its own user, so
 * root's reserved blocks are not ours to count on). Past it: NO_SPACE.
 */
export const INBOX_FREE_RESERVE = 0.05

/** What a sender not in the allow list is told (it goes to the peer: no name of ours in it). */
export const NOT_ALLOWED_MESSAGE = 'the receiving agent does not accept files from this key (its user can allow it: natctl files policy --allow)'

const fsync = promisify(fs.fsync)
const ftruncate = promisify(fs.ftruncate)
const close = promisify(fs.close)

/**
 * sha256 of a file's bytes [0, end) (the whole file when end is omitted); read through
 * `fd` when given (left open: `file` then only names it), else opened by its path.
 */
export async function hashFile(file: string, end?: number, fd?: number): Promise<ReturnType<typeof createHash>> {
  const h = createHash('sha256')
  if (end === 0) return h
  const stream = fs.createReadStream(file, { highWaterMark: READ_CHUNK_BYTES, start: 0, ...(fd === undefined ? {} : { fd, autoClose: false }), ...(end === undefined ? {} : { end: end - 1 }) })
  for await (const chunk of stream) h.update(chunk as Buffer)
  return h
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
  checkQuota(peer: { name: string; id: string }, size: number, inFlight: { files: number; bytes: number }, newPartial: boolean): void
}

/** The inbox's counters and upkeep (files.ts makes them): what each peer holds, known without a file-system call. */
export interface InboxBooks {
  usage: InboxUsage
  pruner: PartialPruner
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
  /** The (sanitised) names of partials seen since natd started, for listing. */
  private readonly names = new Map<string, string>()
  /**
   * Transfers accepted and not yet ended, at their announced sizes: they count in their
   * sender's quota and against the free space, so that many transfers at once (a tunnel
   * carries up to 4,096 channels) cannot each pass a check the others will break.
   */
  private readonly inFlight = new Map<MuxChannel, { peerId: string; key: string; size: number; have: () => number }>()

  /** Files not received (policy, quota, stalls…): a peer may cause them as fast as it opens channels. */
  private readonly refusals: RefusalLog

  constructor(
    private readonly policy: () => ReceivePolicy,
    private readonly log: Logger,
    /** Lists the file; DONE is sent once it resolves (its record is durable). */
    private readonly onStored: (f: StoredFile, from: Tunnel['peer']) => Promise<void>,
    private readonly clock: TimerClock,
    private readonly books: InboxBooks
  ) {
    this.refusals = new RefusalLog(log, PEER_REFUSAL_LOG, clock)
  }

  /**
   * A peer opened a `file` channel. Never throws. A peer the policy does not allow is
   * refused at OPEN, before any window is granted: accepted first, its channel could hold
   * up to CHANNEL_WINDOW_BYTES (4 MiB) of its bytes until REFUSE_LINGER_MS after our
   * REFUSE, on each of a tunnel's 4,096 channels. Any sender sees NOT_ALLOWED (a reset at
   * OPEN carries the code), an older one too.
   */
  onChannel(tunnel: Tunnel, req: OpenRequest): void {
    if (!this.policy().allowed(tunnel.peer)) {
      this.refusals.refused('file', tunnel.peer.name, 'NOT_ALLOWED', 'not in the file allow list')
      req.reject('NOT_ALLOWED', NOT_ALLOWED_MESSAGE)
      return
    }
    req.accept()
    const ch = req.channel
    const reader = new ChannelReader(ch)
    void this.receive(tunnel, ch, reader).catch((err: unknown) => {
      const e = toNatdError(err)
      this.refusals.refused('file', tunnel.peer.name, e.code, e.message)
      // Whatever the peer sent past its offer, or sends after our REFUSE, is dropped, not held (review 7).
      endWith(ch, encodeTransfer({ type: 'refuse', code: e.code, message: e.message }), REFUSE_LINGER_MS, this.clock)
      reader.detach().catch(() => undefined)
    })
  }

  private async receive(tunnel: Tunnel, ch: MuxChannel, reader: ChannelReader): Promise<void> {
    const peer = tunnel.peer
    const offer = await withDeadline(reader.frame('the offer'), OFFER_TIMEOUT_MS, ch, 'the offer')
    if (offer.type !== 'offer') throw new NatdError('BAD_REQUEST', `expected an offer, got ${offer.type}`)
    const policy = this.policy()
    const name = sanitizeName(offer.name)
    // The allow list may have changed since the channel opened.
    if (!policy.allowed(peer)) throw new NatdError('NOT_ALLOWED', NOT_ALLOWED_MESSAGE)
    if (offer.size > policy.maxSizeBytes) {
      throw new NatdError('TOO_LARGE', `${offer.size} bytes is more than the ${policy.maxSizeBytes} this agent accepts`)
    }
    const transferId = Buffer.from(offer.transferId).toString('hex')
    const key = partialKey(peer.id, transferId)
    const { usage } = this.books
    await usage.ready
    // O(1) and no file-system call (review 7 #3): the counters and the transfers in memory.
    // Another attempt of this same transfer is superseded below: it does not count.
    const others = [...this.inFlight.values()].filter((t) => t.peerId === peer.id && t.key !== key)
    const held = usage.partialBytes(key)
    policy.checkQuota(peer, offer.size - held, { files: others.length, bytes: others.reduce((sum, t) => sum + t.size, 0) }, !usage.has(key))
    const flight = { peerId: peer.id, key, size: offer.size, have: () => held }
    this.inFlight.set(ch, flight)
    try {
      // Until none is left: attempts that waited for the same one supersede each other in turn.
      for (let previous = this.active.get(key); previous; previous = this.active.get(key)) {
        previous.channel.destroy(new NatdError('TUNNEL_CLOSED', 'superseded by a new attempt of the same transfer'))
        await previous.done
      }
      let release!: () => void
      const done = new Promise<void>((resolve) => (release = resolve))
      this.active.set(key, { channel: ch, done })
      // What the partial holds when the transfer ends (null: gone); undefined: as before it began.
      const outcome: { bytes?: number | null } = {}
      // Its old partial being removed (stale, over the cap): start afresh once it is gone, not on a file unlinked under us.
      // Only then an await: with none in flight nothing may come between this and reserve() (the pruner drops only what it does not see reserved).
      const removal = this.books.pruner.removal(key)
      if (removal) await removal
      const before = usage.reserve(key, peer.id)
      try {
        await this.store(tunnel, ch, reader, { ...offer, name, transferId, key }, policy, { flight, outcome })
      } finally {
        if (this.active.get(key)?.channel === ch) this.active.delete(key)
        usage.settle(key, outcome.bytes === undefined ? before : outcome.bytes, this.clock.now())
        if (outcome.bytes === null) this.names.delete(key)
        this.evictOverCap(peer.id)
        release()
      }
    } finally {
      this.inFlight.delete(ch)
    }
  }

  /** Keeps at most PARTIALS_PER_PEER partials from `peerId`: the oldest goes (off the event loop). */
  private evictOverCap(peerId: string): void {
    const oldest = this.books.usage.oldestBeyond(peerId, PARTIALS_PER_PEER)
    if (oldest === null) return
    void this.books.pruner.remove(oldest, 'per-peer-cap').catch((err: unknown) => this.log.error('a partial file could not be removed', { partial: oldest.slice(0, 16), err: (err as Error).message }))
  }

  private async store(
    tunnel: Tunnel,
    ch: MuxChannel,
    reader: ChannelReader,
    offer: { name: string; size: number; transferId: string; key: string },
    policy: ReceivePolicy,
    track: { flight: { have: () => number }; outcome: { bytes?: number | null } }
  ): Promise<void> {
    const peer = tunnel.peer
    const inbox = policy.inbox
    const partialDir = await PartialDir.open(inbox, this.log)
    const partial = path.join(partialDir.path, offer.key)
    // Everything about the partial goes through this one descriptor (O_NOFOLLOW: a symlink
    // at its name is nobody's partial); no path is followed again after the checks.
    const fd = partialDir.openPartial(partial)
    let hash: Awaited<ReturnType<typeof hashFile>>
    let offset: number
    try {
      offset = fs.fstatSync(fd).size
      track.outcome.bytes = offset
      if (offset > offer.size) {
        await ftruncate(fd, 0)
        offset = 0
        track.outcome.bytes = 0
      }
      track.flight.have = () => offset
      this.checkRoom(inbox, ch, offer, offset)
      hash = await this.hashPartial(fd, partial, peer.name, offer.name, offset)
    } catch (err) {
      const empty = fs.fstatSync(fd).size === 0
      fs.closeSync(fd)
      if (empty) {
        await fsp.rm(partial, { force: true }) // refused before any byte: nothing to resume
        track.outcome.bytes = null
      }
      throw err
    }
    ch.write(encodeTransfer({ type: 'accept', offset }))
    // debug, as the interruption below: a peer may offer and drop transfers as fast as it opens channels (review 9 #3);
    // what a user needs is the outcome, 'file received' (bounded by the quota) or a refusal (counted).
    this.log.debug('file transfer accepted', { peer: peer.name, name: offer.name, size: offer.size, offset })
    this.names.set(offer.key, offer.name)
    // A stall: tell the sender (REFUSE TIMEOUT), then reset the channel, which fails the
    // body (its 'close'). The frame goes out before the reset, in order.
    let stalled: NatdError | null = null
    const stallMs = policy.stallTimeoutMs
    const watch = new StallWatch(this.clock, stallMs, () => {
      stalled = new NatdError('TIMEOUT', `${peer.name} sent no byte of ${offer.name} for ${stallMs} ms (${offer.size - offset} announced); the partial is kept for a resume and listed by natctl files --partial`)
      ch.end(encodeTransfer({ type: 'refuse', code: stalled.code, message: stalled.message }))
      this.clock.setTimeout(() => ch.destroy(stalled ?? undefined), STALL_RESET_DELAY_MS).unref()
    }, () => tunnel.isMigrating)
    // A write's error after the transfer failed another way (the peer was told that one) is for the operator.
    const onLateError = (err: NodeJS.ErrnoException, during: string): unknown => this.log.error('a partial file\'s write failed after its transfer had failed', { peer: peer.name, name: offer.name, size: offer.size, during, code: err.code, err: err.message })
    const body = new FileBody({ fd, bytes: offer.size - offset, hash, onDrain: () => ch.release(), onBytes: () => watch.touch(), onLateError })
    track.flight.have = () => offset + body.written
    const onClose = (): void => body.fail(new NatdError('TUNNEL_CLOSED', `the file channel closed before ${offer.name} ended`))
    ch.once('close', onClose)
    let theirs: Buffer
    try {
      // From here the peer's bytes go from the channel straight to the body (no Readable).
      const early = await reader.detach()
      if (early.length > 0) body.data(early)
      if (!ch.deliverTo(body)) throw new NatdError('TUNNEL_CLOSED', `the file channel closed before the bytes of ${offer.name} came`)
      theirs = await body.result
    } catch (err) {
      body.fail(err as Error)
      await body.settled()
      const e = err as NodeJS.ErrnoException
      if (!stalled && (e.code === 'ENOSPC' || e.code === 'EDQUOT')) {
        watch.stop() // the REFUSE says NO_SPACE, not a stall while the partial goes
        await this.discard(fd, partial)
        track.outcome.bytes = null
        throw new NatdError('NO_SPACE', 'the receiver\'s disk is full; nothing was kept', { cause: err })
      }
      if (body.flushFailed) {
        // Written bytes may be lost on the disk while the page cache still reads them back,
        // and a resume's fsync would not report it: the next attempt starts afresh (review 8).
        await this.discard(fd, partial)
        track.outcome.bytes = null
        this.log.error('the disk failed to flush a partial file: it is removed, the next attempt starts afresh', { peer: peer.name, name: offer.name, size: offer.size })
        if (stalled) throw stalled
        throw toNatdError(err, 'TUNNEL_CLOSED')
      }
      const have = fs.fstatSync(fd).size
      fs.closeSync(fd)
      track.outcome.bytes = have
      if (have === 0) {
        // Closed before any byte (review 7 #3: a stranger left 1,000 such partials, kept 7 days, at the cost of OPENs): nothing to resume.
        await fsp.rm(partial, { force: true })
        track.outcome.bytes = null
      }
      if (stalled) throw stalled
      // The path is gone: keep the partial, so the next attempt resumes.
      this.log.debug('file transfer interrupted', { peer: peer.name, name: offer.name, have, size: offer.size }) // the refusal log counts it (onChannel)
      throw toNatdError(err, 'TUNNEL_CLOSED')
    } finally {
      watch.stop()
      ch.off('close', onClose)
    }
    track.outcome.bytes = offer.size
    const sha256 = hash.digest()
    if (!sha256.equals(theirs)) {
      await this.discard(fd, partial)
      track.outcome.bytes = null
      throw new NatdError('CORRUPT', `the bytes received do not match the sha256 of ${offer.name}; nothing was kept, send it again`)
    }
    try {
      await fsync(fd) // in the thread pool: durable before DONE says so
      // place() links and removes by path: only while the path still leads to our descriptor's file.
      partialDir.checkStillOurs(partial, fd)
    } finally {
      fs.closeSync(fd)
    }
    const final = await placeFile(partial, inbox, offer.name)
    track.outcome.bytes = null
    this.books.usage.placed(final, peer.id, offer.size)
    this.names.delete(offer.key)
    const stored: StoredFile = { name: path.basename(final), path: final, size: offer.size, sha256: sha256.toString('hex'), transferId: offer.transferId }
    await this.onStored(stored, peer)
    ch.end(encodeTransfer({ type: 'done', name: stored.name }))
  }

  /**
   * Drops a partial nobody may resume (its bytes are wrong, or the disk is full), off the
   * event loop. It is emptied through its descriptor first, so that while the removal runs
   * (or if it fails) no one finds those bytes: not natctl files --partial, not a next
   * attempt. The caller still holds the transfer's key (`active`) and refuses only after
   * this, so a next attempt of the same transfer starts once the partial is gone.
   */
  private async discard(fd: number, partial: string): Promise<void> {
    try {
      await ftruncate(fd, 0)
    } finally {
      await close(fd)
    }
    await fsp.rm(partial, { force: true })
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

  /** NO_SPACE when the inbox's file system has no room for the rest of this file. */
  private checkRoom(inbox: string, ch: MuxChannel, offer: { size: number; key: string }, offset: number): void {
    const fsStat = fs.statfsSync(inbox)
    // What the other transfers being received will still write (another attempt of this one is superseded).
    let promised = 0
    for (const [c, t] of this.inFlight) if (c !== ch && t.key !== offer.key) promised += Math.max(0, t.size - t.have())
    const reserve = Math.ceil(fsStat.blocks * fsStat.bsize * INBOX_FREE_RESERVE)
    const room = fsStat.bavail * fsStat.bsize - promised - reserve
    if (room < offer.size - offset) {
      throw new NatdError('NO_SPACE', `no room for ${offer.size - offset} bytes in the inbox (${Math.max(0, room)} free, after ${promised} promised to other transfers and ${INBOX_FREE_RESERVE * 100}% of the disk kept free)`)
    }
  }

  /**
   * What we hold goes into the sha256 the sender's is compared with: a partial we cannot
   * read back is said at once (an empty hash here would turn into a misleading CORRUPT
   * after the whole rest was sent). The peer gets no path or errno, the log gets both.
   */
  private async hashPartial(fd: number, partial: string, peer: string, name: string, offset: number): Promise<Awaited<ReturnType<typeof hashFile>>> {
    try {
      return await hashFile(partial, offset, fd)
    } catch (err) {
      this.log.error('cannot read back a partial file to resume it', { peer, name, partial, have: offset, err: (err as Error).message })
      throw new NatdError('PARTIAL_UNREADABLE', `the receiver cannot read back the ${offset} bytes of ${name} it already holds; its operator must check its inbox (its log says why)`, { cause: err })
    }
  }
}
