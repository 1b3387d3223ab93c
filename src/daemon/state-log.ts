/**
 * What natd logs about its state directory (main.ts, at start): a failed background write
 * of a state file, named by its path (learnt.json or config.json: the two are fixed
 * differently, and a config change that did not land is not something "learnt"), and the
 * problems found at start (a learnt.json set aside, a state directory others may write).
 */
import type { Logger } from '../protocol/log.js'
import type { StateStore } from './config.js'

export function logStateFiles(store: Pick<StateStore, 'onWriteError' | 'stateWarnings' | 'removedTemps'>, log: Logger, dir: string): void {
  store.onWriteError = (err, file) => log.warn('cannot save a state file (kept in memory, tried again)', { file, err: err.message })
  for (const warning of store.stateWarnings) log.error('state directory problem', { warning })
  if (store.removedTemps.length) log.info('stale temp files removed', { dir, files: store.removedTemps })
}
