/**
 * natctl send, messages, cp and files: the parts that are more than one call and a print
 * (argument parsing, following events, the progress bar). main.ts declares the commands.
 */
import fs from 'node:fs'
import path from 'node:path'
import { ApiClient, resolveSocketPath } from '../ipc/client.js'
import { openFileStream, openToSend, streamFile } from '../ipc/file-stream.js'
import type { FileProgress, FileSendResult, MessageInfo, PartialFile, ReceivedFile } from '../ipc/schema.js'
import { NatdError } from '../protocol/errors.js'
import { ago, bytes, table } from './format.js'
import { ProgressBar } from './progress.js'

export interface CommandIo {
  json: boolean
  connect(): Promise<ApiClient>
  /** The API socket (the data socket for cp's bytes sits beside it). */
  socketPath: string
  usage(message: string): Error
  stdout: { write(s: string): unknown }
  stderr: { isTTY?: boolean; columns?: number; write(s: string): unknown }
}

/** `cp a b bob:` → sources [a, b], peer bob, name ''; `cp a bob:x.txt` names the file x.txt at bob. */
export function parseCpArgs(args: string[], usage: (m: string) => Error): { sources: string[]; peer: string; name: string } {
  if (args.length < 2) throw usage('expected FILE... PEER: (at least one file, then the peer with a colon)')
  const target = args[args.length - 1]!
  const i = target.indexOf(':')
  if (i <= 0) throw usage(`the last argument must be PEER: or PEER:NAME, not ${JSON.stringify(target)}`)
  const name = target.slice(i + 1)
  const sources = args.slice(0, -1)
  if (name && sources.length > 1) throw usage('PEER:NAME names one file; give PEER: to send several')
  return { sources, peer: target.slice(0, i), name }
}

export interface FileToSend {
  path: string
  /** The name the receiver gets ('' = the file's own name). */
  name: string
}

