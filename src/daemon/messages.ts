/**
 * Messages between peers (`natctl send`, `natctl messages`). The sender opens a `msg`
 * channel on the tunnel (opened if needed) and sends one MESSAGE frame; the receiver
 * appends it to `<state dir>/messages.jsonl`, fsyncs, and only then answers ACK, so a
 * `send` that succeeded is on the peer's disk. Every authenticated peer may message us.
 */
import { randomBytes } from 'node:crypto'
import path from 'node:path'
import { NatdError, toNatdError } from '../protocol/errors.js'
import type { Logger } from '../protocol/log.js'
import { isTarget, resolvePeer } from '../protocol/peer-ref.js'
import { encodeTransfer, MAX_MESSAGE_BYTES } from '../protocol/transfer.js'
import type { MessageInfo, MessageSendResult } from '../ipc/schema.js'
import type { TunnelManager } from '../tunnel/manager.js'
import type { OpenRequest } from '../tunnel/mux.js'
import type { Tunnel } from '../tunnel/tunnel.js'
import { ChannelReader, refusal, withDeadline } from './channel-frames.js'
import type { KnownPeers } from './known-peers.js'
import { appendJsonLine, readJsonLines } from './state-files.js'

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
}

export class Messages {
  private readonly file: string
  /** Ids already stored: a retried send is acknowledged, not stored twice. */
  private readonly seen = new Set<string>()

  constructor(private readonly c: MessagesComponents) {
    this.file = path.join(c.dir, MESSAGES_FILE)
    for (const m of readJsonLines<MessageInfo>(this.file)) this.seen.add(m.id)
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
        const m: MessageInfo = { id, from: tunnel.peer.name, fromId: tunnel.peer.id, text: f.text, sentAt: new Date(f.sentAt).toISOString(), receivedAt: new Date().toISOString() }
        appendJsonLine(this.file, m) // fsynced before the ACK: an acknowledged message survives a crash
        this.seen.add(id)
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
