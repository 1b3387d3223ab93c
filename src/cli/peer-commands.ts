/**
 * natctl status, peers, trust and untrust: this agent, the other agents on its server, and
 * the keys pinned to their names.
 */
import type { Argv } from 'yargs'
import type { PeerInfo, Result } from '../ipc/schema.js'
import { call, out, type Global } from './command-kit.js'
import { ago, portMappingLine, shown, table } from './format.js'

/** `natctl status` for people; the server's last error is its own words, shown(). */
export function formatStatus(s: Result<'status'>): string {
  return [
    `name:        ${s.name}`,
    `id:          ${s.id}`,
    `server:      ${s.server} (${s.serverState}${s.lastError ? `: ${shown(s.lastError.message)} [${s.lastError.code}]` : ''})`,
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
}

/** `natctl peers` for people: the names are the server's (or the pins'), each cell shown() by table(). */
export function formatPeers(peers: PeerInfo[]): string {
  if (peers.length === 0) return 'no other agents on this server'
  return table(
    ['NAME', 'ID', 'PINNED', 'ONLINE', 'LAST SEEN', 'ENDPOINT', 'NAT', 'TUNNEL'],
    peers.map((p) => [p.name, p.id.slice(0, 8), p.pinned ? 'yes' : 'no', p.online ? 'yes' : 'no', p.lastSeenAgoMs === null ? 'not listed' : ago(p.lastSeenAgoMs), p.endpoint, p.nat, p.tunnel])
  )
}

/** Declares status, peers, trust, untrust. */
export function peerCommands(y: Argv<Global>): Argv<Global> {
  return y
    .command(
      'status',
      'this agent: name, ID, server, registration, public endpoints, port mapping',
      () => undefined,
      async (g) => {
        const s = await call(g, 'status', {})
        out(g, s, () => formatStatus(s))
      }
    )
    .command(
      'peers',
      'the other agents on the server, and the pinned peers it does not list',
      () => undefined,
      async (g) => {
        const peers = await call(g, 'peers', {})
        out(g, peers, () => formatPeers(peers))
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
}
