#!/usr/bin/env node
/**
 * natctl: the thin CLI over natd's local API. It parses, calls, prints. Exit codes:
 *   0 ok · 1 any other error (its code and message on stderr) · 2 usage · 3 natd not running
 *   · 4 the peer is not the one asked for (KEY_MISMATCH, PEER_MISMATCH)
 */
import yargs, { type Argv } from 'yargs'
import { hideBin } from 'yargs/helpers'
import { ApiClient, resolveSocketPath } from '../ipc/client.js'
import { OPEN_VIAS, type MethodName, type Params, type Result } from '../ipc/schema.js'
import { parseBytes, parseDuration } from '../protocol/duration.js'
import { NatdError, type ErrorCode } from '../protocol/errors.js'
import { ago, bytes, peerLabel, portMappingLine, table } from './format.js'
import { formatFiles, formatPartials, processIo, runCp, runMessages } from './transfer-commands.js'

export const EXIT = { OK: 0, ERROR: 1, USAGE: 2, NOT_RUNNING: 3, WRONG_PEER: 4, BUSY: 5, UNSAFE_SOCKET: 6 } as const

/** Error codes with their own exit status; every other code exits with EXIT.ERROR. */
export const EXIT_BY_CODE: Partial<Record<ErrorCode, number>> = {
  NOT_RUNNING: EXIT.NOT_RUNNING,
  BUSY: EXIT.BUSY,
  UNSAFE_SOCKET: EXIT.UNSAFE_SOCKET,
  KEY_MISMATCH: EXIT.WRONG_PEER,
  PEER_MISMATCH: EXIT.WRONG_PEER
}

/** A bad command line: exit 2 with the message, like yargs' own usage errors. */
class UsageError extends Error {}

function port(value: unknown, what: string): number {
  const n = typeof value === 'number' ? value : Number(value)
  if (!Number.isInteger(n) || n < 1 || n > 65535) throw new UsageError(`${what} must be a port number 1-65535, not ${JSON.stringify(value)}`)
  return n
}

/** The one duration syntax natd, natd-rendezvous and natctl share (protocol/duration.ts): 500ms, 10s, 5m, 1h, or seconds. */
function duration(value: string, what: string): number {
  try {
    return parseDuration(value)
  } catch {
    throw new UsageError(`${what} must be a duration like 500ms, 10s, 5m or 1h, not ${JSON.stringify(value)}`)
  }
}

function peerPort(value: string): { peer: string; remotePort: number } {
  const i = value.lastIndexOf(':')
  if (i <= 0) throw new UsageError(`expected PEER:PORT, not ${JSON.stringify(value)}`)
  return { peer: value.slice(0, i), remotePort: port(value.slice(i + 1), 'the remote port') }
}

interface Global {
  socket?: string | undefined
  json: boolean
}

async function call<M extends MethodName>(g: Global, method: M, params: Params<M>): Promise<Result<M>> {
  const client = new ApiClient(resolveSocketPath(g.socket))
  await client.connect()
  try {
    return await client.call(method, params)
  } finally {
    client.close()
  }
}

function out(g: Global, value: unknown, human: () => string): void {
  process.stdout.write((g.json ? JSON.stringify(value, null, 2) : human()) + '\n')
}

