// docs/API.md against the code: (a) every method, event and error code is documented,
// so the doc cannot fall behind schema.ts; (b) examples/natd_api.py, the client the doc
// points other languages to, works against a real natd and rendezvous server.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import dgram from 'node:dgram'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { EVENT_NAMES, PARAMS, type Result } from '../../../src/ipc/schema.js'
import { ERROR_CODES } from '../../../src/protocol/errors.js'
import { silentLogger, systemClock } from '../../../src/protocol/log.js'
import { Tunnel, type TunnelSnapshot } from '../../../src/tunnel/tunnel.js'
import { messagePipe } from '../tunnel/pipe.js'

const ROOT = fileURLToPath(new URL('../../../', import.meta.url))
const DOC = path.join(ROOT, 'docs/API.md')
const CLIENT = path.join(ROOT, 'examples/natd_api.py')
const DAEMON = path.join(ROOT, 'dist/daemon/main.js')
const RENDEZVOUS = path.join(ROOT, 'dist/rendezvous/main.js')

/** How long natd may take to register with a server on loopback (it takes ~50 ms). */
const REGISTER_DEADLINE_MS = 10_000
const POLL_INTERVAL_MS = 200
/** A process that ignores SIGTERM this long gets SIGKILL. */
const KILL_GRACE_MS = 3_000

const escapeRe = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')

