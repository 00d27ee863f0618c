"""Which events heard during a reconcile are its own writes' echoes (controller.echoes)."""

from __future__ import annotations

from corral.controller.echoes import Echoes, object_version

KEY = ("team-a", "demo")
OTHER = ("team-a", "other")


def body(name: str, version: str) -> dict[str, object]:
    return {"metadata": {"name": name, "resourceVersion": version}}


def test_only_a_reconcile_running_holds_events() -> None:
    echoes = Echoes()
    assert not echoes.hold(KEY, ("Pod", "p", "5"))
    echoes.begin(KEY)
    assert echoes.hold(KEY, ("Pod", "p", "5"))
    assert not echoes.hold(OTHER, ("Pod", "q", "6"))
    assert echoes.end(KEY, planned=True)  # heard, never written: news
    assert not echoes.hold(KEY, ("Pod", "p", "7"))  # ended: no longer held


def test_an_event_at_the_version_a_write_answered_is_an_echo() -> None:
    echoes = Echoes()
    echoes.begin(KEY)
    echoes.hold(KEY, object_version("Service", body("s", "11")))
    echoes.written(KEY, object_version("Service", body("s", "11")))
    echoes.written(KEY, object_version("Pod", body("p", "12")))  # an answer whose echo comes later
    assert not echoes.end(KEY, planned=True)


def test_another_version_kind_or_name_is_news() -> None:
    for heard in (("Service", "s", "12"), ("NetworkPolicy", "s", "11"), ("Service", "t", "11")):
        echoes = Echoes()
        echoes.begin(KEY)
        echoes.written(KEY, object_version("Service", body("s", "11")))
        echoes.hold(KEY, heard)
        assert echoes.end(KEY, planned=True), heard


def test_an_event_without_a_version_is_news() -> None:
    echoes = Echoes()
    echoes.begin(KEY)
    echoes.written(KEY, object_version("Service", {"metadata": {"name": "s"}}))
    echoes.hold(KEY, object_version("Service", {"metadata": {"name": "s"}}))
    assert echoes.end(KEY, planned=True)


def test_a_reconcile_without_a_plan_trusts_no_echo() -> None:
    """Failed or cancelled: what it heard queues the session again, whatever it wrote."""
    echoes = Echoes()
    echoes.begin(KEY)
    echoes.written(KEY, object_version("Service", body("s", "11")))
    echoes.hold(KEY, ("Service", "s", "11"))
    assert echoes.end(KEY, planned=False)
    echoes.begin(KEY)
    assert not echoes.end(KEY, planned=False)  # nothing heard: nothing to queue


def test_writes_outside_a_reconcile_are_not_kept() -> None:
    echoes = Echoes()
    echoes.written(KEY, object_version("Service", body("s", "11")))
    echoes.begin(KEY)
    echoes.hold(KEY, ("Service", "s", "11"))
    assert echoes.end(KEY, planned=True)
    assert not echoes._heard and not echoes._written  # nothing left per session
