/**
 * Messages between peers (`natctl send`, `natctl messages`). The sender opens a `msg`
 * channel on the tunnel (opened if needed) and sends one MESSAGE frame; the receiver
 * appends it to `<state dir>/messages.jsonl`, fsyncs, and only then answers ACK, so a
 * `send` that succeeded is on the peer's disk. Every authenticated peer may message us,
 * up to its quota (messagesPerPeer, messageBytesPerPeer in files.policy): past it the
 * message is refused with QUOTA_EXCEEDED, until the user clears (`messages.clear`).
 *
 * Exactly once: a message keeps its ID across the retries of one send (a tunnel that
 * closes under it is reopened) and across a rerun after a failure (outbox.ts lends the
 * unsettled ID of the same text to the same peer; or the caller names the ID). The
 * receiver remembers IDs per sender (message-ids.ts) and answers a duplicate with an ACK
 * flagged DUPLICATE without storing it again.
 *
 * Off the event loop: the inbox, the IDs and the outbox are written through StateLog (one
 * queue per file, async fs), so a disk that stalls holds the ACKs, never the agent. A
 * message counts against its sender's quota from the moment it arrives, so what waits
 * for the disk is bounded by the quotas (messagesPerPeer, messageBytesPerPeer per peer,
 * INBOX_MESSAGES_MAX and INBOX_MESSAGE_BYTES_MAX in all). A retry that arrives while its
 * first copy is still being written waits for that write, then is answered DUPLICATE.
 */
import { createHash } from 'node:crypto'
import path from 'node:path'
import { NatdError, toNatdError } from '../protocol/errors.js'
import { systemClock, type TimerClock } from '../protocol/clock.js'
import type { Logger } from '../protocol/log.js'
import { isTarget, resolvePeer } from '../protocol/peer-ref.js'
import { encodeTransfer, MAX_MESSAGE_BYTES } from '../protocol/transfer.js'
import type { MessageInfo, MessageSendResult, Quotas } from '../ipc/schema.js'
import type { TunnelManager } from '../tunnel/manager.js'
import type { OpenRequest } from '../tunnel/mux.js'
import type { Tunnel } from '../tunnel/tunnel.js'
import { ChannelReader, destroyOnAbort, endWith, refusal, withDeadline } from './channel-frames.js'
import { MigrationDeadline } from '../tunnel/migration-deadline.js'
import type { KnownPeers } from './known-peers.js'
import { PEER_REFUSAL_LOG, RefusalLog } from '../common/refusal-log.js'
import { asyncStateIo, readJsonLines, StateLog, type StateLogIo } from '../common/state-files.js'
import { MessageIds } from './message-ids.js'
import { Outbox, type Pending } from './outbox.js'

export const MESSAGE_SERVICE = 'msg'
/** The receiver waits this long for the MESSAGE frame after the channel opens. */
export const MESSAGE_RECEIVE_TIMEOUT_MS = 10_000
/**
 * After its answer (ACK or REFUSE) the receiver resets a message channel the sender has not
 * ended by then (an honest one ends it once it read the answer); meanwhile it reads nothing
 * of it. As the file receiver's REFUSE_LINGER_MS.
 */
export const MESSAGE_ANSWER_LINGER_MS = 5_000
export const MESSAGES_FILE = 'messages.jsonl'
/**
 * Within one send, a tunnel that closes under the message is reopened and the message
 * sent again (the same ID) after this pause, while the send's time lasts.
 */
export const MESSAGE_RETRY_MS = 250
/**
 * What all senders together may hold in the inbox, whatever the per-peer quotas say. A
 * key is free to make and every key has its own quota, so without this a stranger with
 * fresh keys (the server lets an address make about 60 a minute) fills the disk 1 MiB
 * per key and makes every `natctl messages` read it all. Past it a message is refused
 * with QUOTA_EXCEEDED until the user clears some; 10 × the default per-peer quota.
 */
