// The rendezvous registry (src/rendezvous/registry.ts) under a fake clock: who holds a
// name (for good, across restarts, until released or past the TTL), tokens, expiry, and
// lookups by name / ID / ID prefix.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { appendJsonLine } from '../../../src/common/state-files.js'
import { peerId } from '../../../src/protocol/identity.js'
import { silentLogger } from '../../../src/protocol/log.js'
import type { PeerRecord } from '../../../src/protocol/rendezvous.js'
import { FileNameStore, NAMES_FILE } from '../../../src/rendezvous/file-name-store.js'
import { CONTROL_LOST_GRACE_MS, NAME_SWEEP_MS, OFFLINE_RETENTION_MS, Registry, type RegisterInput, type Registration } from '../../../src/rendezvous/registry.js'
import { errorCode, FakeClock, prng, randBuf, randInt, seq } from '../helpers.js'

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

  /** Registers and reads the registration back. */
  function register(i: RegisterInput): { reg: Registration; isNew: boolean } {
    const { ref, isNew } = reg.register(i)
    return { reg: reg.get(ref)!, isNew }
  }

  it('setV6: the IPv6 heartbeat source becomes the first candidate, replacing the last one; the IPv4 endpoint stays', () => {
    const { ref } = reg.register({ ...input(A, 'alice'), lan: [{ host: '10.0.0.5', port: 4000 }] })
    expect(reg.setV6(ref, { host: '2001:db8:1::5', port: 4000 })).toBe(true)
    expect(reg.setV6(ref, { host: '2001:db8:1::5', port: 4000 })).toBe(false) // the steady state changes nothing
    expect(reg.peer(ref)).toMatchObject({ udp: { host: '203.0.113.1', port: 1001 }, lan: [{ host: '2001:db8:1::5', port: 4000 }, { host: '10.0.0.5', port: 4000 }] })
    expect(reg.setV6(ref, { host: '2001:db8:2::5', port: 4001 })).toBe(true) // renumbered
    expect(reg.peer(ref)?.lan).toEqual([{ host: '2001:db8:2::5', port: 4001 }, { host: '10.0.0.5', port: 4000 }])
  })

  it('gives the first key its name', () => {
    const { reg: r, isNew } = register(input(A, 'alice'))
    expect(isNew).toBe(true)
    expect(r).toMatchObject({ name: 'alice', id: peerId(A), online: true, lastSeen: clock.now() })
    expect(reg.find('alice')?.id).toBe(peerId(A))
    expect(reg.size).toBe(1)
  })

  it('refuses the name to a second key with NAME_TAKEN while the first is online, and keeps the holder', () => {
    reg.register(input(A, 'alice'))
    clock.advance(PEER_TIMEOUT_MS) // exactly at the timeout: still online
    expect(reg.expire()).toEqual([])
    expect(errorCode(() => reg.register(input(B, 'alice')))).toBe('NAME_TAKEN')
    expect(reg.find('alice')?.id).toBe(peerId(A))
    expect(reg.find(peerId(B))).toBeUndefined()
  })

  it('keeps refusing the name to a second key once the holder has timed out, and says how to free it', () => {
    reg.register(input(A, 'alice'))
    clock.advance(PEER_TIMEOUT_MS + 1)
    const dropped = reg.expire()
    expect(dropped.map((r) => r.id)).toEqual([peerId(A)])
    let message = ''
    try {
      reg.register(input(B, 'alice'))
    } catch (err) {
      message = (err as Error).message
    }
    expect(message).toContain('natd release-name')
    expect(message).toContain('natd-rendezvous names rm alice')
    expect(errorCode(() => reg.register(input(B, 'alice')))).toBe('NAME_TAKEN')
    expect(reg.find('alice')?.id).toBe(peerId(A))
    // The holder itself gets its name back.
    expect(register(input(A, 'alice')).reg).toMatchObject({ id: peerId(A), online: true })
  })

  it('a key re-registering keeps its token (the one given first) and is not new', () => {
    const first = register(input(A, 'alice', seq(0x10, 16)))
    clock.advance(5_000)
    const again = register(input(A, 'alice', seq(0x20, 16)))
    expect(again.isNew).toBe(false)
    expect(again.reg.ref).toBe(first.reg.ref)
    expect(Buffer.from(again.reg.token).equals(seq(0x10, 16))).toBe(true)
    expect(reg.byTokenBytes(seq(0x10, 16))).toBe(first.reg.ref)
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
    expect(reg.byTokenBytes(seq(0x10, 16))).toBe(back.ref)
    expect(reg.get(back.ref)?.id).toBe(peerId(A))
  })

  it('a rename releases the old name for other keys', () => {
    reg.register(input(A, 'alice'))
    reg.register(input(A, 'alice2'))
    expect(reg.find('alice')).toBeUndefined()
    expect(reg.find('alice2')?.id).toBe(peerId(A))
    expect(register(input(B, 'alice')).reg.id).toBe(peerId(B))
    expect(errorCode(() => reg.register(input(B, 'alice2')))).toBe('NAME_TAKEN')
  })

  it('expire returns each dropped registration exactly once, and only those past the timeout', () => {
    reg.register(input(A, 'alice'))
    clock.advance(10_000)
    reg.register(input(B, 'bob'))
    clock.advance(PEER_TIMEOUT_MS - 10_000 + 1) // A is 30,001 ms silent, B 20,001 ms
    expect(reg.expire().map((r) => r.name)).toEqual(['alice'])
    expect(reg.expire()).toEqual([])
    expect(reg.find('alice')?.online).toBe(false) // still listed, as offline
    clock.advance(10_000)
    expect(reg.expire().map((r) => r.name)).toEqual(['bob'])
    expect(reg.expire()).toEqual([])
  })

  it('touch keeps an agent alive; drop takes it offline once', () => {
    const { reg: a } = register(input(A, 'alice'))
    for (let i = 0; i < 5; i++) {
      clock.advance(PEER_TIMEOUT_MS - 1)
      reg.touch(a.ref)
      expect(reg.expire()).toEqual([])
    }
    expect(reg.drop(a.ref)).toBe(true)
    expect(reg.drop(a.ref)).toBe(false)
    expect(reg.get(a.ref)?.udp).toBeNull()
    expect(reg.byTokenBytes(a.token)).toBeUndefined()
    expect(reg.expire()).toEqual([]) // dropped agents are not reported again
  })

  it('an agent whose control connection ended is dropped after the grace even while its heartbeats still come, unless it registers again', () => {
    const { reg: a } = register(input(A, 'alice'))
    const { reg: b } = register(input(B, 'bob'))
    reg.controlLost(a.ref)
    reg.controlLost(b.ref)
    clock.advance(CONTROL_LOST_GRACE_MS)
    reg.touch(a.ref) // a heartbeat: not enough, the server cannot introduce anyone to alice
    reg.register(input(B, 'bob')) // bob reconnected within the grace
    expect(reg.expire()).toEqual([])
    reg.controlLost(a.ref) // a second close does not restart the grace
    clock.advance(1)
    expect(reg.expire().map((r) => r.name)).toEqual(['alice'])
    expect(reg.find('alice')?.online).toBe(false)
    clock.advance(PEER_TIMEOUT_MS - 1)
    expect(reg.find('bob')?.online).toBe(true)
    expect(reg.expire()).toEqual([])
    reg.touch(b.ref)
    // Back online, alice's old grace is gone: only a new lost connection starts one.
    reg.register(input(A, 'alice'))
    clock.advance(CONTROL_LOST_GRACE_MS + 1)
    expect(reg.expire()).toEqual([])
    reg.controlLost(reg.lookup('bob')!)
    clock.advance(CONTROL_LOST_GRACE_MS + 1)
    expect(reg.expire().map((r) => r.name)).toEqual(['bob'])
  })

  it('online counts the agents online through every change: re-registration, drop, expiry, release, forgetting', () => {
    const counts = (): number[] => [reg.online, reg.size]
    const a = reg.register(input(A, 'alice')).ref
    reg.register(input(B, 'bob'))
    reg.register(input(A, 'alice')) // again while online: still one
    expect(counts()).toEqual([2, 2])
    reg.drop(a)
    reg.drop(a)
    expect(counts()).toEqual([1, 2]) // offline, remembered
    reg.register(input(A, 'alice'))
    expect(counts()).toEqual([2, 2])
    reg.releaseName('bob', B)
    expect(counts()).toEqual([1, 2])
    clock.advance(PEER_TIMEOUT_MS + 1)
    expect(reg.expire().map((r) => r.name)).toEqual(['alice'])
    expect(counts()).toEqual([0, 2])
    clock.advance(OFFLINE_RETENTION_MS + 1)
    reg.expire()
    expect(counts()).toEqual([0, 0])
    reg.register(input(key(3), 'carol'))
    expect(counts()).toEqual([1, 1])
  })

  it('a reference to a forgotten agent stops resolving, even when its slot has a new holder', () => {
    const { ref: a } = reg.register(input(A, 'alice', seq(0x10, 16)))
    reg.drop(a)
    expect(reg.releaseName('alice', A)).toBe(true)
    const { ref: b } = reg.register(input(B, 'alice', seq(0x20, 16))) // takes the released name: A is forgotten
    expect(b).not.toBe(a)
    expect(reg.get(a)).toBeUndefined()
    expect(reg.has(a)).toBe(false)
    expect(reg.isOnline(a)).toBe(false)
    expect(reg.drop(a)).toBe(false)
    reg.touch(a) // harmless
    expect(reg.get(b)).toMatchObject({ id: peerId(B), name: 'alice', online: true })
    expect(reg.byTokenBytes(seq(0x10, 16))).toBeUndefined()
    expect(reg.size).toBe(1)
  })

  it('holds thousands of agents: every name, key, token and endpoint still resolves after the columns grow and slots are reused', () => {
    const n = 5_000
    const keyOf = (i: number): Buffer => Buffer.concat([Buffer.from(Uint32Array.of(i).buffer), Buffer.alloc(28, 7)])
    const tokenOf = (i: number): Buffer => Buffer.concat([Buffer.from(Uint32Array.of(i * 7919).buffer), Buffer.alloc(12, i & 0xff)])
    const refs: number[] = []
    for (let i = 0; i < n; i++) {
      refs.push(reg.register({ publicKey: keyOf(i), name: `agent-${i}`, lan: [], nat: 'none', token: tokenOf(i), udp: { host: `10.0.${i >> 8}.${i & 0xff}`, port: i + 1 } }).ref)
    }
    // Forget every third agent (it releases its name, another key takes it), then register them again.
    for (let i = 0; i < n; i += 3) {
      reg.releaseName(`agent-${i}`, keyOf(i))
      reg.register({ publicKey: key(0xee - (i % 2)), name: `agent-${i}`, lan: [], nat: 'none', token: seq(i, 16) })
      reg.releaseName(`agent-${i}`, key(0xee - (i % 2)))
      refs[i] = reg.register({ publicKey: keyOf(i), name: `agent-${i}`, lan: [], nat: 'none', token: tokenOf(i), udp: { host: `10.0.${i >> 8}.${i & 0xff}`, port: i + 1 } }).ref
    }
    for (let i = 0; i < n; i++) {
      expect(reg.lookup(`agent-${i}`)).toBe(refs[i])
      expect(reg.lookup(peerId(keyOf(i)))).toBe(refs[i])
      expect(reg.byTokenBytes(tokenOf(i))).toBe(refs[i])
      expect(reg.udpIs(refs[i]!, { host: `10.0.${i >> 8}.${i & 0xff}`, port: i + 1 })).toBe(true)
    }
    expect(reg.size).toBe(n) // each stand-in key was forgotten when the name's first holder took it back
  })

  it('finds peers by name, full ID and a unique 8+ character ID prefix', () => {
    reg.register(input(A, 'alice'))
    reg.register(input(B, 'bob'))
    const idA = peerId(A)
    expect(reg.find(idA)?.name).toBe('alice')
    expect(reg.find(idA.slice(0, 8))?.name).toBe('alice')
    expect(reg.find(idA.slice(0, 20))?.name).toBe('alice')
    expect(reg.find(idA.slice(0, 7))).toBeUndefined() // too short to be trusted
    expect(reg.find('nobody')).toBeUndefined()
    expect(reg.find('')).toBeUndefined()
  })

  it('ID lookups agree with a walk over every peer ID, for prefixes of every length and near misses', () => {
    const rand = prng(0x1d5)
    // Keys sharing 0-6 leading bytes, so that prefixes of many lengths are ambiguous.
    const keys = Array.from({ length: 300 }, (_, i) => Buffer.concat([Buffer.alloc(i % 7, 0x42), randBuf(rand, 32 - (i % 7))]))
    keys.forEach((k, i) => reg.register(input(k, `p${i}`)))
    const ids = keys.map((k) => peerId(k))
    const walk = (target: string): string | undefined => {
      const hits = target.length >= 8 ? ids.filter((id) => id.startsWith(target)) : []
      return hits.length === 1 ? hits[0] : undefined
    }
    for (let t = 0; t < 3_000; t++) {
      const id = ids[randInt(rand, 0, ids.length - 1)]!
      let target = id.slice(0, randInt(rand, 6, 53))
      if (rand() < 0.3) target = target.slice(0, -1) + 'abcdefghijklmnopqrstuvwxyz234567'[randInt(rand, 0, 31)]
      if (rand() < 0.05) target += 'a'
      expect(reg.find(target)?.id, target).toBe(walk(target))
    }
  })

  it('an ambiguous ID prefix finds nothing', () => {
    // Keys sharing their first 5 bytes share the first 8 base32 characters (40 bits).
    const k1 = Buffer.concat([Buffer.alloc(5, 0x42), Buffer.alloc(27, 1)])
    const k2 = Buffer.concat([Buffer.alloc(5, 0x42), Buffer.alloc(27, 2)])
    reg.register(input(k1, 'one'))
    reg.register(input(k2, 'two'))
    expect(peerId(k1).slice(0, 8)).toBe(peerId(k2).slice(0, 8))
    expect(reg.find(peerId(k1).slice(0, 8))).toBeUndefined()
    expect(reg.find(peerId(k1))?.name).toBe('one')
    const unique = [...peerId(k1)].findIndex((c, i) => c !== peerId(k2)[i]) + 1
    expect(reg.find(peerId(k2).slice(0, unique))?.name).toBe('two')
  })

  it('a name shadows an ID prefix that happens to spell it', () => {
    const idA = peerId(A)
    reg.register(input(A, 'alice'))
    reg.register(input(B, idA.slice(0, 8)))
    expect(reg.find(idA.slice(0, 8))?.id).toBe(peerId(B))
  })

  it('record() reports lastSeenAgoMs from the clock and what the agent registered', () => {
    const { ref } = reg.register({ ...input(A, 'alice'), lan: [{ host: '192.168.1.2', port: 5 }], nat: 'hard', tcp: { host: '203.0.113.1', port: 7 } })
    const record = (): PeerRecord => {
      const live = reg.peer(ref)! // built from the columns
      expect(live).toEqual(reg.record(reg.get(ref)!)) // the same from a snapshot
      return live
    }
    expect(record()).toMatchObject({ name: 'alice', online: true, lastSeenAgoMs: 0, nat: 'hard', lan: [{ host: '192.168.1.2', port: 5 }], tcp: { host: '203.0.113.1', port: 7 } })
    clock.advance(5_000)
    expect(record().lastSeenAgoMs).toBe(5_000)
    reg.touch(ref)
    expect(record().lastSeenAgoMs).toBe(0)
    clock.advance(PEER_TIMEOUT_MS + 1)
    reg.expire()
    clock.advance(1_000)
    expect(record()).toMatchObject({ online: false, lastSeenAgoMs: PEER_TIMEOUT_MS + 1_001, udp: null, tcp: null })
  })

  it('a UDP-only refresh keeps the TCP endpoint and vice versa', () => {
    reg.register({ ...input(A, 'alice'), udp: { host: '1.1.1.1', port: 1 } })
    reg.register({ ...input(A, 'alice'), udp: undefined, tcp: { host: '1.1.1.1', port: 2 } })
    expect(reg.find('alice')).toMatchObject({ udp: { host: '1.1.1.1', port: 1 }, tcp: { host: '1.1.1.1', port: 2 } })
  })
})

