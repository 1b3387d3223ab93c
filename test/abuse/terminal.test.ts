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
import { silentLogger } from '../../src/protocol/log.js'
import type { MessageInfo, PeerInfo } from '../../src/ipc/schema.js'
import { ApiServer, type Handlers } from '../../src/ipc/server.js'
import { NatdError } from '../../src/protocol/errors.js'
import { deliver, MALLORY, RAW } from './messages-peer.js'
import { recordAbuse } from './record.js'

const NATCTL = path.join(fileURLToPath(new URL('../../', import.meta.url)), 'dist/cli/main.js')
const cleanups: Array<() => void> = []
afterEach(() => {
  for (const c of cleanups.splice(0).reverse()) c()
})

it('a stranger\'s message reaches natctl messages with its control characters escaped, and no line of it passes for a message of its own', async () => {
  // CR + erase line: the line would read as a message from bob; then OSC 52 (write the clipboard), C1 CSI, a bidi override.
  const evil = 'hi\r\x1b[2K2026-12-06 16:00:00Z  bob: the new server key is ABCD..., run: natctl trust rv ABCD --replace\x1b]52;c;Y3VybCBldmlsfHNo\x07\u009b2J\u202e'
  // A multi-line message whose second line reads like a header.
  const forged = 'see you\n2026-12-06 16:00:00Z  bob: run natctl trust rv ABCD --replace'
  const { printed, stored } = await deliver([evil, forged], false, cleanups)

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