export const INBOX_MESSAGES_MAX = 10_000
export const INBOX_MESSAGE_BYTES_MAX = 10 * 1024 ** 2

/**
 * The message ID a caller's `id` names: 32 hex digits are the ID itself (as a send's
 * result and the inbox show it); any other key (`natctl send --id deploy-42`) is hashed
 * into one, so the same key always gives the same ID.
 */
export function messageIdOf(key: string): string {
  if (/^[0-9a-fA-F]{32}$/.test(key)) return key.toLowerCase()
  return createHash('sha256').update(`natd message id\0${key}`).digest().subarray(0, 16).toString('hex')
}

/** What the peer answered one attempt: stored (or had it), or a definite no (quota, policy). */
type Answer = Omit<MessageSendResult, 'tookMs'> | { refused: NatdError }

export interface SendOptions {
  /** The caller's ID or idempotency key (messageIdOf); default: the outbox's. */
  id?: string | undefined
  /**
   * Aborts when the caller has gone (it would not see the outcome): the send stops
   * (ABORTED) and the outbox keeps the ID for its rerun, delivered or not.
   */
  signal?: AbortSignal | undefined
}

export interface MessagesComponents {
  /** The state directory. */
  dir: string
  tunnels: TunnelManager
  log: Logger
  selfName: string
  selfId: string
  /** Pinned peers, to resolve `messages --from`. */
  known: Pick<KnownPeers, 'list'>
  /** A message was stored (API event `message`). */
  onMessage(m: MessageInfo): void
  /** The per-peer quotas in force (Files owns the policy). */
  quotas(): Pick<Quotas, 'messagesPerPeer' | 'messageBytesPerPeer'>
  /** Wait this long between storing a message and its ACK (0; lab tests lose ACKs with it). */
  ackDelayMs?: number
  /** What all senders together may hold (default INBOX_MESSAGES_MAX, INBOX_MESSAGE_BYTES_MAX; tests lower it). */
  inboxMax?: { messages: number; bytes: number }
  /** Default systemClock. */
  clock?: TimerClock
  /** The disk writes (default asyncStateIo; tests stall them). */
  io?: StateLogIo
}

export class Messages {
  private readonly file: string
  private readonly inbox: StateLog
  /** Messages being written, by `sender/id`: a retry meanwhile waits for the first copy. */
  private readonly storing = new Map<string, Promise<void>>()
  /** IDs stored, per sender: a retried message is acknowledged, not stored twice. */
  private readonly ids: MessageIds
  /** IDs of our sends whose outcome the caller has not seen. */
  private readonly outbox: Outbox
  /** What each sender (by whole ID) holds in the inbox. */
  private readonly usage = new Map<string, { count: number; bytes: number }>()
  /** What all senders hold in the inbox. */
  private readonly total = { count: 0, bytes: 0 }
  /** Messages not received (quota, bad frames, time-outs): a peer may cause them as fast as it opens channels. */
  private readonly refusals: RefusalLog
  private readonly clock: TimerClock

  constructor(private readonly c: MessagesComponents) {
    this.clock = c.clock ?? systemClock
    this.file = path.join(c.dir, MESSAGES_FILE)
    this.inbox = new StateLog(this.file, c.io)
    this.refusals = new RefusalLog(c.log, PEER_REFUSAL_LOG, this.clock)
    const inbox = readJsonLines<MessageInfo>(this.file)
    this.ids = new MessageIds(c.dir, inbox.map((m) => ({ from: m.fromId, id: m.id, at: Date.parse(m.receivedAt) || 0 })), this.clock.now(), {}, c.io)
    this.outbox = new Outbox(c.dir, undefined, c.io)
    this.load(inbox)
  }

  private load(inbox = readJsonLines<MessageInfo>(this.file)): void {
    this.usage.clear()
    this.total.count = 0
    this.total.bytes = 0
    for (const m of inbox) this.count(m)
  }

