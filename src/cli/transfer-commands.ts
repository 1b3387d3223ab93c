/**
 * natctl send, messages, cp and files: the parts that are more than one call and a print
 * (argument parsing, following events, the progress bar), and their declarations
 * (transferCommands, at the end).
 */
import fs from 'node:fs'
import path from 'node:path'
import type { Argv } from 'yargs'
import { ApiClient, resolveSocketPath } from '../ipc/client.js'
import { openFileStream, openToSend, streamFile } from '../ipc/file-stream.js'
import type { FileProgress, FileSendResult, MessageInfo, PartialFile, ReceivedFile, Result } from '../ipc/schema.js'
import { parseBytes } from '../protocol/duration.js'
import { NatdError } from '../protocol/errors.js'
import { call, duration, out, UsageError, type Global } from './command-kit.js'
import { ago, bytes, jsonOut, peerLabel, shown, shownOutput, shownText, table } from './format.js'
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

/** `natctl cp`'s line for one file sent; the name the receiver saved it as is its choice, shown(). */
export function cpLine(source: string, r: FileSendResult): string {
  const resumed = r.offset > 0 ? `, resumed at ${bytes(r.offset)} (${bytes(r.sent)} sent)` : ''
  return shownOutput(`${source} -> ${shown(r.peer)}:${shown(r.savedAs)}  ${bytes(r.size)} in ${(r.tookMs / 1000).toFixed(1)} s, ${rate(r.sent, r.tookMs)}${resumed}  sha256 ${r.sha256.slice(0, 16)}…`)
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
      bar = new ProgressBar(io.stderr, shown(f.name || path.basename(f.path)))
      try {
        const r = await sendOne(io.socketPath, client, { peer, path: f.path, name: f.name || path.basename(f.path), timeoutMs: opts.timeoutMs })
        bar.clear()
        if (io.json) io.stdout.write(jsonOut(r) + '\n')
        else {
          io.stdout.write(cpLine(f.path, r) + '\n')
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

/**
 * One message as `natctl messages` prints it: a header line (time, sender, the text's first
 * line), then the text's other lines indented (shownText). Nothing the sender chose reaches
 * the terminal raw: its text can neither rewrite the header nor pass for another message.
 */
export function formatMessage(m: MessageInfo): string {
  return `${m.receivedAt.replace('T', ' ').replace(/\.\d+Z$/, 'Z')}  ${shown(m.from)}: ${shownText(m.text)}`
}

export async function runMessages(io: CommandIo, opts: { follow: boolean; from: string }): Promise<void> {
  const client = await io.connect()
  if (!opts.follow) {
    try {
      const ms = await client.call('messages', { from: opts.from, limit: 0 })
      io.stdout.write((io.json ? jsonOut(ms, 2) : ms.length === 0 ? 'no messages' : ms.map(formatMessage).join('\n')) + '\n')
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
    io.stdout.write((io.json ? jsonOut(m) : formatMessage(m)) + '\n')
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

/** Declares send, messages, cp, files (list, policy). */
export function transferCommands(y: Argv<Global>): Argv<Global> {
  return y
    .command(
      'send <peer> <text..>',
      'send a message to a peer; exits 0 once the peer\'s natd has stored it',
      (y) =>
        y
          .positional('peer', { type: 'string', demandOption: true })
          .positional('text', { type: 'string', array: true, demandOption: true, describe: 'the message (words are joined by spaces)' })
          .option('timeout', { type: 'string', default: '10s', describe: 'give up after this long' })
          .option('id', { type: 'string', describe: 'the message ID (as a failed send printed it) or any key of yours: the peer stores one message per ID' }),
      async (g) => {
        const params = { peer: g.peer, text: g.text.map(String).join(' '), timeoutMs: duration(g.timeout, '--timeout'), id: g.id ?? null }
        const client = new ApiClient(resolveSocketPath(g.socket))
        await client.connect()
        let r: Result<'message.send'>
        try {
          r = await client.call('message.send', params)
        } catch (err) {
          // natd went away during the send: it kept the message's ID (unless --id named one).
          if (err instanceof NatdError && err.code === 'NOT_RUNNING') {
            const again = g.id ? 'run the same command again (same --id)' : 'run the same command again: natd kept the message\'s ID'
            throw new NatdError('NOT_RUNNING', `${err.message} during the send. The message may have reached ${g.peer}: once natd is back, ${again}; ${g.peer} stores it once`)
          }
          throw err
        } finally {
          client.close()
        }
        out(g, r, () => (r.duplicate ? `${shown(r.peer)} had this message already (id ${r.id}): delivered once, not stored twice` : `delivered to ${shown(r.peer)} in ${r.tookMs} ms (id ${r.id})`))
      }
    )
    .command(
      'messages',
      'messages received from peers (kept across restarts)',
      (y) =>
        y
          .option('follow', { alias: 'f', type: 'boolean', default: false, describe: 'keep printing new messages as they arrive' })
          .option('from', { type: 'string', default: '', describe: 'only from this peer' })
          .option('clear', { type: 'boolean', default: false, describe: 'remove the messages (from --from, else all): frees the senders\' quota' }),
      async (g) => {
        if (!g.clear) return runMessages(processIo(g, (m) => new UsageError(m)), { follow: g.follow, from: g.from })
        const r = await call(g, 'messages.clear', { from: g.from })
        out(g, r, () => `removed ${r.removed} message${r.removed === 1 ? '' : 's'}`)
      }
    )
    .command(
      'cp <args..>',
      'send files to a peer: natctl cp FILE... PEER: (or FILE PEER:NAME); resumes an interrupted transfer',
      (y) =>
        y
          .positional('args', { type: 'string', array: true, demandOption: true, describe: 'FILE... PEER:' })
          .option('recursive', { alias: 'r', type: 'boolean', default: false, describe: 'send the files in directories' })
          .option('timeout', { type: 'string', default: '10s', describe: 'for the tunnel and the peer\'s answer to each offer' }),
      (g) => runCp(processIo(g, (m) => new UsageError(m)), g.args.map(String), { recursive: g.recursive, timeoutMs: duration(g.timeout, '--timeout') })
    )
    .command('files', 'files received from peers, and the accept policy', (y) =>
      y
        .command(
          '$0',
          'list received files: name, size, sender, time, sha256 (--partial: transfers cut off, kept for a resume)',
          (y2) => y2.option('partial', { type: 'boolean', default: false, describe: 'list the partial files instead' }),
          async (g) => {
            if (g.partial) {
              const ps = await call(g, 'files.partials', {})
              out(g, ps, () => formatPartials(ps))
              return
            }
            const fs = await call(g, 'files', {})
            out(g, fs, () => formatFiles(fs))
          }
        )
        .command(
          'policy',
          'show or change whom files are accepted from, up to what size, and each peer\'s quotas',
          (y2) =>
            y2
              .option('allow', { type: 'string', array: true, describe: 'accept files only from these peers (repeat for more)' })
              .option('allow-all', { type: 'boolean', default: false, describe: 'accept files from every peer (the default)' })
              .option('max-size', { type: 'string', describe: 'largest file accepted, e.g. 500MB, 2GiB' })
              .option('peer-files', { type: 'number', describe: 'files one peer may have in the inbox (received and partial)' })
              .option('peer-bytes', { type: 'string', describe: 'their bytes, e.g. 4GiB' })
              .option('peer-messages', { type: 'number', describe: 'messages one peer may have in the inbox' })
              .option('peer-message-bytes', { type: 'string', describe: 'their text, e.g. 1MiB' })
              .option('stall-timeout', { type: 'string', describe: 'cut a transfer off after this long without progress, e.g. 30s' }),
          async (g) => {
            // One size syntax with natd-rendezvous (protocol/duration.ts): 65536, 500MB, 2GiB.
            const size = (flag: string, v: string | undefined): number | null => {
              if (v === undefined) return null
              let n = Number.NaN
              try {
                n = parseBytes(v)
              } catch {
                // refused below
              }
              if (!Number.isSafeInteger(n)) throw new UsageError(`--${flag} must be a size like 500MB or 2GiB, not ${JSON.stringify(v)}`)
              return n
            }
            const allow = g['allow-all'] ? [] : g.allow ? g.allow.map(String) : null
            const r = await call(g, 'files.policy', {
              allow,
              maxSizeBytes: size('max-size', g['max-size']),
              inbox: null,
              filesPerPeer: g['peer-files'] ?? null,
              fileBytesPerPeer: size('peer-bytes', g['peer-bytes']),
              messagesPerPeer: g['peer-messages'] ?? null,
              messageBytesPerPeer: size('peer-message-bytes', g['peer-message-bytes']),
              stallTimeoutMs: g['stall-timeout'] === undefined ? null : duration(g['stall-timeout'], '--stall-timeout')
            })
            out(g, r, () =>
              [
                `accept from:   ${r.allow.length ? r.allow.map(peerLabel).join(', ') : 'every peer'}`,
                `max size:      ${bytes(r.maxSizeBytes)}`,
                `inbox:         ${r.inbox}  (set by natd --inbox or the config file)`,
                `per peer:      ${r.filesPerPeer} files, ${bytes(r.fileBytesPerPeer)}; ${r.messagesPerPeer} messages, ${bytes(r.messageBytesPerPeer)}`,
                `stall timeout: ${r.stallTimeoutMs / 1000} s`
              ].join('\n')
            )
          }
        )
    )
}
