"""What a session may reach through the egress proxy: pure decisions, no I/O.

A session's policy comes from its spec: `network.allowedDomains` (exact names, `*.example.com`
wildcards, `*` for every name, each with an optional `:port`), the hosts of its
`mcpServers` URLs, `allowPublicHttps` (shorthand for `*:443`), and its explicit CIDRs
(`network.egress`), which alone may open private addresses. A name must be allowed first;
then every address it resolves to is checked, and only addresses that pass are dialled
(a name that resolves to a private address is refused: DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# A pattern without a port allows the web's two ports.
DEFAULT_PORTS = frozenset({80, 443})
MAX_HOST_LENGTH = 253
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_NAME = rf"{_LABEL}(\.{_LABEL})*"
# Same shape as the CRD's pattern for spec.network.allowedDomains (v1alpha1.DOMAIN_PATTERN).
DOMAIN_RULE = re.compile(rf"(?P<host>\*|(\*\.)?{_NAME})(:(?P<port>[0-9]{{1,5}}))?")
_HOST_NAME = re.compile(_NAME)

# Denial reasons: a fixed set, used as the metric label.
NOT_ALLOWED = "not-allowed"
PRIVATE = "private"
LOOPBACK = "loopback"
LINK_LOCAL = "link-local"
CGNAT = "cgnat"
MULTICAST = "multicast"
METADATA = "metadata"
RESERVED = "reserved"
UNRESOLVED = "unresolved"

# Cloud metadata services: never reachable, whatever the spec says.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "169.254.170.2")
)
_CLASSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (LOOPBACK, ("127.0.0.0/8", "::1/128")),
    (LINK_LOCAL, ("169.254.0.0/16", "fe80::/10")),
    (CGNAT, ("100.64.0.0/10",)),
    (MULTICAST, ("224.0.0.0/4", "ff00::/8")),
    (PRIVATE, ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")),
    (
        RESERVED,
        (
            "0.0.0.0/8",
            "192.0.0.0/24",
            "192.0.2.0/24",
            "198.18.0.0/15",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "240.0.0.0/4",
            "::/128",
            "100::/64",
            "2001:db8::/32",
        ),
    ),
)
_CLASS_NETWORKS = tuple(
    (reason, tuple(ipaddress.ip_network(n) for n in networks)) for reason, networks in _CLASSES
)


@dataclass(frozen=True)
class Denial:
    reason: str  # one of the constants above (a bounded metric label)
    message: str  # for the 403 body, the log line and the Event


@dataclass(frozen=True)
class DomainRule:
    host: str  # "*", "example.com" or "*.example.com"
    port: int | None  # None: DEFAULT_PORTS

    def matches(self, host: str, port: int) -> bool:
        if port not in ({self.port} if self.port is not None else DEFAULT_PORTS):
            return False
        if self.host == "*":
            return True
        if self.host.startswith("*."):
            return host.endswith(self.host[1:])  # one or more labels before the suffix
        return host == self.host


def parse_domain_rule(text: str) -> DomainRule:
    match = DOMAIN_RULE.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(
            f"{text!r} is not a domain such as example.com, *.example.com or example.com:8443"
        )
    port = int(match["port"]) if match["port"] else None
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"{text!r}: port must be 1-65535")
    return DomainRule(match["host"], port)


@dataclass(frozen=True)
class CidrRule:
    network: IPNetwork
    ports: frozenset[int]  # empty: every port

    def allows(self, address: IPAddress, port: int) -> bool:
        return (
            address.version == self.network.version
            and address in self.network
            and (not self.ports or port in self.ports)
        )


def unwrap(address: IPAddress) -> IPAddress:
    """The IPv4 address inside an IPv4-mapped, NAT64 or 6to4 IPv6 address (else itself)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in ipaddress.ip_network("64:ff9b::/96"):
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if address.sixtofour is not None:
            return address.sixtofour
    return address


def classify(address: IPAddress) -> str | None:
    """Why `address` is not a public address (a reason constant), or None when it is."""
    address = unwrap(address)
    if address in METADATA_ADDRESSES:
        return METADATA
    for reason, networks in _CLASS_NETWORKS:
        if any(address.version == n.version and address in n for n in networks):
            return reason
    if not address.is_global:
        return RESERVED
    return None


def parse_host(text: str) -> str | IPAddress:
    """A request's host: an IP address, or a lower-case DNS name (ValueError otherwise)."""
    host = text.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if "%" in host:
        # A zone (fd00:ec2::254%1) makes an address compare unequal to itself without one
        # (past the metadata check), and its text can be anything: never taken.
        raise ValueError(f"invalid host {text[:80]!r}: scoped IPv6 addresses are not allowed")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    host = host.removesuffix(".")
    if not host or len(host) > MAX_HOST_LENGTH or not _HOST_NAME.fullmatch(host):
        raise ValueError(f"invalid host name {text[:80]!r}")
    return host