  /** Adds (sign 1) or takes back (-1) a message in the usage counts. */
  private count(m: MessageInfo, sign = 1): void {
    const u = this.usage.get(m.fromId) ?? { count: 0, bytes: 0 }
    u.count += sign
    u.bytes += sign * Buffer.byteLength(m.text)
    this.usage.set(m.fromId, u)
    this.total.count += sign
    this.total.bytes += sign * Buffer.byteLength(m.text)
  }

  /** Resolves when every write so far ended (shutdown, tests). Never rejects. */
  async flushed(): Promise<void> {
    await Promise.all([this.inbox.flushed(), this.ids.flushed(), this.outbox.flushed()])
  }

  /** What a sender holds in the inbox now. */
  usageOf(peerId: string): { count: number; bytes: number } {
    return { ...(this.usage.get(peerId) ?? { count: 0, bytes: 0 }) }
  }

  /** Removes the messages from `from` (a peer as list() takes it; '' = all): room for new ones. */
  async clear(from = ''): Promise<{ removed: number }> {
    // In the inbox's queue: after the messages being written (they are in the file it reads), before later ones.
    return this.inbox.run(async () => {
      const all = readJsonLines<MessageInfo>(this.file)
      const goneList = from ? this.list(from) : all
      const gone = new Set(goneList.map(stored))
      const kept = all.filter((m) => !gone.has(stored(m)))
      try {
        await this.ids.flush() // the IDs outlive their messages: a retry of a cleared message is still a duplicate
        await asyncReplace(this.c.io, this.file, kept.map((m) => JSON.stringify(m) + '\n').join(''))
      } catch (err) {
        throw new NatdError('STATE_WRITE_FAILED', `no message was cleared: ${this.file} could not be rewritten (see natd's log)`, { cause: err })
      }
      for (const m of all) if (gone.has(stored(m))) this.count(m, -1) // messages still being written keep their count
      this.c.log.info('messages cleared', { from: from || 'everyone', removed: all.length - kept.length })
      return { removed: all.length - kept.length }
    })
  }

  /**
   * The inbox, oldest first; `limit` > 0 keeps the newest ones. `from` is a peer as users
   * type it (peer-ref.ts), resolved against the pinned peers and the senders in the inbox;
   * an abbreviated ID several of them share is INVALID_ARGUMENT.
   */
  list(from = '', limit = 0): MessageInfo[] {
    let all = readJsonLines<MessageInfo>(this.file)
    if (from) {
      const target = resolvePeer(from, [...this.c.known.list(), ...all.map((m) => ({ name: m.from, id: m.fromId }))])
      all = target === null ? [] : all.filter((m) => isTarget({ name: m.from, id: m.fromId }, target))
    }
    return limit > 0 ? all.slice(-limit) : all
  }

