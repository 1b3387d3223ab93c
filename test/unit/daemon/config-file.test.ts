// The service's config file (src/daemon/config.ts: parseConfigFile, mergeConfig) and the
// config file's forwards and exposes layered over natctl's in the StateStore.
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { defaultConfigFile, mergeConfig, parseConfigFile, readConfigFile, resolveConfig, StateStore, type AgentConfig } from '../../../src/daemon/config.js'
import { NatdError } from '../../../src/protocol/errors.js'

const FILE = '/etc/natd/natd.json'

function parse(value: unknown): ReturnType<typeof parseConfigFile> {
  return parseConfigFile(typeof value === 'string' ? value : JSON.stringify(value), FILE)
}

function errorOf(fn: () => unknown): string {
  try {
    fn()
  } catch (err) {
    expect(err).toBeInstanceOf(NatdError)
    expect((err as NatdError).code).toBe('INVALID_ARGUMENT')
    return (err as Error).message
  }
  throw new Error('did not throw')
}

describe('parseConfigFile', () => {
  it('reads every setting, with defaults for bind, host and allow', () => {
    const c = parse({
      '//': 'a comment',
      name: 'alice',
      server: 'rv.example.org:3478',
      secretFile: '/etc/natd/secret',
      heartbeat: '15s',
      port: 41641,
      logLevel: 'debug',
      forwards: [{ localPort: 2222, peer: 'bob', remotePort: 22 }],
      exposes: [{ port: 22, allow: ['bob'] }, { port: 80, host: '10.0.0.5' }]
    })
    expect(c).toEqual({
      path: FILE,
      name: 'alice',
      server: 'rv.example.org:3478',
      secretFile: '/etc/natd/secret',
      heartbeatMs: 15_000,
      port: 41641,
      logLevel: 'debug',
      forwards: [{ localPort: 2222, bind: '127.0.0.1', peer: 'bob', remotePort: 22 }],
      exposes: [
        { port: 22, host: '127.0.0.1', allow: [{ name: 'bob', id: null }] },
        { port: 80, host: '10.0.0.5', allow: [] }
      ]
    })
  })

  it('allow entries: a name (resolved when applied), a full ID, or {name, id}', () => {
    const id = 'c'.repeat(51) + 'a'
    const c = parse({ exposes: [{ port: 22, allow: ['bob', id, { name: 'carol', id }] }] })
    expect(c.exposes[0]!.allow).toEqual([{ name: 'bob', id: null }, { name: '', id }, { name: 'carol', id }])
    expect(() => parse({ exposes: [{ port: 22, allow: [{ name: 'carol', id: id.slice(0, 8) }] }] })).toThrow(/"exposes\[0\]\.allow\[0\]\.id" must be a full peer ID/)
    expect(() => parse({ exposes: [{ port: 22, allow: [{ nick: 'carol' }] }] })).toThrow(/"exposes\[0\]\.allow\[0\]\.nick" is not a setting/)
  })

  it('takes the inbox only from the operator: the file\'s "inbox", overridden by --inbox', () => {
    const file = parse({ name: 'alice', server: 'rv.example.org', inbox: '/srv/natd-inbox' })
    expect(file.inbox).toBe('/srv/natd-inbox')
    expect(mergeConfig(null, {}, file).inbox).toBe('/srv/natd-inbox')
    expect(mergeConfig(null, { inbox: '/mnt/in' }, file).inbox).toBe('/mnt/in')
    expect(() => mergeConfig(null, { inbox: 'relative' }, file)).toThrow(/--inbox must be an absolute path/)
  })

  it('port mapping: on by default; "portMapping": false in the file, --no-port-mapping (or --port-mapping) over it', () => {
    expect(mergeConfig(null, {}, parse({ name: 'alice', server: 'rv.example.org' })).portMapping).toBe(true)
    const off = parse({ name: 'alice', server: 'rv.example.org', portMapping: false })
    expect(off.portMapping).toBe(false)
    expect(mergeConfig(null, {}, off).portMapping).toBe(false)
    expect(mergeConfig(null, { portMapping: true }, off).portMapping).toBe(true)
    expect(mergeConfig(null, { portMapping: false }, parse({ name: 'alice', server: 'rv.example.org' })).portMapping).toBe(false)
    expect(parse({ portMapping: null }).portMapping).toBeUndefined()
    // Without a file, a stored --no-port-mapping stays until a flag says otherwise.
    const stored = { name: 'old', server: 'old.example.org', heartbeatMs: 5_000, port: 41641, logLevel: 'debug', secretFile: null, inbox: null, portMapping: false } as const
    expect(mergeConfig(stored, {}).portMapping).toBe(false)
    expect(mergeConfig(stored, { portMapping: true }).portMapping).toBe(true)
  })

  it('takes "" and null as "not set", and a heartbeat in seconds', () => {
    expect(parse({ name: '', server: null, heartbeat: 30 })).toEqual({ path: FILE, heartbeatMs: 30_000, forwards: [], exposes: [] })
  })

  it.each([
    ['{"name": "alice",}', /^\/etc\/natd\/natd\.json: not valid JSON: /],
    ['[]', /must hold a JSON object/],
    [{ nmae: 'alice' }, /"nmae" is not a setting natd knows \(known: name, server, /],
    [{ name: 'Alice' }, /"name" must be 1-32 characters: lower-case letters, digits, - and _, starting with a letter or digit, not "Alice"$/],
    [{ server: 'rv.example.org:99999' }, /"server" must be HOST, HOST:PORT or HOST:PORT#KEY/],
    [{ secretFile: 'secret' }, /"secretFile" must be an absolute path/],
    [{ inbox: 'inbox' }, /"inbox" must be an absolute path/],
    [{ heartbeat: '20 seconds' }, /"heartbeat" must be a duration like "20s"/],
    [{ heartbeat: '100ms' }, /"heartbeat" must be between 200ms and 10m/],
    [{ port: 70000 }, /"port" must be a port number 0-65535, not 70000/],
    [{ logLevel: 'verbose' }, /"logLevel" must be one of error, warn, info, debug/],
    [{ portMapping: 'no' }, /"portMapping" must be true or false, not "no"$/],
    [{ forwards: {} }, /"forwards" must be an array/],
    [{ forwards: [{ localPort: 'x', peer: 'bob', remotePort: 22 }] }, /"forwards\[0\]\.localPort" must be a port number 1-65535, not "x"/],
    [{ forwards: [{ localPort: 1, peer: 'bob' }] }, /"forwards\[0\]\.remotePort" must be a port number 1-65535, not missing/],
    [{ forwards: [{ localPort: 1, peer: 'Bob!', remotePort: 2 }] }, /"forwards\[0\]\.peer" must be a peer name or ID/],
    [{ forwards: [{ localPort: 1, peer: 'bob', remotePort: 2, bind: 'localhost' }] }, /"forwards\[0\]\.bind" must be an IP address, not "localhost"/],
    [{ forwards: [{ localPort: 1, peer: 'bob', remotePort: 2, target: 'x' }] }, /"forwards\[0\]\.target" is not a setting natd knows/],
    [{ forwards: [{ localPort: 1, peer: 'bob', remotePort: 2 }, { localPort: 1, peer: 'carol', remotePort: 3 }] }, /"forwards\[1\]\.localPort" repeats port 1/],
    [{ exposes: [{ port: 22, allow: 'bob' }] }, /"exposes\[0\]\.allow" must be an array/],
    [{ exposes: [{ port: 22, allow: ['bob', 'x y'] }] }, /"exposes\[0\]\.allow\[1\]" must be a peer name or ID/],
    [{ exposes: [{ port: 22 }, { port: 22 }] }, /"exposes\[1\]\.port" repeats port 22/],
    [{ exposes: [{ port: 22, allow: [{}] }] }, /"exposes\[0\]\.allow\[0\]" needs a "name" or an "id"$/],
    [{ exposes: [{ allow: [] }] }, /"exposes\[0\]\.port" must be a port number 1-65535, not missing$/],
    [{ forwards: [{ localPort: 0 }] }, /"forwards\[0\]\.localPort" must be a port number 1-65535, not 0$/], // a value written wrong before one left out
    [{ forwards: [5] }, /"forwards\[0\]" must be an object \{"localPort": …, "peer": …, "remotePort": …, "bind": …\}, not 5$/],
    [{ port: 1.5 }, /"port" must be a port number 0-65535, not 1.5$/],
    [{ name: 'alice', server: 'rv.example.org', secretFile: 42 }, /"secretFile" must be an absolute path, not 42$/]
  ])('refuses %j naming the file and the key', (input, message) => {
    const m = errorOf(() => parse(input))
    expect(m).toMatch(message)
    expect(m.startsWith(`${FILE}: `)).toBe(true)
  })

  it('readConfigFile says when the file cannot be read', () => {
    expect(errorOf(() => readConfigFile('/nonexistent/natd.json'))).toMatch(/^cannot read the config file \/nonexistent\/natd\.json: ENOENT/)
  })

  it('readConfigFile refuses a FIFO at once (opening it to read used to wait for a writer: natd never started), and a directory', () => {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-config-fifo-'))
    try {
      const fifo = path.join(tmp, 'natd.json')
      execFileSync('mkfifo', ['-m', '0600', fifo])
      const refused = (file: string): unknown => {
        try {
          readConfigFile(file)
        } catch (err) {
          return err
        }
        return null
      }
      expect(refused(fifo)).toMatchObject({ code: 'INVALID_ARGUMENT', message: `the config file ${fifo} is not a regular file (a FIFO): give a JSON file` })
      expect(refused(tmp)).toMatchObject({ code: 'INVALID_ARGUMENT', message: `the config file ${tmp} is not a regular file (a directory): give a JSON file` })
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true })
    }
  })

  it('defaultConfigFile is /etc/natd/natd.json only for root or under systemd, and only when it exists', () => {
    const exists = fs.existsSync('/etc/natd/natd.json')
    expect(defaultConfigFile({}, 1000)).toBeNull()
    expect(defaultConfigFile({ INVOCATION_ID: 'abc' }, 1000)).toBe(exists ? '/etc/natd/natd.json' : null)
    expect(defaultConfigFile({}, 0)).toBe(exists ? '/etc/natd/natd.json' : null)
  })
})

