/**
 * INTRODUCE (src/rendezvous/introductions.ts) alone, with a fake registry, gate, relay
 * and cluster: what each refusal answers, that both sides get the same introduction at
 * once, and that a target on another instance is reached through the cluster with this
 * instance named as the relay.
 */
import { describe, expect, it } from 'vitest'
import { NatdError } from '../../../src/protocol/errors.js'
import { peerId } from '../../../src/protocol/identity.js'
import { silentLogger } from '../../../src/protocol/log.js'
import type { OutgoingMessage, PeerRecord } from '../../../src/protocol/rendezvous.js'
import type { RemoteIntroduction, RemotePeer } from '../../../src/rendezvous/cluster.js'
import { Contacts } from '../../../src/rendezvous/contacts.js'
import { Introductions } from '../../../src/rendezvous/introductions.js'
import { RefusalLog } from '../../../src/common/refusal-log.js'
import type { TcpConn } from '../../../src/rendezvous/tcp-gate.js'
import { FakeClock } from '../helpers.js'

const record = (name: string, n: number, online = true): PeerRecord => ({ publicKey: Buffer.alloc(32, n), name, online, lastSeenAgoMs: 0, nat: 'easy', udp: null, tcp: null, lan: [] })
const conn = (n: number): TcpConn => ({ session: { remotePublicKey: Buffer.alloc(32, n) }, source: '192.0.2.1', remote: { host: '192.0.2.1', port: 40_000 + n }, socket: { destroyed: false } }) as unknown as TcpConn

/** alice (ref 1, online), bob (ref 2, online), carol (ref 3, offline); `remote` answers for names elsewhere. */
function setup(opts: { relay?: boolean; relayRefuses?: boolean; remote?: RemotePeer; delivered?: boolean; perMinute?: number } = {}) {
  const peers = new Map([
    [1, record('alice', 1)],
    [2, record('bob', 2)],
    [3, record('carol', 3, false)]
  ])
  const conns = new Map([
    [1, conn(1)],
    [2, conn(2)]
  ])
  const sent: { to: TcpConn; msg: OutgoingMessage }[] = []
  const outcomes: string[] = []
  const remoteIntros: { instance: string; intro: RemoteIntroduction }[] = []
  const contacts = new Contacts()
  const cluster = {
    advertise: { host: '198.51.100.7', port: 3478 },
    find: (target: string) => Promise.resolve(opts.remote?.record.name === target ? opts.remote : undefined),
    introduce: (instance: string, intro: RemoteIntroduction) => {
      remoteIntros.push({ instance, intro })
      return Promise.resolve(opts.delivered ?? true)
    }
  }
  const intros = new Introductions({
    clock: new FakeClock(),
    log: silentLogger,
    limits: { introductionsPerMinute: opts.perMinute ?? 60 },
    refusals: new RefusalLog(silentLogger, { windowMs: 1_000, level: 'info' }),
    registry: {
      lookup: (target) => [...peers].find(([, p]) => p.name === target || peerId(p.publicKey) === target)?.[0],
      isOnline: (ref) => peers.get(ref)?.online ?? false,
      peer: (ref) => peers.get(ref)
    },
    gate: { send: (to, msg) => sent.push({ to, msg }) },
    agents: { of: (ref) => conns.get(ref) },
    contacts,
    relay: opts.relay
      ? {
          allow: () => {
            if (opts.relayRefuses) throw new NatdError('RELAY_LIMIT', 'you already hold 32 relay permissions not yet used')
          }
        }
      : null,
    cluster: opts.remote ? cluster : null,
    metrics: { introduction: (o) => outcomes.push(o) },
    outbox: { send: (_ref, to, msg) => sent.push({ to, msg }) }
  })
  const introduce = (target: string, via: 'auto' | 'udp' | 'relay' = 'udp', reqId = 7) => intros.onIntroduce(conns.get(1)!, 1, { type: 'introduce', reqId, target, via })
  return { intros, introduce, sent, outcomes, contacts, remoteIntros, conns }
}

