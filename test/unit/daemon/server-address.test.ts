// The rendezvous server as the user names it (src/daemon/server-address.ts):
// `host[:port][#KEY]`, with INVALID_ARGUMENT and a message saying what is wrong, and the
// resolver the agent uses to reach it.
import { describe, expect, it } from 'vitest'
import net from 'node:net'
import { DEFAULT_SERVER_PORT, MAX_SERVERS, parseServerSpec, resolveServer, resolveServers } from '../../../src/daemon/server-address.js'
import { rankServers } from '../../../src/daemon/server-choice.js'
import { NatdError } from '../../../src/protocol/errors.js'
import { generateKeyPair, peerId } from '../../../src/protocol/identity.js'

/** The NatdError `fn` throws (fails the test when it throws nothing or something else). */
function thrown(fn: () => unknown): NatdError {
  try {
    fn()
  } catch (err) {
    expect(err).toBeInstanceOf(NatdError)
    return err as NatdError
  }
  throw new Error('did not throw')
}

describe('parseServerSpec', () => {
  const { publicKey } = generateKeyPair()
  const KEY = peerId(publicKey)

  it(`host alone gets the default port ${DEFAULT_SERVER_PORT} and no key`, () => {
    expect(parseServerSpec('rv.example.net')).toEqual({ text: 'rv.example.net', host: 'rv.example.net', port: 3478, key: null })
    expect(parseServerSpec('203.0.113.5')).toEqual({ text: '203.0.113.5', host: '203.0.113.5', port: 3478, key: null })
  })

  it('host:port; an IPv6 literal in brackets (an IPv6-only host reaches the server from its IPv6 socket)', () => {
    expect(parseServerSpec('rv.example.net:4000')).toEqual({ text: 'rv.example.net:4000', host: 'rv.example.net', port: 4000, key: null })
    expect(parseServerSpec('[2001:db8::1]:443')).toEqual({ text: '[2001:db8::1]:443', host: '2001:db8::1', port: 443, key: null })
    expect(parseServerSpec('[2001:db8::1]')).toEqual({ text: '[2001:db8::1]', host: '2001:db8::1', port: 3478, key: null })
  })

  it('#KEY pins the server key; the text stays without it', () => {
    const spec = parseServerSpec(`rv.example.net:4000#${KEY}`)
    expect(spec.text).toBe('rv.example.net:4000')
    expect(spec.host).toBe('rv.example.net')
    expect(spec.port).toBe(4000)
    expect(spec.key).toEqual(publicKey)
  })

  it('a key that is not a full peer ID is INVALID_ARGUMENT saying what a key looks like', () => {
    for (const bad of [KEY.slice(0, 8), KEY.slice(0, 51), KEY.toUpperCase(), KEY.slice(0, 51) + '1', '', 'abc#def']) {
      const err = thrown(() => parseServerSpec(`rv.example.net#${bad}`))
      expect(err.code, bad).toBe('INVALID_ARGUMENT')
      expect(err.message).toContain('--server')
      expect(err.message).toContain(JSON.stringify(bad))
      expect(err.message).toMatch(/not a server key .*52 characters a-z2-7.*--print-key/)
    }
  })

  it('a bad or missing port or host is INVALID_ARGUMENT naming what was given', () => {
    for (const bad of ['rv.example.net:0', 'rv.example.net:65536', 'rv.example.net:x', 'rv.example.net:', '[2001:db8::1]:99999']) {
      const err = thrown(() => parseServerSpec(bad))
      expect(err.code, bad).toBe('INVALID_ARGUMENT')
      expect(err.message, bad).toMatch(/^--server: /)
      expect(err.message, bad).toContain(JSON.stringify(bad))
    }
    // A port error is reported even when a good key follows it.
    const withKey = thrown(() => parseServerSpec(`rv.example.net:0#${KEY}`))
    expect(withKey.code).toBe('INVALID_ARGUMENT')
    expect(withKey.message).toContain('port')
    for (const bad of ['', ':3478', `#${KEY}`, '2001:db8::1']) {
      expect(thrown(() => parseServerSpec(bad)).code, JSON.stringify(bad)).toBe('INVALID_ARGUMENT')
    }
  })
})

describe('resolveServer', () => {
  it('returns an IP address as it is, without asking DNS', async () => {
    await expect(resolveServer(parseServerSpec('203.0.113.5:4000'))).resolves.toEqual({ host: '203.0.113.5', port: 4000 })
  })

  it('resolves a name to an IPv4 address, keeping the port', async () => {
    await expect(resolveServer(parseServerSpec('localhost:4000'))).resolves.toEqual({ host: '127.0.0.1', port: 4000 })
  })

  it('a name that does not resolve is SERVER_UNREACHABLE naming the host', async () => {
    const err = await resolveServer(parseServerSpec('no-such-host.invalid')).then(
      () => null,
      (e: unknown) => e
    )
    expect(err).toBeInstanceOf(NatdError)
    expect((err as NatdError).code).toBe('SERVER_UNREACHABLE')
    expect((err as NatdError).message).toContain('cannot resolve no-such-host.invalid')
  })
})

describe('several servers (one deployment: natd-rendezvous --redis)', () => {
  const { publicKey } = generateKeyPair()
  const KEY = peerId(publicKey)

  it('a list names the first as host/port and the rest as alternates; one #KEY pins them all', () => {
    const spec = parseServerSpec(`203.0.113.5,203.0.113.6:4000,rv.example.net#${KEY}`)
    expect(spec).toMatchObject({ text: '203.0.113.5,203.0.113.6:4000,rv.example.net', host: '203.0.113.5', port: 3478 })
    expect(spec.alternates).toEqual([{ host: '203.0.113.6', port: 4000 }, { host: 'rv.example.net', port: 3478 }])
    expect(spec.key).toEqual(publicKey)
  })

  it('two different keys in one list, a bad entry, or too many entries are INVALID_ARGUMENT', () => {
    const other = peerId(generateKeyPair().publicKey)
    expect(thrown(() => parseServerSpec(`a.example#${KEY},b.example#${other}`)).message).toMatch(/share one key/)
    expect(thrown(() => parseServerSpec('a.example,b.example:0')).code).toBe('INVALID_ARGUMENT')
    expect(thrown(() => parseServerSpec(Array.from({ length: MAX_SERVERS + 1 }, (_, i) => `10.0.0.${i + 1}`).join(','))).message).toMatch(/at most/)
  })

  it('resolveServers: every address, in the order given, without repeats', async () => {
    await expect(resolveServers(parseServerSpec('203.0.113.5:4000,localhost:4000,203.0.113.5:4000'))).resolves.toEqual([
      { host: '203.0.113.5', port: 4000 },
      { host: '127.0.0.1', port: 4000 }
    ])
  })

  it('rankServers: one that accepts comes before one that refuses, whatever the order given', async () => {
    const server = net.createServer((s) => s.destroy())
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    const up = { host: '127.0.0.1', port: (server.address() as net.AddressInfo).port }
    const closed = net.createServer()
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve))
    const down = { host: '127.0.0.1', port: (closed.address() as net.AddressInfo).port }
    await new Promise<void>((resolve) => closed.close(() => resolve()))
    try {
      expect(await rankServers([down, up])).toEqual([up, down])
      expect(await rankServers([up, down])).toEqual([up, down])
    } finally {
      server.close()
    }
  })
})
