"""Proxy requests as they arrive from a session pod: parse, bound and rewrite (pure).

Two forms: `CONNECT host:port HTTP/1.1` (a byte tunnel, for HTTPS) and a plain-HTTP request
in absolute form (`GET http://host/path HTTP/1.1`), which is sent upstream in origin form
with the hop-by-hop and proxy headers removed. Everything here comes from inside a session
pod: untrusted, so sizes and shapes are checked and anything odd is a 400.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from corral.gateway.egress_policy import IPAddress, parse_host

MAX_HEAD_BYTES = 16 * 1024
MAX_HEADERS = 100
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VERSION = re.compile(r"HTTP/1\.[01]")
_PORT = re.compile(r"[0-9]{1,5}")  # ASCII digits only: "²".isdigit() is True
# Hop-by-hop headers (RFC 9110 7.6.1) and the proxy's own: never forwarded upstream.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
    }
)


class BadRequest(ValueError):
    """400: the request is not one the proxy understands."""


@dataclass(frozen=True)
class ProxyRequest:
    method: str
    host: str | IPAddress
    port: int
    version: str
    headers: tuple[tuple[str, str], ...]
    path: str = ""  # origin form, for plain HTTP; "" for CONNECT

    @property
    def is_connect(self) -> bool:
        return self.method == "CONNECT"

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in str(self.host) else str(self.host)
        return f"{host}:{self.port}"

    def upstream_head(self) -> bytes:
        """The request line and headers sent to the origin server (plain HTTP only)."""
        listed = {
            token.strip().lower()
            for name, value in self.headers
            if name.lower() == "connection"
            for token in value.split(",")
        }
        default_port = 80
        host_value = (
            self.authority if self.port != default_port else self.authority.rsplit(":", 1)[0]
        )
        lines = [f"{self.method} {self.path} {self.version}", f"Host: {host_value}"]
        for name, value in self.headers:
            lowered = name.lower()
            if lowered in HOP_BY_HOP or lowered in listed or lowered == "host":
                continue
            lines.append(f"{name}: {value}")
        # One request per upstream connection: the tunnel after it is relayed as bytes.
        lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def split_authority(text: str, default_port: int | None) -> tuple[str | IPAddress, int]:
    """`host:port` (IPv6 in brackets) into a checked host and port."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise BadRequest(f"invalid authority {text[:80]!r}")
        host_text, rest = text[: end + 1], text[end + 1 :]
        port_text = rest[1:] if rest.startswith(":") else (None if not rest else "x")
    else:
        host_text, sep, port_text_raw = text.rpartition(":")
        if not sep:
            host_text, port_text = text, None
        else:
            port_text = port_text_raw
    if port_text is None:
        if default_port is None:
            raise BadRequest(f"{text[:80]!r} has no port (CONNECT needs host:port)")
        port = default_port
    elif not _PORT.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
        raise BadRequest(f"invalid port in {text[:80]!r}")
    else:
        port = int(port_text)
    try:
        return parse_host(host_text), port
    except ValueError as error:
        raise BadRequest(str(error)) from None


def parse_head(head: bytes) -> ProxyRequest:
    """The request line and headers (up to and including the blank line)."""
    if len(head) > MAX_HEAD_BYTES:
        raise BadRequest(f"request head over {MAX_HEAD_BYTES} bytes")
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise BadRequest("undecodable request head") from None
    lines = text.split("\r\n")
    while lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise BadRequest("empty request")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not _VERSION.fullmatch(parts[2]):
        raise BadRequest("malformed request line")
    method, target, version = parts
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name) or any(c in value for c in "\r\n\0"):
            raise BadRequest("malformed header line")
        headers.append((name, value.strip()))
    if len(headers) > MAX_HEADERS:
        raise BadRequest(f"more than {MAX_HEADERS} headers")
    if method == "CONNECT":
        host, port = split_authority(target, None)
        return ProxyRequest(method, host, port, version, tuple(headers))
    if not target.lower().startswith("http://"):
        raise BadRequest(
            "a proxy request needs an absolute http:// URL, or CONNECT host:port for HTTPS"
        )
    if any(n.lower() == "transfer-encoding" for n, _ in headers) and any(
        n.lower() == "content-length" for n, _ in headers
    ):
        raise BadRequest("both Transfer-Encoding and Content-Length")  # request smuggling
    try:
        url = urlsplit(target)
    except ValueError:
        raise BadRequest("malformed URL") from None
    if url.username is not None or url.password is not None:
        raise BadRequest("credentials in the URL are not forwarded")
    host, port = split_authority(url.netloc, 80)
    path = url.path or "/"
    if url.query:
        path = f"{path}?{url.query}"
    return ProxyRequest(method, host, port, version, tuple(headers), path)


def response_head(status: int, reason: str, message: str = "") -> bytes:
    """A short HTTP/1.1 answer of the proxy itself (plain text body, connection closed)."""
    body = (message + "\n").encode() if message else b""
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body
