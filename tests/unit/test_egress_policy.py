"""The egress proxy's pure parts: domain rules, address classes, policy decisions, request
parsing, the pod-IP index and the Event rate limit."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from corral.gateway import egress_policy as ep
from corral.gateway.egress_http import BadRequest, parse_head, response_head
from corral.gateway.egress_index import Caller, EgressIndex
from corral.gateway.egress_report import RefusalReporter, refusal_event

ip = ipaddress.ip_address

# --- domain rules --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "host", "port", "allowed"),
    [
        ("github.com", "github.com", 443, True),
        ("github.com", "github.com", 80, True),
        ("github.com", "github.com", 22, False),
        ("github.com", "api.github.com", 443, False),
        ("github.com", "notgithub.com", 443, False),
        ("*.github.com", "api.github.com", 443, True),
        ("*.github.com", "a.b.github.com", 443, True),
        ("*.github.com", "github.com", 443, False),
        ("*.github.com", "evilgithub.com", 443, False),
        ("*.github.com", "github.com.evil.com", 443, False),
        ("git.corp.example:8443", "git.corp.example", 8443, True),
        ("git.corp.example:8443", "git.corp.example", 443, False),
        ("*", "anything.example", 443, True),
        ("*:443", "anything.example", 80, False),
        ("PyPI.org", "pypi.org", 443, True),
    ],
)
def test_domain_rules_match_names_wildcards_and_ports(
    rule: str, host: str, port: int, allowed: bool
) -> None:
    assert ep.parse_domain_rule(rule).matches(host, port) is allowed


@pytest.mark.parametrize(
    "text", ["", "*.*.com", "exa mple.com", "a.*.com", "-a.com", "a.com:0", "a.com:70000", "a.com:"]
)
def test_bad_domain_rules_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        ep.parse_domain_rule(text)


# --- address classes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("8.8.8.8", None),
        ("2606:4700::1111", None),
        ("10.1.2.3", ep.PRIVATE),
        ("172.20.0.1", ep.PRIVATE),
        ("192.168.254.3", ep.PRIVATE),
        ("fd12::1", ep.PRIVATE),
        ("127.0.0.1", ep.LOOPBACK),
        ("::1", ep.LOOPBACK),
        ("169.254.1.1", ep.LINK_LOCAL),
        ("fe80::1", ep.LINK_LOCAL),
        ("169.254.169.254", ep.METADATA),
        ("fd00:ec2::254", ep.METADATA),
        ("100.64.0.1", ep.CGNAT),
        ("224.0.0.1", ep.MULTICAST),
        ("ff02::1", ep.MULTICAST),
        ("0.0.0.0", ep.RESERVED),
        ("255.255.255.255", ep.RESERVED),
        ("::ffff:10.0.0.1", ep.PRIVATE),  # IPv4-mapped
        ("::ffff:169.254.169.254", ep.METADATA),
        ("64:ff9b::a9fe:a9fe", ep.METADATA),  # NAT64 of 169.254.169.254
        ("2002:0a00:0001::1", ep.PRIVATE),  # 6to4 of 10.0.0.1
    ],
)
def test_addresses_are_classified(address: str, reason: str | None) -> None:
    assert ep.classify(ip(address)) == reason


# --- policy ------------------------------------------------------------------------------


def policy(**network: Any) -> ep.EgressPolicy:
    spec: dict[str, Any] = {"network": {"allowPublicHttps": False, **network}}
    return ep.policy_from_spec(spec)


def test_names_must_be_listed() -> None:
    rules = policy(allowedDomains=["pypi.org", "*.github.com"])
    assert rules.target_allowed("pypi.org", 443) is None
    assert rules.target_allowed("api.github.com", 443) is None
    refused = rules.target_allowed("evil.example", 443)
    assert refused is not None and refused.reason == ep.NOT_ALLOWED
    assert "evil.example:443" in refused.message


def test_allow_public_https_is_any_name_on_443() -> None:
    rules = ep.policy_from_spec({"network": {}})  # the default: true
    assert rules.target_allowed("anything.example", 443) is None
    assert rules.target_allowed("anything.example", 80) is not None
    assert policy().target_allowed("anything.example", 443) is not None


def test_mcp_server_hosts_are_allowed_with_their_port() -> None:
    spec = {
        "network": {"allowPublicHttps": False},
        "mcpServers": [
            {"name": "a", "url": "https://mcp.example.com/mcp"},
            {"name": "b", "url": "http://tools.example:8000/sse"},
        ],
    }
    rules = ep.policy_from_spec(spec)
    assert rules.target_allowed("mcp.example.com", 443) is None
    assert rules.target_allowed("tools.example", 8000) is None
    assert rules.target_allowed("tools.example", 80) is not None


def test_resolved_private_addresses_are_refused_unless_a_cidr_allows_them() -> None:
    rules = policy(
        allowedDomains=["*.corp.example", "rebind.example"],
        egress=[{"cidr": "10.20.0.0/16", "ports": [{"port": 443}]}],
    )
    usable, refused = rules.usable_addresses(443, [ip("10.20.1.1")])
    assert usable == [ip("10.20.1.1")] and refused is None
    usable, refused = rules.usable_addresses(8443, [ip("10.20.1.1")])
    assert usable == [] and refused is not None and refused.reason == ep.PRIVATE
    # DNS rebinding: an allowed name whose address is private.
    usable, refused = rules.usable_addresses(443, [ip("192.168.254.3")])
    assert usable == [] and refused is not None and refused.reason == ep.PRIVATE
    # Only the checked public address of a mixed answer is kept.
    usable, refused = rules.usable_addresses(443, [ip("127.0.0.1"), ip("8.8.8.8")])
    assert usable == [ip("8.8.8.8")] and refused is None


def test_metadata_is_refused_even_inside_a_cidr() -> None:
    rules = policy(allowedDomains=["*"], egress=[{"cidr": "169.254.0.0/16"}])
    assert rules.cidrs == ()  # link-local is never opened
    refused = rules.address_allowed(ip("169.254.169.254"), 80)
    assert refused is not None and refused.reason == ep.METADATA


def test_an_ipv6_cidr_does_not_open_the_ipv4_addresses_wrapped_in_it() -> None:
    rules = policy(allowedDomains=["*"], egress=[{"cidr": "::/1"}])
    for wrapped in ("::ffff:169.254.170.23", "::ffff:127.0.0.1", "::ffff:10.0.0.1"):
        assert rules.target_allowed(ip(wrapped), 80) is not None, wrapped
        assert rules.address_allowed(ip(wrapped), 80) is not None, wrapped
    assert rules.address_allowed(ip("::5"), 80) is None  # what ::/1 itself opens
    ipv4 = policy(allowedDomains=["*"], egress=[{"cidr": "10.0.0.0/8"}])
    assert ipv4.address_allowed(ip("::ffff:10.1.2.3"), 80) is None  # judged as 10.1.2.3


def test_what_a_session_asked_for_reaches_an_event_printable() -> None:
    caller = Caller("ns", "s", "uid", "pod", ep.EgressPolicy())
    event = refusal_event(caller, "egress to evil\x1b[31m.example:443\x07 refused")
    assert event["message"].isprintable() and "evil" in event["message"]


def test_address_literals() -> None:
    rules = policy(allowedDomains=["*"], egress=[{"cidr": "10.0.5.0/24"}])
    assert rules.target_allowed(ip("10.0.5.7"), 5432) is None  # inside the CIDR, any port
    assert rules.target_allowed(ip("8.8.8.8"), 443) is None  # public, and `*`
    refused = rules.target_allowed(ip("10.0.6.1"), 443)
    assert refused is not None and refused.reason == ep.PRIVATE
    assert policy().target_allowed(ip("8.8.8.8"), 443) is not None  # no `*`


def test_bad_spec_entries_are_skipped() -> None:
    spec = {
        "network": {
            "allowPublicHttps": False,
            "allowedDomains": ["ok.example", "bad domain"],
            "egress": [{"cidr": "nonsense"}, "x", {"cidr": "10.0.0.0/8"}],
        },
        "mcpServers": [{"url": "http://[broken"}, "x"],
    }
    rules = ep.policy_from_spec(spec)
    assert rules.domains == (ep.DomainRule("ok.example", None),)
    assert [str(r.network) for r in rules.cidrs] == ["10.0.0.0/8"]


# --- request parsing ---------------------------------------------------------------------


def test_connect_is_parsed() -> None:
    request = parse_head(b"CONNECT pypi.org:443 HTTP/1.1\r\nHost: pypi.org:443\r\n\r\n")
    assert request.is_connect and request.host == "pypi.org" and request.port == 443
    v6 = parse_head(b"CONNECT [2606:4700::1111]:443 HTTP/1.1\r\n\r\n")
    assert v6.host == ip("2606:4700::1111") and v6.authority == "[2606:4700::1111]:443"


def test_absolute_http_is_rewritten_to_origin_form_without_proxy_headers() -> None:
    request = parse_head(
        b"GET http://Example.COM:8080/a/b?c=1 HTTP/1.1\r\nHost: elsewhere\r\n"
        b"Proxy-Authorization: Basic eDp5\r\nProxy-Connection: keep-alive\r\n"
        b"Connection: keep-alive, X-Drop\r\nX-Drop: 1\r\nAccept: */*\r\n\r\n"
    )
    assert (request.host, request.port, request.path) == ("example.com", 8080, "/a/b?c=1")
    assert request.upstream_head() == (
        b"GET /a/b?c=1 HTTP/1.1\r\nHost: example.com:8080\r\nAccept: */*\r\n"
        b"Connection: close\r\n\r\n"
    )
    plain = parse_head(b"GET http://example.com HTTP/1.0\r\n\r\n")
    assert plain.upstream_head().startswith(b"GET / HTTP/1.0\r\nHost: example.com\r\n")


@pytest.mark.parametrize(
    "head",
    [
        b"\r\n\r\n",
        b"GET /relative HTTP/1.1\r\n\r\n",
        b"GET https://example.com/ HTTP/1.1\r\n\r\n",
        b"CONNECT example.com HTTP/1.1\r\n\r\n",
        b"CONNECT example.com:99999 HTTP/1.1\r\n\r\n",
        b"CONNECT exa_mple.com:443 HTTP/1.1\r\n\r\n",
        b"CONNECT [::1:443 HTTP/1.1\r\n\r\n",
        b"CONNECT example.com:443 HTTP/2.0\r\n\r\n",
        b"CONNECT  example.com:443 HTTP/1.1\r\n\r\n",
        b"GET http://user:pw@example.com/ HTTP/1.1\r\n\r\n",
        b"GET http://example.com/ HTTP/1.1\r\nno colon\r\n\r\n",
        b"POST http://example.com/ HTTP/1.1\r\nContent-Length: 1\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n",
        b"GET http://example.com/ HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n",
        "CONNECT example.com:\u00b2 HTTP/1.1\r\n\r\n".encode(),  # "²".isdigit()
        b"CONNECT [fd00:ec2::254%1]:80 HTTP/1.1\r\n\r\n",  # a zone: unequal to metadata
        b"CONNECT [2001:db8::1%\x1b[31m\x07]:443 HTTP/1.1\r\n\r\n",
    ],
)
def test_malformed_requests_are_bad_requests(head: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_head(head)


def test_proxy_answers_are_complete_http() -> None:
    assert response_head(403, "Forbidden", "no") == (
        b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 3\r\nConnection: close\r\n\r\nno\n"
    )


# --- the pod-IP index --------------------------------------------------------------------


def session_body(name: str, uid: str, **network: Any) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "demo", "name": name, "uid": uid},
        "spec": {"network": {"allowPublicHttps": False, **network}},
    }


def pod_body(name: str, owner: str, ip_text: str, phase: str = "Running") -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "demo",
            "name": name,
            "ownerReferences": [{"uid": owner, "controller": True}],
        },
        "status": {"phase": phase, "podIP": ip_text, "podIPs": [{"ip": ip_text}]},
    }


def test_the_index_finds_a_session_by_its_live_pod_address() -> None:
    index = EgressIndex()
    index.on_pod("ADDED", pod_body("a-1", "uid-a", "10.245.0.5"))  # before its session
    index.on_session("ADDED", session_body("a", "uid-a", allowedDomains=["pypi.org"]))
    caller = index.caller("10.245.0.5")
    assert caller is not None and (caller.name, caller.pod) == ("a", "a-1")
    assert caller.policy.target_allowed("pypi.org", 443) is None
    assert index.caller("10.245.0.6") is None
    # The pod finished: its address may be another pod's now.
    index.on_pod("MODIFIED", pod_body("a-1", "uid-a", "10.245.0.5", phase="Succeeded"))
    assert index.caller("10.245.0.5") is None
    # Reused by session b's pod.
    index.on_session("ADDED", session_body("b", "uid-b"))
    index.on_pod("ADDED", pod_body("b-1", "uid-b", "10.245.0.5"))
    caller = index.caller("10.245.0.5")
    assert caller is not None and caller.name == "b"
    # Two live pods claiming one address identify nobody.
    index.on_pod("ADDED", pod_body("a-2", "uid-a", "10.245.0.5"))
    assert index.caller("10.245.0.5") is None
    index.on_pod("DELETED", pod_body("a-2", "uid-a", "10.245.0.5"))
    index.on_session("DELETED", session_body("b", "uid-b"))
    assert index.caller("10.245.0.5") is None


def test_a_pod_of_another_namespace_does_not_borrow_a_session() -> None:
    index = EgressIndex()
    index.on_session("ADDED", session_body("a", "uid-a"))
    body = pod_body("x", "uid-a", "10.245.0.9")
    body["metadata"]["namespace"] = "other"
    index.on_pod("ADDED", body)
    assert index.caller("10.245.0.9") is None


# --- Event rate limit --------------------------------------------------------------------


def test_refusal_events_are_rate_limited_per_host_and_session() -> None:
    now = [0.0]

    async def post(_caller: Any, _message: str) -> None:
        return None

    reporter = RefusalReporter(
        post, per_host_seconds=60, per_session=3, window_seconds=60, clock=lambda: now[0]
    )
    index = EgressIndex()
    index.on_session("ADDED", session_body("a", "uid-a"))
    index.on_pod("ADDED", pod_body("a-1", "uid-a", "10.0.0.1"))
    caller = index.caller("10.0.0.1")
    assert caller is not None
    assert reporter.should_report(caller, "x.example")
    assert not reporter.should_report(caller, "x.example")  # same host within a minute
    assert reporter.should_report(caller, "y.example")
    assert reporter.should_report(caller, "z.example")
    assert not reporter.should_report(caller, "w.example")  # 3 per session per minute
    now[0] = 61
    assert reporter.should_report(caller, "x.example")
    assert reporter.suppressed == 2
    event = refusal_event(caller, "egress to x.example:443 refused")
    assert event["involvedObject"]["name"] == "a" and event["type"] == "Warning"
    assert event["reason"] == "EgressRefused"


# --- the gateway's flags -----------------------------------------------------------------


def test_the_gateway_builds_its_egress_proxy_from_its_flags(tmp_path: Any) -> None:
    from corral.cli import build_parser
    from corral.gateway.cli import _egress_proxy
    from corral.gateway.metrics import GatewayMetrics

    hosts = tmp_path / "hosts.yaml"
    hosts.write_text("Allowed.Test: 10.0.0.1\nmulti.test: [10.0.0.2, 10.0.0.3]\n")
    parser = build_parser(["gateway"])
    base = ["gateway", "--key-file=/dev/null"]
    flags = ["--egress-port=3128", "--egress-allow=api.anthropic.com:443"]
    flags += ["--egress-hosts-file", str(hosts), "--egress-idle-seconds=42"]
    args = parser.parse_args([*base, *flags])
    proxy = _egress_proxy(args, None, GatewayMetrics())
    assert proxy.resolver.static == {
        "allowed.test": ["10.0.0.1"],
        "multi.test": ["10.0.0.2", "10.0.0.3"],
    }
    assert list(proxy.index.extra_domains) == [ep.DomainRule("api.anthropic.com", 443)]
    assert proxy.settings.idle_seconds == 42
    assert _egress_proxy(parser.parse_args(base), None, GatewayMetrics()) is None


async def test_one_sessions_slow_lookups_leave_the_others_resolving() -> None:
    """A name whose DNS never answers holds a resolver thread past the proxy's timeout: one
    session gets only a few such lookups at a time."""
    import asyncio
    import threading

    from prometheus_client import CollectorRegistry

    from corral.gateway.egress import EgressMetrics, EgressProxy, EgressSettings, Resolver
    from corral.testing.gateway import free_port

    release = threading.Event()

    class HangingResolver(Resolver):
        async def resolve(self, host: str, port: int) -> list[Any]:
            if host.startswith("slow"):
                await asyncio.get_running_loop().run_in_executor(None, release.wait, 30)
            return [ip("127.0.0.1")]

    async def no_events(_: Any) -> None:
        pass

    index = EgressIndex()
    index.on_session("ADDED", session_body("a", "uid-a", allowedDomains=["*"]))
    index.on_pod("ADDED", pod_body("a-1", "uid-a", "127.0.0.1"))
    settings = EgressSettings(connect_seconds=20, max_lookups_per_session=3)
    proxy = EgressProxy(index, EgressMetrics(CollectorRegistry()), RefusalReporter(no_events),
                        HangingResolver(), settings)  # fmt: skip
    port = free_port()
    server = await proxy.start("127.0.0.1", port)

    async def connect(host: str) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"CONNECT {host}:443 HTTP/1.1\r\n\r\n".encode())
        await writer.drain()
        try:
            return await asyncio.wait_for(reader.readline(), 5)
        finally:
            writer.close()

    try:
        hanging = [asyncio.create_task(connect(f"slow{i}.test")) for i in range(3)]
        await asyncio.sleep(0.3)
        fourth = await connect("slow9.test")
        assert fourth.startswith(b"HTTP/1.1 429"), fourth
    finally:
        release.set()
        for task in hanging:
            task.cancel()
        await asyncio.gather(*hanging, return_exceptions=True)
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.com#.example.com:443",
        "https://evil.com#@x.example.com/",
        "https://u@evil.com/",
    ],
)
def test_an_mcp_url_that_parsers_read_differently_is_refused_by_the_api_and_opens_nothing(
    url: str,
) -> None:
    """Go's parser (the admission policy) read `https://evil.com#.example.com` as a host
    ending in .example.com; Python's and Node's read evil.com."""
    from pydantic import ValidationError

    from corral.api.v1alpha1 import AgentSessionSpec

    with pytest.raises(ValidationError, match="mcpServers"):
        AgentSessionSpec.model_validate(
            {"pattern": "LongRunning", "mcpServers": [{"name": "m", "url": url}]}
        )
    # As the gateway reads one stored before the API refused such URLs:
    rules = ep.policy_from_spec(
        {"network": {"allowPublicHttps": False}, "mcpServers": [{"name": "m", "url": url}]}
    )
    assert rules.name_allowed("evil.com", 443) is not None


def test_the_guardrail_counts_the_api_s_default_volume_size() -> None:
    from corral.api.v1alpha1 import StorageSpec

    template = (Path(__file__).parents[2] / "helm/corral/templates/guardrails.yaml").read_text()
    assert f"'{StorageSpec().size}'" in template and template.count("'5Gi'") == 2
