// tunnel/migration-deadline.ts under a fake clock: the deadline of work on a tunnel does
// not run while the tunnel migrates, runs on with the time left once it resumes, and all
// its pauses together last at most MIGRATION_PAUSE_MAX_MS.
import { EventEmitter } from 'node:events'
import { PassThrough } from 'node:stream'
import { describe, expect, it, vi } from 'vitest'
import { withDeadline } from '../../../src/daemon/channel-frames.js'
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

  it("a 'resumed' while it runs changes nothing (no fresh time)", () => {
    const clock = new FakeClock()
    const t = tunnel()
    let expired = 0
    new MigrationDeadline(clock, 5_000, t, () => expired++)
    clock.advance(3_000)
    t.emit('resumed')
    clock.advance(2_000)
    expect(expired).toBe(1)
  })

  it('50 deadlines on one tunnel share one listener pair (no MaxListenersExceededWarning), all let go after', () => {
    const clock = new FakeClock()
    const t = tunnel()
    const warn = vi.spyOn(process, 'emitWarning')
    try {
      const ds = Array.from({ length: 50 }, () => new MigrationDeadline(clock, 5_000, t))
      expect(t.listenerCount('migrating')).toBe(1)
      expect(t.listenerCount('resumed')).toBe(1)
      t.move('migrating')
      clock.advance(10_000)
      expect(ds.every((d) => d.remaining === 5_000)).toBe(true)
      t.move('resumed')
      for (const d of ds.slice(0, 25)) d.stop()
      expect(t.listenerCount('migrating')).toBe(1)
      clock.advance(5_000) // the other 25 expire
      expect(warn).not.toHaveBeenCalled()
      expect(t.listenerCount('migrating') + t.listenerCount('resumed')).toBe(0)
      expect(clock.pending).toBe(0)
    } finally {
      warn.mockRestore()
    }
  })

  it('withDeadline: the phases of one operation share its time and its migration budget', async () => {
    const clock = new FakeClock()
    const t = tunnel()
    const ch = new PassThrough().on('error', () => undefined)
    const op = new MigrationDeadline(clock, 10_000, t)
    // Phase 1 (the open): the tunnel migrates 60 s, resumes, the open comes.
    let opened!: () => void
    const phase1 = withDeadline(new Promise<void>((resolve) => (opened = resolve)), op, ch, 'the open', clock)
    clock.advance(1_000)
    t.move('migrating')
    clock.advance(60_000)
    t.move('resumed')
    opened()
    await phase1
    // Phase 2 (the answer): the tunnel migrates again; only 30 s of the 90 s budget are left.
    const phase2 = withDeadline(new Promise<never>(() => undefined), op, ch, 'the answer', clock)
    phase2.catch(() => undefined)
    clock.advance(1_000)
    t.move('migrating')
    clock.advance(MIGRATION_PAUSE_MAX_MS - 60_000 - 1)
    expect(ch.destroyed).toBe(false)
    clock.advance(1)
    await expect(phase2).rejects.toMatchObject({ code: 'TIMEOUT', message: 'the answer did not come within 10000 ms' })
    expect(ch.destroyed).toBe(true)
    expect(t.listenerCount('migrating')).toBe(0)
  })

  it('withDeadline on a deadline that expired already rejects at once', async () => {
    const clock = new FakeClock()
    const op = new MigrationDeadline(clock, 1_000, tunnel())
    clock.advance(1_000)
    await expect(withDeadline(new Promise<never>(() => undefined), op, new PassThrough().on('error', () => undefined), 'the answer', clock)).rejects.toMatchObject({ code: 'TIMEOUT' })
  })
})
