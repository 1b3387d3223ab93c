/** natctl open, close, tunnels, ping and netcheck: tunnels to peers and the paths they take. */
import type { Argv } from 'yargs'
import { ApiClient, resolveSocketPath } from '../ipc/client.js'
import { OPEN_VIAS } from '../ipc/schema.js'
import { call, duration, out, UsageError, type Global } from './command-kit.js'
import type { Result } from '../ipc/schema.js'
import { ago, bytes, pongLine, shown, table } from './format.js'

/** `natctl open`'s line: the peer's name may be the server's, shown(). */
export function openLine(r: Result<'open'>): string {
  const peer = shown(r.peer)
  return r.reused ? `tunnel to ${peer} already open: ${r.path} ${r.remote}` : `tunnel to ${peer}: ${r.path} ${r.remote} in ${r.tookMs} ms`
}

/** Declares open, close, tunnels, ping, netcheck. */
export function tunnelCommands(y: Argv<Global>): Argv<Global> {
  return y
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
        out(g, r, () => openLine(r))
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
            if (!g.json) process.stdout.write(pongLine(r) + '\n')
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
}
