// The rendezvous server as the user names it (src/daemon/server-address.ts):
// `host[:port][#KEY]`, with INVALID_ARGUMENT and a message saying what is wrong, and the
// resolver the agent uses to reach it.
import { describe, expect, it } from 'vitest'
import net from 'node:net'
import { DEFAULT_SERVER_PORT, MAX_ADDRESSES_PER_NAME, MAX_SERVERS, parseServerSpec, resolveServer, resolveServers, type Resolve } from '../../../src/daemon/server-address.js'
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

/** A resolver that answers from `table` (name → family → addresses) and fails like getaddrinfo (ENOTFOUND) for the rest. */
function fakeResolver(table: Record<string, Partial<Record<4 | 6, string[]>>>): Resolve {
  return async (host, family) => {
    const found = table[host]?.[family]
    if (!found?.length) throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${host}`), { code: 'ENOTFOUND' })
    return found
  }
}

describe('resolveServer', () => {
  it('returns an IP address as it is, without asking DNS', async () => {
    await expect(resolveServer(parseServerSpec('203.0.113.5:4000'))).resolves.toEqual({ host: '203.0.113.5', port: 4000 })
  })

  it('resolves a name to an IPv4 address, keeping the port', async () => {
    await expect(resolveServer(parseServerSpec('localhost:4000'))).resolves.toEqual({ host: '127.0.0.1', port: 4000 })
  })

  it('a name with no A record gives its first AAAA record (an IPv6-only server); with both, the A record', async () => {
    await expect(resolveServer(parseServerSpec('rv.example:4000'), fakeResolver({ 'rv.example': { 6: ['2001:db8::2', '2001:db8::3'] } }))).resolves.toEqual({ host: '2001:db8::2', port: 4000 })
    await expect(resolveServer(parseServerSpec('rv.example'), fakeResolver({ 'rv.example': { 4: ['198.18.0.2'], 6: ['2001:db8::2'] } }))).resolves.toEqual({ host: '198.18.0.2', port: 3478 })
    const err = await resolveServer(parseServerSpec('rv.example'), fakeResolver({})).catch((e: unknown) => e)
    expect((err as NatdError).code).toBe('SERVER_UNREACHABLE')
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
    await expect(resolveServers(parseServerSpec('203.0.113.5:4000,localhost:4000,203.0.113.5:4000'), fakeResolver({ localhost: { 4: ['127.0.0.1'] } }))).resolves.toEqual([
      { host: '203.0.113.5', port: 4000 },
      { host: '127.0.0.1', port: 4000 }
    ])
  })

  it('resolveServers: a name gives its A records, then its AAAA records (v4-mapped answers dropped), the port given', async () => {
    const resolve = fakeResolver({ 'rv.example': { 4: ['198.18.0.2', '198.18.0.3'], 6: ['2001:db8::2', '::ffff:198.18.0.2', '2001:db8::3'] }, 'v6only.example': { 6: ['2001:db8::9'] } })
    await expect(resolveServers(parseServerSpec('rv.example:4000,v6only.example'), resolve)).resolves.toEqual([
      { host: '198.18.0.2', port: 4000 },
      { host: '198.18.0.3', port: 4000 },
      { host: '2001:db8::2', port: 4000 },
      { host: '2001:db8::3', port: 4000 },
      { host: '2001:db8::9', port: 3478 }
    ])
  })

  it('resolveServers: what a resolver answers is bounded: MAX_ADDRESSES_PER_NAME of each family per name, MAX_SERVERS in all', async () => {
    const many = (f: 4 | 6, n: number): string[] => Array.from({ length: 50 }, (_, i) => (f === 4 ? `198.18.${n}.${i + 1}` : `2001:db8:${n}::${i + 1}`))
    const names = Array.from({ length: 8 }, (_, n) => `rv${n}.example`)
    const resolve = fakeResolver(Object.fromEntries(names.map((name, n) => [name, { 4: many(4, n), 6: many(6, n) }])))
    const one = await resolveServers(parseServerSpec('rv0.example'), resolve)
    expect(one).toHaveLength(2 * MAX_ADDRESSES_PER_NAME)
    expect(one.filter((e) => e.host.includes(':'))).toHaveLength(MAX_ADDRESSES_PER_NAME)
    const all = await resolveServers(parseServerSpec(names.join(',')), resolve)
    expect(all).toHaveLength(MAX_SERVERS)
    expect(all.slice(0, 2 * MAX_ADDRESSES_PER_NAME)).toEqual(one)
  })

  it('rankServers: an IPv4 address that answers comes before an IPv6 one, whatever the order given (register over IPv4 when we can)', async () => {
    const v4 = net.createServer((s) => s.destroy())
    const v6 = net.createServer((s) => s.destroy())
    await new Promise<void>((resolve) => v4.listen(0, '127.0.0.1', resolve))
    await new Promise<void>((resolve) => v6.listen(0, '::1', resolve))
    const up4 = { host: '127.0.0.1', port: (v4.address() as net.AddressInfo).port }
    const up6 = { host: '::1', port: (v6.address() as net.AddressInfo).port }
    const down4 = { host: '127.0.0.1', port: 1 }
    try {
      expect(await rankServers([up6, up4])).toEqual([up4, up6])
      expect(await rankServers([down4, up6])).toEqual([up6, down4])
    } finally {
      v4.close()
      v6.close()
    }
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
