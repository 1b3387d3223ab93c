/**
 * The tunnel's data plane alone, in one process, on loopback: one channel of a Mux over a
 * secret-stream over a TCP socket pair, to the other side's Mux, for N MiB. No NAT lab, no
 * root: a quick before/after for changes to the mux, the replay buffer and the session's
 * write path (issue 18). Both ends share one core, so MB/s is the inverse of the CPU both
 * sides spend; CPU per MiB is the figure to compare (run it a few times, the machine is
 * shared).
 *
 *   npm run --silent build && node bench/mux-micro.ts [--mib N] [--reps N] [--forward] [--json FILE]
 *
 * The source hands the channel a fresh 64 KiB buffer per chunk, as a socket's reads do.
 * --forward: a port forward's whole data path instead (issue 18): a client's TCP
 * connection joined to the channel (daemon/pipe.ts), and at the other end the channel
 * joined to a connection to a sink server. The process's CPU then includes the client and
 * the sink (the same for every build).
 * --udx: the session over a UDX stream pair on loopback (udx-native; 1500-byte packets as on
 * the lab's links: UDX's MTU is capped at 1500 whatever the link) instead of TCP, as a
 * direct-udp tunnel; --framed: those UDX streams in udx-native's framed mode (`createStream(id,
 * { framed: true })`, what hyperdht uses). Prints the receiving stream's deliveries to JS
 * ('data' events) per MiB beside its packets: the crossings from native code the mode saves.
 */
import fs from 'node:fs'
import net from 'node:net'
import { Readable, Writable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import SecretStream from '@hyperswarm/secret-stream'
import UDX from 'udx-native'
const { silentLogger } = (await import(new URL('../dist/protocol/log.js', import.meta.url).href)) as typeof import('../src/protocol/log.js')
const { Mux } = (await import(new URL('../dist/tunnel/mux.js', import.meta.url).href)) as typeof import('../src/tunnel/mux.js')
const { join } = (await import(new URL('../dist/daemon/pipe.js', import.meta.url).href)) as typeof import('../src/daemon/pipe.js')

const argv = process.argv.slice(2)
const arg = (name: string): string | undefined => (argv.includes(name) ? argv[argv.indexOf(name) + 1] : undefined)
const MIB = Number(arg('--mib')) || 256
const REPS = Number(arg('--reps')) || 3
const CHUNK = 64 * 1024
const FORWARD = argv.includes('--forward')
const OVER_UDX = argv.includes('--udx')
const FRAMED = argv.includes('--framed')
/** The receiving raw stream's deliveries to JS and packets, over every repetition (--udx). */
const rawCounts = { data: 0, packets: 0 }

async function sessionPair(): Promise<[SecretStream, SecretStream, () => void]> {
  return OVER_UDX ? udxSessionPair() : tcpSessionPair()
}

/** Two UDX streams on two loopback sockets, connected to each other; b (the receiver) counted. */
async function udxSessionPair(): Promise<[SecretStream, SecretStream, () => void]> {
  const udx = new UDX()
  const [sa, sb] = [udx.createSocket(), udx.createSocket()]
  sa.bind(0, '127.0.0.1')
  sb.bind(0, '127.0.0.1')
  const ra = udx.createStream(1, { framed: FRAMED })
  const rb = udx.createStream(2, { framed: FRAMED })
  ra.connect(sa, 2, sb.address().port, '127.0.0.1')
  rb.connect(sb, 1, sa.address().port, '127.0.0.1')
  rb.on('data', () => rawCounts.data++)
  const a = new SecretStream(true, ra)
  const b = new SecretStream(false, rb)
  await Promise.all([a.opened, b.opened])
  return [a, b, () => {
    rawCounts.packets += rb.packetsReceived
    a.destroy()
    b.destroy()
    void sa.close()
    void sb.close()
  }]
}

async function tcpSessionPair(): Promise<[SecretStream, SecretStream, () => void]> {
  const server = net.createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as net.AddressInfo).port
  const accepted = new Promise<net.Socket>((resolve) => server.once('connection', resolve))
  const client = net.connect(port, '127.0.0.1')
  const sock = await accepted
  const a = new SecretStream(true, client)
  const b = new SecretStream(false, sock)
  await Promise.all([a.opened, b.opened])
  return [a, b, () => { a.destroy(); b.destroy(); server.close() }]
}

