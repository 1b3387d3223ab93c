// The lab's process logs (test/lab/agent-log.ts): written by libuv's pool, never by the
// test process's own thread, and text() exact at every moment, as a synchronous file read was.
import fs from 'node:fs'
import path from 'node:path'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { AgentLog } from '../../lab/agent-log.js'
import { tempDirs } from '../helpers.js'

const tempDir = tempDirs('agent-log-')
const open: AgentLog[] = []
afterEach(async () => {
  for (const l of open.splice(0)) await l.close()
})

function log(file: string): AgentLog {
  const l = new AgentLog(file)
  open.push(l)
  return l
}

describe('AgentLog', () => {
  it('text() has every chunk at once, in order, while the pool writes them; the file has it all once flushed', async () => {
    const file = path.join(tempDir(), 'alice.log')
    const l = log(file)
    const lines = Array.from({ length: 200 }, (_, i) => `{"message":"line ${i}","field":"é${i}"}\n`)
    for (const line of lines) l.write(Buffer.from(line))
    expect(l.text()).toBe(lines.join('')) // no turn of the event loop yet: at most the first chunk written, the rest queued
    await l.flushed()
    expect(fs.readFileSync(file, 'utf8')).toBe(lines.join(''))
    expect(l.text()).toBe(lines.join(''))
  })

  it('a file that held lines before: text() is only what this log wrote, appended after them', async () => {
    const file = path.join(tempDir(), 'bob.log')
    fs.writeFileSync(file, 'an earlier run\n')
    const l = log(file)
    l.write(Buffer.from('first\n'))
    await l.flushed()
    l.write(Buffer.from('second\n'))
    expect(l.text()).toBe('first\nsecond\n')
    await l.close()
    open.splice(0)
    expect(fs.readFileSync(file, 'utf8')).toBe('an earlier run\nfirst\nsecond\n')
    // A killed process's last output after close: kept in text(), never written to the fd (its number may be reused).
    // A write is started synchronously (fs.write, then libuv's pool): none may start after close.
    const writes = vi.spyOn(fs, 'write')
    l.write(Buffer.from('late\n'))
    expect(writes).not.toHaveBeenCalled()
    writes.mockRestore()
    await l.flushed()
    expect(l.text()).toBe('first\nsecond\nlate\n')
    expect(fs.readFileSync(file, 'utf8')).toBe('an earlier run\nfirst\nsecond\n')
  })
})
