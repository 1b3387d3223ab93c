#!/usr/bin/env node
/**
 * natctl: the thin CLI over natd's local API. It parses, calls, prints. Exit codes:
 *   0 ok · 1 any other error (its code and message on stderr) · 2 usage · 3 natd not running
 *   · 4 the peer is not the one asked for (KEY_MISMATCH, PEER_MISMATCH)
 */
import yargs, { type Argv } from 'yargs'
import { hideBin } from 'yargs/helpers'
import { NatdError, type ErrorCode } from '../protocol/errors.js'
import { UsageError, type Global } from './command-kit.js'
import { errorLine, jsonOut } from './format.js'
import { peerCommands } from './peer-commands.js'
import { portCommands } from './port-commands.js'
import { transferCommands } from './transfer-commands.js'
import { tunnelCommands } from './tunnel-commands.js'

export const EXIT = { OK: 0, ERROR: 1, USAGE: 2, NOT_RUNNING: 3, WRONG_PEER: 4, BUSY: 5, UNSAFE_SOCKET: 6 } as const

/** Error codes with their own exit status; every other code exits with EXIT.ERROR. */
export const EXIT_BY_CODE: Partial<Record<ErrorCode, number>> = {
  NOT_RUNNING: EXIT.NOT_RUNNING,
  BUSY: EXIT.BUSY,
  UNSAFE_SOCKET: EXIT.UNSAFE_SOCKET,
  KEY_MISMATCH: EXIT.WRONG_PEER,
  PEER_MISMATCH: EXIT.WRONG_PEER
}

export function buildCli(argv: string[]): Argv<Global> {
  const base: Argv<Global> = yargs(argv)
    .scriptName('natctl')
    .usage('$0 <command> [options]\n\nControls the local natd agent.')
    .option('socket', { type: 'string', describe: 'natd API socket', global: true })
    .option('json', { type: 'boolean', default: false, describe: 'machine-readable output', global: true })
    .option('debug', { type: 'boolean', default: false, describe: "trace natctl's steps on stderr (also NATCTL_DEBUG=1)", global: true })
    .middleware((g) => {
      if (g.debug) process.env.NATCTL_DEBUG = '1' // read by each ApiClient (ipc/client-trace.ts)
    })
  // In the order --help lists them.
  return portCommands(transferCommands(tunnelCommands(peerCommands(base))))
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
    if (process.argv.includes('--json')) process.stdout.write(jsonOut({ error: e.toJSON() }) + '\n')
    process.stderr.write(errorLine(e) + '\n')
    process.exit(EXIT_BY_CODE[e.code] ?? EXIT.ERROR)
  }
}

await main()
