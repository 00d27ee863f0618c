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


def test_informers_keep_named_namespaces_beside_globs() -> None:
    """The operator's and the gateway's informers filter a cluster-wide watch the same way
    as `watched`: a name given beside a glob is kept too."""
    from typing import Any

    from corral.kube.informer import Informer

    def kept(namespace: str, namespaces: list[str]) -> bool:
        client: Any = object()  # never called: only the filter is looked at
        informer = Informer(client, "Pod", "", lambda *_: None, namespaces)
        return informer._wanted({"metadata": {"namespace": namespace}})

    assert kept("team-a", ["team-a", "dev-*"]) and kept("dev-1", ["team-a", "dev-*"])
    assert not kept("team-ab", ["team-a", "dev-*"])
    assert kept("anything", [])
