// Abuse suite, natctl's terminal (review 7 #4): what a stranger (any registered key:
// messages have no allow list) chooses reaches the owner's terminal only escaped. mallory
// sends a message through the real Messages over a Mux pair; the owner runs the real
// `natctl messages` code (runMessages) on its inbox.
//
//   mallory ──message.send "hi\r\e[2K<date>  bob: …\e]52;c;…\a"──▶ owner's natd (stored as sent)
//                                                                    │ natctl messages
//                                                                    ▼ the owner's terminal: escaped
import { execFile } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterEach, expect, it } from 'vitest'
import { CONTINUATION_INDENT } from '../../src/cli/format.js'
import { runMessages, type CommandIo } from '../../src/cli/transfer-commands.js'
import { Messages, MESSAGE_SERVICE } from '../../src/daemon/messages.js'
import { silentLogger } from '../../src/protocol/log.js'
import type { ApiClient } from '../../src/ipc/client.js'
import type { MessageInfo, PeerInfo } from '../../src/ipc/schema.js'
import { ApiServer, type Handlers } from '../../src/ipc/server.js'
import { NatdError } from '../../src/protocol/errors.js'
import type { TunnelManager } from '../../src/tunnel/manager.js'
import { Mux } from '../../src/tunnel/mux.js'
import { messagePipe } from '../unit/tunnel/pipe.js'
import { upTunnel } from '../unit/helpers.js'
import { recordAbuse } from './record.js'

const NATCTL = path.join(fileURLToPath(new URL('../../', import.meta.url)), 'dist/cli/main.js')
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
async function deliver(texts: string[]): Promise<{ printed: string; stored: string[] }> {
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
  const io: CommandIo = { json: false, connect: async () => client, socketPath: '/nonexistent', usage: (m) => new Error(m), stdout: { write: (s: string) => (printed += s) }, stderr: { write: () => true } }
  await runMessages(io, { follow: false, from: '' })
  return { printed, stored: owner.list('', 0).map((m) => m.text) }
}

it('a stranger\'s message reaches natctl messages with its control characters escaped, and no line of it passes for a message of its own', async () => {
  // CR + erase line: the line would read as a message from bob; then OSC 52 (write the clipboard), C1 CSI, a bidi override.
  const evil = 'hi\r\x1b[2K2026-12-06 16:00:00Z  bob: the new server key is ABCD..., run: natctl trust rv ABCD --replace\x1b]52;c;Y3VybCBldmlsfHNo\x07\u009b2J\u202e'
  // A multi-line message whose second line reads like a header.
  const forged = 'see you\n2026-12-06 16:00:00Z  bob: run natctl trust rv ABCD --replace'
  const { printed, stored } = await deliver([evil, forged])

  // natd stores the text as sent (--json and the API give it back exactly).
  expect(stored).toEqual([evil, forged])
  const raw = printed.match(RAW) ?? []
  const lines = printed.replace(/\n$/, '').split('\n')
  const headers = lines.filter((l) => /^\d{4}-\d\d-\d\d /.test(l))
  recordAbuse({
    row: 'a stranger\'s message with ESC/CSI, OSC 52, CR, C1 and a forged second line, shown by natctl messages (review 7 #4)',
    metric: 'raw control characters on the owner\'s terminal; lines reading as a message header',
    before: '6 raw (CR, ESC ×2, BEL, C1 CSI, U+202E): the line rewritten to read as from bob; 3 header lines for 2 messages',
    now: `${raw.length} raw; ${headers.length} header lines for 2 messages`,
    unit: 'characters, lines',
    bound: '0 raw (escaped as \\u001b); one header line per message, continuation lines indented'
  })
  expect(raw).toEqual([])
  expect(printed).toContain('mallory: hi\\u000d\\u001b[2K2026-12-06 16:00:00Z  bob:')
  expect(headers.map((l) => l.split('  ')[1])).toEqual(['mallory: hi\\u000d\\u001b[2K2026-12-06 16:00:00Z', 'mallory: see you'])
  expect(lines[2]).toBe(`${CONTINUATION_INDENT}2026-12-06 16:00:00Z  bob: run natctl trust rv ABCD --replace`)
})

it('the real natctl (dist/cli/main.js): messages, peers and a peer\'s refusal in an error print nothing raw', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'abuse-terminal-api-'))
  const socketPath = path.join(dir, 'run', 'natd.sock')
  const evil = 'ok\r\x1b[2K\x1b]52;c;Y3VybA==\x07\u009b2J\nnext line'
  const message: MessageInfo = { id: 'a'.repeat(32), from: 'mallory', fromId: MALLORY.id, text: evil, sentAt: '2026-12-06T16:00:00.000Z', receivedAt: '2026-12-06T16:00:00.000Z' }
  // What a lying server or an older agent could hand natd: a name natd now drops, here straight from the API.
  const peer: PeerInfo = { name: 'bob\x1b[2J\nalice', id: MALLORY.id, online: true, lastSeenAgoMs: 0, pinned: false, endpoint: null, tcpEndpoint: null, lan: [], nat: 'easy', tunnel: null, downReason: null }
  const handlers = new Proxy({} as Handlers, {
    get: (_, method) =>
      method === 'messages' ? () => [message] : method === 'peers' ? () => [peer] : () => Promise.reject(new NatdError('NOT_ALLOWED', `bob refused a.txt: ${evil}`))
  })
  const server = new ApiServer(socketPath, handlers, silentLogger)
  await server.start()
  cleanups.push(() => {
    server.stop()
    fs.rmSync(dir, { recursive: true, force: true })
  })
  const natctl = (args: string[]): Promise<{ code: number; out: string }> =>
    new Promise((resolve) => {
      execFile(process.execPath, [NATCTL, '--socket', socketPath, ...args], { timeout: 15_000 }, (err, stdout, stderr) => {
        resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, out: stdout + stderr })
      })
    })
  const messages = await natctl(['messages'])
  const peers = await natctl(['peers'])
  const refused = await natctl(['forward', 'ls'])
  for (const r of [messages, peers]) expect(r.code).toBe(0)
  expect(refused.code).toBe(1)
  const all = messages.out + peers.out + refused.out
  expect(all.match(RAW) ?? []).toEqual([])
  expect(messages.out).toBe(`2026-12-06 16:00:00Z  mallory: ok\\u000d\\u001b[2K\\u001b]52;c;Y3VybA==\\u0007\\u009b2J\n${CONTINUATION_INDENT}next line\n`)
  expect(peers.out.split('\n')[1]).toMatch(/^bob\\u001b\[2J\\u000aalice {2}/)
  expect(refused.out).toBe('natctl: bob refused a.txt: ok\\u000d\\u001b[2K\\u001b]52;c;Y3VybA==\\u0007\\u009b2J\\u000anext line [NOT_ALLOWED]\n')
})
