/**
 * File transfer between peers (`natctl cp`, `natctl files`): the accept policy and inbox
 * (persisted in `<state dir>/files.json`), the list of received files
 * (`<state dir>/files.jsonl`), and the glue between the API and file-transfer.ts.
 *
 * Default policy: files from every peer, up to DEFAULT_MAX_FILE_BYTES each, at most
 * DEFAULT_QUOTAS per peer, into `<state dir>/inbox` or the inbox the operator chose
 * (natd --inbox, "inbox" in the config file; never over the API, which any member of
 * group natd may call: a root natd would write peers' bytes wherever they named).
 *
 * Sending: natctl opens the file with its own rights and streams it (ipc/file-stream.ts);
 * natd opens no path a client names, and refuses bytes that come from a file in its own
 * state directory (its key, its config) even when the caller may read them.
 *
 * Off the event loop while natd runs: files.json is written in the background
 * (BackgroundJsonFile, as config.json) and a policy change answers once it is durable, or
 * with STATE_WRITE_FAILED (the change stays in effect; the write is retried); a received
 * file's line in files.jsonl is appended through a StateLog (async, in order) and the
 * sender hears DONE once it is fsynced. What waits for a stalled disk: one policy value,
 * and one line per file being received (bounded by filesPerPeer).
 */
import fs from 'node:fs'
import path from 'node:path'
import { NatdError } from '../protocol/errors.js'
import { systemClock, type TimerClock } from '../protocol/clock.js'
import type { Logger } from '../protocol/log.js'
import { describePeer } from '../protocol/peer-ref.js'
import type { Duplex } from 'node:stream'
import type { FileProgress, FileSendParams, FileSendResult, FilesPolicy, FilesPolicyParams, PartialFile, Quotas, ReceivedFile } from '../ipc/schema.js'
import type { TunnelManager } from '../tunnel/manager.js'
import type { OpenRequest } from '../tunnel/mux.js'
import type { Tunnel } from '../tunnel/tunnel.js'
import { admits, isCurrent, migrateAllowEntry, namesPeer, unresolvedAdvice, type AllowEntry } from './allow-list.js'
import { FileReceiver, sendFile, STALL_TIMEOUT_MS, type ReceivePolicy } from './file-transfer.js'
import { InboxUsage, type Held } from './inbox-usage.js'
import { PartialPruner } from './partial-pruner.js'
import type { KnownPeers } from './known-peers.js'
import { durableWithin } from './config-json.js'
import { BackgroundJsonFile } from '../common/background-json-file.js'
import { LOCAL_REFUSAL_LOG, RefusalLog } from '../common/refusal-log.js'
import { readJson, readJsonLines, StateLog, writeFileAtomicAsync, writeJsonAtomic, type StateLogIo } from '../common/state-files.js'

export { FILE_SERVICE } from './file-transfer.js'
/** Largest file accepted unless `natctl files policy --max-size` says otherwise. */
export const DEFAULT_MAX_FILE_BYTES = 1024 ** 3
/** file.progress events at most this often per transfer (plus one at the start and one at the end). */
export const PROGRESS_INTERVAL_MS = 200
/**
 * What one peer may leave with us unless `natctl files policy` says otherwise: room for a
 * busy chat and a good many files, small next to a disk; a peer that floods gets
 * QUOTA_EXCEEDED, and the user frees room (natctl messages --clear, deleting files).
 */
export const DEFAULT_QUOTAS: Readonly<Quotas> = Object.freeze({
  filesPerPeer: 1_000,
  fileBytesPerPeer: 4 * 1024 ** 3,
  messagesPerPeer: 1_000,
  messageBytesPerPeer: 1024 ** 2,
  stallTimeoutMs: STALL_TIMEOUT_MS
})
/**
 * Received files and partials all peers together may leave in the inbox, whatever the
 * per-peer quotas say (keys are free to make: fresh keys, 1,000 files each, used up
 * inodes and made files.jsonl long). Past it every peer gets QUOTA_EXCEEDED ("inbox is
 * full") until the user deletes files. The same count as the messages' inbox-wide cap;
 * the upkeep stats each one every UPKEEP_INTERVAL_MS, off the event loop. Bytes are
 * bounded by INBOX_FREE_RESERVE.
 */
export const INBOX_FILES_MAX = 10_000
export const POLICY_FILE = 'files.json'
export const RECEIVED_FILE = 'files.jsonl'