describe('mergeConfig', () => {
  const stored: AgentConfig = { name: 'old', server: 'old.example.org', heartbeatMs: 5_000, port: 41641, logLevel: 'debug', secretFile: '/old/secret', inbox: null, portMapping: true }

  it('flags over the file; with a file, the store gives only the port', () => {
    const file = parse({ name: 'alice', server: 'rv.example.org' })
    expect(mergeConfig(stored, {}, file)).toEqual({ name: 'alice', server: 'rv.example.org', heartbeatMs: 20_000, port: 41641, logLevel: 'info', secretFile: null, inbox: null, portMapping: true })
    expect(mergeConfig(stored, { name: 'bob', heartbeatMs: 1_000 }, file)).toMatchObject({ name: 'bob', heartbeatMs: 1_000 })
    expect(mergeConfig(stored, {}, parse({ name: 'alice', server: 'rv.example.org', port: 5000 })).port).toBe(5000)
  })

  it('without a file, flags over the stored config, as before', () => {
    expect(mergeConfig(stored, { name: 'bob' })).toEqual({ ...stored, name: 'bob' })
  })

  it('the installed template fails with what to set, and where', () => {
    const template = parse({ name: '', server: '', secretFile: null, forwards: [], exposes: [] })
    expect(errorOf(() => mergeConfig(null, {}, template))).toBe('no name: set "name" in /etc/natd/natd.json (or pass --name NAME)')
    expect(errorOf(() => mergeConfig(null, {}, { ...template, name: 'alice' }))).toBe('no server: set "server" in /etc/natd/natd.json (or pass --server HOST[:PORT][#KEY])')
    expect(errorOf(() => mergeConfig(null, {}))).toBe('no name: start natd once with --name NAME')
  })
})

