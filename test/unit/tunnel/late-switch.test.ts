// Late switches (src/tunnel/late-switch.ts) on a fake tunnel: one at a time per tunnel,
// the initiator's "this one" ping only for a switch upgrade() takes, the responder
// follows unranked and migrates when it cannot follow (review 3 #3).
import { describe, expect, it } from 'vitest'
import { silentLogger } from '../../../src/protocol/log.js'
import type { PathKind, Transport } from '../../../src/protocol/tunnel-snapshot.js'
import { LateSwitches, type LatePath, type SwitchingTunnel } from '../../../src/tunnel/late-switch.js'
import { encodeMux } from '../../../src/protocol/mux.js'

class FakeSession {
  readonly writes: Buffer[] = []
  destroyed = false
  constructor(readonly name: string) {}
  write(buf: Buffer): void {
    this.writes.push(buf)
  }
  destroy(): void {
    this.destroyed = true
  }
}

/** A tunnel whose mux has a switch pending from upgrade() until the test says the peer switched. */
class FakeTunnel implements SwitchingTunnel<FakeSession> {
  isUp = true
  mux = { switchPending: false }
  readonly upgrades: string[] = []
  refused = 0
  refuseNext = false
  readonly left: string[] = []
  private waiters: Array<() => void> = []
  constructor(
    public path: PathKind,
    public transport: Transport
  ) {}
  answered = true
  private hearers: Array<() => void> = []
  heardFromPeer(): Promise<void> {
    if (this.answered) return Promise.resolve()
    return new Promise((resolve) => this.hearers.push(resolve))
  }
  /** The peer's first frame came. */
  answer(): void {
    this.answered = true
    for (const h of this.hearers.splice(0)) h()
  }
  switchSettled(): Promise<void> {
    if (!this.mux.switchPending) return Promise.resolve()
    return new Promise((resolve) => this.waiters.push(resolve))
  }
  /** The peer's SWITCH came: ours is settled. */
  peerSwitched(): void {
    this.mux.switchPending = false
    for (const w of this.waiters.splice(0)) w()
  }
  upgrade(next: FakeSession, path: PathKind, _remote: unknown, transport: Transport): boolean {
    if (!this.isUp || this.mux.switchPending || this.refuseNext) {
      this.refused++
      next.destroy()
      return false
    }
    this.path = path
    this.transport = transport
    this.mux.switchPending = true
    this.upgrades.push(next.name)
    return true
  }
  leftBehind(reason: string): void {
    this.left.push(reason)
  }
  readonly onClosed: Array<() => void> = []
  once(_event: 'closed', listener: () => void): this {
    this.onClosed.push(listener)
    return this
  }
}

function late(name: string, path: PathKind, transport: Transport, first?: Buffer): LatePath<FakeSession> & { session: FakeSession } {
  return { session: new FakeSession(name), path, transport, remote: { host: '203.0.113.9', port: 4000 }, punchMs: 1, ...(first ? { first } : {}) }
}

/** The initiator's "this one" ping on a late path. */
const THIS_ONE = encodeMux({ type: 'ping', channel: 0, seq: 0 })

const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve))

function switches() {
  return new LateSwitches<FakeSession, FakeTunnel>({ log: silentLogger, current: () => true })
}

/** The initiator of a relayed tunnel gets a direct UDP and a direct TCP late path at once, `first` added first. */
async function twoLatePaths(first: 'udp' | 'tcp') {
  const s = switches()
  const t = new FakeTunnel('relay', 'tcp')
  const udp = late('udp', 'direct-udp', 'udp')
  const tcp = late('tcp', 'direct-tcp', 'tcp')
  for (const p of first === 'udp' ? [udp, tcp] : [tcp, udp]) void s.add(t, p, true, 'bob')
  await tick()
  return { t, udp, tcp }
}

