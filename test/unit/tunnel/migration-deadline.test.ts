// tunnel/migration-deadline.ts under a fake clock: the deadline of work on a tunnel does
// not run while the tunnel migrates, runs on with the time left once it resumes, and all
// its pauses together last at most MIGRATION_PAUSE_MAX_MS.
import { EventEmitter } from 'node:events'
import { describe, expect, it } from 'vitest'
import { MIGRATION_PAUSE_MAX_MS, MigrationDeadline } from '../../../src/tunnel/migration-deadline.js'
import { FakeClock } from '../helpers.js'

function tunnel(migrating = false): EventEmitter & { isMigrating: boolean; move(to: 'migrating' | 'resumed'): void } {
  const t = Object.assign(new EventEmitter(), {
    isMigrating: migrating,
    move: (to: 'migrating' | 'resumed') => {
      t.isMigrating = to === 'migrating'
      t.emit(to)
    }
  })
  return t
}

describe('MigrationDeadline', () => {
  it('expires after ms on a tunnel that stays up', () => {
    const clock = new FakeClock()
    let expired = 0
    new MigrationDeadline(clock, 5_000, tunnel(), () => expired++)
    clock.advance(4_999)
    expect(expired).toBe(0)
    clock.advance(1)
    expect(expired).toBe(1)
  })

  it('pauses while the tunnel migrates and runs on with what was left once it resumes', () => {
    const clock = new FakeClock()
    const t = tunnel()
    let expired = 0
    const d = new MigrationDeadline(clock, 5_000, t, () => expired++)
    clock.advance(2_000)
    t.move('migrating')
    clock.advance(60_000)
    expect(expired).toBe(0)
    expect(d.remaining).toBe(3_000)
    expect(d.paused).toBe(60_000)
    t.move('resumed')
    clock.advance(2_999)
    expect(expired).toBe(0)
    expect(d.remaining).toBe(1)
    clock.advance(1)
    expect(expired).toBe(1)
    expect(t.listenerCount('migrating') + t.listenerCount('resumed')).toBe(0)
  })

  it('made while the tunnel migrates: paused from the start', () => {
    const clock = new FakeClock()
    const t = tunnel(true)
    let expired = 0
    new MigrationDeadline(clock, 5_000, t, () => expired++)
    clock.advance(30_000)
    t.move('resumed')
    clock.advance(4_999)
    expect(expired).toBe(0)
    clock.advance(1)
    expect(expired).toBe(1)
  })

  it('all pauses together end at MIGRATION_PAUSE_MAX_MS: a tunnel that keeps migrating does not hold the work for ever', () => {
    const clock = new FakeClock()
    const t = tunnel()
    let expired = 0
    new MigrationDeadline(clock, 10_000, t, () => expired++)
    t.move('migrating')
    clock.advance(MIGRATION_PAUSE_MAX_MS / 2)
    t.move('resumed')
    clock.advance(1_000)
    t.move('migrating')
    clock.advance(MIGRATION_PAUSE_MAX_MS / 2 - 1)
    expect(expired).toBe(0)
    clock.advance(1)
    expect(expired).toBe(1)
  })

  it('stop() ends it without expiring and lets go of the tunnel', () => {
    const clock = new FakeClock()
    const t = tunnel()
    let expired = 0
    const d = new MigrationDeadline(clock, 5_000, t, () => expired++)
    d.stop()
    clock.advance(10_000)
    t.move('migrating')
    t.move('resumed')
    clock.advance(10_000)
    expect(expired).toBe(0)
    expect(clock.pending).toBe(0)
    expect(t.listenerCount('migrating')).toBe(0)
  })
})
