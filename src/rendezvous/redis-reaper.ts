/**
 * Reaping dead instances of the shared registry (redis-cluster.ts): instances whose key
 * expired. One live instance (whoever sets the reap lock first) deletes their records and
 * tells everyone their agents went down. The agents themselves re-register elsewhere; a
 * record they rewrote meanwhile names their new instance and is left alone.
 */
import type { Clock, Logger } from '../protocol/log.js'
import type { PeerRecord } from '../protocol/rendezvous.js'
import type { Client, RecordWriter } from './redis-record-writer.js'
import { parseRecord } from './redis-records.js'
import { BURY_SCRIPT, KEY_PREFIX as P, REAP_SCRIPT } from './redis-scripts.js'

/** The reap lock on a dead instance: one reaper at a time, and a reaper that dies frees it by then. */
const REAP_LOCK_MS = 60_000

export interface ReaperComponents {
  client: Client
  /** Our instance's ID (never reaped by us). */
  instance: string
  records: RecordWriter
  log: Logger
  clock: Clock
}

/** Reaps every instance whose key expired and that no other instance is reaping. */
export async function reapDead(c: ReaperComponents): Promise<void> {
  const all = await c.client.sMembers(`${P}instances`)
  for (const inst of all) {
    if (inst === c.instance || !/^[0-9a-f]{16}$/.test(inst)) continue
    if ((await c.client.exists(`${P}instance:${inst}`)) === 1) continue
    const lock = await c.client.set(`${P}reap:${inst}`, c.instance, { condition: 'NX', expiration: { type: 'PX', value: REAP_LOCK_MS } })
    if (lock !== 'OK') continue
    const keys = await c.client.sMembers(`${P}agents:${inst}`)
    const gone: PeerRecord[] = []
    const now = c.clock.now()
    for (const k of keys) {
      const rec = await c.client.eval(REAP_SCRIPT, { keys: [`${P}instance:${inst}`, `${P}peer:${k}`], arguments: [inst] })
      const record = typeof rec === 'string' ? parseRecord(rec) : null
      if (!record) continue
      gone.push({ ...record, online: false })
      await c.client.hSet(`${P}name:${record.name}`, 'lastSeenAt', String(now))
    }
    // `from`: the reaped instance's ID, so the reaper's own agents hear of it too.
    const events = c.records.eventMessages('down', gone, inst)
    const buried = await c.client.eval(BURY_SCRIPT, { keys: [`${P}instance:${inst}`, `${P}agents:${inst}`, `${P}instances`, `${P}reap:${inst}`], arguments: [inst, ...events] })
    if (Number(buried) === 1) c.log.warn('instance gone: its agents are offline until they register elsewhere', { instance: inst, agents: gone.length })
    else c.log.warn('instance back while reaped: it writes its records again', { instance: inst, reaped: gone.length })
  }
}
