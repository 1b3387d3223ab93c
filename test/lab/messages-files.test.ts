/**
 * Messages and file transfer between peers through real Linux NAT (issue 6).
 *
 *   server ── inet ──┬── r1 (easy NAT) ── alice: natctl send / cp ─┐
 *                    └── r2 (easy NAT) ── bob:   inbox ◀───────────┘ (punched tunnel)
 *
 * A second lab (hard×hard, no direct path) carries a message and 256 MiB over the relay.
 *
 * One lab (easy×easy) for the whole story, in order: a message (live with --follow, kept across
 * bob's restart), 256 MiB with a matching sha256, the sender's daemon killed mid-transfer
 * and the transfer resumed, a hostile name, and the refusals (policy, bad input).
 */
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import type { FileSendResult } from '../../src/ipc/schema.js'
import { labAvailable } from './lab.js'
import { DIST, errorCode, pair, startPair, waitFor, withLab } from './natd-lab.js'
import { partialBytes, sha256File, writeRandomFile } from './random-file.js'

const MiB = 1024 * 1024
const BIG_BYTES = 256 * MiB

/** `natctl cp --json` prints the API's result. */
type CpResult = FileSendResult

describe.skipIf(!labAvailable())('messages and files between peers (easy×easy)', () => {
  it('a message arrives live and survives a restart; 256 MiB crosses intact; a killed sender resumes; a hostile name stays in the inbox; refusals are clear', async () => {
    await withLab(pair('easy', 'easy'), async (n) => {
      await startPair(n)
      const inbox = path.join(n.agents.bob!.stateDir, 'inbox')

      // --- 1. a message: live with --follow, in the inbox, kept across bob's restart ---
      const follow = spawn(process.execPath, [path.join(DIST, 'cli/main.js'), '--socket', n.agents.bob!.socket, 'messages', '--follow', '--json'])
      let followed = ''
      follow.stdout.on('data', (d: Buffer) => (followed += d.toString()))
      try {
        await new Promise((r) => setTimeout(r, 500)) // subscribed
        const sent = await n.natctl('alice', ['send', 'bob', 'hello', 'bob,', 'from alice'])
        expect(sent.code, sent.stderr).toBe(0)
        expect(sent.json).toMatchObject({ peer: 'bob' })
        await waitFor(() => followed.includes('hello bob, from alice'), 3_000, 'bob\'s --follow prints the message')
        const live = JSON.parse(followed.trim().split('\n')[0]!) as Record<string, unknown>
        expect(live).toMatchObject({ from: 'alice', text: 'hello bob, from alice' })
      } finally {
        follow.kill()
      }
      await n.restartAgent('bob')
      await n.waitRegistered('bob')
      const inboxAfter = await n.natctl('bob', ['messages', '--from', 'alice'])
      expect(inboxAfter.json).toEqual([expect.objectContaining({ from: 'alice', text: 'hello bob, from alice', sentAt: expect.any(String), receivedAt: expect.any(String) })])
      expect((fs.statSync(path.join(n.agents.bob!.stateDir, 'messages.jsonl')).mode & 0o777).toString(8)).toBe('600')
      const nobody = await n.natctl('alice', ['send', 'nobody', 'hi'])
      expect([nobody.code, errorCode(nobody)]).toEqual([1, 'PEER_UNKNOWN'])

      // --- 2. 256 MiB over the punched path, sha256 end to end ---
      const big = path.join(n.dir, 'big.bin')
      const bigSha = writeRandomFile(big, BIG_BYTES)
      const t0 = Date.now()
      const cp = await n.natctl('alice', ['cp', big, 'bob:'], { timeoutMs: 120_000 })
      const tookMs = Date.now() - t0
      expect(cp.code, cp.stderr).toBe(0)
      const r = JSON.parse(cp.stdout) as CpResult
      expect(r).toMatchObject({ peer: 'bob', name: 'big.bin', savedAs: 'big.bin', size: BIG_BYTES, sha256: bigSha, offset: 0, sent: BIG_BYTES })
      expect(r.tunnel).toMatch(/^direct-(udp|tcp)$/) // auto: whichever punched path won
      expect(sha256File(path.join(inbox, 'big.bin'))).toBe(bigSha)
      process.stdout.write(`256 MiB easy×easy (${r.tunnel}): natctl cp took ${tookMs} ms, ${(BIG_BYTES / MiB / (r.tookMs / 1000)).toFixed(1)} MiB/s in natd\n`)
      const listed = (await n.natctl('bob', ['files'])).json as Array<Record<string, unknown>>
      expect(listed).toEqual([expect.objectContaining({ name: 'big.bin', size: BIG_BYTES, from: 'alice', sha256: bigSha, receivedAt: expect.any(String) })])
      // The same file again never overwrites: it gets a suffix.
      const again = JSON.parse((await n.natctl('alice', ['cp', big, 'bob:'], { timeoutMs: 120_000 })).stdout) as CpResult
      expect(again.savedAs).toBe('big-1.bin')

      // --- 3. kill the sender's daemon mid-transfer, restart it, cp again: only the rest is sent ---
      const second = path.join(n.dir, 'second.bin')
      const secondSha = writeRandomFile(second, BIG_BYTES)
      const interrupted = n.natctl('alice', ['cp', second, 'bob:'], { timeoutMs: 120_000 })
      await waitFor(() => partialBytes(inbox) >= 48 * MiB, 60_000, 'bob has part of the file')
      await n.stopAgent('alice', 'SIGKILL')
      const cut = await interrupted
      expect(cut.code).not.toBe(0)
      expect(fs.existsSync(path.join(inbox, 'second.bin'))).toBe(false) // nothing under the final name
      // (restartAgent would wait for the exit of a process that is already gone)
      fs.rmSync(n.agents.alice!.socket, { force: true })
      await n.startAgent('alice', { stateDir: n.agents.alice!.stateDir })
      await n.waitRegistered('alice')
      const resumed = await n.natctl('alice', ['cp', second, 'bob:'], { timeoutMs: 120_000 })
      expect(resumed.code, resumed.stderr).toBe(0)
      const rr = JSON.parse(resumed.stdout) as CpResult
      expect(rr.offset).toBeGreaterThanOrEqual(32 * MiB)
      expect(rr.sent).toBe(BIG_BYTES - rr.offset)
      expect(rr.sha256).toBe(secondSha)
      expect(sha256File(path.join(inbox, 'second.bin'))).toBe(secondSha)
      expect(partialBytes(inbox)).toBe(0)
      process.stdout.write(`resume: bob had ${rr.offset} bytes (${(rr.offset / MiB).toFixed(1)} MiB); the re-run sent ${rr.sent} bytes of ${BIG_BYTES}\n`)

      // --- 4. a hostile name lands inside the inbox under a safe name ---
      const small = path.join(n.dir, 'small.txt')
      fs.writeFileSync(small, 'not really evil\n')
      const evil = await n.natctl('alice', ['cp', small, 'bob:../../etc/evil'])
      expect(evil.code, evil.stderr).toBe(0)
      expect((JSON.parse(evil.stdout) as CpResult).savedAs).toBe('etc_evil')
      expect(fs.readFileSync(path.join(inbox, 'etc_evil'), 'utf8')).toBe('not really evil\n')
      expect(fs.existsSync(path.join(inbox, '../../etc/evil'))).toBe(false)
      expect(fs.readdirSync(path.dirname(inbox)).filter((f) => f.includes('evil'))).toEqual([])

      // --- 5. refusals, before any byte is sent; bad input ---
      expect((await n.natctl('bob', ['files', 'policy', '--max-size', '1MiB'])).json).toMatchObject({ maxSizeBytes: MiB, allow: [] })
      const tooLarge = await n.natctl('alice', ['cp', big, 'bob:refused.bin'])
      expect([tooLarge.code, errorCode(tooLarge)]).toEqual([1, 'TOO_LARGE'])
      expect(tooLarge.stderr).toMatch(/bob refused refused\.bin/)
      expect(partialBytes(inbox)).toBe(0)
      expect((await n.natctl('bob', ['files', 'policy', '--allow', 'c'.repeat(51) + 'q', '--max-size', '1GiB'])).code).toBe(0)
      const notAllowed = await n.natctl('alice', ['cp', small, 'bob:'])
      expect([notAllowed.code, errorCode(notAllowed)]).toEqual([1, 'NOT_ALLOWED'])
      expect((await n.natctl('bob', ['files', 'policy', '--allow-all'])).json).toMatchObject({ allow: [] })
      const missing = await n.natctl('alice', ['cp', path.join(n.dir, 'nope.bin'), 'bob:'])
      expect([missing.code, errorCode(missing)]).toEqual([1, 'FILE_UNREADABLE'])
      const dir = await n.natctl('alice', ['cp', n.dir, 'bob:'])
      expect([dir.code, errorCode(dir)]).toEqual([1, 'FILE_UNREADABLE'])
      expect(dir.stderr).toMatch(/use -r/)
      const files = ((await n.natctl('bob', ['files'])).json as Array<{ name: string }>).map((f) => f.name)
      expect(files).toEqual(['big.bin', 'big-1.bin', 'second.bin', 'etc_evil'])
    })
  }, 240_000)
})

