"""Built-in objects' JSON without `metadata.managedFields`, cut out before it is parsed.

The API server sends every object with its managedFields (server-side apply's record of who
set which field). For a pod Corral makes that is about half its bytes, and parsing them was
about half the cost of decoding each of its watch events and create answers; the operator
reads none of it, and no request option leaves it out. So the bytes are cut out first.

The cut relies on two facts. The API server writes a built-in kind (a Go struct) in its
fields' order: `metadata` ends with `managedFields` and `spec` follows it (a pod, Service,
NetworkPolicy or claim always has one). And inside a JSON string every `"` is escaped, so
`,"managedFields":[` and `]},"spec":` can only be the document's own structure, never text
of a label, an annotation or a field manager's name. A custom resource is written with
sorted keys (`name` follows `managedFields`), so this is not for them: callers opt in by
kind (LEAN_KINDS). A cut that would take in a `metadata` or `name` key (another object's,
or the rest of a sorted metadata) is not made: the body is parsed whole, as is a cut the
parser refuses (see corral.kube.client).
"""

from __future__ import annotations

# Kinds written in their Go struct's field order, each with a `spec` after `metadata`.
LEAN_KINDS = frozenset({"Pod", "Service", "NetworkPolicy", "PersistentVolumeClaim"})

_FIELD = b',"managedFields":['
_AFTER = b']},"spec":'
# Keys no managedFields entry has: seen inside a cut, it is not one.
_OUTSIDE = (b'"metadata":', b'"name":')


def without_managed_fields(raw: bytes) -> bytes:
    """`raw` (one object, a watch event or a list) with each object's managedFields cut
    out; `raw` itself when it has none or a cut would cross into another object."""
    start = raw.find(_FIELD)
    if start < 0:
        return raw
    pieces: list[bytes] = []
    kept = 0
    while start >= 0:
        end = raw.find(_AFTER, start)
        if end < 0 or any(raw.find(key, start, end) >= 0 for key in _OUTSIDE):
            return raw  # not the shape described above: parsed whole
        pieces.append(raw[kept:start])
        kept = end + 1  # from the `}` that closes metadata
        start = raw.find(_FIELD, kept)
    pieces.append(raw[kept:])
    return b"".join(pieces)