async function once(): Promise<{ MBps: number; cpuMsPerMiB: number }> {
  const [a, b, close] = await sessionPair()
  const ma = new Mux(a, true, silentLogger)
  const mb = new Mux(b, false, silentLogger)
  let received = 0
  const done = new Promise<void>((resolve, reject) => {
    mb.on('open', (req) => {
      req.accept()
      req.channel.pipe(new Writable({
        write(chunk: Buffer, _enc, cb) {
          received += chunk.length
          cb()
        }
      })).on('finish', resolve).on('error', reject)
    })
  })
  const total = MIB * 1024 * 1024
  let sent = 0
  const source = new Readable({
    read() {
      if (sent >= total) return void this.push(null)
      sent += CHUNK
      this.push(Buffer.allocUnsafe(CHUNK).fill(sent & 0xff))
    }
  })
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  const ch = ma.openChannel(1)
  await pipeline(source, ch)
  await done
  const ms = performance.now() - t0
  const cpu = process.cpuUsage(cpu0)
  ma.close('done')
  mb.close('done')
  close()
  if (received !== total) throw new Error(`received ${received} of ${total}`)
  return { MBps: total / 1e6 / (ms / 1000), cpuMsPerMiB: (cpu.user + cpu.system) / 1000 / MIB }
}

async function listen(handler: (sock: net.Socket) => void): Promise<[number, net.Server]> {
  const server = net.createServer(handler)
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return [(server.address() as net.AddressInfo).port, server]
}

async function onceForward(): Promise<{ MBps: number; cpuMsPerMiB: number }> {
  const total = MIB * 1024 * 1024
  let received = 0
  let sinkDone!: () => void
  const done = new Promise<void>((resolve) => (sinkDone = resolve))
  const [sinkPort, sink] = await listen((sock) => {
    sock.on('data', (d: Buffer) => (received += d.length))
    sock.on('end', () => {
      sock.end()
      sinkDone()
    })
  })
  const [a, b, close] = await sessionPair()
  const ma = new Mux(a, true, silentLogger)
  const mb = new Mux(b, false, silentLogger)
  mb.on('open', (req) => {
    const conn = net.connect(sinkPort, '127.0.0.1')
    conn.once('connect', () => {
      req.accept()
      join(conn, req.channel)
    })
  })
  const [entryPort, entry] = await listen((sock) => {
    const ch = ma.openChannel(sinkPort)
    void ch.opened.then(() => join(sock, ch))
  })
  const app = net.connect(entryPort, '127.0.0.1')
  await new Promise((resolve) => app.once('connect', resolve))
  const chunk = Buffer.alloc(2 * CHUNK, 7)
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  for (let sent = 0; sent < total; sent += chunk.length) {
    if (!app.write(chunk)) await new Promise((resolve) => app.once('drain', resolve))
  }
  app.end()
  await done
  const ms = performance.now() - t0
  const cpu = process.cpuUsage(cpu0)
  app.destroy()
  ma.close('done')
  mb.close('done')
  close()
  for (const s of [sink, entry]) s.close()
  if (received !== total) throw new Error(`received ${received} of ${total}`)
  return { MBps: total / 1e6 / (ms / 1000), cpuMsPerMiB: (cpu.user + cpu.system) / 1000 / MIB }
}

const runs: Array<{ MBps: number; cpuMsPerMiB: number }> = []
for (let i = 0; i < REPS; i++) runs.push(await (FORWARD ? onceForward() : once()))
const median = (xs: number[]): number => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]!
const out = {
  mib: MIB,
  MBps: Math.round(median(runs.map((r) => r.MBps))),
  cpu_ms_per_MiB: Math.round(median(runs.map((r) => r.cpuMsPerMiB)) * 100) / 100,
  runs: runs.map((r) => ({ MBps: Math.round(r.MBps), cpu_ms_per_MiB: Math.round(r.cpuMsPerMiB * 100) / 100 })),
  ...(OVER_UDX ? { udx: { framed: FRAMED, deliveries_per_MiB: Math.round(rawCounts.data / (MIB * REPS)), packets_per_MiB: Math.round(rawCounts.packets / (MIB * REPS)) } } : {})
}
console.log(JSON.stringify(out))
const json = arg('--json')
if (json) fs.writeFileSync(json, JSON.stringify(out, null, 2))
