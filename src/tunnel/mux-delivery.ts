/**
 * What the mux (mux.ts) hands to consumers: a peer's frames for a channel, to that
 * channel's on…() handlers, and the peer's OPEN, as an OpenRequest, to whoever takes it
 * (forwards, messages, files). Each runs guarded (consumer-guard.ts): a consumer that
 * throws ends its channel, not the tunnel or natd.
 */
import type { MuxFrame } from '../protocol/mux.js'
import { toChannel } from './consumer-guard.js'
import type { MuxChannel } from './mux-channel.js'
import type { Mux } from './mux.js'

export interface OpenRequest {
  channel: MuxChannel
  port: number
  /** '' for a TCP port (forwards), else an agent service name ('msg', 'file', …). */
  service: string
  accept(): void
  reject(code: string, message: string): void
}

/** A frame for channel `ch` other than OPEN (OPEN: openRequest()); none for a channel we do not have. */
export function toChannelFrame(mux: Pick<Mux, 'log' | 'forget'>, ch: MuxChannel | undefined, f: MuxFrame): void {
  if (!ch) return
  switch (f.type) {
    case 'open-ok':
      return toChannel(mux.log, ch, () => ch.onOpened(f.window))
    case 'data':
      return toChannel(mux.log, ch, () => ch.onData(f.data))
    case 'window':
      return toChannel(mux.log, ch, () => ch.onWindow(f.increment))
    case 'fin':
      return toChannel(mux.log, ch, () => ch.onFin())
    case 'reset':
      mux.forget(f.channel)
      return toChannel(mux.log, ch, () => ch.onReset(f.code, f.message))
    default:
      return
  }
}

/** The peer's OPEN of `ch`, answered once: accept() grants our window (window-budget.ts), reject() resets and ends the channel. */
export function openRequest(mux: Pick<Mux, 'send' | 'forget'>, ch: MuxChannel, f: Extract<MuxFrame, { type: 'open' }>): OpenRequest {
  let answered = false
  return {
    channel: ch,
    port: f.port,
    service: f.service,
    accept: () => {
      if (answered) return
      answered = true
      mux.send({ type: 'open-ok', channel: f.channel, window: ch.receiveWindow })
    },
    reject: (code, message) => {
      if (answered) return
      answered = true
      mux.forget(f.channel)
      mux.send({ type: 'reset', channel: f.channel, code, message })
      ch.destroy()
    }
  }
}
