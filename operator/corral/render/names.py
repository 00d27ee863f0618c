"""Names and label values of a session's children, derived from the session's own name.

A session name is a DNS subdomain (up to 253 characters, dots allowed); children need
DNS-1035 labels (Services: at most 63 characters, a letter first, no dots) and label values
(at most 63). Whenever a name has to be cut or cleaned, a hash of the original is appended.

Collision-free: a derived name is either the session's name unchanged or ends in
`-<8 hex digits>` (the hash). A session name that itself ends that way is hashed too, so
no session can pick a name that equals another session's hashed one ("web-app-3bbc5f3d"
against "web.app"); two hashed names then differ unless SHA-256 prefixes collide.

Upgrades: the names of every session whose name was kept before are still kept, and hashed
names are computed as before, except for session names that end in `-<8 hex digits>`
(`legacy_dns_label`/`legacy_label_value` give their old names; see corral.render.meta).
"""

from __future__ import annotations

import functools
import hashlib
import re

MAX_LABEL = 63
HASH_LENGTH = 8
# RFC 1035 label, as Kubernetes checks Service names.
DNS_1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
# What a hashed name ends with: a kept name must not, or it could equal a hashed one.
HASHED_TAIL = re.compile(rf"-[0-9a-f]{{{HASH_LENGTH}}}")
_NOT_DNS = re.compile(r"[^a-z0-9-]")
_NOT_LABEL_VALUE = re.compile(r"[^-A-Za-z0-9_.]")
# One reconcile asks for the same few names a dozen times (every child's name, labels and
# selectors); the caches hold them for the session at hand, not for every session.
_RECENT_NAMES = 64


def short_hash(*parts: str, length: int = HASH_LENGTH) -> str:
    """A stable hex digest of `parts` (NUL-separated, so ("ab", "c") != ("a", "bc"))."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:length]


def _looks_hashed(name: str) -> bool:
    return HASHED_TAIL.search(name[-HASH_LENGTH - 1 :]) is not None


@functools.lru_cache(maxsize=_RECENT_NAMES)
def dns_label(name: str, suffix: str = "") -> str:
    """`name` + `suffix` as an RFC 1035 label of at most 63 characters, distinct per `name`.

    `suffix` must be empty or start with "-" and end with a letter or digit.
    """
    if _looks_hashed(name):
        return _hashed_dns_label(name, suffix)
    return legacy_dns_label(name, suffix)


@functools.lru_cache(maxsize=_RECENT_NAMES)
def legacy_dns_label(name: str, suffix: str = "") -> str:
    """The name before collisions were ruled out: kept whenever valid, even when it looks
    hashed. Only for children that already exist under it."""
    room = MAX_LABEL - len(suffix)
    if len(name) <= room and DNS_1035_LABEL.fullmatch(name + suffix):
        return name + suffix
    return _hashed_dns_label(name, suffix)


def _hashed_dns_label(name: str, suffix: str) -> str:
    room = MAX_LABEL - len(suffix)
    cleaned = _NOT_DNS.sub("-", name.lower())
    if not cleaned[:1].isalpha() or not cleaned[:1].isascii():
        cleaned = "s" + cleaned  # a Service name must start with a letter
    head = cleaned[: room - HASH_LENGTH - 1].rstrip("-")
    return f"{head}-{short_hash(name)}{suffix}"


@functools.lru_cache(maxsize=_RECENT_NAMES)
def label_value(name: str) -> str:
    """`name` as a label value (at most 63 characters), distinct per session name.

    Only names over 63 characters are hashed (to exactly 63: 54 + "-" + hash), so a kept
    name could only be mistaken for a hashed one when it is 63 characters ending in a hash.
    """
    if len(name) == MAX_LABEL and _looks_hashed(name):
        return _hashed_label_value(name)
    return legacy_label_value(name)


@functools.lru_cache(maxsize=_RECENT_NAMES)
def legacy_label_value(name: str) -> str:
    """The label value before collisions were ruled out (see legacy_dns_label)."""
    if len(name) <= MAX_LABEL and LABEL_VALUE.fullmatch(name):
        return name
    return _hashed_label_value(name)


def _hashed_label_value(name: str) -> str:
    head = _NOT_LABEL_VALUE.sub("-", name)[: MAX_LABEL - HASH_LENGTH - 1]
    head = head.lstrip("-_.")
    return f"{head}-{short_hash(name)}" if head else short_hash(name)