/** The files `cp` sends: each FILE, or with -r every regular file under a directory (named by its path below the directory's parent). */
export function expandSources(sources: string[], recursive: boolean, name: string): FileToSend[] {
  const out: FileToSend[] = []
  for (const src of sources) {
    const abs = path.resolve(src)
    let st: fs.Stats
    try {
      st = fs.statSync(abs)
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      throw new NatdError('FILE_UNREADABLE', `${src}: ${code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : (code ?? String(err))}`)
    }
    if (st.isDirectory()) {
      if (!recursive) throw new NatdError('FILE_UNREADABLE', `${src} is a directory (use -r to send the files in it)`)
      const walk = (dir: string): void => {
        for (const e of fs.readdirSync(dir, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
          const p = path.join(dir, e.name)
          if (e.isDirectory()) walk(p)
          else if (e.isFile()) out.push({ path: p, name: path.relative(path.dirname(abs), p) })
        }
      }
      walk(abs)
    } else {
      out.push({ path: abs, name })
    }
  }
  return out
}

function rate(size: number, ms: number): string {
  return ms > 0 ? `${bytes(Math.round((size * 1000) / ms))}/s` : '-'
}

export async function runCp(io: CommandIo, args: string[], opts: { recursive: boolean; timeoutMs: number }): Promise<void> {
  const { sources, peer, name } = parseCpArgs(args, io.usage)
  const files = expandSources(sources, opts.recursive, name)
  const client = await io.connect()
  try {
    let bar: ProgressBar | null = null
    let current = ''
    if (!io.json && io.stderr.isTTY) {
      await client.subscribe(['file.progress'], (event, data) => {
        if (event !== 'file.progress') return
        const p = data as FileProgress
        if (p.path === current) bar?.update(p.offset, p.sent, p.size)
      })
    }
    for (const f of files) {
      current = f.path
      bar = new ProgressBar(io.stderr, f.name || path.basename(f.path))
      try {
        const r = await sendOne(io.socketPath, client, { peer, path: f.path, name: f.name || path.basename(f.path), timeoutMs: opts.timeoutMs })
        bar.clear()
        if (io.json) io.stdout.write(JSON.stringify(r) + '\n')
        else {
          const resumed = r.offset > 0 ? `, resumed at ${bytes(r.offset)} (${bytes(r.sent)} sent)` : ''
          io.stdout.write(`${f.path} -> ${r.peer}:${r.savedAs}  ${bytes(r.size)} in ${(r.tookMs / 1000).toFixed(1)} s, ${rate(r.sent, r.tookMs)}${resumed}  sha256 ${r.sha256.slice(0, 16)}…\n`)
        }
      } finally {
        bar.clear()
      }
    }
  } finally {
    client.close()
  }
}

/**
 * One file, with the caller's rights: natctl opens it (FILE_UNREADABLE if it cannot) and
 * streams it to natd on the data socket (ipc/file-stream.ts); natd opens nothing.
 */
export async function sendOne(socketPath: string, client: ApiClient, f: { peer: string; path: string; name: string; timeoutMs: number }): Promise<FileSendResult> {
  const opened = await openToSend(f.path)
  try {
    const { socket, token } = await openFileStream(socketPath)
    let local: unknown = null
    const streaming = streamFile(socket, opened, f.path).catch((err: unknown) => {
      local = err
    })
    try {
      return await client.call('file.send', { peer: f.peer, source: token, name: f.name, size: opened.size, mtimeMs: opened.mtimeMs, dev: opened.dev, ino: opened.ino, path: f.path, timeoutMs: f.timeoutMs })
    } catch (err) {
      // Direct timers in natctl: a one-shot process run by a person, no clock to inject.
      await Promise.race([streaming, new Promise((resolve) => setTimeout(resolve, 100))])
      // natctl's own reason (the file changed under it) says more than natd's "the caller stopped".
      throw local instanceof NatdError && local.code === 'FILE_UNREADABLE' ? local : err
    } finally {
      socket.destroy()
    }
  } finally {
    await opened.handle.close()
  }
}

export function formatPartials(ps: PartialFile[]): string {
  if (ps.length === 0) return 'no partial files'
  return table(
    ['NAME', 'HAVE', 'FROM', 'UPDATED', 'STATE'],
    ps.map((p) => [p.name || '?', bytes(p.bytes), p.fromId.slice(0, 8), ago(Date.now() - Date.parse(p.updatedAt)), p.active ? 'receiving' : 'kept for a resume'])
  )
}

function formatMessage(m: MessageInfo): string {
  return `${m.receivedAt.replace('T', ' ').replace(/\.\d+Z$/, 'Z')}  ${m.from}: ${m.text}`
}

export async function runMessages(io: CommandIo, opts: { follow: boolean; from: string }): Promise<void> {
  const client = await io.connect()
  if (!opts.follow) {
    try {
      const ms = await client.call('messages', { from: opts.from, limit: 0 })
      io.stdout.write((io.json ? JSON.stringify(ms, null, 2) : ms.length === 0 ? 'no messages' : ms.map(formatMessage).join('\n')) + '\n')
    } finally {
      client.close()
    }
    return
  }
  // Subscribe before listing, so nothing falls between the two; ids drop duplicates.
  const seen = new Set<string>()
  const print = (m: MessageInfo): void => {
    if (seen.has(m.id)) return
    seen.add(m.id)
    io.stdout.write((io.json ? JSON.stringify(m) : formatMessage(m)) + '\n')
  }
  // With --from, natd decides which messages are from that peer (its one peer matcher):
  // each new message makes natctl ask for the filtered inbox again, printing what is new.
  let relisting = Promise.resolve()
  const relist = (): void => {
    relisting = relisting.then(async () => {
      for (const m of await client.call('messages', { from: opts.from, limit: 0 })) print(m)
    }).catch(() => undefined)
  }
  const queued: MessageInfo[] = []
  let listed = false
  await client.subscribe(['message'], (event, data) => {
    if (event !== 'message') return
    if (opts.from) relist()
    else if (listed) print(data as MessageInfo)
    else queued.push(data as MessageInfo)
  })
  for (const m of await client.call('messages', { from: opts.from, limit: 0 })) print(m)
  listed = true
  for (const m of queued.splice(0)) print(m)
  // Until Ctrl-C, or natd goes away: a dead connection answers no request, so ask now and then
  // (direct timers: natctl is a one-shot process run by a person, no clock to inject).
  for (;;) {
    await new Promise((resolve) => setTimeout(resolve, FOLLOW_CHECK_MS))
    const alive = await Promise.race([client.call('messages', { from: '', limit: 1 }).then(() => true, () => false), new Promise<false>((resolve) => setTimeout(() => resolve(false), FOLLOW_CHECK_MS))])
    if (!alive) {
      client.close()
      throw new NatdError('NOT_RUNNING', 'natd went away')
    }
  }
}

/** natctl messages --follow checks this often that natd is still there. */
export const FOLLOW_CHECK_MS = 5_000

export function formatFiles(fs_: ReceivedFile[]): string {
  if (fs_.length === 0) return 'no files received'
  return table(
    ['NAME', 'SIZE', 'FROM', 'RECEIVED', 'SHA256'],
    fs_.map((f) => [f.name, bytes(f.size), f.from, ago(Date.now() - Date.parse(f.receivedAt)), f.sha256.slice(0, 16)])
  )
}

/** The io a command gets: stdout/stderr of this process and a client on the chosen socket. */
export function processIo(g: { socket?: string | undefined; json: boolean }, usage: (message: string) => Error): CommandIo {
  const socketPath = resolveSocketPath(g.socket)
  return {
    json: g.json,
    socketPath,
    connect: async () => {
      const client = new ApiClient(socketPath)
      await client.connect()
      return client
    },
    usage,
    stdout: process.stdout,
    stderr: process.stderr
  }
}