/** `name` in backticks anywhere, or as a word of a Markdown heading. */
function documented(doc: string, name: string): boolean {
  if (doc.includes(`\`${name}\``)) return true
  const word = new RegExp(`(^|[\\s\`(])${escapeRe(name)}($|[\\s\`),:])`)
  return doc.split('\n').some((line) => /^#{1,6}\s/.test(line) && word.test(line))
}

/** The `### `x`` headings of one `## Title` section. */
function sectionHeadings(doc: string, title: string): string[] {
  const start = doc.indexOf(`\n## ${title}\n`)
  if (start < 0) return []
  const rest = doc.slice(start + 1)
  const end = rest.indexOf('\n## ', 1)
  const section = end < 0 ? rest : rest.slice(0, end)
  return [...section.matchAll(/^### `([^`]+)`\s*$/gm)].map((m) => m[1]!)
}

describe('docs/API.md covers the API', () => {
  const doc = fs.readFileSync(DOC, 'utf8')

  it.each(Object.keys(PARAMS))('documents method %s', (method) => {
    expect(documented(doc, method), `method ${method} (PARAMS in src/ipc/schema.ts) is missing from docs/API.md`).toBe(true)
  })

  it.each([...EVENT_NAMES])('documents event %s', (event) => {
    expect(documented(doc, event), `event ${event} (EVENT_NAMES in src/ipc/schema.ts) is missing from docs/API.md`).toBe(true)
  })

  it.each([...ERROR_CODES])('documents error code %s', (code) => {
    expect(documented(doc, code), `error code ${code} (src/protocol/errors.ts) is missing from docs/API.md`).toBe(true)
  })

  it('documents no method or event the code does not have', () => {
    expect(sectionHeadings(doc, 'Methods').filter((m) => !Object.hasOwn(PARAMS, m))).toEqual([])
    expect(sectionHeadings(doc, 'Events').filter((e) => !(EVENT_NAMES as readonly string[]).includes(e))).toEqual([])
  })

  /** The fields named in the first column of the table under `### \`name\``. */
  function tableFields(name: string): string[] {
    const start = doc.indexOf(`\n### \`${name}\`\n`)
    expect(start, `### \`${name}\` in docs/API.md`).toBeGreaterThan(0)
    const section = doc.slice(start, doc.indexOf('\n### ', start + 1))
    return [...section.matchAll(/^\|([^|]*)\|/gm)].flatMap((row) => [...row[1]!.matchAll(/`([^`]+)`/g)].map((m) => m[1]!))
  }

  it('the tunnels result carries every field of the table under ### `tunnels`, and no other', () => {
    // agent.ts answers `tunnels` with Tunnel.snapshot() as it is; TunnelInfo is the same type.
    const sameType: Result<'tunnels'>[number] extends TunnelSnapshot ? (TunnelSnapshot extends Result<'tunnels'>[number] ? true : false) : false = true
    expect(sameType).toBe(true)
    const pipe = messagePipe()
    const timing = { keepaliveMs: 60_000, deadMs: 120_000 }
    const tunnel = new Tunnel({ name: 'bob', id: 'b0b' }, 'direct-tcp', { host: '203.0.113.2', port: 5000 }, 'tcp', 'intro-1', true, pipe.a, timing, systemClock, silentLogger)
    try {
      const result = JSON.parse(JSON.stringify([tunnel.snapshot()])) as Record<string, unknown>[] // as the API sends it
      const fields = Object.keys(result[0]!)
      const documentedFields = tableFields('tunnels')
      expect(documentedFields.filter((f) => !fields.includes(f)), 'documented under ### `tunnels` but missing from the result').toEqual([])
      expect(fields.filter((f) => !documentedFields.includes(f)), 'in the tunnels result but not in the table under ### `tunnels`').toEqual([])
    } finally {
      tunnel.close('test over', { goodbye: false })
    }
  })

  it('marks nothing as planned (every method in PARAMS is implemented)', () => {
    expect(doc.split('\n').filter((line) => /\bplanned\b/i.test(line))).toEqual([])
  })
})

// --- (b) the Python client against a real daemon ------------------------------

const PYTHON = 'python3'
const pythonMissing = spawnSync(PYTHON, ['--version']).status !== 0
const title = pythonMissing ? 'examples/natd_api.py (skipped: python3 is not on PATH)' : 'examples/natd_api.py against a real natd'

interface Run {
  code: number | null
  stdout: string
  stderr: string
}

function runClient(args: string[], timeoutMs = 15_000): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(PYTHON, [CLIENT, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (b: Buffer) => (stdout += b.toString()))
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()))
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
    child.on('error', reject)
    child.on('close', (code) => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr })
    })
  })
}

/** A child whose output is kept (the tail) for failure messages. */
class Proc {
  readonly child: ChildProcess
  output = ''

  constructor(
    readonly name: string,
    command: string,
    args: string[]
  ) {
    this.child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    const keep = (b: Buffer): void => {
      this.output = (this.output + b.toString()).slice(-8_000)
    }
    this.child.stdout!.on('data', keep)
    this.child.stderr!.on('data', keep)
  }

  get exited(): boolean {
    return this.child.exitCode !== null || this.child.signalCode !== null
  }

  /** SIGTERM, then SIGKILL if it is still running after KILL_GRACE_MS. */
  async stop(): Promise<void> {
    if (this.exited) return
    const gone = new Promise<void>((resolve) => this.child.once('exit', () => resolve()))
    this.child.kill('SIGTERM')
    const timer = setTimeout(() => this.child.kill('SIGKILL'), KILL_GRACE_MS)
    await gone
    clearTimeout(timer)
  }
}

function canBind(port: number): Promise<boolean> {
  const tcp = new Promise<boolean>((resolve) => {
    const s = net.createServer()
    s.once('error', () => resolve(false))
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)))
  })
  const udp = (p: number): Promise<boolean> =>
    new Promise((resolve) => {
      const s = dgram.createSocket('udp4')
      s.once('error', () => {
        s.close()
        resolve(false)
      })
      s.bind(p, '127.0.0.1', () => s.close(() => resolve(true)))
    })
  return Promise.all([tcp, udp(port), udp(port + 1)]).then((ok) => ok.every(Boolean))
}

/** A random port P in 20000-60000 with TCP P, UDP P and UDP P+1 free (the server's --port and --alt-port). */
async function freePortPair(): Promise<number> {
  for (let i = 0; i < 50; i++) {
    const port = 20_000 + Math.floor(Math.random() * 40_000)
    if (await canBind(port)) return port
  }
  throw new Error('no free port pair in 20000-60000')
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

describe.skipIf(pythonMissing)(title, () => {
  let tmp = ''
  let sock = ''
  let serverPort = 0
  let rendezvous: Proc | undefined
  let alice: Proc | undefined
  const procs: Proc[] = []
  const logs = (): string => procs.map((p) => `--- ${p.name}${p.exited ? ` (exited ${p.child.exitCode ?? p.child.signalCode})` : ''}\n${p.output}`).join('\n')

  const start = (name: string, script: string, args: string[]): Proc => {
    const p = new Proc(name, process.execPath, [script, ...args])
    procs.push(p)
    return p
  }

  beforeAll(async () => {
    for (const file of [DAEMON, RENDEZVOUS]) {
      if (!fs.existsSync(file)) throw new Error(`${path.relative(ROOT, file)} is missing: run \`npm run build\` first`)
    }
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'natd-api-doc-'))
    sock = path.join(tmp, 'a.sock')
    serverPort = await freePortPair()
    rendezvous = start('rendezvous', RENDEZVOUS, ['--host', '127.0.0.1', '--port', String(serverPort), '--alt-port', String(serverPort + 1), '--state-dir', path.join(tmp, 'rendezvous')])
    alice = start('alice', DAEMON, ['--name', 'alice', '--server', `127.0.0.1:${serverPort}`, '--state-dir', path.join(tmp, 'alice'), '--socket', sock, '--heartbeat', '1s', '--no-port-mapping'])
  }, 20_000)

  afterAll(async () => {
    await Promise.all(procs.map((p) => p.stop()))
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true })
  }, 20_000)

  /** Polls `status` until natd reports registered: true. */
  async function waitRegistered(): Promise<Record<string, unknown>> {
    const deadline = Date.now() + REGISTER_DEADLINE_MS
    let last: Run | undefined
    while (Date.now() < deadline) {
      if (rendezvous?.exited || alice?.exited) break
      last = await runClient(['--socket', sock, 'status'])
      if (last.code === 0) {
        const status = JSON.parse(last.stdout) as Record<string, unknown>
        if (status.registered === true) return status
      }
      await sleep(POLL_INTERVAL_MS)
    }
    throw new Error(`natd did not report registered: true within ${REGISTER_DEADLINE_MS} ms\nlast status: ${JSON.stringify(last)}\n${logs()}`)
  }

  it('status prints the JSON result', async () => {
    const status = await waitRegistered()
    expect(status.name).toBe('alice')
    expect(status.serverState).toBe('registered')
    expect(typeof status.id).toBe('string')
    // No #KEY in --server: the key the server presented is pinned on first use.
    expect(status.serverKey).toEqual({ id: expect.stringMatching(/^[a-z2-7]{52}$/), pinned: 'first-use' })
  }, 20_000)

  it('every field natd returns in status is in the status table of docs/API.md', async () => {
    const status = await waitRegistered()
    const doc = fs.readFileSync(DOC, 'utf8')
    const start = doc.indexOf('\n### `status`\n')
    const table = doc.slice(start, doc.indexOf('\n### ', start + 1))
    expect(start).toBeGreaterThan(0)
    const missing = Object.keys(status).filter((field) => !new RegExp(`^\\|[^|]*\`${escapeRe(field)}\``, 'm').test(table))
    expect(missing, 'status fields missing from the table under ### `status` in docs/API.md').toEqual([])
  }, 20_000)

  it('peers prints a JSON array', async () => {
    await waitRegistered()
    const run = await runClient(['--socket', sock, 'peers'])
    expect(run.code, run.stderr).toBe(0)
    expect(Array.isArray(JSON.parse(run.stdout))).toBe(true)
  }, 20_000)

  it('watch prints events as JSON lines', async () => {
    await waitRegistered()
    const watch = new Proc('watch', PYTHON, [CLIENT, '--socket', sock, 'watch', 'peer.up'])
    procs.push(watch)
    const line = new Promise<string>((resolve) => {
      let out = ''
      watch.child.stdout!.on('data', (b: Buffer) => {
        out += b.toString()
        if (out.includes('\n')) resolve(out.slice(0, out.indexOf('\n')))
      })
    })
    // the client says "subscribed" on stderr; only then can bob's arrival not be missed
    const deadline = Date.now() + REGISTER_DEADLINE_MS
    while (!watch.output.includes('subscribed') && !watch.exited && Date.now() < deadline) await sleep(50)
    expect(watch.output, logs()).toContain('subscribed: peer.up')
    start('bob', DAEMON, ['--name', 'bob', '--server', `127.0.0.1:${serverPort}`, '--state-dir', path.join(tmp, 'bob'), '--socket', path.join(tmp, 'b.sock'), '--heartbeat', '1s', '--no-port-mapping'])
    const first = await Promise.race([line, sleep(REGISTER_DEADLINE_MS).then(() => '')])
    expect(first, `no event from watch\n${logs()}`).not.toBe('')
    const event = JSON.parse(first) as { event: string; data: { name: string; online: boolean } }
    expect(event).toMatchObject({ event: 'peer.up', data: { name: 'bob', online: true } })
    await watch.stop()
  }, 30_000)

  it('an error response exits 1 with the code on stderr', async () => {
    const run = await runClient(['--socket', sock, 'call', 'ping', '{"peer":"bob","bogus":1}'])
    expect(run.code).toBe(1)
    expect(run.stderr).toContain('BAD_REQUEST')
    expect(run.stderr).toContain('params.bogus')
  })

  it('a missing socket exits 3', async () => {
    const run = await runClient(['--socket', path.join(tmp, 'nobody-here.sock'), 'status'])
    expect(run.code).toBe(3)
    expect(run.stderr).toContain('not running')
  })
})
