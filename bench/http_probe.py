"""A one-connection, one-request-at-a-time HTTP/1.1 client over TCP or a unix socket.

The benchmark uses it where wrk cannot go (a worker's unix socket) and, for a fair comparison, against the
floor and modelhost too: the same client everywhere, so differences in its p50 are differences in servers.
"""

from __future__ import annotations

import socket
import statistics
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class ProbeResult:
    requests: int
    p50_us: float
    p99_us: float


@dataclass(frozen=True)
class Address:
    """Either a TCP port on 127.0.0.1 or a unix socket path."""

    port: int | None = None
    unix_path: str | None = None

    def connect(self, timeout_s: float) -> socket.socket:
        if self.unix_path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout_s)
            sock.connect(self.unix_path)
            return sock
        sock = socket.create_connection(("127.0.0.1", self.port or 0), timeout=timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


def _request(path: str, body: bytes, content_type: str = "application/json") -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: {content_type}\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def _recv_more(sock: socket.socket, buf: bytes) -> bytes:
    chunk = sock.recv(65536)
    if not chunk:
        raise ConnectionError("the server closed the connection before a full response")
    return buf + chunk


def _read_past(sock: socket.socket, buf: bytes, marker: bytes) -> bytes:
    while marker not in buf:
        buf = _recv_more(sock, buf)
    return buf


def _read_at_least(sock: socket.socket, buf: bytes, size: int) -> bytes:
    while len(buf) < size:
        buf = _recv_more(sock, buf)
    return buf


def _dechunk(sock: socket.socket, rest: bytes) -> bytes:
    # modelhost's front server answers with chunked framing (it sets no Content-Length), so both are read.
    body = b""
    while True:
        rest = _read_past(sock, rest, b"\r\n")
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        rest = _read_at_least(sock, rest, size + 2)
        if size == 0:
            return body  # no trailers are expected: the final chunk is "0\r\n\r\n"
        body += rest[:size]
        rest = rest[size + 2 :]


def _exchange(sock: socket.socket, request: bytes) -> tuple[int, bytes]:
    """Send one request and read one whole response; (status, body)."""
    sock.sendall(request)
    buf = _read_past(sock, b"", b"\r\n\r\n")
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    if fields.get("transfer-encoding", "").lower() == "chunked":
        return status, _dechunk(sock, rest)
    length = int(fields["content-length"])
    return status, _read_at_least(sock, rest, length)[:length]


def post_once(
    address: Address, path: str, body: bytes, timeout_s: float = 10.0, content_type: str = "application/json"
) -> tuple[int, bytes]:
    with address.connect(timeout_s) as sock:
        return _exchange(sock, _request(path, body, content_type))


def probe(
    address: Address, path: str, body: bytes, duration_s: float, max_requests: int = 100_000
) -> ProbeResult:
    """Back-to-back requests on one keep-alive connection for ``duration_s``; fails on any non-200."""
    request = _request(path, body)
    samples_ns: list[int] = []
    with address.connect(10.0) as sock:
        for _ in range(200):  # warm-up: first requests pay for imports, caches and pool growth
            _exchange(sock, request)
        deadline = time.perf_counter() + duration_s
        while time.perf_counter() < deadline and len(samples_ns) < max_requests:
            started = time.perf_counter_ns()
            status, answer = _exchange(sock, request)
            samples_ns.append(time.perf_counter_ns() - started)
            if status != 200:
                raise RuntimeError(f"{address} {path} answered {status}: {answer[:300]!r}")
    cuts = statistics.quantiles(samples_ns, n=100)
    return ProbeResult(len(samples_ns), cuts[49] / 1000, cuts[98] / 1000)
