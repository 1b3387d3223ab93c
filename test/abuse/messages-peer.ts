// mallory's messages to the owner through the real Messages over a Mux pair on an
// in-memory pipe, and what the owner's `natctl messages` (the real runMessages) prints:
// for the abuse tests of natctl's terminal (terminal, json-terminal).
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { runMessages, type CommandIo } from '../../src/cli/transfer-commands.js'
import { Messages, MESSAGE_SERVICE } from '../../src/daemon/messages.js'
import type { ApiClient } from '../../src/ipc/client.js'
import { silentLogger } from '../../src/protocol/log.js'
import type { TunnelManager } from '../../src/tunnel/manager.js'
import { muxPair } from '../unit/tunnel/mux-pair.js'
import { upTunnel } from '../unit/helpers.js'

export const MALLORY = { name: 'mallory', id: 'm'.repeat(52) }
export const OWNER = { name: 'owner', id: 'o'.repeat(52) }
/** What the owner's terminal must not get from a peer: C0 but the newline natctl writes itself, DEL, C1, bidi and invisible format characters. */
// eslint-disable-next-line no-control-regex -- matching the control characters is the point
export const RAW = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]/gu

/**
 * mallory's messages, sent through the real Messages over a Mux pair into the owner's
 * inbox; returns what `natctl messages` (--json when `json`) prints and what natd stored.
 * Closing the muxes and removing the state directories is pushed to `cleanups`.
 */
export async function deliver(texts: string[], json: boolean, cleanups: Array<() => void>): Promise<{ printed: string; stored: string[] }> {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'abuse-terminal-'))
  const { a: muxS, b: muxV } = muxPair(cleanups)
  cleanups.push(() => fs.rmSync(tmp, { recursive: true, force: true }))
  for (const d of ['m', 'o']) fs.mkdirSync(path.join(tmp, d), { mode: 0o700 })
  const known = { list: () => [], resolveKey: async () => ({ ...MALLORY }) }
  const quotas = () => ({ messagesPerPeer: 1000, messageBytesPerPeer: 1 << 20 })
  const toOwner = upTunnel(OWNER, muxS)
  const fromMallory = upTunnel(MALLORY, muxV)
  const tunnels = { open: async () => ({ tunnel: toOwner, tookMs: 0, reused: true }) } as unknown as TunnelManager
  const mallory = new Messages({ dir: path.join(tmp, 'm'), tunnels, log: silentLogger, selfName: MALLORY.name, selfId: MALLORY.id, known, onMessage: () => undefined, quotas } as never)
  const owner = new Messages({ dir: path.join(tmp, 'o'), tunnels: {} as TunnelManager, log: silentLogger, selfName: OWNER.name, selfId: OWNER.id, known, onMessage: () => undefined, quotas } as never)
  muxV.on('open', (req) => {
    if (req.service === MESSAGE_SERVICE) owner.onChannel(fromMallory, req)
  })
  for (const t of texts) await mallory.send('owner', t, 5_000)
  let printed = ''
  const client = { call: async (_m: string, p: { from: string; limit: number }) => owner.list(p.from, p.limit), close: () => undefined } as unknown as ApiClient
  const io: CommandIo = { json, connect: async () => client, socketPath: '/nonexistent', usage: (m) => new Error(m), stdout: { write: (s: string) => (printed += s) }, stderr: { write: () => true } }
  await runMessages(io, { follow: false, from: '' })
  return { printed, stored: owner.list('', 0).map((m) => m.text) }
}
