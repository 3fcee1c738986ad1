"""`ecgqa serve` as a real server process on localhost, driven with raw sockets (RELIABILITY-PROBE S15, S19).

The server runs with short deadlines (--header-timeout 1.5, --body-timeout 2, --keep-alive 2) so
each scenario is bounded to a few seconds: idle connections, headers trickled a line at a time and
slow bodies are all closed by the server, and requests for a non-loopback Host are refused.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

httpx = pytest.importorskip("httpx")

pytestmark = pytest.mark.slow

HEADER_S, BODY_S, KEEP_ALIVE_S = 1.5, 2.0, 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(qa_checkpoint, prepared_qa, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ecgqa",
                "serve",
                "--checkpoint",
                str(qa_checkpoint),
                "--data",
                str(prepared_qa),
                "--port",
                str(port),
                "--device",
                "cpu",
                "-q",
                "--header-timeout",
                str(HEADER_S),
                "--body-timeout",
                str(BODY_S),
                "--keep-alive",
                str(KEEP_ALIVE_S),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        )
    try:
        deadline = time.monotonic() + 300  # imports take over a minute on a loaded 2-core machine
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not start within 300 s"
            time.sleep(0.2)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Read until the server closes the connection or ``seconds`` pass: (closed, what it sent)."""
    sock.settimeout(0.2)
    got = b""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True, got
        if not chunk:
            return True, got
        got += chunk
    return False, got


def test_idle_connections_are_closed(server):
    socks = [socket.create_connection(("127.0.0.1", server)) for _ in range(20)]
    try:
        t = time.monotonic()
        results = [_closed_within(s, HEADER_S + 3 - (time.monotonic() - t)) for s in socks]
        assert all(closed for closed, _ in results)
        assert time.monotonic() - t < HEADER_S + 3
    finally:
        for s in socks:
            s.close()
    assert httpx.get(f"http://127.0.0.1:{server}/healthz").status_code == 200


def test_trickled_headers_are_cut_off(server):
    """A header line every 0.3 s would keep a connection forever without a deadline for the whole head."""
    with socket.create_connection(("127.0.0.1", server)) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        t = time.monotonic()
        closed = False
        while time.monotonic() - t < HEADER_S + 3:
            try:
                s.sendall(f"X-Slow-{time.monotonic():.3f}: 1\r\n".encode())
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            closed, _ = _closed_within(s, 0.3)
            if closed:
                break
        assert closed and time.monotonic() - t < HEADER_S + 3


def test_slow_body_gets_408_and_the_connection_closes(server):
    with socket.create_connection(("127.0.0.1", server)) as s:
        s.sendall(
            b"POST /api/answer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n" + b" " * 1000
        )
        t = time.monotonic()
        closed, got = _closed_within(s, BODY_S + 3)
        assert got.startswith(b"HTTP/1.1 408"), got[:200]
        assert b"did not arrive within" in got
        assert closed and time.monotonic() - t < BODY_S + 3


def test_idle_keep_alive_connection_is_closed(server):
    with socket.create_connection(("127.0.0.1", server)) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        t = time.monotonic()
        closed, got = _closed_within(s, KEEP_ALIVE_S + 3)
        assert got.startswith(b"HTTP/1.1 200") and closed
        assert time.monotonic() - t < KEEP_ALIVE_S + 3


def test_loopback_server_refuses_foreign_host_names(server):
    url = f"http://127.0.0.1:{server}/api/ecgs?limit=1"
    assert httpx.get(url).status_code == 200
    assert httpx.get(url, headers={"host": f"localhost:{server}"}).status_code == 200
    r = httpx.get(url, headers={"host": "evil.example.com"})
    assert r.status_code == 400 and "items" not in r.text
