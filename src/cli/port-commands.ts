/** natctl forward and expose: local TCP ports carried to peers, and local ports peers may reach. */
import type { Argv } from 'yargs'
import { call, out, peerPort, port, type Global } from './command-kit.js'
import { peerLabel, table } from './format.js'

/** Declares forward add/ls/rm and expose add/ls/rm. */
export function portCommands(y: Argv<Global>): Argv<Global> {
  return y
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
}
