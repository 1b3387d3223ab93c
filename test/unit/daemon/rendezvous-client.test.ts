// daemon/rendezvous-client.ts against an in-process rendezvous server on loopback: two
// agents register (TCP control connection, sealed UDP heartbeat) and one asks the server
// for the other's record with peer(): a LOOKUP (one record) where the server says it
// understands it in REGISTER_ACK, the whole LIST from a server that does not (an older
// one ends the connection on an unknown request), null for a key the server does not
// show (our own, an unknown one). The path check (daemon/path-check.ts) asks this while a
// tunnel is silent, up to twice a second.
import dgram from 'node:dgram'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { ControlConnection, TCP_REGISTER_TIMEOUT_MS, URGENT_CONNECT_TIMEOUT_MS } from '../../../src/daemon/control-connection.js'
import { RendezvousClient } from '../../../src/daemon/rendezvous-client.js'
import { parseServerSpec } from '../../../src/daemon/server-address.js'
import type { Endpoint } from '../../../src/protocol/endpoint.js'
import { generateKeyPair, peerId, type KeyPair } from '../../../src/protocol/identity.js'
import { systemClock } from '../../../src/protocol/clock.js'
import { silentLogger } from '../../../src/protocol/log.js'
import type { OutgoingMessage, PeerRecord } from '../../../src/protocol/rendezvous.js'
import { RendezvousServer } from '../../../src/rendezvous/server.js'
import { startOnFreePort } from '../rendezvous/start-server.js'
import { until } from '../tunnel/pipe.js'

const SERVER_KEY = generateKeyPair()
/** Registration takes a few round trips on loopback; generous for a loaded machine. */
const REGISTER_WAIT_MS = 15_000

const cleanup: Array<() => Promise<void> | void> = []
afterEach(async () => {
  vi.restoreAllMocks()
  for (const f of cleanup.splice(0).reverse()) await f()
})

async function startServer(): Promise<number> {
  const { server, port } = await startOnFreePort((port) => new RendezvousServer({ host: '127.0.0.1', port, altPort: port + 1, peerTimeoutMs: 30_000, heartbeatMs: 20_000 }, { log: silentLogger, keyPair: SERVER_KEY }))
  cleanup.push(() => server.stop())
  return port
}

async function udpSocket(): Promise<dgram.Socket> {
  const socket = dgram.createSocket('udp4')
  await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve))
  return socket
}

/** A registered client on its own UDP socket (loopback only); `moveUdp()` makes its mapping move (another socket). */
async function agent(port: number, name: string, keyPair: KeyPair = generateKeyPair(), urgent?: () => boolean): Promise<RendezvousClient & { moveUdp: () => Promise<void> }> {
  let socket = await udpSocket()
  const client = new RendezvousClient(
    { server: parseServerSpec(`127.0.0.1:${port}#${peerId(SERVER_KEY.publicKey)}`), name, heartbeatMs: 20_000, tcpPort: 0, secretKey: null },
    {
      udp: { send: (buf: Uint8Array, to: Endpoint) => socket.send(buf, to.port, to.host) },
      keyPair,
      serverKey: { expected: () => null, learned: () => undefined },
      log: silentLogger,
      clock: systemClock,
      lan: () => [],
      nat: () => 'easy',
      ...(urgent ? { urgent } : {})
    }
  )
  const listen = (s: dgram.Socket): void => void s.on('message', (buf, rinfo) => client.onDatagram(buf, { host: rinfo.address, port: rinfo.port }))
  listen(socket)
  const running = client.run()
  cleanup.push(async () => {
    await client.stop()
    await running
    socket.close()
  })
  await until(() => client.state.kind === 'registered', `${name} registered`, REGISTER_WAIT_MS)
  const moveUdp = async (): Promise<void> => {
    const old = socket
    socket = await udpSocket()
    listen(socket)
    old.close()
  }
  return Object.assign(client, { moveUdp })
}

/** The types of the requests clients send on their control connections from now on. */
function requestTypes(): string[] {
  const types: string[] = []
  const request = ControlConnection.prototype.request
  vi.spyOn(ControlConnection.prototype, 'request').mockImplementation(function (this: ControlConnection, msg: Extract<OutgoingMessage, { reqId: number }>) {
    types.push(msg.type)
    return request.call(this, msg)
  })
  return types
}

