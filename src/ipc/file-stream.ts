/**
 * The bytes of `natctl cp`: natctl opens and reads the file with its own rights and
 * streams it to natd over a second, short-lived connection on the data socket (the API
 * socket's path + `.data`, same mode 0660, same group). natd never opens a path a client
 * names for sending, so it sends only what the caller could read (docs/SECURITY.md).
 *
 * Why a second socket: node-ipc frames are JSON (bytes would go base64 through a parser
 * that copies every frame), Node cannot pass a file descriptor over it, nor read
 * SO_PEERCRED. A plain Unix-socket byte stream costs one local copy.
 *
 *   natctl (caller)                          natd (data socket)
 *   connect                    ────────────▶
 *                              ◀──────────── TOKEN <32 hex>\n       one use, claimed within STREAM_CLAIM_TIMEOUT_MS
 *   API file.send {source: token, size, mtimeMs, dev, ino, …}
 *                              ◀──────────── OFFSET <n>\n           the receiver's ACCEPT: what it already has
 *   bytes [n, size)            ────────────▶ each read copied into DATA frames at once (daemon/file-feed.ts)
 *   sha256[32] of [0, size)    ────────────▶ sent to the receiver in END (natctl hashes, so
 *                                            the digest covers this hop too)
 *   (the API call answers; natd closes the data connection)
 *
 * natctl checks after the last byte that the file kept its size and mtime; if not, it
 * hangs up without the digest and natd fails the send with FILE_UNREADABLE.
 */
import { createHash, randomBytes } from 'node:crypto'
import fs from 'node:fs'
import net from 'node:net'
import { LOCAL_REFUSAL_LOG, RefusalLog } from '../common/refusal-log.js'
import { systemClock, type Timer, type TimerClock } from '../protocol/clock.js'
import { NatdError } from '../protocol/errors.js'
import type { Logger } from '../protocol/log.js'

/** A data connection whose token no file.send claimed within this is closed. */
export const STREAM_CLAIM_TIMEOUT_MS = 10_000
/**
 * Unclaimed data connections held at once (each is a socket a group member opened). A
 * newcomer past it evicts the oldest unclaimed one, as the API evicts its longest-idle
 * connection (connection-table.ts): natctl claims its token at once (its next step is
 * file.send on a connection it already holds), so a user who holds connections only
 * shortens everyone's claim deadline, and cannot make another user's `natctl cp` fail
 * (review 9 #4: refusing the newcomer let one group member block every user's cp).
 */
export const MAX_PENDING_STREAMS = 16
/** natctl's read size: large enough to keep a tunnel channel's window full. */
export const STREAM_CHUNK_BYTES = 1024 * 1024
export const SHA256_BYTES = 32

/** The data socket that goes with an API socket. */
export function dataSocketPath(apiSocket: string): string {
  return `${apiSocket}.data`
}

/** natd's side: accepts data connections, hands each a token, gives it to the file.send that names it. */
export class FileStreamServer {
  private server: net.Server | null = null
  /** Unclaimed connections by token, oldest first (a Map keeps insertion order). */
  private readonly pending = new Map<string, { socket: net.Socket; timer: Timer }>()
  /** Evictions: a local user may cause them as fast as it connects. */
  private readonly refusals: RefusalLog

  constructor(
    readonly socketPath: string,
    log: Logger,
    /** The claim deadline's timer (agent.ts passes its clock). */
    private readonly clock: Pick<TimerClock, 'setTimeout' | 'clear'> = systemClock
  ) {
    this.refusals = new RefusalLog(log, LOCAL_REFUSAL_LOG, clock)
  }

  /** Listens (mode 0660, like the API socket). The caller has claimed the API socket, so a file here is stale. */
  async start(): Promise<void> {
    fs.rmSync(this.socketPath, { force: true })
    const server = net.createServer((s) => this.onConnection(s))
    server.maxConnections = MAX_PENDING_STREAMS * 4
    this.server = server
    await new Promise<void>((resolve, reject) => {
      const oldUmask = process.umask(0o177)
      server.once('error', reject)
      server.listen(this.socketPath, () => {
        server.off('error', reject)
        resolve()
      })
      process.umask(oldUmask)
    })
    fs.chmodSync(this.socketPath, 0o660)
  }

