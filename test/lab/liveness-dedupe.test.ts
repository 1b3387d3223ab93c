/**
 * A peer that dies, and a message whose acknowledgement is lost, through real Linux NAT
 * (issue 15: "Exactly-once messages", "Liveness that agrees with itself").
 *
 *   server ── inet ──┬── r1 (easy NAT) ── alice: natctl send / forward 127.0.0.1:9000 ─┐
 *                    └── r2 (easy NAT) ── bob:   inbox / echo server :7000  ◀───────────┘
 *
 * 1. bob acknowledges messages 3 s after storing them (a test knob): alice's send times
 *    out, or alice's natd is SIGKILLed, while the ACK is due; the same `natctl send` run
 *    again is answered "delivered (duplicate)" and bob holds the message once.
 * 2. bob's natd is SIGKILLed while a UDP tunnel carries a forward: alice's `natctl peers`,
 *    its `peer.down` event and `natctl open` all say offline within the detection time
 *    (docs/API.md: the control connection's end + 5 s grace + the 1 s sweep), and a new
 *    forwarded connection is reset (ECONNRESET), not left hanging and then closed cleanly.
 */
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { ApiClient } from '../../src/ipc/client.js'
import { labAvailable } from './lab.js'
import { errorCode, pair, ROOT, startPair, waitFor, withLab } from './natd-lab.js'

const ECHO_PORT = 7000
const FWD_PORT = 9000
/**
 * The stated detection time for a killed peer is ~6 s (CONTROL_LOST_GRACE_MS + the
 * sweep); this bound is looser so a loaded machine does not fail the test, yet far below
 * the ~56 s `peers` took before (heartbeat expiry).
 */
const DETECT_BOUND_MS = 15_000
/** A forwarded connection to the dead peer: detection, then a 3 s ping (OFFLINE_PEER_PING_MS) before the tunnel is closed. */
const RESET_BOUND_MS = 20_000

/** natd's test knob (daemon/main.ts): the receiver's delay between storing a message and its ACK. */
const ACK_DELAY_ENV = 'NATD_TEST_MESSAGE_ACK_DELAY_MS'
const ACK_DELAY_MS = 3_000

interface SendResult {
  id: string
  peer: string
  duplicate: boolean
}