describe('RendezvousClient: a mapping that moved', () => {
  it('drops the control connection at once (it went with the mapping) and registers again without backoff', async () => {
    const port = await startServer()
    const alice = await agent(port, 'alice')
    const states: string[] = []
    alice.on('state', (st, err) => states.push(st.kind === 'backoff' ? `backoff ${st.until - Date.now() <= 0 ? 'none' : 'waiting'} ${err?.message ?? ''}` : st.kind))
    const moved = new Promise<void>((resolve) => alice.once('moved', resolve))
    await alice.moveUdp()
    void alice.probe() // its heartbeat, from the new socket: the server says 'moved'
    await moved
    await until(() => states.includes('registered'), 'registered again', REGISTER_WAIT_MS)
    expect(states).toEqual(['backoff none our NAT mapping moved: the control connection went with it', 'connecting', 'registered'])
  })
})

describe('RendezvousClient: an introduction sent into the control connection that went with our mapping', () => {
  it('comes again on the new control connection once we registered again (rendezvous/intro-outbox.ts)', async () => {
    const port = await startServer()
    const alice = await agent(port, 'alice')
    const bobKp = generateKeyPair()
    const bob = await agent(port, 'bob', bobKp)
    const got: string[] = []
    bob.on('introduction', (intro) => got.push(Buffer.from(intro.introId).toString('hex')))
    // The server still writes to bob's old control connection, but nobody reads it any more (its NAT mapping is gone).
    ;(bob as unknown as { control: ControlConnection }).control.removeAllListeners('message')
    const mine = await alice.introduce(peerId(bobKp.publicKey), 'udp')
    await new Promise((resolve) => setTimeout(resolve, 200))
    expect(got).toEqual([])
    const registered = new Promise<void>((resolve) => bob.on('state', (st) => st.kind === 'registered' && resolve()))
    await bob.moveUdp()
    void bob.probe() // the server says 'moved': bob drops the old connection and registers again
    await registered
    await until(() => got.length > 0, 'the introduction again', REGISTER_WAIT_MS)
    expect(got).toEqual([Buffer.from(mine.introId).toString('hex')])
  })
})

describe('RendezvousClient: the control connection\'s connect deadline', () => {
  it('is URGENT_CONNECT_TIMEOUT_MS while a tunnel migrates (a connect whose SYN was lost is not waited out), TCP_REGISTER_TIMEOUT_MS otherwise', async () => {
    const port = await startServer()
    const deadlines: Array<number | undefined> = []
    const connect = ControlConnection.connect.bind(ControlConnection)
    vi.spyOn(ControlConnection, 'connect').mockImplementation((...args: Parameters<typeof ControlConnection.connect>) => {
      deadlines.push(args[6])
      return connect(...args)
    })
    await agent(port, 'alice')
    await agent(port, 'bob', generateKeyPair(), () => true)
    expect(deadlines).toEqual([TCP_REGISTER_TIMEOUT_MS, URGENT_CONNECT_TIMEOUT_MS])
    expect(URGENT_CONNECT_TIMEOUT_MS).toBeLessThan(TCP_REGISTER_TIMEOUT_MS)
  })
})

describe('RendezvousClient.peer()', () => {
  it("asks the server for one record with LOOKUP: the peer's, null for our own key or an unknown one", async () => {
    const port = await startServer()
    const bobKp = generateKeyPair()
    const aliceKp = generateKeyPair()
    const alice = await agent(port, 'alice', aliceKp)
    await agent(port, 'bob', bobKp)
    const sent = requestTypes()
    expect(await alice.peer(bobKp.publicKey)).toMatchObject({ name: 'bob', online: true, nat: 'easy' })
    expect(await alice.peer(aliceKp.publicKey)).toBeNull()
    expect(await alice.peer(generateKeyPair().publicKey)).toBeNull()
    expect(sent).toEqual(['lookup', 'lookup', 'lookup'])
  })

  it('asks a server that does not say it understands LOOKUP (an older one) for the whole LIST, and picks the record out', async () => {
    const port = await startServer()
    // An older server: its REGISTER_ACK carries no features.
    const register = ControlConnection.prototype.register
    vi.spyOn(ControlConnection.prototype, 'register').mockImplementation(async function (this: ControlConnection, signed) {
      return { ...(await register.call(this, signed)), lookup: false }
    })
    const bobKp = generateKeyPair()
    const aliceKp = generateKeyPair()
    const alice = await agent(port, 'alice', aliceKp)
    await agent(port, 'bob', bobKp)
    const sent = requestTypes()
    expect(await alice.peer(bobKp.publicKey)).toMatchObject({ name: 'bob', online: true })
    expect(await alice.peer(generateKeyPair().publicKey)).toBeNull()
    expect(sent).toEqual(['list', 'list'])
  })
})

