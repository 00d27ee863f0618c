"""Which namespaces kopf watches for `--namespace` values, and which sessions are kept.

kopf resolves globs by listing namespaces, a right the chart's cluster-wide ClusterRole
does not grant: with a glob it must watch every namespace and the operator filters.
"""

from __future__ import annotations

import pytest

from corral.controller.handlers import kopf_scope, watched


@pytest.mark.parametrize(
    ("namespaces", "scope"),
    [
        ([], (True, [])),
        (["team-a", "team-b"], (False, ["team-a", "team-b"])),
        # A glob, alone or with names: cluster-wide, filtered by `watched`.
        (["t1234-*"], (True, [])),
        (["team-a", "dev-?"], (True, [])),
    ],
)
def test_kopf_scope(namespaces: list[str], scope: tuple[bool, list[str]]) -> None:
    assert kopf_scope(namespaces) == scope


def test_watched_namespaces() -> None:
    assert watched("anything", [])
    assert watched("t1234-x", ["t1234-*"])
    assert not watched("t9999-x", ["t1234-*"])
    assert watched("team-a", ["team-a", "dev-*"])
    assert not watched("team-ab", ["team-a"])
