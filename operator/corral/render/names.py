"""Names and label values of a session's children, derived from the session's own name.

A session name is a DNS subdomain (up to 253 characters, dots allowed); children need
DNS-1035 labels (Services: at most 63 characters, a letter first, no dots) and label values
(at most 63). Whenever a name has to be cut or cleaned, a hash of the original is appended,
so two sessions never map to one child name.
"""

from __future__ import annotations

import hashlib
import re

MAX_LABEL = 63
HASH_LENGTH = 8
# RFC 1035 label, as Kubernetes checks Service names.
DNS_1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_NOT_DNS = re.compile(r"[^a-z0-9-]")
_NOT_LABEL_VALUE = re.compile(r"[^-A-Za-z0-9_.]")


def short_hash(*parts: str, length: int = HASH_LENGTH) -> str:
    """A stable hex digest of `parts` (NUL-separated, so ("ab", "c") != ("a", "bc"))."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:length]


def dns_label(name: str, suffix: str = "") -> str:
    """`name` + `suffix` as an RFC 1035 label of at most 63 characters.

    `suffix` must be empty or start with "-" and end with a letter or digit.
    """
    room = MAX_LABEL - len(suffix)
    if len(name) <= room and DNS_1035_LABEL.fullmatch(name + suffix):
        return name + suffix
    cleaned = _NOT_DNS.sub("-", name.lower())
    if not cleaned[:1].isalpha() or not cleaned[:1].isascii():
        cleaned = "s" + cleaned  # a Service name must start with a letter
    head = cleaned[: room - HASH_LENGTH - 1].rstrip("-")
    return f"{head}-{short_hash(name)}{suffix}"


def label_value(name: str) -> str:
    """`name` as a label value (at most 63 characters)."""
    if len(name) <= MAX_LABEL and LABEL_VALUE.fullmatch(name):
        return name
    head = _NOT_LABEL_VALUE.sub("-", name)[: MAX_LABEL - HASH_LENGTH - 1]
    head = head.lstrip("-_.")
    return f"{head}-{short_hash(name)}" if head else short_hash(name)
