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


def test_kopf_keeps_no_diff_base_for_event_handlers() -> None:
    import kopf

    from corral.controller.handlers import NoDiffBase, configure

    settings = kopf.OperatorSettings()
    configure(settings=settings)
    storage = settings.persistence.diffbase_storage
    assert isinstance(storage, NoDiffBase)
    body = kopf.Body({"metadata": {"name": "s", "annotations": {"a": "b"}}, "spec": {"x": 1}})
    assert storage.build(body=body) == {}
    assert storage.fetch(body=body) is None


def test_session_events_run_on_the_event_loop() -> None:
    """kopf runs plain functions in its thread pool; the handler must be a coroutine."""
    import inspect

    from corral.controller.handlers import session_event

    assert inspect.iscoroutinefunction(session_event)