export function buildCli(argv: string[]): Argv<Global> {
  return yargs(argv)
    .scriptName('natctl')
    .usage('$0 <command> [options]\n\nControls the local natd agent.')
    .option('socket', { type: 'string', describe: 'natd API socket', global: true })
    .option('json', { type: 'boolean', default: false, describe: 'machine-readable output', global: true })
    .option('debug', { type: 'boolean', default: false, describe: "trace natctl's steps on stderr (also NATCTL_DEBUG=1)", global: true })
    .middleware((g) => {
      if (g.debug) process.env.NATCTL_DEBUG = '1' // read by each ApiClient (ipc/client-trace.ts)
    })
    .command(
      'status',
      'this agent: name, ID, server, registration, public endpoints, port mapping',
      () => undefined,
      async (g) => {
        const s = await call(g, 'status', {})
        out(g, s, () =>
          [
            `name:        ${s.name}`,
            `id:          ${s.id}`,
            `server:      ${s.server} (${s.serverState}${s.lastError ? `: ${s.lastError.message} [${s.lastError.code}]` : ''})`,
            `server key:  ${s.serverKey ? `${s.serverKey.id} (${s.serverKey.pinned === 'flag' ? 'pinned by --server' : 'pinned on first use'})` : '- (pinned on first contact)'}`,
            `heartbeat:   ${s.lastHeartbeatAgoMs === null ? '-' : ago(s.lastHeartbeatAgoMs)}${s.serverRttMs === null ? '' : `, rtt ${s.serverRttMs} ms`}`,
            `public udp:  ${s.publicUdp ?? '-'}`,
            `public tcp:  ${s.publicTcp ?? '-'}`,
            `public ipv6: ${s.publicUdp6 ?? '-'}`,
            `local port:  ${s.localUdpPort}`,
            `lan:         ${s.lan.join(', ') || '-'}`,
            `probe ttl:   ${s.firstProbeTtl}`,
            `port map:    ${portMappingLine(s.portMapping)}`,
            `tunnels:     ${s.tunnels}`,
            ...(s.stateWarnings ?? []).map((w) => `WARNING:     ${w}`)
          ].join('\n')
        )
      }
    )
    .command(
      'peers',
      'the other agents on the server, and the pinned peers it does not list',
      () => undefined,
      async (g) => {
        const peers = await call(g, 'peers', {})
        out(g, peers, () =>
          peers.length === 0
            ? 'no other agents on this server'
            : table(
                ['NAME', 'ID', 'PINNED', 'ONLINE', 'LAST SEEN', 'ENDPOINT', 'NAT', 'TUNNEL'],
                peers.map((p) => [p.name, p.id.slice(0, 8), p.pinned ? 'yes' : 'no', p.online ? 'yes' : 'no', p.lastSeenAgoMs === null ? 'not listed' : ago(p.lastSeenAgoMs), p.endpoint, p.nat, p.tunnel])
              )
        )
      }
    )
    .command(
      'trust <name> <peer-id>',
      'pin PEER_ID (the full ID, as natctl status shows it there) to NAME: tunnels to NAME then need that key',
      (y) =>
        y
          .positional('name', { type: 'string', demandOption: true })
          .positional('peer-id', { type: 'string', demandOption: true })
          .option('replace', { type: 'boolean', default: false, describe: 'replace the ID pinned for NAME (the peer really changed its key)' }),
      async (g) => {
        const r = await call(g, 'peer.trust', { name: g.name, id: g['peer-id'], replace: g.replace })
        out(g, r, () => (r.replaced ? `${r.name} pinned to ${r.id} (was ${r.replaced.slice(0, 8)}…)` : `${r.name} pinned to ${r.id}`))
      }
    )
    .command(
      'untrust <name>',
      'forget the key pinned for NAME (the next tunnel pins again on first use)',
      (y) => y.positional('name', { type: 'string', demandOption: true }),
      async (g) => {
        const r = await call(g, 'peer.untrust', { name: g.name })
        out(g, r, () => `${r.name} no longer pinned (was ${r.id.slice(0, 8)}…)`)
      }
    )
    .command(
      'open <peer>',
      'open an encrypted tunnel to a peer (idempotent) and say which path it took',
      (y) =>
        y
          .positional('peer', { type: 'string', demandOption: true, describe: 'peer name or ID' })
          .option('via', { choices: OPEN_VIAS, default: 'auto' as const, describe: 'path to use' })
          .option('timeout', { type: 'string', default: '10s', describe: 'give up after this long' }),
      async (g) => {
        const r = await call(g, 'open', { peer: g.peer, via: g.via, timeoutMs: duration(g.timeout, '--timeout') })
        out(g, r, () => (r.reused ? `tunnel to ${r.peer} already open: ${r.path} ${r.remote}` : `tunnel to ${r.peer}: ${r.path} ${r.remote} in ${r.tookMs} ms`))
      }
    )
    .command(
      'close <peer>',
      'close the tunnel to a peer',
      (y) => y.positional('peer', { type: 'string', demandOption: true }),
      async (g) => {
        const r = await call(g, 'close', { peer: g.peer })
        out(g, r, () => (r.closed ? `closed the tunnel to ${g.peer}` : `no tunnel to ${g.peer}`))
      }
    )
    .command(
      'tunnels',
      'open tunnels: peer, path, remote endpoint, RTT, bytes, age',
      () => undefined,
      async (g) => {
        const ts = await call(g, 'tunnels', {})
        out(g, ts, () =>
          ts.length === 0
            ? 'no open tunnels'
            : table(
                ['PEER', 'PATH', 'REMOTE', 'RTT', 'IN', 'OUT', 'STREAMS', 'SINCE'],
                ts.map((t) => [t.peer, t.state === 'migrating' ? `${t.path} (migrating)` : t.path, t.remote, t.rttMs === null ? null : `${t.rttMs} ms`, bytes(t.bytesIn), bytes(t.bytesOut), t.streams, ago(Date.now() - Date.parse(t.since))])
              )
        )
      }
    )
    .command(
      'ping <peer>',
      'round trips over the tunnel to a peer (opens it if needed)',
      (y) =>
        y
          .positional('peer', { type: 'string', demandOption: true })
          .option('count', { alias: 'c', type: 'number', default: 4, describe: 'how many pings' })
          .option('timeout', { type: 'string', default: '5s', describe: 'per ping' }),
      async (g) => {
        if (!Number.isInteger(g.count) || g.count < 1 || g.count > 10_000) throw new UsageError('--count must be 1-10000')
        const timeoutMs = duration(g.timeout, '--timeout')
        const client = new ApiClient(resolveSocketPath(g.socket))
        await client.connect()
        const results = []
        try {
          for (let i = 0; i < g.count; i++) {
            const r = await client.call('ping', { peer: g.peer, timeoutMs })
            results.push(r)
            if (!g.json) process.stdout.write(`pong from ${r.peer} (${r.path} ${r.remote}) in ${r.rttMs} ms\n`)
            if (i + 1 < g.count) await new Promise((resolve) => setTimeout(resolve, 1000)) // natctl's pace for a person: a direct timer
          }
        } finally {
          client.close()
        }
        if (g.json) process.stdout.write(JSON.stringify(results, null, 2) + '\n')
      }
    )
    .command(
      'netcheck',
      'probe this agent\'s NAT from its tunnel socket: UDP, TCP, public endpoint, mapping and filtering (RFC 5780)',
      () => undefined,
      async (g) => {
        const r = await call(g, 'netcheck', {})
        const yes = (b: boolean | null): string => (b === null ? 'unknown' : String(b))
        const portMapping = (p: typeof r.portMapping): string => {
          if (!p.gateway) return 'no default gateway'
          const offered = [p.pcp && 'PCP', p.natPmp && 'NAT-PMP', p.upnp && 'UPnP'].filter(Boolean).join(', ')
          return `${offered || 'none (no PCP, NAT-PMP or UPnP)'} (gateway ${p.gateway}${p.externalIp ? `, external ${p.externalIp}` : ''})`
        }
        const verdicts = { none: 'none (no NAT: peers reach the public endpoint directly)', easy: 'easy (peers punch straight to the public endpoint)', hard: 'hard (mapping changes per destination: birthday punching)', unknown: 'unknown' }
        out(g, r, () =>
          [
            'Report:',
            `\t* UDP: ${r.udp}`,
            `\t* IPv4: ${r.publicUdp ? `yes, ${r.publicUdp}` : 'no answer from the server'}`,
            `\t* TCP: ${r.tcp}${r.publicTcp ? ` (control connection from ${r.publicTcp})` : ' (no registered control connection)'}`,
            `\t* Port preserved: ${yes(r.portPreserved)} (local port ${r.localPort})`,
            `\t* Mapping: ${r.mapping}${r.serverOtherAddress || r.mapping === 'unknown' || r.mapping === 'none' ? '' : ' (server has no second address: tested by port only)'}`,
            `\t* Filtering: ${r.filtering}${r.serverOtherAddress ? '' : ' (server has no second address: natd-rendezvous --alt-host)'}`,
            `\t* NAT: ${verdicts[r.nat]}${r.natChanged ? `; was ${r.previousNat}, the server was told` : ''}`,
            `\t* PortMapping: ${portMapping(r.portMapping)}`,
            `\t* Server: ${r.server}${r.serverOtherAddress ? `, other address ${r.serverOtherAddress}` : ''}${r.serverRttMs === null ? '' : `, ${r.serverRttMs} ms`}`
          ].join('\n')
        )
      }
    )
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
        out(g, r, () => (r.duplicate ? `${r.peer} had this message already (id ${r.id}): delivered once, not stored twice` : `delivered to ${r.peer} in ${r.tookMs} ms (id ${r.id})`))
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
    .command('forward', 'forward local TCP ports to peers', (y) =>
      y
        .command(
          'add <local-port> <target>',
          'listen on LOCAL_PORT and carry each connection to PEER:REMOTE_PORT',
          (y2) =>
            y2
              .positional('local-port', { type: 'string', demandOption: true })
              .positional('target', { type: 'string', demandOption: true, describe: 'PEER:REMOTE_PORT' })
              .option('bind', { type: 'string', default: '127.0.0.1', describe: 'local address to listen on' }),
          async (g) => {
            const { peer, remotePort } = peerPort(g.target)
            const r = await call(g, 'forward.add', { localPort: port(g['local-port'], 'LOCAL_PORT'), peer, remotePort, bind: g.bind })
            out(g, r, () => `forwarding ${r.bind}:${r.localPort} -> ${r.peer}:${r.remotePort}`)
          }
        )
        .command(
          'ls',
          'list forwards',
          () => undefined,
          async (g) => {
            const fs = await call(g, 'forward.ls', {})
            out(g, fs, () => (fs.length === 0 ? 'no forwards' : table(['LOCAL', 'PEER', 'REMOTE PORT', 'CONNECTIONS', 'STATE'], fs.map((f) => [`${f.bind}:${f.localPort}`, f.peer, f.remotePort, f.connections, f.listening ? 'listening' : `not listening: ${f.error ?? 'stopped'}`]))))
          }
        )
        .command(
          'rm <local-port>',
          'stop forwarding a local port',
          (y2) => y2.positional('local-port', { type: 'string', demandOption: true }),
          async (g) => {
            const r = await call(g, 'forward.rm', { localPort: port(g['local-port'], 'LOCAL_PORT') })
            out(g, r, () => `removed the forward ${r.removed.bind}:${r.removed.localPort} -> ${r.removed.peer}:${r.removed.remotePort}`)
          }
        )
        .demandCommand(1, 'name a forward command: add, ls, rm')
    )
    .command('expose', 'let peers reach local TCP ports (nothing is reachable until exposed)', (y) =>
      y
        .command(
          'add <port>',
          'expose PORT to peers (all of them, or only --allow ones)',
          (y2) =>
            y2
              .positional('port', { type: 'string', demandOption: true })
              .option('host', { type: 'string', default: '127.0.0.1', describe: 'where the service listens' })
              .option('allow', { type: 'string', array: true, default: [] as string[], describe: 'peer allowed (repeat for more); default all peers' }),
          async (g) => {
            const r = await call(g, 'expose.add', { port: port(g.port, 'PORT'), host: g.host, allow: g.allow.map(String) })
            out(g, r, () => `exposed ${r.host}:${r.port} to ${r.allow.length ? r.allow.map(peerLabel).join(', ') : 'every peer'}`)
          }
        )
        .command(
          'ls',
          'list exposed ports',
          () => undefined,
          async (g) => {
            const es = await call(g, 'expose.ls', {})
            out(g, es, () => (es.length === 0 ? 'nothing exposed' : table(['PORT', 'HOST', 'ALLOWED'], es.map((e) => [e.port, e.host, e.allow.length ? e.allow.map(peerLabel).join(', ') : 'every peer']))))
          }
        )
        .command(
          'rm <port>',
          'stop exposing a port',
          (y2) => y2.positional('port', { type: 'string', demandOption: true }),
          async (g) => {
            const r = await call(g, 'expose.rm', { port: port(g.port, 'PORT') })
            out(g, r, () => `no longer exposing port ${r.removed.port}`)
          }
        )
        .demandCommand(1, 'name an expose command: add, ls, rm')
    )
    .demandCommand(1, 'name a command')
    .strict()
    .help()
    .version(false)
}

async function main(): Promise<void> {
  const cli = buildCli(hideBin(process.argv)).fail((msg, err) => {
    if (err) throw err
    process.stderr.write(`natctl: ${msg}\nTry natctl --help\n`)
    process.exit(EXIT.USAGE)
  })
  try {
    await cli.parseAsync()
    // Done: nothing natctl started may keep it (a proof file's removal behind a stalled disk).
    process.exit(EXIT.OK)
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`natctl: ${err.message}\nTry natctl --help\n`)
      process.exit(EXIT.USAGE)
    }
    const e = err instanceof NatdError ? err : new NatdError('INTERNAL', (err as Error).message)
    if (process.argv.includes('--json')) process.stdout.write(JSON.stringify({ error: e.toJSON() }) + '\n')
    process.stderr.write(`natctl: ${e.message}${e.code === 'NOT_RUNNING' || e.code === 'PERMISSION_DENIED' ? '' : ` [${e.code}]`}\n`)
    process.exit(EXIT_BY_CODE[e.code] ?? EXIT.ERROR)
  }
}

await main()
