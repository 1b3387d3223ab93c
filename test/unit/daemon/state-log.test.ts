// daemon/state-log.ts: a failed write names the file that failed (config.json is not
// "what the agent learnt"), and a state-directory warning is not called a file set aside.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { StateStore } from '../../../src/daemon/config.js'
import { logStateFiles } from '../../../src/daemon/state-log.js'
import type { LogFields, Logger } from '../../../src/protocol/log.js'

function recorder(): { log: Logger; lines: Array<{ level: string; msg: string; fields: LogFields }> } {
  const lines: Array<{ level: string; msg: string; fields: LogFields }> = []
  const at =
    (level: string) =>
    (msg: string, fields: LogFields = {}): void => {
      lines.push({ level, msg, fields })
    }
  const log: Logger = { error: at('error'), warn: at('warn'), info: at('info'), debug: at('debug'), child: () => log }
  return { log, lines }
}

describe('logStateFiles', () => {
  let dir: string
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-statelog-'))
    fs.chmodSync(dir, 0o700)
  })
  afterEach(() => {
    fs.rmSync(dir, { recursive: true, force: true })
  })

  it('a failed config.json write is logged as config.json, not learnt.json', async () => {
    const store = new StateStore(dir, { writeConfig: () => Promise.reject(new Error('ENOSPC')) })
    const { log, lines } = recorder()
    logStateFiles(store, log, dir)
    store.setForwards([{ localPort: 8080, bind: '127.0.0.1', peer: 'bob', remotePort: 80 }])
    await store.durable().catch(() => undefined)
    const warned = lines.find((l) => l.level === 'warn')
    expect(warned?.fields.file).toBe(path.join(dir, 'config.json'))
    expect(warned?.msg).not.toMatch(/learnt/)
  })

  it('a state-directory warning is logged under a neutral label', () => {
    const { log, lines } = recorder()
    logStateFiles({ onWriteError: null, stateWarnings: ['the state directory /x is not natd\'s alone'], removedTemps: [] }, log, '/x')
    expect(lines).toEqual([{ level: 'error', msg: 'state directory problem', fields: { warning: "the state directory /x is not natd's alone" } }])
  })
})