describe('StateStore: the config file\'s forwards and exposes over natctl\'s', () => {
  let dir: string
  let store: StateStore
  const mine = { localPort: 9000, bind: '127.0.0.1', peer: 'bob', remotePort: 7000 }
  const declared = { localPort: 9001, bind: '127.0.0.1', peer: 'bob', remotePort: 22 }

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-declared-'))
    store = new StateStore(dir)
    resolveConfig(store, { name: 'alice', server: 'rv.example.org' })
  })

  afterEach(() => {
    fs.rmSync(dir, { recursive: true, force: true })
  })

  /** config.json once the store's background writes landed (config-json.ts). */
  const persisted = async (): Promise<{ forwards?: unknown[]; exposes?: unknown[] }> => {
    await store.durable()
    return JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) as { forwards?: unknown[]; exposes?: unknown[] }
  }

  it('lists both, persists only natctl\'s (as Forwards.add and remove write the whole list back)', async () => {
    store.setForwards([mine])
    store.setDeclared({ forwards: [declared], exposes: [] })
    expect(store.forwards).toEqual([mine, declared])
    // forward add: the whole list plus one.
    const added = { localPort: 9002, bind: '127.0.0.1', peer: 'carol', remotePort: 80 }
    store.setForwards([...store.forwards, added])
    expect(store.forwards).toEqual([mine, added, declared])
    expect((await persisted()).forwards).toEqual([mine, added])
    // forward rm of natctl's own.
    store.setForwards(store.forwards.filter((f) => f.localPort !== 9000))
    expect(store.forwards).toEqual([added, declared])
    expect((await persisted()).forwards).toEqual([added])
  })

  it('natctl wins on the same port; removing a declared entry with natctl hides it until the file is applied again', async () => {
    store.setForwards([mine])
    const clash = { ...declared, localPort: 9000 }
    store.setDeclared({ forwards: [clash, declared], exposes: [] })
    expect(store.forwards).toEqual([mine, declared])
    expect(store.shadowed().forwards).toEqual([clash])
    store.setForwards(store.forwards.filter((f) => f.localPort !== 9001)) // natctl forward rm 9001
    expect(store.forwards).toEqual([mine])
    expect((await persisted()).forwards).toEqual([mine])
    store.setDeclared({ forwards: [clash, declared], exposes: [] }) // SIGHUP
    expect(store.forwards).toEqual([mine, declared])
    // Survives a restart only through the file: nothing declared was persisted.
    await store.durable()
    expect(new StateStore(dir).forwards).toEqual([mine])
  })

  it('exposes: natctl replacing a declared port takes it over; the lists stay sorted by port', async () => {
    store.setExposes([{ port: 80, host: '127.0.0.1', allow: [] }])
    store.setDeclared({ forwards: [], exposes: [{ port: 22, host: '127.0.0.1', allow: [{ name: 'bob', id: null }] }] })
    expect(store.exposes.map((e) => e.port)).toEqual([22, 80])
    // natctl expose add 22 --allow carol (Exposes.add: the rest, plus the new one).
    const replaced = { port: 22, host: '127.0.0.1', allow: [{ name: 'carol', id: 'c'.repeat(51) + 'q' }] }
    store.setExposes([...store.exposes.filter((e) => e.port !== 22), replaced])
    expect(store.exposes).toEqual([replaced, { port: 80, host: '127.0.0.1', allow: [] }])
    expect((await persisted()).exposes).toEqual([{ port: 80, host: '127.0.0.1', allow: [] }, replaced])
  })

  it('a declared allow entry by name gets the pinned key when the file is applied; an unpinned one stays unresolved', async () => {
    const bob = 'b'.repeat(51) + 'q'
    store.pinPeer('bob', bob)
    store.setDeclared({ forwards: [], exposes: [{ port: 22, host: '127.0.0.1', allow: [{ name: 'bob', id: null }, { name: 'carol', id: null }] }] })
    expect(store.exposes[0]!.allow).toEqual([{ name: 'bob', id: bob }, { name: 'carol', id: null }])
    expect((await persisted()).exposes ?? []).toEqual([])
  })
})
