#!/usr/bin/env python3
"""A dependency-free client for natd's local API (see docs/API.md).

The wire format is node-ipc's: each frame is UTF-8 JSON {"type": ..., "data": ...}
followed by a form feed (\\f). Requests carry an id; the response echoes it with either
"result" or "error": {"code", "message"}. Events arrive as {"type": "event"} frames once
the connection has subscribed.

As a library:

    from natd_api import Client
    with Client("/run/natd/natd.sock") as natd:
        print(natd.call("status")["registered"])
        for event, data in natd.events(["peer.up", "peer.down"]):
            print(event, data["name"])

From the shell:

    python3 natd_api.py [--socket PATH] status
    python3 natd_api.py [--socket PATH] peers
    python3 natd_api.py [--socket PATH] watch [EVENT ...]     # JSON lines until Ctrl-C
    python3 natd_api.py [--socket PATH] call METHOD ['{"param": ...}']

Exit status, as natctl: 0 ok, 1 error response (code and message on stderr), 2 usage,
3 natd not running, 5 natd busy (BUSY), 6 unsafe socket directory (UNSAFE_SOCKET).
"""

import argparse
import collections
import json
import os
import socket
import stat
import sys

FRAME_END = b"\f"  # never inside a frame: JSON escapes it, UTF-8 never encodes it in a multi-byte sequence
RECV_BYTES = 65536
DEFAULT_CALL_TIMEOUT_S = 60.0  # above the daemon's own limits for status/peers; open/ping add their timeoutMs

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_RUNNING = 0, 1, 2, 3
EXIT_BY_CODE = {"NOT_RUNNING": EXIT_NOT_RUNNING, "BUSY": 5, "UNSAFE_SOCKET": 6}


class NatdError(Exception):
    """An error object from the daemon (or NOT_RUNNING / PERMISSION_DENIED / TIMEOUT from this client)."""

    def __init__(self, code, message):
        super().__init__("%s: %s" % (code, message))
        self.code = code
        self.message = message


def default_socket_path():
    """The socket natctl uses without --socket: the user's daemon if its socket exists, else the system one."""
    uid = os.getuid()
    if uid == 0:
        return "/run/natd/natd.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR") or "/tmp/natd-%d" % uid
    user = os.path.join(runtime, "natd", "natd.sock")
    if not os.path.exists(user) and os.path.exists("/run/natd/natd.sock"):
        return "/run/natd/natd.sock"
    return user


def check_socket_dir(path):
    """Raises NatdError UNSAFE_SOCKET when someone else could have planted the socket (docs/API.md, Socket).

    Every directory from / down to the socket's must be owned by us or root (the socket's own
    may be another user's when only root can write its parent, as systemd makes /run/natd), and must not be
    writable by group or others (sticky ones like /tmp are allowed above the socket's own).
    """
    try:
        real = os.path.realpath(os.path.dirname(os.path.abspath(path)), strict=True)
    except (FileNotFoundError, PermissionError):
        return  # nothing there to trust or distrust; connect() says why
    parts = [real]
    while os.path.dirname(parts[0]) != parts[0]:
        parts.insert(0, os.path.dirname(parts[0]))
    uid = os.getuid()
    parent = None
    for i, d in enumerate(parts):
        st = os.stat(d)
        last = i == len(parts) - 1
        root_placed = last and parent is not None and parent.st_uid == 0 and not parent.st_mode & 0o022
        why = None
        if st.st_uid not in (uid, 0) and not root_placed:
            why = "is owned by uid %d, not by us (uid %d) or root" % (st.st_uid, uid)
        elif st.st_mode & 0o022 and (last or not st.st_mode & stat.S_ISVTX):
            why = "is writable by %s (mode %04o)" % ("others" if st.st_mode & 0o002 else "its group", st.st_mode & 0o7777)
        if why:
            raise NatdError("UNSAFE_SOCKET", "refusing the API socket %s: %s %s; someone else could plant a socket there" % (path, d, why))
        parent = st


