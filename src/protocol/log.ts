/**
 * The logger shape every module receives (the daemon and the server build the one
 * winston logger; modules get `log.child({component})`). Messages are fixed strings;
 * variables go in fields.
 */
export type LogFields = Record<string, unknown>

export interface Logger {
  error(message: string, fields?: LogFields): unknown
  warn(message: string, fields?: LogFields): unknown
  info(message: string, fields?: LogFields): unknown
  debug(message: string, fields?: LogFields): unknown
  child(fields: LogFields): Logger
}

/** A logger that drops everything: for tests and library use. */
export const silentLogger: Logger = {
  error: () => undefined,
  warn: () => undefined,
  info: () => undefined,
  debug: () => undefined,
  child: () => silentLogger
}

// The clock lives in clock.ts; re-exported for the modules that import it with the logger.
export { monotonicClock, systemClock, type Clock, type TimerClock } from './clock.js'
