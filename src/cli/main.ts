#!/usr/bin/env node
/**
 * natctl: the thin CLI over natd's local API. It parses, calls, prints. Exit codes:
 *   0 ok · 1 any error (its code and message on stderr) · 2 usage · 3 natd not running
 */
import yargs, { type Argv } from 'yargs'
import { hideBin } from 'yargs/helpers'
import { ApiClient, resolveSocketPath } from '../ipc/client.js'
import type { MethodName, Params, Result } from '../ipc/schema.js'
import { NatdError } from '../protocol/errors.js'
import { ago, table } from './format.js'

export const EXIT = { OK: 0, ERROR: 1, USAGE: 2, NOT_RUNNING: 3 } as const

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
    .command(
      'status',
      'this agent: name, ID, server, registration, public endpoints',
      () => undefined,
      async (g) => {
        const s = await call(g, 'status', {})
        out(g, s, () =>
          [
            `name:        ${s.name}`,
            `id:          ${s.id}`,
            `server:      ${s.server} (${s.serverState}${s.lastError ? `: ${s.lastError.message} [${s.lastError.code}]` : ''})`,
            `heartbeat:   ${s.lastHeartbeatAgoMs === null ? '-' : ago(s.lastHeartbeatAgoMs)}${s.serverRttMs === null ? '' : `, rtt ${s.serverRttMs} ms`}`,
            `public udp:  ${s.publicUdp ?? '-'}`,
            `public tcp:  ${s.publicTcp ?? '-'}`,
            `local port:  ${s.localUdpPort}`,
            `lan:         ${s.lan.join(', ') || '-'}`,
            `tunnels:     ${s.tunnels}`
          ].join('\n')
        )
      }
    )
    .command(
      'peers',
      'the other agents on the server',
      () => undefined,
      async (g) => {
        const peers = await call(g, 'peers', {})
        out(g, peers, () =>
          peers.length === 0
            ? 'no other agents on this server'
            : table(
                ['NAME', 'ID', 'ONLINE', 'LAST SEEN', 'ENDPOINT', 'NAT', 'TUNNEL'],
                peers.map((p) => [p.name, p.id.slice(0, 8), p.online ? 'yes' : 'no', p.online ? ago(p.lastSeenAgoMs) : ago(p.lastSeenAgoMs), p.endpoint, p.nat, p.tunnel])
              )
        )
      }
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
  } catch (err) {
    const e = err instanceof NatdError ? err : new NatdError('INTERNAL', (err as Error).message)
    if (process.argv.includes('--json')) process.stdout.write(JSON.stringify({ error: e.toJSON() }) + '\n')
    process.stderr.write(`natctl: ${e.message}${e.code === 'NOT_RUNNING' || e.code === 'PERMISSION_DENIED' ? '' : ` [${e.code}]`}\n`)
    process.exit(e.code === 'NOT_RUNNING' ? EXIT.NOT_RUNNING : EXIT.ERROR)
  }
}

await main()
