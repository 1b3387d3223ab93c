/**
 * An attacker between agents and the rendezvous server (issue "Trust"): the lab's
 * internet router DNATs alice's site's traffic for the server to an attacker process,
 * which impersonates the server with its own key, or forwards to the real one while
 * tampering with TCP or UDP (flipped bits, replayed datagrams); and an off-path sender
 * forges heartbeat acks from the server's address.
 *
 *   alice 10.1.0.2 ┐                        ┌── server 198.18.0.2 (the real one)
 *   dave  10.1.0.3 ┴ r1 (NAT) ── inet ──────┤
 *                                 │ DNAT    └── r2 (NAT) ── bob 10.2.0.2
 *                                 ▼
 *                       attacker 198.18.1.1:3478 (in inet): a natd-rendezvous of its own
 *                       with a "bob" of its own, or a tampering proxy to the real server
 *
 * What must hold: agents refuse with clear codes, no message reaches the attacker, and
 * they recover by themselves when it steps aside.
 */
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { labAvailable } from './lab.js'
import { DIST, errorCode, ROOT, SERVER_PORT, waitFor, withLab, type NatdLab } from './natd-lab.js'

const ATTACKER_IP = '198.18.1.1' // inet's own address on alice's site's link
/** bob's service, and the port of alice's forward to it (the 9200 → bob:7777). */
const BOB_SERVICE_PORT = 7777
const ALICE_FORWARD_PORT = 9200

/** Sends site 1's traffic for the server (TCP and UDP) to the attacker instead. */
async function intercept(n: NatdLab): Promise<void> {
  for (const proto of ['tcp', 'udp']) {
    const r = await n.lab.exec(n.lab.inetNs, ['iptables', '-t', 'nat', '-A', 'PREROUTING', '-i', 'w1', '-d', n.lab.server.ip, '-p', proto, '--dport', String(SERVER_PORT), '-j', 'DNAT', '--to-destination', `${ATTACKER_IP}:${SERVER_PORT}`])
    expect(r.code, r.stderr).toBe(0)
  }
  await n.lab.exec(n.lab.inetNs, ['conntrack', '-F'])
}

async function stepAside(n: NatdLab): Promise<void> {
  const r = await n.lab.exec(n.lab.inetNs, ['iptables', '-t', 'nat', '-F', 'PREROUTING'])
  expect(r.code, r.stderr).toBe(0)
  await n.lab.exec(n.lab.inetNs, ['conntrack', '-F'])
}

/**
 * One connection to alice's forward: the first bytes echoed back, or how it ended. A
 * forward whose tunnel cannot open closes the connection; `waitMs` lets a recovering
 * agent's tunnel open first.
 */
async function forwarded(n: NatdLab, waitMs = 15_000): Promise<{ how: string; received: number }> {
  const script = `const s = require('node:net').connect(${ALICE_FORWARD_PORT}, '127.0.0.1')
const done = (how, received) => { console.log(JSON.stringify({ how, received })); process.exit(0) }
s.on('connect', () => s.write('anyone there?'))
s.on('data', (d) => done('data', d.length))
s.on('end', () => done('eof', 0))
s.on('error', (e) => done(e.code ?? e.message, 0))
setTimeout(() => done('timeout', 0), ${waitMs})`
  const r = await n.lab.exec(n.lab.hosts.alice!.ns, [process.execPath, '-e', script], { timeoutMs: waitMs + 10_000 })
  return JSON.parse(r.stdout) as { how: string; received: number }
}

/** The inbox of an agent, as natctl messages --json shows it. */
async function inbox(n: NatdLab, key: string): Promise<Array<{ text: string; from: string }>> {
  const r = await n.natctl(key, ['messages'])
  expect(r.code, r.stderr).toBe(0)
  return r.json as Array<{ text: string; from: string }>
}

