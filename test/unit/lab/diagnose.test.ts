import { spawn, type ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { describeLoopLag, describeSyscall, LOOP_LAG_SAMPLE_MS, LoopLag, nodeReport, procSnapshot, reportOptions } from '../../lab/diagnose.js'

const children: ChildProcess[] = []
afterEach(() => {
  for (const c of children.splice(0)) c.kill('SIGKILL')
})

/** A node child with the lab's report options, running `script`; its stdout is never read. */
function child(dir: string, script: string): ChildProcess {
  const c = spawn(process.execPath, [...reportOptions(dir), '-e', script], { stdio: ['ignore', 'pipe', 'ignore'] })
  c.stdout!.pause()
  children.push(c)
  return c
}

async function until(check: () => boolean, ms: number): Promise<boolean> {
  const start = Date.now()
  while (Date.now() - start < ms) {
    if (check()) return true
    await new Promise((r) => setTimeout(r, 50))
  }
  return check()
}

describe('diagnose: where a lab process waits', () => {
  it('names the system call and the file behind its fd', () => {
    const fdTarget = (fd: number): string => (fd === 1 ? 'pipe:[42]' : '?')
    expect(describeSyscall('1 0x1 0x7f 0x10000 0 0 0 0x7ffd 0x7f', fdTarget, 'x64')).toBe('write(fd 1 → pipe:[42])')
    expect(describeSyscall('74 0x1 0 0 0 0 0 0 0', fdTarget, 'x64')).toBe('fsync(fd 1 → pipe:[42])')
    expect(describeSyscall('232 0x5 0x7f 0x400 0xffffffff 0 0 0 0', fdTarget, 'x64')).toBe('epoll_wait')
    expect(describeSyscall('999 0 0 0 0 0 0 0 0', fdTarget, 'x64')).toBe('syscall 999')
    expect(describeSyscall('running', fdTarget, 'x64')).toBe('running (on a CPU)')
  })

  it.skipIf(process.platform !== 'linux' || process.arch !== 'x64')('a process stuck writing to stdout nobody reads: the write and its socket, and no report (its loop is blocked)', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-diagnose-'))
    try {
      // fs.writeSync to a full stdio channel (a socketpair under child_process) blocks the main thread in write(2), as a log line would.
      const c = child(dir, "const b = Buffer.alloc(1 << 16); for (;;) require('fs').writeSync(1, b)")
      let snap = ''
      expect(await until(() => /MainThread: S .*in write\(fd 1 → (pipe|socket):\[\d+\]\)/.test((snap = procSnapshot(c.pid!))), 10_000), snap).toBe(true)
      expect(await nodeReport(c.pid!, dir, 1000)).toContain('no Node report')
      // An idle process answers with its report.
      // (once it runs its script: Node installs the report's signal handler before that)
      const idle = child(dir, "setInterval(() => {}, 1000); process.stdout.write('ready')")
      await new Promise((resolve) => idle.stdout!.once('data', resolve).resume())
      const report = await nodeReport(idle.pid!, dir, 10_000)
      expect(report).toContain('the event loop turns')
      expect(report).toMatch(/active libuv handles: .*timer/)
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })

  it('the test process\'s own loop: a hold is reported with when it ended (a natctl call unanswered may be the test process held)', async () => {
    expect(describeLoopLag({ worstMs: 0.2, worstEndedAt: 0, maxMs: 0, p99Ms: 0, sinceMs: 5_000 })).toMatch(/over the last 5\.0 s: never held; delay max 0 ms/)
    const lag = new LoopLag()
    try {
      const held = Date.now() + 3 * LOOP_LAG_SAMPLE_MS
      while (Date.now() < held); // hold our own loop, as a synchronous write to a stalled disk would
      const line = lag.summary()
      // A lower bound the hold itself guarantees (the hold less one sampling period): load only lengthens it.
      expect(Number(/longest hold (\d+) ms, ended \d{4}-/.exec(line)?.[1]), line).toBeGreaterThanOrEqual(2 * LOOP_LAG_SAMPLE_MS - 1)
      expect(line).toContain(`pid ${process.pid}`)
    } finally {
      lag.stop()
    }
  })
})