class Client:
    """One connection to natd. Not thread-safe; one request at a time."""

    def __init__(self, path=None):
        self.path = path or default_socket_path()
        self._next_id = 1
        self._buffer = b""
        self._queued_events = collections.deque()
        check_socket_dir(self.path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.connect(self.path)
        except (FileNotFoundError, ConnectionRefusedError) as err:
            self._sock.close()
            raise NatdError("NOT_RUNNING", "natd is not running (no socket at %s)" % self.path) from err
        except PermissionError as err:
            self._sock.close()
            raise NatdError("PERMISSION_DENIED", "permission denied on %s: add yourself to group natd" % self.path) from err

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self._sock.close()

    def _send(self, frame_type, data):
        self._sock.sendall(json.dumps({"type": frame_type, "data": data}).encode("utf-8") + FRAME_END)

    def _read_frame(self):
        """The next frame as a dict; NatdError NOT_RUNNING when the daemon hangs up."""
        while FRAME_END not in self._buffer:
            chunk = self._sock.recv(RECV_BYTES)
            if not chunk:
                raise NatdError("NOT_RUNNING", "natd closed the connection on %s" % self.path)
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(FRAME_END, 1)
        return json.loads(raw.decode("utf-8"))

    def call(self, method, params=None, timeout=DEFAULT_CALL_TIMEOUT_S):
        """Sends one request and returns its result; raises NatdError with the daemon's code."""
        request_id = self._next_id
        self._next_id += 1
        self._send("request", {"id": request_id, "method": method, "params": params or {}})
        self._sock.settimeout(timeout)
        try:
            while True:
                frame = self._read_frame()
                data = frame.get("data") or {}
                if frame.get("type") == "event":
                    self._queued_events.append((data.get("event"), data.get("data")))
                    continue
                if frame.get("type") != "response":
                    continue
                # id null: the daemon could not read our envelope, so the error is ours
                if data.get("id") not in (request_id, None):
                    continue
                if "error" in data:
                    err = data["error"] or {}
                    raise NatdError(err.get("code", "INTERNAL"), err.get("message", ""))
                return data.get("result")
        except socket.timeout as err:
            raise NatdError("TIMEOUT", "natd did not answer %s in %gs" % (method, timeout)) from err
        finally:
            self._sock.settimeout(None)

    def subscribe(self, events=None):
        """Subscribes this connection; [] or None means every event. Returns the names subscribed."""
        return self.call("subscribe", {"events": list(events or [])})["subscribed"]

    def events(self, names=None):
        """Subscribes, then yields (event, data) pairs until the daemon hangs up."""
        self.subscribe(names)
        return self.listen()

    def listen(self):
        """Yields (event, data) pairs of an existing subscription until the daemon hangs up."""
        while True:
            while self._queued_events:
                yield self._queued_events.popleft()
            frame = self._read_frame()
            if frame.get("type") == "event":
                data = frame.get("data") or {}
                yield data.get("event"), data.get("data")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="natd_api.py", description="Talk to natd's local API.")
    parser.add_argument("--socket", help="natd API socket (default: as natctl)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("status", help="this agent (prints the JSON result)")
    commands.add_parser("peers", help="the other agents on the server")
    watch = commands.add_parser("watch", help="subscribe and print events as JSON lines")
    watch.add_argument("names", nargs="*", metavar="EVENT", help="event names (default: all)")
    call = commands.add_parser("call", help="any method, params as a JSON object")
    call.add_argument("method")
    call.add_argument("params", nargs="?", default="{}")
    args = parser.parse_args(argv)

    params = {}
    if args.command == "call":
        try:
            params = json.loads(args.params)
        except ValueError as err:
            parser.error("params: %s" % err)  # exits 2
        if not isinstance(params, dict):
            parser.error("params must be a JSON object")

    try:
        with Client(args.socket) as natd:
            if args.command == "watch":
                names = natd.subscribe(args.names)
                print("subscribed: %s" % " ".join(names), file=sys.stderr, flush=True)
                for event, data in natd.listen():
                    print(json.dumps({"event": event, "data": data}), flush=True)
            else:
                method = args.method if args.command == "call" else args.command
                print(json.dumps(natd.call(method, params), indent=2))
    except NatdError as err:
        print("natd_api: %s [%s]" % (err.message, err.code), file=sys.stderr)
        return EXIT_BY_CODE.get(err.code, EXIT_ERROR)
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:  # e.g. `watch | head -1`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
