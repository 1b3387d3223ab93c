// The rendezvous registry (src/rendezvous/registry.ts) under a fake clock: who holds a
// name, tokens, expiry, and lookups by name / ID / ID prefix.
import { beforeEach, describe, expect, it } from 'vitest'
import { peerId } from '../../../src/protocol/identity.js'
import { Registry, type RegisterInput } from '../../../src/rendezvous/registry.js'
import { errorCode, FakeClock, seq } from '../helpers.js'

const PEER_TIMEOUT_MS = 30_000

function key(fill: number): Buffer {
  return Buffer.alloc(32, fill)
}

function input(publicKey: Uint8Array, name: string, token: Uint8Array = seq(publicKey[0]!, 16)): RegisterInput {
  return { publicKey, name, lan: [], nat: 'easy', token, udp: { host: '203.0.113.1', port: 1000 + publicKey[0]! } }
}


describe('Registry', () => {
  let clock: FakeClock
  let reg: Registry
  const A = key(1)
  const B = key(2)

  beforeEach(() => {
    clock = new FakeClock()
    reg = new Registry(clock, PEER_TIMEOUT_MS)
  })

  it('gives the first key its name', () => {
    const { reg: r, isNew } = reg.register(input(A, 'alice'))
    expect(isNew).toBe(true)
    expect(r).toMatchObject({ name: 'alice', id: peerId(A), online: true, lastSeen: clock.now() })
    expect(reg.lookup('alice')?.id).toBe(peerId(A))
    expect(reg.size).toBe(1)
  })

  it('refuses the name to a second key with NAME_TAKEN while the first is online, and keeps the holder', () => {
    reg.register(input(A, 'alice'))
    clock.advance(PEER_TIMEOUT_MS) // exactly at the timeout: still online
    expect(reg.expire()).toEqual([])
    expect(errorCode(() => reg.register(input(B, 'alice')))).toBe('NAME_TAKEN')
    expect(reg.lookup('alice')?.id).toBe(peerId(A))
    expect(reg.lookup(peerId(B))).toBeUndefined()
  })

  it('lets a second key take the name once the first has timed out', () => {
    reg.register(input(A, 'alice'))
    clock.advance(PEER_TIMEOUT_MS + 1)
    const dropped = reg.expire()
    expect(dropped.map((r) => r.id)).toEqual([peerId(A)])
    const { reg: b, isNew } = reg.register(input(B, 'alice'))
    expect(isNew).toBe(true)
    expect(b.id).toBe(peerId(B))
    expect(reg.lookup('alice')?.id).toBe(peerId(B))
    // The old holder's token no longer resolves.
    expect(reg.byTokenBytes(seq(1, 16))).toBeUndefined()
  })

  it('a key re-registering keeps its token (the one given first) and is not new', () => {
    const first = reg.register(input(A, 'alice', seq(0x10, 16)))
    clock.advance(5_000)
    const again = reg.register(input(A, 'alice', seq(0x20, 16)))
    expect(again.isNew).toBe(false)
    expect(again.reg).toBe(first.reg)
    expect(Buffer.from(again.reg.token).equals(seq(0x10, 16))).toBe(true)
    expect(reg.byTokenBytes(seq(0x10, 16))?.id).toBe(peerId(A))
    expect(reg.byTokenBytes(seq(0x20, 16))).toBeUndefined()
    expect(again.reg.lastSeen).toBe(clock.now())
  })

  it('a key coming back after a timeout is new again (peers are told) and keeps its token', () => {
    reg.register(input(A, 'alice', seq(0x10, 16)))
    clock.advance(PEER_TIMEOUT_MS + 1)
    reg.expire()
    expect(reg.byTokenBytes(seq(0x10, 16))).toBeUndefined() // offline: token does not resolve
    const back = reg.register(input(A, 'alice', seq(0x30, 16)))
    expect(back.isNew).toBe(true)
    expect(reg.byTokenBytes(seq(0x10, 16))?.id).toBe(peerId(A))
  })

  it('a rename releases the old name for other keys', () => {
    reg.register(input(A, 'alice'))
    reg.register(input(A, 'alice2'))
    expect(reg.lookup('alice')).toBeUndefined()
    expect(reg.lookup('alice2')?.id).toBe(peerId(A))
    expect(reg.register(input(B, 'alice')).reg.id).toBe(peerId(B))
    expect(errorCode(() => reg.register(input(B, 'alice2')))).toBe('NAME_TAKEN')
  })

  it('expire returns each dropped registration exactly once, and only those past the timeout', () => {
    reg.register(input(A, 'alice'))
    clock.advance(10_000)
    reg.register(input(B, 'bob'))
    clock.advance(PEER_TIMEOUT_MS - 10_000 + 1) // A is 30,001 ms silent, B 20,001 ms
    expect(reg.expire().map((r) => r.name)).toEqual(['alice'])
    expect(reg.expire()).toEqual([])
    expect(reg.lookup('alice')?.online).toBe(false) // still listed, as offline
    clock.advance(10_000)
    expect(reg.expire().map((r) => r.name)).toEqual(['bob'])
    expect(reg.expire()).toEqual([])
  })

  it('touch keeps an agent alive; drop takes it offline once', () => {
    const { reg: a } = reg.register(input(A, 'alice'))
    for (let i = 0; i < 5; i++) {
      clock.advance(PEER_TIMEOUT_MS - 1)
      reg.touch(a)
      expect(reg.expire()).toEqual([])
    }
    expect(reg.drop(a)).toBe(true)
    expect(reg.drop(a)).toBe(false)
    expect(a.udp).toBeNull()
    expect(reg.byTokenBytes(a.token)).toBeUndefined()
    expect(reg.expire()).toEqual([]) // dropped agents are not reported again
  })

  it('finds peers by name, full ID and a unique 8+ character ID prefix', () => {
    reg.register(input(A, 'alice'))
    reg.register(input(B, 'bob'))
    const idA = peerId(A)
    expect(reg.lookup(idA)?.name).toBe('alice')
    expect(reg.lookup(idA.slice(0, 8))?.name).toBe('alice')
    expect(reg.lookup(idA.slice(0, 20))?.name).toBe('alice')
    expect(reg.lookup(idA.slice(0, 7))).toBeUndefined() // too short to be trusted
    expect(reg.lookup('nobody')).toBeUndefined()
    expect(reg.lookup('')).toBeUndefined()
  })

  it('an ambiguous ID prefix finds nothing', () => {
    // Keys sharing their first 5 bytes share the first 8 base32 characters (40 bits).
    const k1 = Buffer.concat([Buffer.alloc(5, 0x42), Buffer.alloc(27, 1)])
    const k2 = Buffer.concat([Buffer.alloc(5, 0x42), Buffer.alloc(27, 2)])
    reg.register(input(k1, 'one'))
    reg.register(input(k2, 'two'))
    expect(peerId(k1).slice(0, 8)).toBe(peerId(k2).slice(0, 8))
    expect(reg.lookup(peerId(k1).slice(0, 8))).toBeUndefined()
    expect(reg.lookup(peerId(k1))?.name).toBe('one')
    const unique = [...peerId(k1)].findIndex((c, i) => c !== peerId(k2)[i]) + 1
    expect(reg.lookup(peerId(k2).slice(0, unique))?.name).toBe('two')
  })

  it('a name shadows an ID prefix that happens to spell it', () => {
    const idA = peerId(A)
    reg.register(input(A, 'alice'))
    reg.register(input(B, idA.slice(0, 8)))
    expect(reg.lookup(idA.slice(0, 8))?.id).toBe(peerId(B))
  })

  it('record() reports lastSeenAgoMs from the clock and what the agent registered', () => {
    const { reg: a } = reg.register({ ...input(A, 'alice'), lan: [{ host: '192.168.1.2', port: 5 }], nat: 'hard', tcp: { host: '203.0.113.1', port: 7 } })
    expect(reg.record(a)).toMatchObject({ name: 'alice', online: true, lastSeenAgoMs: 0, nat: 'hard', lan: [{ host: '192.168.1.2', port: 5 }], tcp: { host: '203.0.113.1', port: 7 } })
    clock.advance(5_000)
    expect(reg.record(a).lastSeenAgoMs).toBe(5_000)
    reg.touch(a)
    expect(reg.record(a).lastSeenAgoMs).toBe(0)
    clock.advance(PEER_TIMEOUT_MS + 1)
    reg.expire()
    clock.advance(1_000)
    expect(reg.record(a)).toMatchObject({ online: false, lastSeenAgoMs: PEER_TIMEOUT_MS + 1_001, udp: null, tcp: null })
  })

  it('a UDP-only refresh keeps the TCP endpoint and vice versa', () => {
    reg.register({ ...input(A, 'alice'), udp: { host: '1.1.1.1', port: 1 } })
    reg.register({ ...input(A, 'alice'), udp: undefined, tcp: { host: '1.1.1.1', port: 2 } })
    expect(reg.lookup('alice')).toMatchObject({ udp: { host: '1.1.1.1', port: 1 }, tcp: { host: '1.1.1.1', port: 2 } })
  })
})