export interface FilesComponents {
  /** The state directory. */
  dir: string
  tunnels: TunnelManager
  log: Logger
  selfName: string
  selfId: string
  /** Resolves `--allow` peers to whole keys; its pinned peers migrate old policies. */
  known: Pick<KnownPeers, 'resolveKey' | 'list'>
  /** The inbox the operator chose (natd --inbox, config file "inbox"); '' = `<state dir>/inbox`. */
  inbox?: string
  onReceived(f: ReceivedFile): void
  onProgress(p: FileProgress): void
  /** Default systemClock. */
  clock?: TimerClock
  /** The disk writes (default async fs; tests stall them): files.json, and files.jsonl. */
  writePolicy?: (file: string, text: string) => Promise<void>
  io?: StateLogIo
  /** Files and partials all peers together may hold (default INBOX_FILES_MAX; tests lower it). */
  inboxMaxFiles?: number
}

interface StoredPolicy extends Quotas {
  /** Peers by whole key (allow-list.ts); empty = every peer. */
  allow: AllowEntry[]
  maxSizeBytes: number
}

export class Files {
  private readonly receiver: FileReceiver
  private stored: StoredPolicy
  private readonly policyFile: BackgroundJsonFile
  private readonly received: StateLog
  private readonly usageBooks: InboxUsage
  private readonly pruner: PartialPruner
  /** Sends refused to a local API client, which may ask as fast as it opens data connections: counted, not logged each. */
  private readonly sendRefusals: RefusalLog

  constructor(private readonly c: FilesComponents) {
    this.policyFile = new BackgroundJsonFile(path.join(c.dir, POLICY_FILE), c.writePolicy ?? writeFileAtomicAsync, (err) => c.log.error('the file policy could not be saved', { file: path.join(c.dir, POLICY_FILE), err: err.message }))
    this.received = new StateLog(path.join(c.dir, RECEIVED_FILE), c.io)
    const saved = readJson<Partial<Record<keyof StoredPolicy, unknown>>>(path.join(c.dir, POLICY_FILE)) ?? {}
    const allow: unknown[] = Array.isArray(saved.allow) ? saved.allow : []
    const num = (k: keyof Quotas): number => (typeof saved[k] === 'number' ? saved[k] : DEFAULT_QUOTAS[k])
    this.stored = {
      // Bare names from before allow lists held keys: migrated against the pinned peers, once (allow-list.ts).
      allow: allow.map((a) => (isCurrent(a) ? a : migrateAllowEntry(a, c.known.list()))),
      maxSizeBytes: typeof saved.maxSizeBytes === 'number' ? saved.maxSizeBytes : DEFAULT_MAX_FILE_BYTES,
      filesPerPeer: num('filesPerPeer'),
      fileBytesPerPeer: num('fileBytesPerPeer'),
      messagesPerPeer: num('messagesPerPeer'),
      messageBytesPerPeer: num('messageBytesPerPeer'),
      stallTimeoutMs: num('stallTimeoutMs')
    }
    // An inbox stored by an older natd was set over the API (by any group member): not honoured.
    if (typeof (saved as { inbox?: unknown }).inbox === 'string' && (saved as { inbox: string }).inbox !== '') {
      c.log.warn('ignoring the inbox stored in files.json: set it with natd --inbox or "inbox" in the config file', { stored: (saved as { inbox: string }).inbox, inbox: this.inbox })
    }
    // A one-time migration at start, before natd serves anything: written on the spot.
    if (!allow.every(isCurrent) || 'inbox' in saved) writeJsonAtomic(path.join(c.dir, POLICY_FILE), this.stored)
    for (const a of this.stored.allow) {
      if (a.id === null) c.log.warn('the file policy allows a peer by name with no pinned key: it admits nobody until re-added', { peer: a.name, ...unresolvedAdvice(a.name, c.known.list(), 'natctl files policy --allow') })
    }
    const clock = c.clock ?? systemClock
    this.usageBooks = new InboxUsage(this.inbox, path.join(c.dir, RECEIVED_FILE), (err) => c.log.error('cannot count what peers hold in the inbox', { inbox: this.inbox, err: err.message }))
    this.pruner = new PartialPruner(() => this.inbox, this.usageBooks, clock, c.log)
    this.pruner.start()
    this.receiver = new FileReceiver(() => this.receivePolicy(), c.log, (f, from) => this.onStored(f, from), clock, { usage: this.usageBooks, pruner: this.pruner })
    this.sendRefusals = new RefusalLog(c.log, LOCAL_REFUSAL_LOG, clock)
  }

  get inbox(): string {
    return this.c.inbox || path.join(this.c.dir, 'inbox')
  }