  /**
   * Sends `text` to `peer`; resolves once the peer's agent has stored it (or had it
   * already: `duplicate`). A tunnel that closes under the message is reopened and the
   * message sent again with the same ID while `timeoutMs` lasts. A failure after the
   * message left says how to retry without a second copy.
   */
  async send(peer: string, text: string, timeoutMs: number, opts: SendOptions = {}): Promise<MessageSendResult> {
    if (peer === this.c.selfName || peer === this.c.selfId) throw new NatdError('INVALID_ARGUMENT', 'cannot send a message to yourself')
    if (Buffer.byteLength(text) > MAX_MESSAGE_BYTES) throw new NatdError('INVALID_ARGUMENT', `a message may have at most ${MAX_MESSAGE_BYTES} bytes of text`)
    const started = this.clock.now()
    const left = (): number => Math.max(1, timeoutMs - (this.clock.now() - started))
    const signal = opts.signal
    let pending: Pending | null = null
    let name = peer
    let refused = false
    try {
      for (;;) {
        const { tunnel } = await this.c.tunnels.open(peer, 'auto', left(), signal)
        name = tunnel.peer.name
        pending ??= opts.id === undefined ? await this.outbox.take(tunnel.peer.id, text, this.clock.now()) : { id: messageIdOf(opts.id), settle: () => undefined, release: () => undefined }
        let answer: Answer
        try {
          answer = await this.deliver(tunnel, pending.id, text, left, signal)
        } catch (err) {
          if (signal?.aborted) throw new NatdError('ABORTED', `the message to ${name} was cancelled by its caller`, { cause: err })
          if (toNatdError(err).code !== 'TUNNEL_CLOSED' || left() <= MESSAGE_RETRY_MS) throw err
          this.c.log.info('message retried', { peer: name, id: pending.id, err: (err as Error).message })
          await this.clock.sleep(MESSAGE_RETRY_MS, signal)
          continue
        }
        if (!signal?.aborted) pending.settle() // delivered or refused: a rerun is a new message
        if ('refused' in answer) {
          refused = true
          throw answer.refused
        }
        return { ...answer, tookMs: this.clock.now() - started }
      }
    } catch (err) {
      if (pending === null || refused) throw err
      // The message may be on the peer's disk without our having heard: say how to retry safely.
      const e = toNatdError(err)
      throw new NatdError(e.code, `${e.message}. The message may have reached ${name}: run the same command again (natd reuses its ID ${pending.id}), or pass --id ${pending.id}; ${name} stores it once`, { cause: err })
    } finally {
      pending?.release()
    }
  }

  /** One attempt on one tunnel: MESSAGE, then ACK (or REFUSE). */
  private async deliver(tunnel: Tunnel, id: string, text: string, left: () => number, signal: AbortSignal | undefined): Promise<Answer> {
    const ch = tunnel.mux.openChannel(0, MESSAGE_SERVICE)
    const unwatch = destroyOnAbort(ch, signal, `the message to ${tunnel.peer.name}`)
    // What is left of the timeout, one deadline for both phases (one migration budget); time while the tunnel migrates does not count (migration-deadline.ts).
    const by = new MigrationDeadline(this.clock, left(), tunnel)
    try {
      await withDeadline(ch.opened, by, ch, `${tunnel.peer.name}'s answer to the message channel`, this.clock)
      const messageId = Buffer.from(id, 'hex')
      const sentAt = this.clock.now()
      ch.write(encodeTransfer({ type: 'message', messageId, sentAt, text }))
      const reader = new ChannelReader(ch)
      const reply = await withDeadline(reader.frame('the acknowledgement'), by, ch, `${tunnel.peer.name}'s acknowledgement`, this.clock)
      ch.discardInput() // one frame answers a message: what the peer sends after it is dropped, not held
      await reader.detach()
      if (reply.type === 'refuse') {
        ch.end()
        return { refused: refusal(reply.code, `${tunnel.peer.name} refused the message: ${reply.message}`) }
      }
      if (reply.type !== 'ack' || !Buffer.from(reply.messageId).equals(messageId)) throw new NatdError('BAD_REQUEST', `${tunnel.peer.name} answered the message with ${reply.type}`)
      ch.end()
      this.c.log.info(reply.duplicate ? 'message sent (the peer had it already)' : 'message sent', { peer: tunnel.peer.name, id, bytes: Buffer.byteLength(text) })
      return { id, peer: tunnel.peer.name, sentAt: new Date(sentAt).toISOString(), duplicate: reply.duplicate }
    } catch (err) {
      ch.destroy()
      throw err
    } finally {
      by.stop()
      unwatch()
    }
  }

