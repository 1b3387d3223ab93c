// Abuse row for work waiting on a migrating tunnel (tunnel/migration-deadline.ts): a peer
// (or a path it controls) that makes our tunnel migrate, resume for a moment and migrate
// again, for ever, while 1,000 operations (forward opens, messages, file offers) wait on
// it. Under a fake clock: the bound is in minutes of tunnel time.
import { EventEmitter } from 'node:events'
import { describe, expect, it } from 'vitest'
import { MIGRATION_PAUSE_MAX_MS, MigrationDeadline } from '../../src/tunnel/migration-deadline.js'
import { FakeClock } from '../unit/helpers.js'
import { recordAbuse } from './record.js'

describe('abuse: a tunnel kept migrating', () => {
  it('1. migrating 89 s, up 1 ms, again and again, under 1,000 waiting operations: each ends by its time + MIGRATION_PAUSE_MAX_MS, one listener pair in all', () => {
    const clock = new FakeClock()
    const t = Object.assign(new EventEmitter(), { isMigrating: false })
    const OPS = 1_000
    const MS = 15_000 // a forward's open (FORWARD_OPEN_TIMEOUT_MS)
    const expiredAt: number[] = []
    const start = clock.now()
    for (let i = 0; i < OPS; i++) new MigrationDeadline(clock, MS, t, () => expiredAt.push(clock.now() - start))
    const listeners = t.listenerCount('migrating') + t.listenerCount('resumed')
    // The peer's game: just under the tunnel's give-up time migrating, then a resume, again.
    for (let cycle = 0; cycle < 20 && expiredAt.length < OPS; cycle++) {
      t.isMigrating = true
      t.emit('migrating')
      clock.advance(89_000)
      t.isMigrating = false
      t.emit('resumed')
      clock.advance(1)
    }
    clock.advance(MS)
    expect(listeners).toBe(2)
    expect(expiredAt.length).toBe(OPS)
    expect(Math.max(...expiredAt)).toBeLessThanOrEqual(MS + MIGRATION_PAUSE_MAX_MS + 1_000)
    expect(t.listenerCount('migrating') + t.listenerCount('resumed')).toBe(0)
    recordAbuse({ row: 'a tunnel kept migrating (89 s) and resuming (1 ms) under 1,000 waiting operations', metric: 'longest wait of an operation with a 15 s deadline', before: 'each phase of an operation got its own pause budget; a listener pair per operation', now: Math.max(...expiredAt), unit: 'ms (tunnel time)', bound: `≤ its time + MIGRATION_PAUSE_MAX_MS (${MIGRATION_PAUSE_MAX_MS}); 2 listeners on the tunnel for all of them, 0 after` })
  })
})