  /** The per-peer quotas now in force (Messages reads its own from here). */
  get quotas(): Readonly<Quotas> {
    const { filesPerPeer, fileBytesPerPeer, messagesPerPeer, messageBytesPerPeer, stallTimeoutMs } = this.stored
    return { filesPerPeer, fileBytesPerPeer, messagesPerPeer, messageBytesPerPeer, stallTimeoutMs }
  }

  /** Whether the file policy's allow list names the peer (tunnel/manager.ts named: its tunnels keep their place). */
  names(peerId: string): boolean {
    return namesPeer(this.stored.allow, peerId)
  }

  policy(): FilesPolicy {
    return { allow: this.stored.allow.map((a) => ({ ...a })), maxSizeBytes: this.stored.maxSizeBytes, inbox: this.inbox, ...this.quotas }
  }

  /**
   * Changes what is given (null = unchanged) and persists it: in effect at once, answered
   * once on disk (STATE_WRITE_FAILED when the write failed: in effect all the same, and
   * tried again). `allow` peers are resolved to whole keys now (PEER_UNKNOWN). `inbox` is
   * refused (NOT_ALLOWED): only the operator chooses it, with natd --inbox or the config file.
   */
  async setPolicy(p: Partial<FilesPolicyParams>): Promise<FilesPolicy> {
    if (p.inbox !== null && p.inbox !== undefined && p.inbox !== this.inbox) {
      throw new NatdError('NOT_ALLOWED', 'the inbox is not set over the API (any member of group natd could point it anywhere): pass natd --inbox DIR or set "inbox" in the config file')
    }
    let allow: AllowEntry[] | null = null
    if (p.allow !== null && p.allow !== undefined) {
      allow = []
      for (const a of p.allow) {
        const ref = await this.c.known.resolveKey(a)
        if (!allow.some((b) => b.id === ref.id)) allow.push(ref)
      }
    }
    const next = { ...this.stored } // after the awaits: a change made meanwhile is kept
    if (allow !== null) next.allow = allow
    if (p.maxSizeBytes !== null && p.maxSizeBytes !== undefined) next.maxSizeBytes = p.maxSizeBytes
    for (const k of Object.keys(DEFAULT_QUOTAS) as (keyof Quotas)[]) {
      const value = p[k]
      if (value !== null && value !== undefined) next[k] = value
    }
    this.stored = next
    this.policyFile.save(next)
    this.c.log.info('file policy changed', { allow: this.stored.allow.map(describePeer), maxSizeBytes: this.stored.maxSizeBytes, ...this.quotas })
    const answer = this.policy()
    await durableWithin(this.policyFile, 'the file policy') // bounded: never past natctl's deadline
    return answer
  }

  /** Resolves when every write so far ended (shutdown, tests). Never rejects. */
  async flushed(): Promise<void> {
    await Promise.all([this.policyFile.flushed(), this.received.flushed()])
  }

  /** Stops the inbox upkeep's timer (shutdown). */
  stop(): void {
    this.pruner.stop()
  }

  /** Received files, oldest first. The usage counters are checked against the disk meanwhile (a file the user deleted frees its sender's quota). */
  list(): ReceivedFile[] {
    void this.usageBooks.recheck()
    return readJsonLines<ReceivedFile>(path.join(this.c.dir, RECEIVED_FILE))
  }

  /** Runs the inbox upkeep now (the timer runs it every UPKEEP_INTERVAL_MS): counters checked, stale partials removed. Never rejects. */
  upkeep(): Promise<void> {
    return this.pruner.onUpkeepDue()
  }

  /** Resolves when the usage counters match the disk (after start, or after the files or partials changed behind natd's back). Never rejects. */
  async counted(): Promise<void> {
    await this.usageBooks.recheck()
  }

  /** Partial files in the inbox: transfers cut off, kept for a resume. */
  partials(): PartialFile[] {
    return this.receiver.partials(this.inbox)
  }

  /**
   * Sends the bytes the caller streams on `source` (see FileSendParams); natd opens no
   * file. `signal` aborts when the caller went away: the open or the transfer stops.
   */
  async send(p: Omit<FileSendParams, 'source'> & { source: Duplex }, signal?: AbortSignal): Promise<FileSendResult> {
    try {
      return await this.sendFrom(p, signal)
    } finally {
      p.source.destroy() // the caller's data connection is good for this one file
    }
  }

