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
import type { Duplex } from 'node:stream'
import { NatdError, toNatdError } from '../protocol/errors.js'
import type { FileSendResult } from '../ipc/schema.js'
import { systemClock, type TimerClock } from '../protocol/clock.js'
import type { Logger } from '../protocol/log.js'
import { encodeTransfer, MAX_FILE_BYTES, type TransferFrame } from '../protocol/transfer.js'
import type { TunnelManager } from '../tunnel/manager.js'
import { ChannelReader, destroyOnAbort, refusal, withDeadline } from './channel-frames.js'
import { feedChannel } from './file-feed.js'
import { MigrationDeadline } from '../tunnel/migration-deadline.js'
import { transferIdOf } from './file-names.js'
import { STALL_TIMEOUT_MS, StallWatch } from './stall-watch.js'

// The parts, re-exported for their users: names and IDs, the receiver, the stall deadline.
export { MAX_NAME_BYTES, MAX_NAME_SUFFIX, partialKey, sanitizeName, suffixedName, transferIdOf, UNSAFE_NAME_CHARS } from './file-names.js'
export { FileReceiver, INBOX_FREE_RESERVE, OFFER_TIMEOUT_MS, PARTIALS_PER_PEER, type ReceivePolicy, type StoredFile } from './file-receiver.js'
export { PARTIAL_MAX_AGE_MS } from './partial-pruner.js'
export { PARTIAL_DIR } from './partial-dir.js'
export { STALL_TIMEOUT_MS, StallWatch } from './stall-watch.js'

export const FILE_SERVICE = 'file'
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
  // What is left of the timeout for the offer, one deadline for both phases (one migration budget); time while the tunnel migrates does not count (migration-deadline.ts).
  const offerBy = new MigrationDeadline(clock, left(), tunnel)
  try {
    await withDeadline(ch.opened, offerBy, ch, `${peer}'s answer to the file channel`, clock).catch((err: unknown) => {
      // A receiver refuses a peer it does not allow at OPEN (file-receiver.ts): said as its REFUSE would be.
      if (err instanceof NatdError && err.code === 'NOT_ALLOWED') throw refusal(err.code, `${peer} refused ${name}: ${err.message}`)
      throw err
    })
    ch.write(encodeTransfer({ type: 'offer', transferId, size, name }))
    const answer = await withDeadline(reader.frame('the answer to the offer'), offerBy, ch, `${peer}'s answer to the offer`, clock)
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
    let stalled: NatdError | null = null
    const watch = new StallWatch(clock, stallMs, () => {
      stalled = new NatdError('TIMEOUT', `no progress sending ${name} for ${stallMs} ms (${sent} of ${size - offset} bytes passed on)`)
      spec.source.destroy(stalled)
      ch.destroy(stalled)
    }, () => tunnel.isMigrating)
    // The caller's bytes go from its connection straight into DATA frames (file-feed.ts).
    const body = feedChannel({
      source: spec.source,
      channel: ch,
      bytes: size - offset,
      onSent: (n) => {
        sent += n
        watch.touch()
        progress()
      }
    }).finally(() => watch.stop())
    body.catch(() => undefined)
    const first = await Promise.race([body.then(() => null), reply]).catch((err: unknown) => {
      throw stalled ?? err
    })
    if (first !== null && first.type !== 'done') throw refusalOf(first, peer, name)
    const sha256 = await body.catch((err: unknown) => {
      throw stalled ?? err
    })
    const verdict = first ?? (await reply)
    if (verdict.type !== 'done') throw refusalOf(verdict, peer, name)
    // DONE is the receiver's last frame: what it sends after is dropped, not held (review 7: the receiving side does the same).
    ch.discardInput()
    await reader.detach()
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