describe('LateSwitches', () => {
  it('initiator: two late paths at once switch one after the other, each "this one" ping only for a switch upgrade() takes (review 3 #3b)', async () => {
    const { t, udp, tcp } = await twoLatePaths('udp')
    expect(t.upgrades).toEqual(['udp'])
    expect(tcp.session.writes).toHaveLength(0) // waits: the peer has not switched to udp yet
    t.peerSwitched()
    await tick()
    expect(t.upgrades).toEqual(['udp', 'tcp'])
    expect(t.refused).toBe(0)
    expect(udp.session.writes).toEqual([THIS_ONE])
    expect(tcp.session.writes).toEqual([THIS_ONE])
    expect(tcp.session.destroyed).toBe(false)
  })

  it('initiator: the rank is checked again after the wait: a worse path that waited is dropped with no ping', async () => {
    const { t, udp } = await twoLatePaths('tcp')
    t.peerSwitched()
    await tick()
    expect(t.upgrades).toEqual(['tcp'])
    expect(udp.session.writes).toHaveLength(0)
    expect(udp.session.destroyed).toBe(true)
  })

  it('responder: follows a late path the initiator chose whatever its own rank of it (review 3 #3a)', async () => {
    const s = switches()
    const t = new FakeTunnel('lan', 'udp') // rank 3 here; the initiator saw direct-udp
    const tcp = late('tcp', 'direct-tcp', 'tcp', THIS_ONE)
    await s.add(t, tcp, false, 'alice')
    expect(t.upgrades).toEqual(['tcp'])
    expect(tcp.session.writes).toHaveLength(0) // the responder writes no "this one"
  })

  it('responder: a path it cannot follow is dropped and the tunnel migrates at once (not left reading nothing)', async () => {
    const s = switches()
    const t = new FakeTunnel('direct-udp', 'udp')
    t.refuseNext = true
    const tcp = late('tcp', 'direct-tcp', 'tcp', THIS_ONE)
    await s.add(t, tcp, false, 'alice')
    expect(tcp.session.destroyed).toBe(true)
    expect(t.left).toHaveLength(1)

    const t2 = new FakeTunnel('direct-udp', 'udp')
    const resume = late('tcp', 'direct-tcp', 'tcp', encodeMux({ type: 'resume', channel: 0, tunnelId: Buffer.alloc(16), received: 0 }))
    await s.add(t2, resume, false, 'alice')
    expect(resume.session.destroyed).toBe(true)
    expect(t2.left).toHaveLength(1)
    expect(t2.upgrades).toEqual([])
  })

  it('a tunnel that was not made, or is no longer up, drops the path', async () => {
    const s = switches()
    const a = late('udp', 'direct-udp', 'udp')
    await s.add(null, a, true, 'bob')
    expect(a.session.destroyed).toBe(true)
    const t = new FakeTunnel('relay', 'tcp')
    t.isUp = false
    const b = late('tcp', 'direct-tcp', 'tcp')
    await s.add(t, b, true, 'bob')
    expect(b.session.destroyed).toBe(true)
    expect(b.session.writes).toHaveLength(0)
  })

  it('a relayed tunnel taking an upgrade while a switch is pending (keep()): waits, then switches; the path\'s birthday socket goes with the tunnel, or at once when dropped (review 3 #8)', async () => {
    const s = switches()
    const t = new FakeTunnel('relay', 'tcp')
    void s.add(t, late('lan', 'lan', 'udp'), true, 'bob')
    await tick()
    const released: string[] = []
    const won = { ...late('udp', 'direct-udp', 'udp'), release: () => void released.push('udp') }
    const taken = s.add(t, won, true, 'bob')
    await tick()
    expect(t.refused).toBe(0)
    expect(won.session.writes).toHaveLength(0)
    t.peerSwitched()
    expect(await taken).toBe(false) // the tunnel is on a LAN path now: the upgrade's path goes, no ping on it
    expect(won.session.writes).toHaveLength(0)
    expect(released).toEqual(['udp'])

    const t2 = new FakeTunnel('relay', 'tcp')
    const won2 = { ...late('tcp', 'direct-tcp', 'tcp'), release: () => void released.push('tcp') }
    expect(await s.add(t2, won2, true, 'bob')).toBe(true)
    expect(t2.onClosed).toEqual([won2.release])
    expect(released).toEqual(['udp'])
  })

  it('initiator: no late "this one" before the peer answered on the winner (else it could reach the responder first and be taken for the winner)', async () => {
    const s = switches()
    const t = new FakeTunnel('direct-udp', 'udp')
    t.answered = false
    const tcp = late('tcp', 'direct-tcp', 'tcp')
    const taken = s.add(t, tcp, true, 'bob')
    await tick()
    expect(tcp.session.writes).toHaveLength(0)
    expect(t.upgrades).toEqual([])
    t.answer()
    expect(await taken).toBe(true)
    expect(t.upgrades).toEqual(['tcp'])

    // The responder does not wait: its tunnel answers for itself.
    const r = new FakeTunnel('direct-udp', 'udp')
    r.answered = false
    expect(await s.add(r, late('tcp', 'direct-tcp', 'tcp', THIS_ONE), false, 'alice')).toBe(true)
  })
})