describe.skipIf(!labAvailable())('messages and files over the relay (hard×hard)', () => {
  it('a message and 256 MiB cross a relayed tunnel, the sha256 matching', async () => {
    await withLab(pair('hard', 'hard'), async (n) => {
      // The relay's per-tunnel rate (8 MiB/s by default) would make this a 32 s test.
      await startPair(n, { serverArgs: ['--relay-rate', '1GiB'] })
      const sent = await n.natctl('alice', ['send', 'bob', 'via the relay'], { timeoutMs: 60_000 })
      expect(sent.code, sent.stderr).toBe(0)
      const inbox = (await n.natctl('bob', ['messages'])).json as Array<{ text: string }>
      expect(inbox.map((m) => m.text)).toEqual(['via the relay'])
      const big = path.join(n.dir, 'big.bin')
      const sha = writeRandomFile(big, BIG_BYTES)
      const cp = await n.natctl('alice', ['cp', big, 'bob:'], { timeoutMs: 180_000 })
      expect(cp.code, cp.stderr).toBe(0)
      const r = JSON.parse(cp.stdout) as CpResult
      expect(r).toMatchObject({ tunnel: 'relay', size: BIG_BYTES, sha256: sha, sent: BIG_BYTES })
      expect(sha256File(path.join(n.agents.bob!.stateDir, 'inbox', 'big.bin'))).toBe(sha)
      process.stdout.write(`256 MiB hard×hard (relay): ${r.tookMs} ms, ${(BIG_BYTES / MiB / (r.tookMs / 1000)).toFixed(1)} MiB/s\n`)
    })
  }, 240_000)
})
