/**
 * Stable error codes shared by every layer. Code branches on `code`, never on message
 * text; the local API sends `{code, message}` and natctl maps the code to an exit status.
 */
export const ERROR_CODES = [
  'BAD_REQUEST', // malformed API request or wire frame
  'BAD_VERSION', // wire frame of a protocol version we do not speak
  'UNAUTHORIZED', // bad signature, stale nonce, wrong network secret
  'NAME_TAKEN', // the name is bound to another live key
  'NOT_RUNNING', // natctl: no daemon behind the socket
  'PERMISSION_DENIED', // natctl: the socket exists but we may not use it
  'ALREADY_RUNNING', // natd: another live daemon holds the socket
  'BUSY', // the local API refused a connection or subscription (its slots are full), or too many punches at once
  'UNSAFE_SOCKET', // the API socket's directory is not ours or others may write it
  'UNSAFE_STATE', // natd start-up: the state directory, config.json or the config file is not natd's (or root's) alone: another uid owns it, others may write it, or it is a symlink or too large
  'NOT_REGISTERED', // the agent has no live registration with the server
  'SERVER_UNREACHABLE',
  'PEER_UNKNOWN', // no such name/ID on the server
  'PEER_OFFLINE',
  'PUNCH_FAILED', // a path could not be tried or was refused (no endpoint, no control connection, the relay connection failed)
  'PUNCH_TIMEOUT', // no path answered (or finished its handshake) before the deadline
  'UNSUPPORTED_PATH', // a path that cannot work: --via udp/direct between two NATs that map per destination, a server without relay, a missing service
  'ABORTED', // internal: an attempt stopped because another path won, it was given up, or its caller cancelled it (an API client that went away reads no answer); the API never returns it
  'KEY_MISMATCH', // a pinned peer presented another key
  'SERVER_KEY_MISMATCH', // the rendezvous server presented a key other than the pinned one
  'PEER_MISMATCH', // the server introduced another peer than the one asked for (another name or key)
  'NOT_EXPOSED', // the peer does not expose that port to us
  'CONNECT_FAILED', // the peer exposes the port but nothing answers there
  'TUNNEL_CLOSED',
  'RELAY_LIMIT', // the relay ended the tunnel: bytes, time or tunnel count over its limits
  'RATE_LIMITED', // over a limit: the server's per-source or per-key ones, or a peer's punching budget
  'PORT_IN_USE',
  'INVALID_ARGUMENT',
  'TIMEOUT',
  'NOT_ALLOWED', // the peer's accept policy refuses files from us
  'TOO_LARGE', // the file is larger than the peer accepts
  'NO_SPACE', // the receiver's disk has no room for the file
  'FILE_UNREADABLE', // a file to send is missing, unreadable, a directory without -r, or not a regular file
  'CORRUPT', // the received bytes do not match the sender's sha256 (nothing is kept)
  'PARTIAL_UNREADABLE', // the receiver cannot read back the partial file it holds for a resume (an I/O or permission error in its inbox)
  'STATE_WRITE_FAILED', // a config change is in effect but natd could not save it to its state directory (it retries)
  'QUOTA_EXCEEDED', // the peer already holds as many messages or files (count or bytes) in our inbox as its quota allows
  'INTERNAL'
] as const

export type ErrorCode = (typeof ERROR_CODES)[number]

export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === 'string' && (ERROR_CODES as readonly string[]).includes(value)
}

/** The one base class for natd errors: a literal `code`, a human `message`, a `cause`. */
export class NatdError extends Error {
  override name = 'NatdError'
  readonly code: ErrorCode

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.code = code
  }

  toJSON(): { code: ErrorCode; message: string } {
    return { code: this.code, message: this.message }
  }
}

/** Thrown only by decoders, for bytes that are not a valid frame. */
export class ProtocolError extends NatdError {
  override name = 'ProtocolError'
}

/** Wraps anything thrown into a NatdError, keeping the original as `cause`. */
export function toNatdError(err: unknown, fallback: ErrorCode = 'INTERNAL'): NatdError {
  if (err instanceof NatdError) return err
  const message = err instanceof Error ? err.message : String(err)
  return new NatdError(fallback, message, { cause: err })
}
