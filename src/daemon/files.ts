/**
 * File transfer between peers (`natctl cp`, `natctl files`): the accept policy and inbox
 * (persisted in `<state dir>/files.json`), the list of received files
 * (`<state dir>/files.jsonl`), and the glue between the API and file-transfer.ts.
 *
 * Default policy: files from every peer, up to DEFAULT_MAX_FILE_BYTES each, into
 * `<state dir>/inbox`. The sender's daemon reads the file itself, so natd must be able to
 * read it.
 */
import fs from 'node:fs'
import path from 'node:path'
import { NatdError } from '../protocol/errors.js'
import type { Logger } from '../protocol/log.js'
import { describePeer } from '../protocol/peer-ref.js'
import type { FileProgress, FileSendResult, FilesPolicy, ReceivedFile } from '../ipc/schema.js'
import type { TunnelManager } from '../tunnel/manager.js'
import type { OpenRequest } from '../tunnel/mux.js'
import type { Tunnel } from '../tunnel/tunnel.js'
import { admits, isCurrent, migrateAllowEntry, type AllowEntry } from './allow-list.js'
import { FileReceiver, sendFile, type ReceivePolicy } from './file-transfer.js'
import type { KnownPeers } from './known-peers.js'
import { appendJsonLine, readJson, readJsonLines, writeJsonAtomic } from './state-files.js'

export { FILE_SERVICE } from './file-transfer.js'
/** Largest file accepted unless `natctl files policy --max-size` says otherwise. */
export const DEFAULT_MAX_FILE_BYTES = 1024 ** 3
/** file.progress events at most this often per transfer (plus one at the start and one at the end). */
export const PROGRESS_INTERVAL_MS = 200
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
  onReceived(f: ReceivedFile): void
  onProgress(p: FileProgress): void
}

interface StoredPolicy {
  /** Peers by whole key (allow-list.ts); empty = every peer. */
  allow: AllowEntry[]
  maxSizeBytes: number
  /** '' = `<state dir>/inbox`. */
  inbox: string
}

export class Files {
  private readonly receiver: FileReceiver
  private stored: StoredPolicy

  constructor(private readonly c: FilesComponents) {
    const saved = readJson<Partial<Record<keyof StoredPolicy, unknown>>>(path.join(c.dir, POLICY_FILE)) ?? {}
    const allow: unknown[] = Array.isArray(saved.allow) ? saved.allow : []
    this.stored = {
      // Bare names from before allow lists held keys: migrated against the pinned peers, once (allow-list.ts).
      allow: allow.map((a) => (isCurrent(a) ? a : migrateAllowEntry(a, c.known.list()))),
      maxSizeBytes: typeof saved.maxSizeBytes === 'number' ? saved.maxSizeBytes : DEFAULT_MAX_FILE_BYTES,
      inbox: typeof saved.inbox === 'string' ? saved.inbox : ''
    }
    if (!allow.every(isCurrent)) writeJsonAtomic(path.join(c.dir, POLICY_FILE), this.stored)
    for (const a of this.stored.allow) {
      if (a.id === null) c.log.warn('the file policy allows a peer by name with no pinned key: it admits nobody until re-added', { peer: a.name, hint: `natctl trust ${a.name} PEER_ID, then natctl files policy --allow ${a.name}` })
    }
    this.receiver = new FileReceiver(() => this.receivePolicy(), c.log, (f, from) => this.onStored(f, from))
  }

  get inbox(): string {
    return this.stored.inbox || path.join(this.c.dir, 'inbox')
  }

  policy(): FilesPolicy {
    return { allow: this.stored.allow.map((a) => ({ ...a })), maxSizeBytes: this.stored.maxSizeBytes, inbox: this.inbox }
  }

  /** Changes what is given (null = unchanged) and persists it. `allow` peers are resolved to whole keys now (PEER_UNKNOWN). */
  async setPolicy(p: { allow: string[] | null; maxSizeBytes: number | null; inbox: string | null }): Promise<FilesPolicy> {
    const next = { ...this.stored }
    if (p.allow !== null) {
      const allow: AllowEntry[] = []
      for (const a of p.allow) {
        const ref = await this.c.known.resolveKey(a)
        if (!allow.some((b) => b.id === ref.id)) allow.push(ref)
      }
      next.allow = allow
    }
    if (p.maxSizeBytes !== null) next.maxSizeBytes = p.maxSizeBytes
    if (p.inbox !== null) {
      if (p.inbox !== '' && !path.isAbsolute(p.inbox)) throw new NatdError('INVALID_ARGUMENT', `--inbox must be an absolute path, not ${JSON.stringify(p.inbox)}`)
      next.inbox = p.inbox === path.join(this.c.dir, 'inbox') ? '' : p.inbox
    }
    if (p.inbox) fs.mkdirSync(p.inbox, { recursive: true, mode: 0o700 })
    writeJsonAtomic(path.join(this.c.dir, POLICY_FILE), next)
    this.stored = next
    this.c.log.info('file policy changed', { allow: this.stored.allow.map(describePeer), maxSizeBytes: this.stored.maxSizeBytes, inbox: this.inbox })
    return this.policy()
  }

  /** Received files, oldest first. */
  list(): ReceivedFile[] {
    return readJsonLines<ReceivedFile>(path.join(this.c.dir, RECEIVED_FILE))
  }

  async send(p: { peer: string; path: string; name: string; timeoutMs: number }): Promise<FileSendResult> {
    if (p.peer === this.c.selfName || p.peer === this.c.selfId) throw new NatdError('INVALID_ARGUMENT', 'cannot send a file to yourself')
    const started = Date.now()
    let last = 0
    const r = await sendFile(
      {
        peer: p.peer,
        file: p.path,
        name: p.name,
        timeoutMs: p.timeoutMs,
        onProgress: (pr) => {
          const now = Date.now()
          if (now - last >= PROGRESS_INTERVAL_MS || pr.sent === 0) {
            last = now
            this.c.onProgress({ ...pr, path: p.path })
          }
        }
      },
      { tunnels: this.c.tunnels, selfId: this.c.selfId, log: this.c.log }
    )
    this.c.onProgress({ transferId: r.transferId, peer: r.peer, path: p.path, name: r.name, size: r.size, offset: r.offset, sent: r.sent })
    return { ...r, path: p.path, tookMs: Date.now() - started }
  }

  onChannel(tunnel: Tunnel, req: OpenRequest): void {
    this.receiver.onChannel(tunnel, req)
  }

  private receivePolicy(): ReceivePolicy {
    const allow = this.stored.allow
    const inbox = this.inbox
    fs.mkdirSync(inbox, { recursive: true, mode: 0o700 })
    return {
      allowed: (peer) => admits(allow, peer),
      maxSizeBytes: this.stored.maxSizeBytes,
      inbox
    }
  }

  private onStored(f: { name: string; path: string; size: number; sha256: string; transferId: string }, from: { name: string; id: string }): void {
    const rec: ReceivedFile = { ...f, from: from.name, fromId: from.id, receivedAt: new Date().toISOString() }
    appendJsonLine(path.join(this.c.dir, RECEIVED_FILE), rec)
    this.c.log.info('file received', { peer: from.name, name: f.name, size: f.size, sha256: f.sha256 })
    this.c.onReceived(rec)
  }
}
