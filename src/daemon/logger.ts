/**
 * The one winston logger of a process (natd or natd-rendezvous). JSON lines on stdout
 * for journald when not on a TTY (systemd maps our `priority` field via SyslogLevel
 * prefixes), short human lines with colour on a TTY. Modules get `log.child({component})`.
 */
import winston from 'winston'
import type { Logger } from '../protocol/log.js'

export const LOG_LEVELS = ['error', 'warn', 'info', 'debug'] as const
export type LogLevel = (typeof LOG_LEVELS)[number]

/** sd-daemon(3) priority prefixes, so journald files each line under the right level. */
const SYSLOG_PREFIX: Record<string, string> = { error: '<3>', warn: '<4>', info: '<6>', debug: '<7>' }

export function createLogger(opts: { level: LogLevel; tty?: boolean; journal?: boolean }): Logger {
  const tty = opts.tty ?? process.stdout.isTTY === true
  const journal = opts.journal ?? !!process.env.JOURNAL_STREAM
  const human = winston.format.printf((info) => {
    const { level, message, timestamp, component, ...fields } = info
    const extra = Object.entries(fields)
      .filter(([k]) => typeof k === 'string')
      .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
      .join(' ')
    return `${String(timestamp).slice(11, 23)} ${level} ${component ? `[${String(component)}] ` : ''}${String(message)}${extra ? ' ' + extra : ''}`
  })
  const jsonLine = winston.format.printf((info) => {
    const line = JSON.stringify({ ...info, level: info.level })
    return journal ? `${SYSLOG_PREFIX[info.level] ?? ''}${line}` : line
  })
  const format = tty
    ? winston.format.combine(winston.format.timestamp(), winston.format.colorize(), human)
    : winston.format.combine(winston.format.timestamp(), jsonLine)
  return winston.createLogger({
    level: opts.level,
    levels: { error: 0, warn: 1, info: 2, debug: 3 },
    format,
    transports: [new winston.transports.Console({ stderrLevels: [] })]
  }) as unknown as Logger
}