describe('Introductions', () => {
  it('sends both sides the same introduction at once (the target first), and each becomes the other\'s contact', async () => {
    const s = setup()
    await s.introduce('bob')
    expect(s.sent.map((x) => x.to)).toEqual([s.conns.get(2), s.conns.get(1)])
    const [theirs, mine] = s.sent.map((x) => x.msg) as Extract<OutgoingMessage, { type: 'introduction' }>[]
    expect(theirs).toMatchObject({ reqId: 0, initiator: false, via: 'udp', peer: { name: 'alice' } })
    expect(mine).toMatchObject({ reqId: 7, initiator: true, via: 'udp', peer: { name: 'bob' } })
    expect(Buffer.from(mine!.introId).equals(Buffer.from(theirs!.introId))).toBe(true)
    expect(Buffer.from(mine!.punchKey).equals(Buffer.from(theirs!.punchKey))).toBe(true)
    expect([s.contacts.of(1), s.contacts.of(2)]).toEqual([[2], [1]])
    expect(s.outcomes).toEqual(['local'])
  })

  it.each([
    ['alice', 'INVALID_ARGUMENT', 'yourself'],
    ['dave', 'PEER_UNKNOWN', 'no peer named dave'],
    ['carol', 'PEER_OFFLINE', 'carol is offline']
  ])('answers an introduction to %s with %s, to the asker only', async (target, code, text) => {
    const s = setup()
    await s.introduce(target)
    expect(s.sent).toEqual([{ to: s.conns.get(1), msg: { type: 'error', reqId: 7, code, message: expect.stringContaining(text) as unknown } }])
    expect(s.outcomes).toEqual(['refused'])
  })

  it('refuses past introductionsPerMinute with RATE_LIMITED', async () => {
    const s = setup({ perMinute: 2 })
    for (let i = 0; i < 3; i++) await s.introduce('bob', 'udp', i)
    expect(s.sent.at(-1)).toMatchObject({ msg: { type: 'error', reqId: 2, code: 'RATE_LIMITED' } })
    expect(s.outcomes).toEqual(['local', 'local', 'refused'])
  })

  it('a relay permit the relay refuses refuses the introduction with its code, and neither side hears of it', async () => {
    const s = setup({ relay: true, relayRefuses: true })
    await s.introduce('bob', 'auto')
    expect(s.sent).toEqual([{ to: s.conns.get(1), msg: expect.objectContaining({ type: 'error', code: 'RELAY_LIMIT' }) as unknown }])
    await s.introduce('bob', 'udp', 8) // no relaying asked: no permit needed
    expect(s.sent.at(-1)).toMatchObject({ msg: { type: 'introduction', reqId: 8 } })
  })

  it('a target on another instance gets its side through the cluster, with this instance as the relay when relaying', async () => {
    const erin = record('erin', 5)
    const s = setup({ relay: true, remote: { record: erin, instance: 'i2' } })
    await s.introduce('erin', 'auto')
    expect(s.remoteIntros).toHaveLength(1)
    expect(s.remoteIntros[0]).toMatchObject({ instance: 'i2', intro: { via: 'auto', from: { name: 'alice' }, relay: { host: '198.51.100.7', port: 3478 } } })
    expect(s.sent).toEqual([{ to: s.conns.get(1), msg: expect.objectContaining({ type: 'introduction', initiator: true, peer: erin }) as unknown }])
    expect(s.contacts.ofRemote(erin.publicKey)).toEqual([1])
    expect(s.outcomes).toEqual(['remote'])
  })

  it('a target whose instance does not answer is PEER_OFFLINE', async () => {
    const s = setup({ remote: { record: record('erin', 5), instance: 'i2' }, delivered: false })
    await s.introduce('erin')
    expect(s.sent).toEqual([{ to: s.conns.get(1), msg: expect.objectContaining({ type: 'error', code: 'PEER_OFFLINE', message: expect.stringContaining('does not answer') as unknown }) as unknown }])
  })

  it('onRemoteIntroduction hands an agent held here its side, and ignores one for an agent not held here', () => {
    const s = setup()
    const intro: RemoteIntroduction = { targetKey: Buffer.alloc(32, 2), introId: Buffer.alloc(16, 1), punchKey: Buffer.alloc(32, 3), via: 'relay', from: record('erin', 5), relay: { host: '198.51.100.8', port: 3478 } }
    s.intros.onRemoteIntroduction({ ...intro, targetKey: Buffer.alloc(32, 9) })
    expect(s.sent).toEqual([])
    s.intros.onRemoteIntroduction(intro)
    expect(s.sent).toEqual([{ to: s.conns.get(2), msg: { type: 'introduction', reqId: 0, introId: intro.introId, punchKey: intro.punchKey, initiator: false, via: 'relay', peer: intro.from, relay: intro.relay } }])
    expect(s.contacts.ofRemote(intro.from.publicKey)).toEqual([2])
  })
})
