"""post_report: one activity report over the standard library's HTTP client."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from corral.runner.activity import ReportRefused, post_report


class Recorder(ThreadingHTTPServer):
    status: int
    seen: list[tuple[str, bytes, str | None]]


class Handler(BaseHTTPRequestHandler):
    server: Recorder

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.server.seen.append((self.path, body, self.headers.get("Authorization")))
        self.send_response(self.server.status)
        if self.server.status == 429:
            self.send_header("Retry-After", "2")
        self.end_headers()
        self.wfile.write(b"token refused" if self.server.status >= 300 else b"")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def operator_endpoint() -> Iterator[Recorder]:
    server = Recorder(("127.0.0.1", 0), Handler)
    server.status, server.seen = 204, []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def url_of(server: Recorder, path: str) -> str:
    host, port = server.server_address[:2]
    return f"http://{host!s}:{port}{path}"


def test_a_report_is_posted_with_its_path_query_and_headers(operator_endpoint: Recorder) -> None:
    headers = {"content-type": "application/json", "Authorization": "Bearer t"}
    post_report(url_of(operator_endpoint, "/v1/activity?x=1"), b'{"busy":true}', headers, 5)
    assert operator_endpoint.seen == [("/v1/activity?x=1", b'{"busy":true}', "Bearer t")]


def test_an_error_status_is_refused_with_the_operators_words(operator_endpoint: Recorder) -> None:
    operator_endpoint.status = 401
    with pytest.raises(ReportRefused, match=r"401.*token refused"):
        post_report(url_of(operator_endpoint, "/v1/activity"), b"{}", {}, 5)


def test_nobody_listening_is_an_os_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(OSError):
            post_report(f"http://127.0.0.1:{port}/v1/activity", b"{}", {}, 5)


def test_too_many_reports_are_told_apart_with_the_operators_wait(
    operator_endpoint: Recorder,
) -> None:
    from corral.runner.activity import ReportLimited

    operator_endpoint.status = 429
    with pytest.raises(ReportLimited) as limited:
        post_report(url_of(operator_endpoint, "/v1/activity"), b"{}", {}, 5)
    assert limited.value.retry_after == 2.0  # not the failure backoff, doubling to 30 s
