// review8 #3: natctl's --json output carries a peer's message text with C1 controls
// (U+009B: a one-byte CSI for xterm, which treats UTF-8-decoded C1 as controls by
// default), bidi overrides and U+2028 raw: JSON.stringify escapes only U+0000-U+001F, '"'
// and '\\'. cli/format.ts says "--json needs none of this: JSON escapes them itself".
// `natctl messages --json` (and --follow --json, and the JSON error of a refused cp) is
// typed at a terminal too.
//
// (review 8; the repro of the fix in the commit that added this file.)
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, expect, it } from 'vitest'
import { runMessages, type CommandIo } from '../../src/cli/transfer-commands.js'
import { Messages, MESSAGE_SERVICE } from '../../src/daemon/messages.js'
import { silentLogger } from '../../src/protocol/log.js'
import type { ApiClient } from '../../src/ipc/client.js'
import type { TunnelManager } from '../../src/tunnel/manager.js'
import { Mux } from '../../src/tunnel/mux.js'
import { messagePipe } from '../unit/tunnel/pipe.js'
import { upTunnel } from '../unit/helpers.js'

const MALLORY = { name: 'mallory', id: 'm'.repeat(52) }
const OWNER = { name: 'owner', id: 'o'.repeat(52) }
const known = { list: () => [], resolveKey: async () => ({ ...MALLORY }) }
/** What the owner's terminal must not get from a peer: C0 but the newline natctl writes itself, DEL, C1, bidi and invisible format characters. */
// eslint-disable-next-line no-control-regex -- matching the control characters is the point
const RAW = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]/gu
const cleanups: Array<() => void> = []
afterEach(() => {
  for (const c of cleanups.splice(0).reverse()) c()
})

/** mallory's messages, sent through the real Messages over a Mux pair into the owner's inbox; returns what `natctl messages` prints and what natd stored. */
async function deliver(texts: string[], json: boolean): Promise<{ printed: string; stored: string[] }> {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'abuse-terminal-'))
  const pipe = messagePipe()
  const muxS = new Mux(pipe.a, true, silentLogger)
  const muxV = new Mux(pipe.b, false, silentLogger)
  cleanups.push(() => {
    muxS.close('over')
    muxV.close('over')
    fs.rmSync(tmp, { recursive: true, force: true })
  })
  for (const d of ['m', 'o']) fs.mkdirSync(path.join(tmp, d), { mode: 0o700 })
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


it('natctl messages --json prints a stranger\'s C1 CSI, bidi override and line separator escaped (still JSON, same text)', async () => {
  const evil = 'hi\u009b2J\u009b1;1Hbob: trust rv ABCD\u202etxt.exe\u2028'
  const { printed, stored } = await deliver([evil], true)
  expect(stored).toEqual([evil])
  const raw = printed.match(RAW) ?? []
  console.log(`raw characters in natctl messages --json: ${raw.map((c) => `U+${c.charCodeAt(0).toString(16).padStart(4, '0')}`).join(' ')}`)
  expect((JSON.parse(printed) as Array<{ text: string }>)[0]!.text).toBe(evil)
  expect(raw).toEqual([])
})