describe('Registry name bindings', () => {
  const A = key(1)
  const B = key(2)
  const DAY_MS = 24 * 3_600_000
  const TTL_MS = 30 * DAY_MS
  let clock: FakeClock
  let dir: string
  const stores: FileNameStore[] = []

  beforeEach(() => {
    clock = new FakeClock()
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-registry-'))
  })
  afterEach(() => {
    for (const s of stores.splice(0)) s.close()
    fs.rmSync(dir, { recursive: true, force: true })
  })

  /** A registry over the names file in `dir`: a new one on the same dir is a server restart. */
  function start(): Registry {
    for (const s of stores.splice(0)) s.close()
    const names = new FileNameStore(dir, silentLogger, { pollMs: 0 })
    stores.push(names)
    return new Registry(clock, PEER_TIMEOUT_MS, { names, nameTtlMs: TTL_MS })
  }

  it('refuses the name to another key after its holder said goodbye, was forgotten, and after a restart', () => {
    let reg = start()
    const { ref } = reg.register(input(A, 'alice'))
    reg.drop(ref) // BYE
    expect(errorCode(() => reg.register(input(B, 'alice')))).toBe('NAME_TAKEN')
    clock.advance(OFFLINE_RETENTION_MS + 1)
    reg.expire()
    expect(reg.has(ref)).toBe(false) // forgotten by the registry, still bound in the store
    expect(errorCode(() => reg.register(input(B, 'alice')))).toBe('NAME_TAKEN')
    reg = start()
    expect(reg.size).toBe(0)
    expect(errorCode(() => reg.register(input(B, 'alice')))).toBe('NAME_TAKEN')
    expect(reg.register(input(A, 'alice')).isNew).toBe(true) // the holder gets its name back
    expect(reg.find('alice')?.id).toBe(peerId(A))
  })

  it('a key taking a new name frees its old one, across a restart too', () => {
    let reg = start()
    reg.register(input(A, 'alice'))
    reg.register(input(A, 'alice2'))
    reg = start()
    expect(reg.nameStore.nameOf(A)).toBe('alice2')
    expect(reg.register(input(B, 'alice')).isNew).toBe(true)
    expect(errorCode(() => reg.register(input(B, 'alice2')))).toBe('NAME_TAKEN')
  })

  it('releases a name unseen for the TTL: lazily when another key asks, and by the hourly sweep', () => {
    const reg = start()
    reg.drop(reg.register(input(A, 'alice')).ref)
    reg.drop(reg.register(input(key(3), 'carol')).ref)
    clock.advance(TTL_MS) // exactly the TTL: still bound
    expect(errorCode(() => reg.register(input(B, 'alice')))).toBe('NAME_TAKEN')
    clock.advance(1)
    expect(reg.register(input(B, 'alice')).isNew).toBe(true)
    expect(reg.find('alice')?.id).toBe(peerId(B))
    expect(reg.nameStore.get('carol')).toBeDefined() // nobody asked yet
    clock.advance(NAME_SWEEP_MS)
    reg.expire()
    expect(reg.nameStore.get('carol')).toBeUndefined()
    expect(reg.nameStore.get('alice')).toBeDefined() // B's, seen just now
  })

  it('never expires the name of an agent that stays online without registering again', () => {
    const reg = start()
    const { ref } = reg.register(input(A, 'alice'))
    for (let t = 0; t < 2 * TTL_MS; t += NAME_SWEEP_MS) {
      clock.advance(NAME_SWEEP_MS)
      reg.touch(ref) // heartbeats
      reg.expire()
    }
    expect(errorCode(() => reg.register(input(B, 'alice')))).toBe('NAME_TAKEN')
    expect(reg.isOnline(ref)).toBe(true)
  })

  it('releaseName: the holder frees its name and goes offline; another key is UNAUTHORIZED; an unbound name is false', () => {
    const reg = start()
    const { ref } = reg.register(input(A, 'alice'))
    expect(errorCode(() => reg.releaseName('alice', B))).toBe('UNAUTHORIZED')
    expect(reg.isOnline(ref)).toBe(true)
    expect(reg.releaseName('nobody', A)).toBe(false)
    expect(reg.releaseName('alice', A)).toBe(true)
    expect(reg.isOnline(ref)).toBe(false)
    expect(reg.releaseName('alice', A)).toBe(false)
    expect(reg.register(input(B, 'alice')).isNew).toBe(true)
    expect(reg.has(ref)).toBe(false) // A's old registration under that name is forgotten
  })

  it('an operator release (a line appended to the file) frees the name at the next poll', () => {
    const reg = start()
    reg.drop(reg.register(input(A, 'alice')).ref)
    appendJsonLine(path.join(dir, NAMES_FILE), { op: 'release', name: 'alice', t: clock.now() })
    stores[0]!.poll()
    expect(reg.register(input(B, 'alice')).isNew).toBe(true)
  })
})