@dataclass(frozen=True)
class EgressPolicy:
    domains: tuple[DomainRule, ...] = ()
    cidrs: tuple[CidrRule, ...] = ()

    def name_allowed(self, host: str, port: int) -> Denial | None:
        if any(rule.matches(host, port) for rule in self.domains):
            return None
        return Denial(
            NOT_ALLOWED,
            f"{host}:{port} is not in the session's spec.network.allowedDomains",
        )

    def in_cidrs(self, address: IPAddress, port: int) -> bool:
        """Whether a spec CIDR allows `address`, judged by the IPv4 address inside an
        IPv4-mapped, NAT64 or 6to4 one (as classify judges it): an IPv6 CIDR such as ::/1
        must not open ::ffff:169.254.170.23 when 169.254.170.23 itself stays blocked."""
        plain = unwrap(address)
        return any(rule.allows(plain, port) for rule in self.cidrs)

    def address_allowed(self, address: IPAddress, port: int) -> Denial | None:
        reason = classify(address)
        if reason == METADATA:
            return Denial(METADATA, f"{address} is a cloud metadata address")
        if self.in_cidrs(address, port):
            return None
        if reason is not None:
            return Denial(
                reason,
                f"{address} is a {reason} address, not in the session's spec.network.egress CIDRs",
            )
        return None

    def target_allowed(self, host: str | IPAddress, port: int) -> Denial | None:
        """The check before any resolution: a name must be allowed; an address literal must
        be inside the spec's CIDRs, or public and allowed by a `*` rule or its exact text."""
        if isinstance(host, str):
            return self.name_allowed(host, port)
        if self.in_cidrs(host, port) and classify(host) != METADATA:
            return None
        refused = self.address_allowed(host, port)
        if refused is not None:
            return refused
        return self.name_allowed(str(host), port)

    def usable_addresses(
        self, port: int, addresses: Sequence[IPAddress]
    ) -> tuple[list[IPAddress], Denial | None]:
        """The resolved addresses that may be dialled, in order; the first refusal when none."""
        usable: list[IPAddress] = []
        first: Denial | None = None
        for address in addresses:
            refused = self.address_allowed(address, port)
            if refused is None:
                usable.append(address)
            elif first is None:
                first = refused
        if usable:
            return usable, None
        return [], first or Denial(UNRESOLVED, "the name resolved to no address")


def _url_rule(url: str) -> DomainRule | None:
    if "#" in url or "@" in url:
        return None  # read differently by other parsers (the API refuses them since)
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        host = parse_host(parts.hostname or "")
    except ValueError:
        return None
    return DomainRule(str(host), port)


def _cidr_rules(egress: Iterable[Any], always_blocked: Iterable[IPNetwork]) -> list[CidrRule]:
    blocked = list(always_blocked)
    rules = []
    for entry in egress:
        if not isinstance(entry, dict):
            continue
        try:
            network = ipaddress.ip_network(str(entry.get("cidr", "")), strict=False)
        except ValueError:
            continue
        if any(network.version == b.version and network.overlaps(b) for b in blocked):
            continue  # the API server already refuses link-local; never open metadata
        ports = frozenset(
            int(p["port"])
            for p in entry.get("ports") or ()
            if isinstance(p, dict) and p.get("protocol", "TCP") == "TCP" and p.get("port")
        )
        rules.append(CidrRule(network, ports))
    return rules


ALWAYS_BLOCKED = tuple(ipaddress.ip_network(n) for n in ("169.254.0.0/16", "fe80::/10"))


def policy_from_spec(spec: Any, extra_domains: Sequence[DomainRule] = ()) -> EgressPolicy:
    """The egress policy of a session's spec as the API server stored it (camelCase JSON).

    Bad entries are skipped (the API server validated the spec; this is a second line)."""
    spec = spec if isinstance(spec, dict) else {}
    network = spec.get("network") if isinstance(spec.get("network"), dict) else {}
    domains: list[DomainRule] = list(extra_domains)
    for text in network.get("allowedDomains") or ():
        try:
            domains.append(parse_domain_rule(str(text)))
        except ValueError:
            continue
    if network.get("allowPublicHttps", True):
        domains.append(DomainRule("*", 443))
    for server in spec.get("mcpServers") or ():
        rule = _url_rule(str(server.get("url", ""))) if isinstance(server, dict) else None
        if rule is not None:
            domains.append(rule)
    cidrs = _cidr_rules(network.get("egress") or (), ALWAYS_BLOCKED)
    return EgressPolicy(tuple(dict.fromkeys(domains)), tuple(cidrs))