  get listening(): boolean {
    return this.server?.listening ?? false
  }

  stop(): void {
    for (const p of this.pending.values()) {
      this.clock.clear(p.timer)
      p.socket.destroy()
    }
    this.pending.clear()
    this.server?.close()
    fs.rmSync(this.socketPath, { force: true })
  }

  /** The data connection that got `token`; once. INVALID_ARGUMENT for an unknown, used or expired token. */
  take(token: string): net.Socket {
    const p = this.pending.get(token)
    if (!p) throw new NatdError('INVALID_ARGUMENT', 'no data connection with that source token (open one on the data socket first; a token is good once, for 10 s)')
    this.pending.delete(token)
    this.clock.clear(p.timer)
    return p.socket
  }

  private onConnection(socket: net.Socket): void {
    if (this.pending.size >= MAX_PENDING_STREAMS) this.evictOldest()
    const token = randomBytes(16).toString('hex')
    const timer = this.clock.setTimeout(() => {
      if (this.pending.get(token)?.socket === socket) this.pending.delete(token)
      socket.destroy()
    }, STREAM_CLAIM_TIMEOUT_MS)
    timer.unref()
    socket.on('error', () => undefined)
    socket.once('close', () => {
      if (this.pending.get(token)?.socket === socket) {
        this.clock.clear(timer)
        this.pending.delete(token)
      }
    })
    this.pending.set(token, { socket, timer })
    socket.write(`TOKEN ${token}\n`)
  }

  /** Closes the unclaimed connection held the longest (the map keeps them in the order they came); counted, not logged each. */
  private evictOldest(): void {
    const [token, oldest] = this.pending.entries().next().value!
    this.pending.delete(token)
    this.clock.clear(oldest.timer)
    oldest.socket.destroy()
    this.refusals.refused('data connection', 'a local user', 'BUSY', `${MAX_PENDING_STREAMS} unclaimed data connections: the oldest closed for a newcomer`)
  }
}

/** Reads one `\n`-ended line (at most 128 bytes) from a socket, keeping what follows unread. */
function readLine(socket: net.Socket): Promise<string> {
  return new Promise((resolve, reject) => {
    let buf = ''
    const onData = (chunk: Buffer): void => {
      buf += chunk.toString('latin1')
      const i = buf.indexOf('\n')
      if (i < 0) {
        if (buf.length > 128) done(new NatdError('BAD_REQUEST', 'natd sent an overlong line on the data socket'))
        return
      }
      socket.pause()
      const rest = buf.slice(i + 1)
      if (rest) socket.unshift(Buffer.from(rest, 'latin1'))
      done(null, buf.slice(0, i))
    }
    const onEnd = (): void => done(new NatdError('TUNNEL_CLOSED', 'natd closed the data connection'))
    const done = (err: Error | null, line?: string): void => {
      socket.off('data', onData)
      socket.off('end', onEnd)
      socket.off('close', onEnd)
      socket.off('error', onEnd)
      if (err) reject(err)
      else resolve(line!)
    }
    socket.on('data', onData)
    socket.once('end', onEnd)
    socket.once('close', onEnd)
    socket.once('error', onEnd)
    socket.resume()
  })
}

/** natctl's side: a data connection and its token. */
export async function openFileStream(apiSocket: string): Promise<{ socket: net.Socket; token: string }> {
  const socket = net.connect(dataSocketPath(apiSocket))
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve)
    socket.once('error', (err: NodeJS.ErrnoException) =>
      reject(new NatdError(err.code === 'EACCES' ? 'PERMISSION_DENIED' : 'NOT_RUNNING', `cannot open natd's data socket ${dataSocketPath(apiSocket)}: ${err.message}`, { cause: err }))
    )
  })
  socket.on('error', () => undefined)
  const line = await readLine(socket)
  const m = /^TOKEN ([0-9a-f]{32})$/.exec(line)
  if (!m) {
    socket.destroy()
    throw new NatdError('BAD_REQUEST', 'natd did not hand a token on the data socket')
  }
  return { socket, token: m[1]! }
}

/** What natctl tells file.send about the file it opened. */
export interface OpenedFile {
  handle: fs.promises.FileHandle
  size: number
  mtimeMs: number
  dev: number
  ino: number
}