describe.skipIf(!labAvailable())('an attacker on the path to the rendezvous server', () => {
  it('impersonating the server or tampering with its traffic gets refused with clear codes; nothing reaches it; agents recover when it steps aside', async () => {
    await withLab({ sites: [{ name: 'alice', nat: 'easy', hosts: ['alice', 'dave'] }, { name: 'bob', nat: 'easy' }] }, async (n) => {
      await n.startServer()
      const realKey = n.serverKey()
      await n.startAgent('alice')
      await n.startAgent('bob')
      const alice0 = await n.waitRegistered('alice')
      await n.waitRegistered('bob')
      // alice pinned the real server's key on first contact, and bob's key with a first message.
      expect(alice0.serverKey).toEqual({ id: realKey, pinned: 'first-use' })
      expect((await n.natctl('alice', ['send', 'bob', 'before'])).code).toBe(0)
      // A forward alice already has (as in the issue: 9200 → bob:7777), working: the positive control.
      await n.startEcho('bob', BOB_SERVICE_PORT)
      expect((await n.natctl('bob', ['expose', 'add', String(BOB_SERVICE_PORT), '--allow', 'alice'])).code).toBe(0)
      expect((await n.natctl('alice', ['forward', 'add', String(ALICE_FORWARD_PORT), `bob:${BOB_SERVICE_PORT}`])).code).toBe(0)
      expect((await forwarded(n)).received).toBeGreaterThan(0)
      const file = path.join(n.dir, 'for-bob.txt')
      fs.writeFileSync(file, 'for the real bob only\n')

      // --- 1. the attacker runs a server of its own (its own key) with a "bob" of its own.
      const attackerState = path.join(n.dir, 'attacker-state')
      const attackerLog = path.join(n.dir, 'attacker-rendezvous.log')
      const attacker = n.lab.spawn(n.lab.inetNs, [process.execPath, path.join(DIST, 'rendezvous/main.js'), '--host', ATTACKER_IP, '--port', String(SERVER_PORT), '--alt-port', '0', '--state-dir', attackerState, '--log-level', 'debug'], { cwd: ROOT })
      attacker.stdout?.on('data', (d: Buffer) => fs.appendFileSync(attackerLog, d))
      await waitFor(() => fs.existsSync(attackerLog) && fs.readFileSync(attackerLog, 'utf8').includes('rendezvous listening'), 10_000, 'attacker server')
      const fakeBobSocket = path.join(n.dir, 'fake-bob.sock')
      const fakeBob = n.lab.spawn(n.lab.inetNs, [process.execPath, path.join(DIST, 'daemon/main.js'), '--name', 'bob', '--server', `${ATTACKER_IP}:${SERVER_PORT}`, '--state-dir', path.join(n.dir, 'fake-bob-state'), '--socket', fakeBobSocket, '--heartbeat', '2s'], { cwd: ROOT })
      void fakeBob
      await waitFor(() => fs.readFileSync(attackerLog, 'utf8').includes('agent registered'), 15_000, 'the attacker\'s bob registered with the attacker')
      // The attacker's bob exposes the same port, with a listener that tells each connection.
      let attackerConns = ''
      const trap = n.lab.spawn(n.lab.inetNs, [process.execPath, '-e', `require('node:net').createServer((s) => { console.log('conn'); s.on('error', () => {}); s.pipe(s) }).listen(${BOB_SERVICE_PORT}, '127.0.0.1', () => console.log('listening'))`])
      trap.stdout?.on('data', (d: Buffer) => (attackerConns += d.toString()))
      await waitFor(() => attackerConns.includes('listening'), 10_000, 'the attacker\'s service')
      const fakeNatctl = (args: string[]): unknown => JSON.parse(execFileSync(process.execPath, [path.join(DIST, 'cli/main.js'), '--socket', fakeBobSocket, '--json', ...args], { encoding: 'utf8' }))
      fakeNatctl(['expose', 'add', String(BOB_SERVICE_PORT)])

      await intercept(n)
      await n.restartAgent('alice') // a reboot: its next contact goes to the attacker
      // dave meets the server for the first time, with the key given out of band.
      await n.startAgent('dave', { extra: ['--server', `${n.serverAddr}#${realKey}`] })
      await waitFor(async () => (await n.lastErrorCode('alice')) === 'SERVER_KEY_MISMATCH', 20_000, 'alice refuses the attacker\'s key')
      await waitFor(async () => (await n.lastErrorCode('dave')) === 'SERVER_KEY_MISMATCH', 20_000, 'dave refuses the attacker\'s key')
      const status = await n.natctl('alice', ['status'], { json: false })
      expect(status.stdout).toContain('SERVER_KEY_MISMATCH')
      expect(status.stdout).toContain(`#<its key>`) // how to re-pin, when the operator really changed it
      expect((await n.status('dave')).serverKey).toEqual({ id: realKey, pinned: 'flag' })
      const sent = await n.natctl('alice', ['send', 'bob', 'for the real bob only'], { timeoutMs: 20_000 })
      expect(sent.code).toBe(1)
      expect(errorCode(sent)).toBe('NOT_REGISTERED')
      const copied = await n.natctl('alice', ['cp', file, 'bob:'], { timeoutMs: 20_000 })
      expect(copied.code).not.toBe(0)
      expect(JSON.stringify(copied.json)).toContain('NOT_REGISTERED')
      expect((await forwarded(n)).received).toBe(0)
      // The attacker got no registration (it never even learnt their names), no message, no file and no forwarded byte.
      expect(fs.readFileSync(attackerLog, 'utf8')).not.toMatch(/"name":"(alice|dave)"/)
      expect(fakeNatctl(['messages'])).toEqual([])
      expect(fakeNatctl(['files'])).toEqual([])
      expect(attackerConns).not.toContain('conn')
      attacker.kill('SIGKILL')
      fakeBob.kill('SIGKILL')
      trap.kill('SIGKILL')

      // --- 2. the attacker forwards to the real server and flips bits in its TCP answers.
      const tamper = async (mode: string): Promise<{ seen: (what: string, times: number) => Promise<void>; stop: () => Promise<Record<string, number>> }> => {
        const p = n.lab.spawn(n.lab.inetNs, [process.execPath, path.join(ROOT, 'test/lab/fixtures/on-path-proxy.ts'), ATTACKER_IP, String(SERVER_PORT), n.lab.server.ip, mode])
        let out = ''
        p.stdout?.on('data', (d: Buffer) => (out += d.toString()))
        await waitFor(() => out.includes('ready'), 10_000, `${mode} proxy`)
        await n.lab.exec(n.lab.inetNs, ['conntrack', '-F'])
        const count = (what: string): number => out.split('\n').filter((l) => l === what).length
        return {
          // Reconnects back off up to 10 s: wait for the proxy to have touched enough.
          seen: async (what, times) => void (await waitFor(() => count(what) >= times, 30_000, `${mode}: ${times}× ${what}`)),
          stop: async () => {
            const exited = new Promise((resolve) => p.once('exit', resolve))
            p.kill('SIGTERM')
            await exited
            return JSON.parse(out.split('\n').find((l) => l.startsWith('{')) ?? '{}') as Record<string, number>
          }
        }
      }
      let proxy = await tamper('tamper-tcp')
      await proxy.seen('tcp-flipped', 2) // positive control: it is on the path, and has broken sessions
      expect((await n.status('alice')).registered).toBe(false)
      expect((await n.status('dave')).registered).toBe(false)
      expect((await proxy.stop()).tcpConnections).toBeGreaterThanOrEqual(2)

      // --- 3. TCP untouched; UDP acks altered and every heartbeat replayed 3 times.
      proxy = await tamper('tamper-udp')
      await proxy.seen('udp-flipped', 6) // two registrations' worth of first heartbeats
      // A registration whose UDP mapping the server cannot confirm (sealed) is not one.
      expect((await n.status('alice')).registered).toBe(false)
      const touched = await proxy.stop()
      expect(touched.udpReplayed).toBeGreaterThan(0)
      expect(n.log('alice')).toContain('"what":"unsealed datagram from the server address"')

      // --- 4. the attacker steps aside: both recover by themselves, with the real server.
      await stepAside(n)
      await n.waitRegistered('alice', 30_000)
      await n.waitRegistered('dave', 30_000)
      expect((await n.status('alice')).serverKey).toEqual({ id: realKey, pinned: 'first-use' })
      expect((await n.natctl('alice', ['send', 'bob', 'after'])).code).toBe(0)
      // dave pinned the server by flag (--server host:port#KEY): it works end to end as well.
      expect((await n.natctl('dave', ['send', 'bob', 'from dave'], { timeoutMs: 30_000 })).code).toBe(0)
      expect((await inbox(n, 'bob')).map((m) => m.text)).toEqual(['before', 'after', 'from dave'])
      expect((await forwarded(n, 30_000)).received).toBeGreaterThan(0)
    })
  }, 240_000)

  it('an operator who really changes the server key: agents refuse it until the user re-pins with --server host:port#NEWKEY', async () => {
    await withLab({ sites: [{ name: 'alice', nat: 'easy' }] }, async (n) => {
      await n.startServer()
      const oldKey = n.serverKey()
      await n.startAgent('alice')
      expect((await n.waitRegistered('alice')).serverKey).toEqual({ id: oldKey, pinned: 'first-use' })
      await n.killServer()
      const newKeyFile = path.join(n.dir, 'new-server-key.json')
      await n.startServer(['--key-file', newKeyFile])
      const newKey = execFileSync(process.execPath, [path.join(DIST, 'rendezvous/main.js'), '--print-key', '--key-file', newKeyFile, '--state-dir', n.serverStateDir], { encoding: 'utf8' }).trim()
      expect(newKey).not.toBe(oldKey)
      await waitFor(async () => (await n.lastErrorCode('alice')) === 'SERVER_KEY_MISMATCH', 20_000, 'alice refuses the new key')
      await n.stopAgent('alice')
      const a = n.agents.alice!
      await n.startAgent('alice', { stateDir: a.stateDir, extra: ['--server', `${n.serverAddr}#${newKey}`] })
      expect((await n.waitRegistered('alice', 20_000)).serverKey).toEqual({ id: newKey, pinned: 'flag' })
      // A later start with the bare --server (as the lab harness starts agents) keeps the
      // new key: the #KEY pin also became the stored one, so it is not the old one again.
      await n.restartAgent('alice')
      expect((await n.waitRegistered('alice', 20_000)).serverKey).toEqual({ id: newKey, pinned: 'first-use' })
    })
  }, 90_000)

  it('10,000 forged heartbeat acks from the server\'s address (off path, guessed sequence numbers) change nothing', async () => {
    await withLab({ sites: [{ name: 'alice', nat: 'easy' }, { name: 'bob', nat: 'easy' }] }, async (n) => {
      await n.startServer()
      await n.startAgent('alice')
      const before = await n.waitRegistered('alice')
      const [host, port] = String(before.publicUdp).split(':')
      // Raw IPv4/UDP from 198.18.0.2:3478 to alice's public mapping, sent from the
      // internet router: HEARTBEAT_ACK frames (version 2, type 6) with seq 1..10000,
      // status ok and moved in turn, an observed endpoint of the attacker's choosing and
      // a random tag.
      const script = `
import os, socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
src, dst = socket.inet_aton('${n.lab.server.ip}'), socket.inet_aton('${host}')
for seq in range(1, 10001):
    body = bytes([0x4e, 0x44, 2, 6]) + struct.pack('>IB', seq, (seq % 2) * 2) + bytes([4, 203, 0, 113, 66]) + struct.pack('>H', 4444) + os.urandom(16)
    udp = struct.pack('>HHHH', ${SERVER_PORT}, ${port}, 8 + len(body), 0) + body
    ip = struct.pack('>BBHHHBBH4s4s', 0x45, 0, 20 + len(udp), seq & 0xffff, 0, 64, 17, 0, src, dst)
    s.sendto(ip + udp, ('${host}', 0))
`
      const r = await n.lab.exec(n.lab.inetNs, ['python3', '-c', script], { timeoutMs: 60_000 })
      expect(r.code, r.stderr).toBe(0)
      await new Promise((res) => setTimeout(res, 3_000)) // past a heartbeat
      const after = await n.status('alice')
      expect(after.registered).toBe(true)
      expect(after.publicUdp).toBe(before.publicUdp)
      // Positive control: the forgeries did arrive, and were dropped one by one.
      // (The agent logs the first, then a count a second, not one line each: common/refusal-log.ts.)
      const lines = n.log('alice').split('\n').filter((l) => l.includes('"what":"unsealed datagram from the server address"'))
      const dropped = lines.reduce((sum, l) => sum + ((JSON.parse(l) as { count?: number }).count ?? 1), 0)
      expect(dropped).toBeGreaterThan(1_000)
      expect(lines.length).toBeLessThan(50)
      expect(n.log('alice')).not.toContain('lost the server')
    })
  }, 120_000)
})