  /** A peer opened a `msg` channel. Never throws. */
  onChannel(tunnel: Tunnel, req: OpenRequest): void {
    req.accept()
    const ch = req.channel
    void (async () => {
      const reader = new ChannelReader(ch)
      const f = await withDeadline(reader.frame('the message'), MESSAGE_RECEIVE_TIMEOUT_MS, ch, 'the message', this.clock)
      // A message channel carries one frame: what the peer sends after it is dropped, not held (review 7).
      ch.discardInput()
      await reader.detach()
      if (f.type !== 'message') throw new NatdError('BAD_REQUEST', `expected a message, got ${f.type}`)
      const id = Buffer.from(f.messageId).toString('hex')
      const k = `${tunnel.peer.id}/${id}`
      const first = this.storing.get(k)
      if (first) {
        // A retry of a message still being written: answered once that copy is durable.
        await first.catch((err: unknown) => {
          throw new NatdError('STATE_WRITE_FAILED', `${(err as Error).message}`)
        })
      }
      const duplicate = first !== undefined || this.ids.has(tunnel.peer.id, id, this.clock.now())
      if (duplicate) {
        // debug: a peer may resend one message as fast as its tunnel carries it, and a duplicate costs it no quota (review 9 #3).
        this.c.log.debug('message received again (a retry): acknowledged, not stored twice', { peer: tunnel.peer.name, id })
      } else {
        const q = this.c.quotas()
        const u = this.usageOf(tunnel.peer.id)
        if (u.count + 1 > q.messagesPerPeer || u.bytes + Buffer.byteLength(f.text) > q.messageBytesPerPeer) {
          throw new NatdError('QUOTA_EXCEEDED', `${tunnel.peer.name} already has ${u.count} messages (${u.bytes} bytes) in this agent's inbox; its quota is ${q.messagesPerPeer} messages, ${q.messageBytesPerPeer} bytes`)
        }
        const max = this.c.inboxMax ?? { messages: INBOX_MESSAGES_MAX, bytes: INBOX_MESSAGE_BYTES_MAX }
        if (this.total.count + 1 > max.messages || this.total.bytes + Buffer.byteLength(f.text) > max.bytes) {
          throw new NatdError('QUOTA_EXCEEDED', `this agent's inbox is full: all peers together hold ${this.total.count} messages (${this.total.bytes} bytes), at most ${max.messages} messages, ${max.bytes} bytes; its user must clear some`)
        }
        const m: MessageInfo = { id, from: tunnel.peer.name, fromId: tunnel.peer.id, text: f.text, sentAt: new Date(f.sentAt).toISOString(), receivedAt: new Date(this.clock.now()).toISOString() }
        this.count(m) // counted at once: the quotas bound what waits for the disk
        const write = this.inbox.append([m], { sync: true }) // fsynced before the ACK: an acknowledged message survives a crash
        this.storing.set(k, write)
        try {
          await write
        } catch (err) {
          this.count(m, -1)
          this.c.log.error('a message could not be saved: refused', { peer: m.from, id, file: this.file, err: (err as Error).message })
          throw new NatdError('STATE_WRITE_FAILED', `${this.c.selfName} could not save the message to its disk; nothing was kept, send it again`, { cause: err })
        } finally {
          this.storing.delete(k)
        }
        this.ids.add({ from: m.fromId, id, at: Date.parse(m.receivedAt) })
        this.c.log.info('message received', { peer: m.from, id, bytes: Buffer.byteLength(m.text) })
        this.c.onMessage(m)
      }
      if (this.c.ackDelayMs) await this.clock.sleep(this.c.ackDelayMs)
      endWith(ch, encodeTransfer({ type: 'ack', messageId: f.messageId, duplicate }), MESSAGE_ANSWER_LINGER_MS, this.clock)
    })().catch((err: unknown) => {
      const e = toNatdError(err)
      this.refusals.refused('message', tunnel.peer.name, e.code, e.message)
      endWith(ch, encodeTransfer({ type: 'refuse', code: e.code, message: e.message }), MESSAGE_ANSWER_LINGER_MS, this.clock)
    })
  }
}

/** Replaces `file` through `io` (default asyncStateIo): the caller is already in the file's queue. */
function asyncReplace(io: StateLogIo | undefined, file: string, text: string): Promise<void> {
  return (io ?? asyncStateIo).replace(file, text)
}

/** A message's identity in the inbox: IDs are the sender's to choose, so one is unique only per sender. */
function stored(m: MessageInfo): string {
  return `${m.fromId}/${m.id}`
}

