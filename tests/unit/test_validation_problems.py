"""The one way a validation error names the fields at fault (operator and runner alike)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError, field_validator

from corral.api.validation import field_path, problems


class Agent(BaseModel):
    name: str


class Spec(BaseModel):
    agents: list[Agent]
    turns: int


def _error(body: object) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        Spec.model_validate(body)
    return caught.value


def test_paths_read_like_the_manifest() -> None:
    assert field_path(("spec", "agents", 0, "name")) == "spec.agents[0].name"
    assert field_path(("turns",)) == "turns"
    assert field_path(()) == ""


def test_each_field_named_with_its_reason() -> None:
    text = problems(_error({"agents": [{"name": 3}], "turns": "x"}), root="body")
    assert text.startswith("agents[0].name: Input should be a valid string; turns: ")


def test_the_root_named_when_no_field_is() -> None:
    assert problems(_error([1]), root="file").startswith("file: ")


def test_at_most_limit_problems() -> None:
    text = problems(_error({"agents": [{}, {}, {}]}), root="body", limit=2)
    assert text.count(": Field required") == 2


class Checked(BaseModel):
    timeout: str

    @field_validator("timeout")
    @classmethod
    def _a_duration(cls, value: str) -> str:
        raise ValueError(f"{value!r} is not a duration, e.g. 15m")


def test_our_own_checks_read_without_pydantics_prefix() -> None:
    with pytest.raises(ValidationError) as caught:
        Checked.model_validate({"timeout": "soon"})
    assert problems(caught.value, root="body") == "timeout: 'soon' is not a duration, e.g. 15m"
