/**
 * The one winston logger of a process (natd or natd-rendezvous): one line per event.
 *
 * - On a TTY: short human lines, with colour.
 * - Under systemd (stdout is the journal stream named by $JOURNAL_STREAM): JSON lines
 *   prefixed with the sd-daemon(3) priority (`<3>` error … `<7>` debug), so journald files
 *   each line under its level (`journalctl -p warning`); no timestamp (journald stamps
 *   every line itself).
 * - Otherwise (a file, a pipe): JSON lines with a timestamp. Never colour.
 *
 * Modules get `log.child({component})`.
 */
import fs from 'node:fs'
import winston from 'winston'
import type { Logger } from '../protocol/log.js'
import { UNSAFE_TEXT_CHARS } from '../protocol/unsafe-text.js'

export const LOG_LEVELS = ['error', 'warn', 'info', 'debug'] as const
export type LogLevel = (typeof LOG_LEVELS)[number]

/** sd-daemon(3) priority prefixes (syslog levels: 3 err, 4 warning, 6 info, 7 debug). */
export const SYSLOG_PREFIX: Record<LogLevel, string> = { error: '<3>', warn: '<4>', info: '<6>', debug: '<7>' }

/** The process's root logger: its level can change at run time (SIGHUP), children follow. */
export type RootLogger = Logger & { level: string }

export interface LoggerOptions {
  level: LogLevel
  /** Human lines with colour (default: stdout is a TTY). */
  tty?: boolean
  /** Priority prefixes for journald (default: stdout is the stream $JOURNAL_STREAM names). */
  journal?: boolean
  /** Where lines go (default: the console transport, i.e. stdout). For tests. */
  stream?: NodeJS.WritableStream
}

export function createLogger(opts: LoggerOptions): RootLogger {
  const tty = opts.tty ?? process.stdout.isTTY === true
  const journal = opts.journal ?? isJournalStream()
  const human = winston.format.printf((info) => {
    const { level, message, timestamp, component, ...fields } = info
    const extra = Object.entries(fields)
      .filter(([k]) => typeof k === 'string')
      // A field may hold a peer's or the server's words: one with a control character is written as JSON (escaped) on a terminal.
      .map(([k, v]) => `${k}=${typeof v === 'string' && v.search(UNSAFE_TEXT_CHARS) === -1 ? v : JSON.stringify(v)}`)
      .join(' ')
    return `${String(timestamp).slice(11, 23)} ${level} ${component ? `[${String(component)}] ` : ''}${String(message)}${extra ? ' ' + extra : ''}`
  })
  const jsonLine = winston.format.printf((info) => {
    if (!journal) return JSON.stringify({ ...info, level: info.level })
    const { level, message, timestamp: _timestamp, ...fields } = info
    return `${SYSLOG_PREFIX[level as LogLevel] ?? ''}${JSON.stringify({ level, message, ...fields })}`
  })
  const format = tty
    ? winston.format.combine(winston.format.timestamp(), winston.format.colorize(), human)
    : winston.format.combine(winston.format.timestamp(), jsonLine)
  const transport = opts.stream ? new winston.transports.Stream({ stream: opts.stream }) : new winston.transports.Console({ stderrLevels: [] })
  return winston.createLogger({
    level: opts.level,
    levels: { error: 0, warn: 1, info: 2, debug: 3 },
    format,
    transports: [transport]
  }) as unknown as RootLogger
}

/**
 * True when stdout is the journal: systemd sets JOURNAL_STREAM to the device and inode of
 * the stream it connected, and a child whose stdout went elsewhere inherits the variable,
 * so compare (systemd.exec(5), "$JOURNAL_STREAM").
 */
export function isJournalStream(env: NodeJS.ProcessEnv = process.env, fd = 1): boolean {
  const m = /^(\d+):(\d+)$/.exec(env.JOURNAL_STREAM ?? '')
  if (!m) return false
  try {
    const st = fs.fstatSync(fd, { bigint: true })
    return st.dev === BigInt(m[1]!) && st.ino === BigInt(m[2]!)
  } catch {
    return false
  }
}