  private async sendFrom(p: Omit<FileSendParams, 'source'> & { source: Duplex }, signal: AbortSignal | undefined): Promise<FileSendResult> {
    if (p.peer === this.c.selfName || p.peer === this.c.selfId) throw new NatdError('INVALID_ARGUMENT', 'cannot send a file to yourself')
    if (this.isOwnState(p.dev, p.ino)) {
      this.sendRefusals.refused('file send from natd\'s state directory', 'a local API client', 'FILE_UNREADABLE', `${p.path} to ${p.peer}`)
      throw new NatdError('FILE_UNREADABLE', `${p.path || p.name} is in natd's state directory (its key, config or inbox records): natd never sends those`)
    }
    const clock = this.c.clock ?? systemClock
    const started = clock.now()
    let last = 0
    const r = await sendFile(
      {
        peer: p.peer,
        name: p.name,
        size: p.size,
        mtimeMs: p.mtimeMs,
        ino: p.ino,
        source: p.source,
        timeoutMs: p.timeoutMs,
        signal,
        onProgress: (pr) => {
          const now = clock.now()
          if (now - last >= PROGRESS_INTERVAL_MS || pr.sent === 0) {
            last = now
            this.c.onProgress({ ...pr, path: p.path })
          }
        }
      },
      { tunnels: this.c.tunnels, selfId: this.c.selfId, log: this.c.log, stallTimeoutMs: this.stored.stallTimeoutMs, clock }
    )
    this.c.onProgress({ transferId: r.transferId, peer: r.peer, path: p.path, name: r.name, size: r.size, offset: r.offset, sent: r.sent })
    return { ...r, path: p.path, tookMs: clock.now() - started }
  }

  onChannel(tunnel: Tunnel, req: OpenRequest): void {
    this.receiver.onChannel(tunnel, req)
  }

  /** Whether (dev, ino) is one of the files directly in the state directory (identity.json, config.json, …). */
  private isOwnState(dev: number, ino: number): boolean {
    for (const e of fs.readdirSync(this.c.dir)) {
      try {
        const st = fs.statSync(path.join(this.c.dir, e))
        if (st.isFile() && st.dev === dev && st.ino === ino) return true
      } catch {
        // gone meanwhile
      }
    }
    return false
  }

  private receivePolicy(): ReceivePolicy {
    const allow = this.stored.allow
    const inbox = this.inbox // made (0700) by the receiver with its partials' directory, off the event loop
    return {
      allowed: (peer) => admits(allow, peer),
      maxSizeBytes: this.stored.maxSizeBytes,
      inbox,
      stallTimeoutMs: this.stored.stallTimeoutMs,
      checkQuota: (peer, size, inFlight, newPartial) => this.checkQuota(peer, size, inFlight, newPartial)
    }
  }

  /** What `peer` holds in the inbox: received files still there, and partials not being received. O(1), from the counters. */
  usage(peerId: string): Held {
    return this.usageBooks.of(peerId)
  }

  /** O(1), no file-system call (review 7 #3): the counters, and the sender's transfers being received (at their announced sizes). */
  private checkQuota(peer: { name: string; id: string }, size: number, inFlight: { files: number; bytes: number }, newPartial: boolean): void {
    const held = this.usage(peer.id)
    const u = { files: held.files + inFlight.files, bytes: held.bytes + inFlight.bytes }
    const q = this.stored
    if (u.files + 1 > q.filesPerPeer || u.bytes + size > q.fileBytesPerPeer) {
      throw new NatdError('QUOTA_EXCEEDED', `${peer.name} already has ${u.files} files (${u.bytes} bytes) in this agent's inbox${inFlight.files > 0 ? `, ${inFlight.files} of them being received` : ''}; its quota is ${q.filesPerPeer} files, ${q.fileBytesPerPeer} bytes`)
    }
    const max = this.c.inboxMaxFiles ?? INBOX_FILES_MAX
    const total = this.usageBooks.total
    if (newPartial && total + 1 > max) {
      throw new NatdError('QUOTA_EXCEEDED', `this agent's inbox is full: all peers together hold ${total} files and partials, at most ${max}; its user must delete some`)
    }
  }

  /** Lists a received file: resolves once its line is fsynced (the receiver says DONE only then). */
  private async onStored(f: { name: string; path: string; size: number; sha256: string; transferId: string }, from: { name: string; id: string }): Promise<void> {
    const rec: ReceivedFile = { ...f, from: from.name, fromId: from.id, receivedAt: new Date().toISOString() }
    try {
      await this.received.append([rec], { sync: true })
    } catch (err) {
      this.c.log.error('a received file could not be listed', { peer: from.name, path: f.path, file: this.received.file, err: (err as Error).message })
      throw new NatdError('STATE_WRITE_FAILED', `the file is in the receiver's inbox but could not be listed in ${RECEIVED_FILE}`, { cause: err })
    }
    this.c.log.info('file received', { peer: from.name, name: f.name, size: f.size, sha256: f.sha256 })
    this.c.onReceived(rec)
  }
}