describe.skipIf(!labAvailable())('messages exactly once and liveness (easy×easy)', () => {
  it('an ACK that times out, and a sender killed before the ACK: running the same natctl send again stores the message once', async () => {
    await withLab(pair('easy', 'easy'), async (n) => {
      await n.startServer()
      await n.startAgent('alice')
      // bob acknowledges each message 3 s after storing it: the window in which its ACK is lost.
      process.env[ACK_DELAY_ENV] = String(ACK_DELAY_MS)
      try {
        await n.startAgent('bob')
      } finally {
        delete process.env[ACK_DELAY_ENV]
      }
      await n.waitRegistered('alice')
      await n.waitRegistered('bob')
      // TCP: alice's kernel closes it when her natd dies, so bob's side ends at once too.
      expect((await n.natctl('alice', ['open', 'bob', '--via', 'tcp'])).code).toBe(0)
      const inbox = async (text: string): Promise<Array<{ id: string }>> => ((await n.natctl('bob', ['messages'])).json as Array<{ id: string; text: string }>).filter((m) => m.text === text)

      // 1. A timeout: the error says how to retry; the rerun is acknowledged as a duplicate.
      const timedOut = await n.natctl('alice', ['send', 'bob', 'first', '--timeout', '1s'])
      expect([timedOut.code, errorCode(timedOut)]).toEqual([1, 'TIMEOUT'])
      expect(timedOut.stderr).toMatch(/may have reached bob: run the same command again .*bob stores it once \[TIMEOUT\]/)
      await waitFor(async () => (await inbox('first')).length === 1, 10_000, 'bob stores "first"')
      const rerun = await n.natctl('alice', ['send', 'bob', 'first'])
      expect(rerun.code, rerun.stderr).toBe(0)
      expect(rerun.json).toMatchObject({ peer: 'bob', duplicate: true })
      expect(await inbox('first')).toEqual([expect.objectContaining({ id: (rerun.json as SendResult).id })])

      // 2. alice's natd SIGKILLed while the ACK is due: restarted, the same command stores nothing new.
      const sending = n.natctl('alice', ['send', 'bob', 'second'])
      await waitFor(async () => (await inbox('second')).length === 1, 10_000, 'bob stores "second"')
      await n.stopAgent('alice', 'SIGKILL')
      const killed = await sending
      expect([killed.code, errorCode(killed)]).toEqual([3, 'NOT_RUNNING']) // natd went away
      expect(killed.stderr).toMatch(/may have reached bob: once natd is back, run the same command again/)
      await n.restartAgent('alice')
      await n.waitRegistered('alice')
      const again = await n.natctl('alice', ['send', 'bob', 'second'])
      expect(again.code, again.stderr).toBe(0)
      expect(again.json).toMatchObject({ peer: 'bob', duplicate: true })
      expect(await inbox('second')).toEqual([expect.objectContaining({ id: (again.json as SendResult).id })])
    })
  }, 90_000)

  it('bob SIGKILLed: peers, peer.down and open agree he is offline within the detection time; a new forwarded connection is reset', async () => {
    await withLab(pair('easy', 'easy'), async (n) => {
      await startPair(n)
      await n.startEcho('bob', ECHO_PORT)
      expect((await n.natctl('bob', ['expose', 'add', String(ECHO_PORT), '--allow', 'alice'])).code).toBe(0)
      expect((await n.natctl('alice', ['forward', 'add', String(FWD_PORT), `bob:${ECHO_PORT}`])).code).toBe(0)
      expect((await n.natctl('alice', ['open', 'bob', '--via', 'udp'])).json).toMatchObject({ path: 'direct-udp' })
      expect(await n.echo('alice', FWD_PORT, 64 * 1024)).toMatchObject({ ok: true })
      expect((await n.peers('alice')).find((p) => p.name === 'bob')).toMatchObject({ online: true, tunnel: 'direct-udp' })

      const events = new ApiClient(n.agents.alice!.socket)
      await events.connect()
      let downAt = 0
      let downReason: unknown = null
      try {
        await events.subscribe(['peer.down'], (_event, data) => {
          if ((data as { name: string }).name === 'bob' && !downAt) {
            downAt = Date.now()
            downReason = (data as { downReason: unknown }).downReason
          }
        })
        const killedAt = Date.now()
        await n.stopAgent('bob', 'SIGKILL')
        // A new connection on the forward right away: it rides the tunnel that is still "up".
        const probe = n.lab.exec(n.lab.hosts.alice!.ns, [process.execPath, path.join(ROOT, 'test/lab/fixtures/conn-outcome.ts'), String(FWD_PORT), String(RESET_BOUND_MS + 10_000)], { timeoutMs: RESET_BOUND_MS + 20_000 })

        const peersMs = await waitFor(async () => (await n.peers('alice')).find((p) => p.name === 'bob')?.online === false, DETECT_BOUND_MS, 'alice\'s peers lists bob offline')
        await waitFor(() => downAt > 0, DETECT_BOUND_MS - peersMs, 'alice\'s peer.down for bob')
        expect(downAt - killedAt).toBeLessThanOrEqual(DETECT_BOUND_MS)
        // Why: the server stopped hearing him (no goodbye), in the event and in peers alike.
        expect(downReason).toBe('expired')
        expect((await n.peers('alice')).find((p) => p.name === 'bob')).toMatchObject({ online: false, downReason: 'expired' })
        const open = await n.natctl('alice', ['open', 'bob'])
        expect(open.code).toBe(1)
        expect(errorCode(open)).toBe('PEER_OFFLINE')

        const outcome = JSON.parse((await probe).stdout) as { how: string; ms: number; received: number }
        expect(outcome).toMatchObject({ how: 'ECONNRESET', received: 0 })
        expect(outcome.ms).toBeLessThanOrEqual(RESET_BOUND_MS)
        process.stdout.write(`bob SIGKILLed: alice's peers said offline after ${peersMs} ms, peer.down after ${downAt - killedAt} ms; a forwarded connection made at once was reset after ${outcome.ms} ms\n`)
        // And one made now, with bob known offline, is reset at once.
        const later = JSON.parse((await n.lab.exec(n.lab.hosts.alice!.ns, [process.execPath, path.join(ROOT, 'test/lab/fixtures/conn-outcome.ts'), String(FWD_PORT), '10000'])).stdout) as { how: string; ms: number }
        expect(later.how).toBe('ECONNRESET')
      } finally {
        events.close()
      }
    })
  }, 90_000)
})
