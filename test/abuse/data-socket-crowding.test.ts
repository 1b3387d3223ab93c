// Abuse row for the data socket of `natctl cp` (`<api socket>.data`, ipc/file-stream.ts;
// review 9 #4), on a real Unix socket in a temp dir: one local user who may reach the
// socket (a member of group natd, as the API abuse test's `nobody`) holds more unclaimed
// data connections than natd keeps, then another user's natctl cp opens its stream.
//
// Before: natd held MAX_PENDING_STREAMS (16) unclaimed connections for all users together
// and refused the newcomer, with a warn line each: the holder made every other user's
// `natctl cp` fail with "natd closed the data connection", root's included. Now the oldest
// unclaimed connection is closed for the newcomer (as the API evicts its longest-idle
// connection), the table still holds at most 16, and evictions are counted, not logged each.
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { afterEach, expect, it } from 'vitest'
import { FileStreamServer, MAX_PENDING_STREAMS, openFileStream } from '../../src/ipc/file-stream.js'
import type { Logger } from '../../src/protocol/log.js'
import { recordAbuse } from './record.js'

/** Connections the crowding user opens and never claims: well past what natd keeps. */
const HELD = MAX_PENDING_STREAMS * 4

const cleanups: Array<() => void> = []
afterEach(() => {
  for (const c of cleanups.splice(0).reverse()) c()
})

/** Opens a data connection and waits for natd's TOKEN line (or its close). */
async function hold(socketPath: string): Promise<{ socket: net.Socket; token: string | null }> {
  const socket = net.connect(socketPath)
  socket.on('error', () => undefined)
  const token = await new Promise<string | null>((resolve) => {
    socket.once('data', (b: Buffer) => resolve(/^TOKEN ([0-9a-f]{32})\n/.exec(b.toString('latin1'))?.[1] ?? null))
    socket.once('close', () => resolve(null))
  })
  return { socket, token }
}

it(`one user holding ${HELD} unclaimed data connections does not stop another user's natctl cp, and natd holds at most ${MAX_PENDING_STREAMS}`, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-data-crowd-'))
  const api = path.join(dir, 'natd.sock')
  let lines = 0
  const log = { error: () => lines++, warn: () => lines++, info: () => lines++, debug: () => undefined, child: () => log } as unknown as Logger
  const server = new FileStreamServer(`${api}.data`, log)
  await server.start()
  const held: net.Socket[] = []
  cleanups.push(() => {
    held.forEach((s) => s.destroy())
    server.stop()
    fs.rmSync(dir, { recursive: true, force: true })
  })

  // The crowding user: every connection gets a token it never uses in a file.send.
  const tokens: Array<string | null> = []
  for (let i = 0; i < HELD; i++) {
    const h = await hold(`${api}.data`)
    held.push(h.socket)
    tokens.push(h.token)
  }
  expect(tokens.every((t) => t !== null)).toBe(true) // a newcomer is never turned away

  // Another user's natctl cp, as transfer-commands.ts opens its stream, then claims it (file.send).
  const honest = await openFileStream(api)
    .then((s) => {
      held.push(s.socket)
      server.take(s.token)
      return 'claimed'
    })
    .catch((err: Error) => `failed: ${err.message}`)
  // What natd still holds for the crowding user: only its newest tokens claim anything.
  const claimable = tokens.filter((t) => {
    try {
      server.take(t!)
      return true
    } catch {
      return false
    }
  }).length
  console.log(`${HELD} unclaimed connections from one user; another user's natctl cp: ${honest}; the holder's tokens still claimable: ${claimable}; log lines: ${lines}`)
  recordAbuse({ row: 'local user holds unclaimed data connections (review 9 #4)', metric: `another user's natctl cp with ${HELD} held`, before: 'failed: natd closed the data connection (16 held for 10 s refuse every newcomer)', now: honest, unit: '', bound: 'claimed' })
  recordAbuse({ row: 'local user holds unclaimed data connections (review 9 #4)', metric: 'unclaimed connections natd holds', before: '16 (then refuses, a warn line each)', now: claimable + 1, unit: 'connections', bound: `<= ${MAX_PENDING_STREAMS}` })
  expect(honest).toBe('claimed')
  expect(claimable).toBeLessThan(MAX_PENDING_STREAMS) // the bound holds: the honest one took one of the 16
  expect(lines).toBeLessThanOrEqual(1) // one line at once; the rest are counted for the window's line
})