/** Opens a file to send with the caller's own rights; FILE_UNREADABLE says why not. */
export async function openToSend(file: string): Promise<OpenedFile> {
  let handle: fs.promises.FileHandle
  try {
    handle = await fs.promises.open(file, fs.constants.O_RDONLY | fs.constants.O_NOCTTY | fs.constants.O_NONBLOCK)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' || code === 'EPERM' ? 'permission denied (you cannot read it, so natd will not send it)' : (code ?? String(err))
    throw new NatdError('FILE_UNREADABLE', `${file}: ${why}`, { cause: err })
  }
  const st = await handle.stat()
  if (!st.isFile()) {
    await handle.close()
    throw new NatdError('FILE_UNREADABLE', `${file} is ${st.isDirectory() ? 'a directory (use -r)' : 'not a regular file'}`)
  }
  return { handle, size: st.size, mtimeMs: st.mtimeMs, dev: st.dev, ino: st.ino }
}

/**
 * natctl's side of one transfer: waits for OFFSET, hashes [0, offset), streams
 * [offset, size) and the digest. Resolves with the hex sha256; rejects with
 * FILE_UNREADABLE when the file changed (the connection is then destroyed, so natd fails
 * the send too), or with what natd's side did.
 */
export async function streamFile(socket: net.Socket, f: OpenedFile, label: string): Promise<string> {
  try {
    const line = await readLine(socket)
    const m = /^OFFSET (\d+)$/.exec(line)
    if (!m || Number(m[1]) > f.size) throw new NatdError('BAD_REQUEST', `natd asked for ${JSON.stringify(line)} on the data socket`)
    const offset = Number(m[1])
    const hash = createHash('sha256')
    // Two buffers, reused (issue 18: no buffer allocated per read): one is read into while
    // the other's bytes are being written; a buffer is read into again only once its
    // previous write completed.
    const bufs = [Buffer.allocUnsafe(Math.min(STREAM_CHUNK_BYTES, Math.max(1, f.size))), Buffer.allocUnsafe(Math.min(STREAM_CHUNK_BYTES, Math.max(1, f.size - offset)))] as const
    for (let pos = 0; pos < offset; ) {
      const n = await readAt(f, bufs[0], pos, offset - pos, label)
      hash.update(bufs[0].subarray(0, n))
      pos += n
    }
    let sent = 0
    let writing: Promise<void> = Promise.resolve()
    for (let pos = offset, i = 0; pos < f.size; i ^= 1) {
      const buf = bufs[i]!
      const n = await readAt(f, buf, pos, f.size - pos, label)
      hash.update(buf.subarray(0, n))
      pos += n
      sent += n
      await writing
      writing = writeAll(socket, buf.subarray(0, n))
      writing.catch(() => undefined) // awaited before the next write; a failure surfaces there
    }
    await writing
    const after = await f.handle.stat()
    if (sent !== f.size - offset || after.size !== f.size || after.mtimeMs !== f.mtimeMs) throw new NatdError('FILE_UNREADABLE', `${label} changed while it was sent; send it again when it is complete`)
    const digest = hash.digest()
    socket.write(digest)
    return digest.toString('hex')
  } catch (err) {
    socket.destroy()
    throw err
  }
}

/** Reads up to min(buf, want) bytes at `pos`; FILE_UNREADABLE when the file ends first (it shrank). */
async function readAt(f: OpenedFile, buf: Buffer, pos: number, want: number, label: string): Promise<number> {
  const { bytesRead } = await f.handle.read(buf, 0, Math.min(buf.length, want), pos)
  if (bytesRead === 0) throw new NatdError('FILE_UNREADABLE', `${label} changed while it was sent; send it again when it is complete`)
  return bytesRead
}

/** Resolves once the socket took `buf` (the caller may then reuse it); TUNNEL_CLOSED if natd closed the connection first. */
function writeAll(socket: net.Socket, buf: Buffer): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const onClose = (): void => reject(new NatdError('TUNNEL_CLOSED', 'natd closed the data connection'))
    socket.once('close', onClose)
    socket.write(buf, (err) => {
      socket.off('close', onClose)
      if (err) reject(new NatdError('TUNNEL_CLOSED', 'natd closed the data connection', { cause: err }))
      else resolve()
    })
  })
}