describe('RendezvousClient: a peer record whose name is not a valid name (a lying server, review 7 #4)', () => {
  const EVIL = 'bob\x1b[2J\r'
  /** The server, lying: every record it names `bob` in a reply comes back named EVIL. */
  function serverRenamesBob(): void {
    const request = ControlConnection.prototype.request
    vi.spyOn(ControlConnection.prototype, 'request').mockImplementation(async function (this: ControlConnection, msg: Extract<OutgoingMessage, { reqId: number }>) {
      const reply = await request.call(this, msg)
      const rename = (p: PeerRecord): PeerRecord => (p.name === 'bob' ? { ...p, name: EVIL } : p)
      if (reply.type === 'peers') return { ...reply, peers: reply.peers.map(rename) }
      if (reply.type === 'introduction') return { ...reply, peer: rename(reply.peer) }
      return reply
    })
  }

  it('is dropped from LIST and LOOKUP answers; the other records stay', async () => {
    const port = await startServer()
    const bobKp = generateKeyPair()
    const alice = await agent(port, 'alice')
    await agent(port, 'bob', bobKp)
    await agent(port, 'carol')
    serverRenamesBob()
    expect((await alice.list()).map((p) => p.name).sort()).toEqual(['carol'])
    expect(await alice.peer(bobKp.publicKey)).toBeNull()
  })

  it('in an introduction we asked for: refused with PEER_MISMATCH', async () => {
    const port = await startServer()
    const bobKp = generateKeyPair()
    const alice = await agent(port, 'alice')
    await agent(port, 'bob', bobKp)
    serverRenamesBob()
    await expect(alice.introduce(peerId(bobKp.publicKey), 'udp')).rejects.toMatchObject({ code: 'PEER_MISMATCH' })
  })

  it('in a PEER_EVENT or an introduction the server sends on its own: ignored (no peer event, no introduction to accept)', async () => {
    const port = await startServer()
    const alice = await agent(port, 'alice')
    const events: string[] = []
    alice.on('peer', (event, peer) => events.push(`${event} ${peer.name}`))
    alice.on('introduction', (intro) => events.push(`introduction ${intro.peer.name}`))
    const record = (name: string): PeerRecord => ({ publicKey: generateKeyPair().publicKey, name, online: true, lastSeenAgoMs: 0, nat: 'easy', udp: null, tcp: null, lan: [] })
    const control = (alice as unknown as { control: ControlConnection }).control
    const intro = { type: 'introduction' as const, reqId: 0, introId: new Uint8Array(16), punchKey: new Uint8Array(32), initiator: false, via: 'udp' as const }
    for (const name of [EVIL, 'Bob', '', 'dave']) {
      control.emit('message', { type: 'peer-event', event: 'up', peer: record(name) })
      control.emit('message', { ...intro, peer: record(name) })
    }
    expect(events).toEqual(['up dave', 'introduction dave'])
  })

  it('a lying server that pushes such records in a loop makes one line of each kind, then counts (review 9 #3)', async () => {
    const port = await startServer()
    const alice = await agent(port, 'alice')
    const warn = vi.spyOn(silentLogger, 'warn')
    const control = (alice as unknown as { control: ControlConnection }).control
    for (let i = 0; i < 500; i++) control.emit('message', { type: 'peer-event', event: 'up', peer: { publicKey: generateKeyPair().publicKey, name: EVIL, online: true, lastSeenAgoMs: 0, nat: 'easy', udp: null, tcp: null, lan: [] } })
    const refused = warn.mock.calls.filter(([message]) => message === 'refused')
    expect(refused).toEqual([['refused', expect.objectContaining({ what: 'peer record with an invalid name (peer event)', code: 'BAD_REQUEST' })]])
  })
})
