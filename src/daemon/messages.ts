/**
 * Messages between peers (`natctl send`, `natctl messages`). The sender opens a `msg`
 * channel on the tunnel (opened if needed) and sends one MESSAGE frame; the receiver
 * appends it to `<state dir>/messages.jsonl`, fsyncs, and only then answers ACK, so a
 * `send` that succeeded is on the peer's disk. Every authenticated peer may message us,
 * up to its quota (messagesPerPeer, messageBytesPerPeer in files.policy): past it the
 * message is refused with QUOTA_EXCEEDED, until the user clears (`messages.clear`).
 */
import { randomBytes } from 'node:crypto'
import path from 'node:path'
import { NatdError, toNatdError } from '../protocol/errors.js'
import type { Logger } from '../protocol/log.js'
import { isTarget, resolvePeer } from '../protocol/peer-ref.js'
import { encodeTransfer, MAX_MESSAGE_BYTES } from '../protocol/transfer.js'
import type { MessageInfo, MessageSendResult, Quotas } from '../ipc/schema.js'
import type { TunnelManager } from '../tunnel/manager.js'
import type { OpenRequest } from '../tunnel/mux.js'
import type { Tunnel } from '../tunnel/tunnel.js'
import { ChannelReader, refusal, withDeadline } from './channel-frames.js'
import type { KnownPeers } from './known-peers.js'
import { appendJsonLine, readJsonLines, writeFileAtomic } from '../common/state-files.js'

export const MESSAGE_SERVICE = 'msg'
/** The receiver waits this long for the MESSAGE frame after the channel opens. */
export const MESSAGE_RECEIVE_TIMEOUT_MS = 10_000
export const MESSAGES_FILE = 'messages.jsonl'

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
}

export class Messages {
  private readonly file: string
  /** Ids already stored: a retried send is acknowledged, not stored twice. */
  private readonly seen = new Set<string>()
  /** What each sender (by whole ID) holds in the inbox. */
  private readonly usage = new Map<string, { count: number; bytes: number }>()

  constructor(private readonly c: MessagesComponents) {
    this.file = path.join(c.dir, MESSAGES_FILE)
    this.load()
  }

  private load(): void {
    this.seen.clear()
    this.usage.clear()
    for (const m of readJsonLines<MessageInfo>(this.file)) {
      this.seen.add(m.id)
      this.count(m)
    }
  }

  private count(m: MessageInfo): void {
    const u = this.usage.get(m.fromId) ?? { count: 0, bytes: 0 }
    u.count++
    u.bytes += Buffer.byteLength(m.text)
    this.usage.set(m.fromId, u)
  }

  /** What a sender holds in the inbox now. */
  usageOf(peerId: string): { count: number; bytes: number } {
    return { ...(this.usage.get(peerId) ?? { count: 0, bytes: 0 }) }
  }

  /** Removes the messages from `from` (a peer as list() takes it; '' = all): room for new ones. */
  clear(from = ''): { removed: number } {
    const all = readJsonLines<MessageInfo>(this.file)
    const gone = new Set((from ? this.list(from) : all).map((m) => m.id))
    const kept = all.filter((m) => !gone.has(m.id))
    writeFileAtomic(this.file, kept.map((m) => JSON.stringify(m) + '\n').join(''))
    this.load()
    this.c.log.info('messages cleared', { from: from || 'everyone', removed: all.length - kept.length })
    return { removed: all.length - kept.length }
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

  /** Sends `text` to `peer`; resolves once the peer's agent has stored it. */
  async send(peer: string, text: string, timeoutMs: number): Promise<MessageSendResult> {
    if (peer === this.c.selfName || peer === this.c.selfId) throw new NatdError('INVALID_ARGUMENT', 'cannot send a message to yourself')
    if (Buffer.byteLength(text) > MAX_MESSAGE_BYTES) throw new NatdError('INVALID_ARGUMENT', `a message may have at most ${MAX_MESSAGE_BYTES} bytes of text`)
    const started = Date.now()
    const { tunnel } = await this.c.tunnels.open(peer, 'auto', timeoutMs)
    const left = (): number => Math.max(1, timeoutMs - (Date.now() - started))
    const ch = tunnel.mux.openChannel(0, MESSAGE_SERVICE)
    try {
      await withDeadline(ch.opened, left(), ch, `${tunnel.peer.name}'s answer to the message channel`)
      const messageId = randomBytes(16)
      const sentAt = Date.now()
      ch.write(encodeTransfer({ type: 'message', messageId, sentAt, text }))
      const reply = await withDeadline(new ChannelReader(ch).frame('the acknowledgement'), left(), ch, `${tunnel.peer.name}'s acknowledgement`)
      if (reply.type === 'refuse') throw refusal(reply.code, `${tunnel.peer.name} refused the message: ${reply.message}`)
      if (reply.type !== 'ack' || !Buffer.from(reply.messageId).equals(messageId)) throw new NatdError('BAD_REQUEST', `${tunnel.peer.name} answered the message with ${reply.type}`)
      ch.end()
      const id = messageId.toString('hex')
      this.c.log.info('message sent', { peer: tunnel.peer.name, id, bytes: Buffer.byteLength(text) })
      return { id, peer: tunnel.peer.name, sentAt: new Date(sentAt).toISOString(), tookMs: Date.now() - started }
    } catch (err) {
      ch.destroy()
      throw err
    }
  }

  /** A peer opened a `msg` channel. Never throws. */
  onChannel(tunnel: Tunnel, req: OpenRequest): void {
    req.accept()
    const ch = req.channel
    void (async () => {
      const f = await withDeadline(new ChannelReader(ch).frame('the message'), MESSAGE_RECEIVE_TIMEOUT_MS, ch, 'the message')
      if (f.type !== 'message') throw new NatdError('BAD_REQUEST', `expected a message, got ${f.type}`)
      const id = Buffer.from(f.messageId).toString('hex')
      if (!this.seen.has(id)) {
        const q = this.c.quotas()
        const u = this.usageOf(tunnel.peer.id)
        if (u.count + 1 > q.messagesPerPeer || u.bytes + Buffer.byteLength(f.text) > q.messageBytesPerPeer) {
          throw new NatdError('QUOTA_EXCEEDED', `${tunnel.peer.name} already has ${u.count} messages (${u.bytes} bytes) in this agent's inbox; its quota is ${q.messagesPerPeer} messages, ${q.messageBytesPerPeer} bytes`)
        }
        const m: MessageInfo = { id, from: tunnel.peer.name, fromId: tunnel.peer.id, text: f.text, sentAt: new Date(f.sentAt).toISOString(), receivedAt: new Date().toISOString() }
        appendJsonLine(this.file, m) // fsynced before the ACK: an acknowledged message survives a crash
        this.seen.add(id)
        this.count(m)
        this.c.log.info('message received', { peer: m.from, id, bytes: Buffer.byteLength(m.text) })
        this.c.onMessage(m)
      }
      ch.end(encodeTransfer({ type: 'ack', messageId: f.messageId }))
    })().catch((err: unknown) => {
      const e = toNatdError(err)
      this.c.log.warn('message not received', { peer: tunnel.peer.name, code: e.code, err: e.message })
      if (!ch.destroyed) ch.end(encodeTransfer({ type: 'refuse', code: e.code, message: e.message }))
    })
  }
}
