"""A fault-injecting HTTP proxy for the S3 tests: a real loopback server in front of the moto
S3 server that, per request, forwards it, or answers 500 / 503, resets the connection, stalls
past the client's read timeout, or forwards the request and then drops the response (the write
happened; the client never hears of it).

Faults come at a seeded rate (``rate``, ``seed``, ``actions``) or for one chosen request
(:meth:`FaultProxy.fail_next`: "the first PUT whose path ends with ``/latest.json``"). Every
injected fault is counted (``injected``, ``events``), so a test can compare what the client
says it retried with what really happened on the wire.

Plain stdlib (``http.server`` threads + ``http.client`` upstream), so it needs nothing the
tests do not already have. It binds 127.0.0.1 on a free port.
"""

from __future__ import annotations

import collections
import fnmatch
import http.client
import random
import socket
import struct
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: every kind of fault the proxy can inject
ACTIONS = ("500", "503", "reset", "stall", "drop")

_ERRORS = {
    "500": ("InternalError", "We encountered an internal error. Please try again."),
    "503": ("SlowDown", "Please reduce your request rate."),
}
_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
        "upgrade", "expect"}


@dataclass
class Rule:
    """Inject ``action`` into the next ``times`` requests with this method whose path (bucket
    and key, no query string) matches the glob ``pattern``."""

    action: str
    method: str
    pattern: str
    times: int = 1


@dataclass
class Event:
    method: str
    path: str
    action: str


@dataclass
class FaultProxy:
    """The proxy. ``url`` is its endpoint (give it to s3fs as ``client_kwargs.endpoint_url``).

    Parameters
    ----------
    upstream
        The real S3 endpoint, ``http://127.0.0.1:PORT``.
    rate
        Probability that a request gets a fault (0: only the chosen ones of :meth:`fail_next`).
    seed
        Seeds the choice of which requests fail and how.
    actions
        The faults drawn at ``rate``.
    stall_s
        How long a stalled request hangs before the proxy closes it (make it longer than the
        client's read timeout).
    """

    upstream: str
    rate: float = 0.0
    seed: int = 0
    actions: tuple[str, ...] = ACTIONS
    stall_s: float = 5.0
    injected: collections.Counter = field(default_factory=collections.Counter)
    events: list[Event] = field(default_factory=list)
    requests: int = 0
    rules: list[Rule] = field(default_factory=list)

    def __post_init__(self) -> None:
        unknown = set(self.actions) - set(ACTIONS)
        if unknown:
            raise ValueError(f"unknown fault actions {sorted(unknown)}; known: {ACTIONS}")
        self._lock = threading.Lock()
        self._rng = random.Random(self.seed)
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        parsed = urllib.parse.urlsplit(self.upstream)
        self._upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)

    # ------------------------------------------------------------------ control

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the proxy is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def set_rate(self, rate: float, seed: int | None = None,
                 actions: tuple[str, ...] | None = None) -> None:
        """Change the random fault rate (and reseed) from now on."""
        with self._lock:
            self.rate = rate
            if seed is not None:
                self._rng = random.Random(seed)
            if actions is not None:
                self.actions = tuple(actions)

    def fail_next(self, method: str, pattern: str, action: str = "drop", times: int = 1) -> Rule:
        """Inject ``action`` into the next ``times`` ``method`` requests matching ``pattern``
        (a glob on ``/bucket/key``, e.g. ``"*/latest.json"``)."""
        if action not in ACTIONS:
            raise ValueError(f"unknown fault action {action!r}; known: {ACTIONS}")
        rule = Rule(action, method.upper(), pattern, times)
        with self._lock:
            self.rules.append(rule)
        return rule

    def reset_counts(self) -> None:
        with self._lock:
            self.injected.clear()
            self.events.clear()
            self.requests = 0

    @property
    def total(self) -> int:
        """Faults injected so far."""
        with self._lock:
            return sum(self.injected.values())

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # releases stalled requests
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------ decisions

    def _decide(self, method: str, path: str) -> str | None:
        with self._lock:
            self.requests += 1
            action = None
            for rule in self.rules:
                if rule.times > 0 and rule.method == method and fnmatch.fnmatchcase(
                        path, rule.pattern):
                    rule.times -= 1
                    action = rule.action
                    break
            if action is None and self.rate > 0 and self._rng.random() < self.rate:
                action = self._rng.choice(self.actions)
            if action is not None:
                self.injected[action] += 1
                self.events.append(Event(method, path, action))
            return action


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._serve()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    # ------------------------------------------------------------------

    def _serve(self) -> None:
        body = self._read_body()
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        action = self.owner._decide(self.command, path)
        if action in _ERRORS:
            self._error(int(action), *_ERRORS[action])
            return
        if action == "reset":
            self._reset()
            return
        if action == "stall":
            self.owner._stop.wait(self.owner.stall_s)
            self._reset()
            return
        try:
            status, reason, headers, payload = self._forward(body)
        except OSError:
            self._error(502, "BadGateway", "the proxy could not reach the S3 server")
            return
        if action == "drop":  # the server did the work; the client never hears of it
            self._reset()
            return
        self.send_response_only(status, reason)
        for name, value in headers:
            self.send_header(name, value)
        if self.command != "HEAD" and status not in (204, 304):
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        for attempt in range(2):  # a kept-alive upstream connection may have been closed
            conn = getattr(self, "_upstream", None)
            if conn is None:
                conn = self._upstream = http.client.HTTPConnection(*self.owner._upstream,
                                                                   timeout=60)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                payload = response.read()
            except (http.client.HTTPException, OSError):
                conn.close()
                self._upstream = None
                if attempt:
                    raise
                continue
            kept = [(k, v) for k, v in response.getheaders()
                    if k.lower() not in _HOP and k.lower() not in ("server", "date")
                    and (self.command == "HEAD" or k.lower() != "content-length")]
            if response.will_close:
                conn.close()
                self._upstream = None
            return response.status, response.reason, kept, payload
        raise OSError("unreachable")

    def _error(self, status: int, code: str, message: str) -> None:
        payload = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                   f"<Message>{message}</Message><RequestId>fault-proxy</RequestId></Error>"
                   ).encode()
        self.send_response_only(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _reset(self) -> None:
        """Close the client's connection with a TCP RST (SO_LINGER 0)."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
        except OSError:
            pass
        # the socket closes for real only once the file objects made from it are closed too
        for stream in (self.rfile, self.wfile):
            try:
                stream.close()
            except OSError:
                pass
        self.connection.close()

    def handle(self) -> None:
        try:
            super().handle()
        except (OSError, ValueError):  # the client hung up, or we reset the connection
            pass

    def finish(self) -> None:
        try:
            super().finish()
        except (OSError, ValueError):
            pass
        conn = getattr(self, "_upstream", None)
        if conn is not None:
            conn.close()
