"""Pure parts of the runner: session files, options, events, termination log, layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from claude_agent_sdk import (
    AssistantMessage,
    ResultMessage,
    StreamEvent,
    SystemMessage,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
    UserMessage,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.api import runtime
from corral.api.v1alpha1 import AgentSessionSpec, RunResult
from corral.runner import events, termination
from corral.runner.conversation import relay, speaking_order
from corral.runner.layout import MAIN_AGENT, agent_paths
from corral.runner.options import CLAUDE_CODE_PROMPT, build_options, custom_prompt
from corral.runner.saved_session import SavedSession, load_saved, save
from corral.runner.session_file import SessionFileError, load_session

SHARED = {
    "pattern": "Shared",
    "model": "claude-x",
    "systemPrompt": "be brief",
    "agents": [
        {"name": "alice", "systemPrompt": "you are alice", "model": "claude-a"},
        {"name": "bob"},
    ],
}


def test_session_file_reads_a_yaml_manifest(tmp_path: Path) -> None:
    manifest = {
        "apiVersion": "corral.dev/v1alpha1",
        "kind": "AgentSession",
        "metadata": {"name": "demo", "namespace": "team"},
        "spec": {"pattern": "Ephemeral", "prompt": "do it"},
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(manifest))
    loaded = load_session(path)
    assert (loaded.name, loaded.namespace, loaded.spec.prompt) == ("demo", "team", "do it")


def test_session_file_reads_a_bare_spec_json(tmp_path: Path) -> None:
    path = tmp_path / "session.json"
    path.write_text(json.dumps({"pattern": "LongRunning", "maxTurns": 3}))
    loaded = load_session(path)
    assert loaded.name is None and loaded.spec.max_turns == 3


@pytest.mark.parametrize(
    "content",
    ["[1, 2]", "{pattern: Nope}", "{not yaml: [", '{"pattern": "Ephemeral"}'],
)
def test_session_file_rejects_bad_content(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SessionFileError):
        load_session(path)


def test_missing_session_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SessionFileError, match="cannot read"):
        load_session(tmp_path / "absent.json")


def test_layout_follows_the_runtime_contract(tmp_path: Path) -> None:
    spec = AgentSessionSpec.model_validate({"pattern": "Hybrid"})
    (paths,) = agent_paths(spec, tmp_path / "ws", tmp_path / "state")
    assert paths.name == MAIN_AGENT and paths.cwd == tmp_path / "ws"
    expected = Path(runtime.CLAUDE_CONFIG_DIR).relative_to(runtime.STATE_DIR)
    assert paths.config_dir == tmp_path / "state" / expected
    shared = agent_paths(AgentSessionSpec.model_validate(SHARED), tmp_path / "ws", tmp_path)
    assert [p.cwd.name for p in shared] == ["alice", "bob"]
    assert len({p.config_dir for p in shared}) == 2


def test_options_map_the_spec(tmp_path: Path) -> None:
    spec = AgentSessionSpec.model_validate(
        {
            "pattern": "LongRunning",
            "model": "claude-m",
            "maxTurns": 4,
            "maxBudgetUsd": 1.5,
            "permissionMode": "acceptEdits",
            "allowedTools": ["Bash"],
            "disallowedTools": ["WebFetch"],
            "mcpServers": [
                {"name": "docs", "url": "https://mcp.example/mcp"},
                {"name": "old", "type": "sse", "url": "https://mcp.example/sse"},
            ],
        }
    )
    (paths,) = agent_paths(spec, tmp_path / "ws", tmp_path / "st")
    options = build_options(spec, paths, resume="abc", env={"X": "1"})
    assert (options.model, options.max_turns, options.max_budget_usd) == ("claude-m", 4, 1.5)
    assert options.permission_mode == "acceptEdits" and options.resume == "abc"
    assert options.allowed_tools == ["Bash"] and options.disallowed_tools == ["WebFetch"]
    assert options.mcp_servers == {
        "docs": {"type": "http", "url": "https://mcp.example/mcp"},
        "old": {"type": "sse", "url": "https://mcp.example/sse"},
    }
    assert options.cwd == str(tmp_path / "ws")
    assert options.env["CLAUDE_CONFIG_DIR"] == str(paths.config_dir)
    assert options.env[runtime.ENV_DISABLE_TRAFFIC] == "1" and options.env["X"] == "1"
    assert options.system_prompt == CLAUDE_CODE_PROMPT


def test_shared_agents_get_their_own_prompt_and_model(tmp_path: Path) -> None:
    spec = AgentSessionSpec.model_validate(SHARED)
    alice, bob = agent_paths(spec, tmp_path, tmp_path)
    a = build_options(spec, alice, resume=None, env={})
    b = build_options(spec, bob, resume=None, env={})
    assert (a.model, a.system_prompt) == ("claude-a", custom_prompt("you are alice"))
    assert (b.model, b.system_prompt) == ("claude-x", custom_prompt("be brief"))


def test_events_translate_sdk_messages() -> None:
    assistant = AssistantMessage(
        content=[TextBlock("hi"), ToolUseBlock("t1", "Bash", {"command": "ls"})], model="m"
    )
    (event,) = events.to_events(assistant)
    assert event["type"] == "assistant"
    assert event["content"][1] == {
        "type": "tool_use",
        "id": "t1",
        "name": "Bash",
        "input": {"command": "ls"},
    }
    assert events.tool_names(assistant) == ["Bash"]
    user = UserMessage(content=[ToolResultBlock("t1", "x" * 10_000, False)])
    (result,) = events.to_events(user)
    assert result["type"] == "tool_result"
    assert len(result["content"]) == events.TOOL_RESULT_PREVIEW_CHARS
    retry = SystemMessage("api_retry", {"error_status": 529, "attempt": 1, "error": "overloaded"})
    assert events.to_events(retry)[0] | {} == {
        "type": "api_retry",
        "status": 529,
        "error": "overloaded",
        "attempt": 1,
        "max_retries": None,
        "retry_delay_ms": None,
    }
    assert events.to_events(SystemMessage("status", {})) == []
    delta = StreamEvent(
        "u", "s", {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "h"}}
    )
    assert events.to_events(delta) == [{"type": "text_delta", "text": "h"}]
    done = ResultMessage(
        "error_max_turns",
        5,
        4,
        True,
        2,
        "sid",
        total_cost_usd=0.5,
        usage={"input_tokens": 3, "output_tokens": 4, "other": 9},
    )
    (final,) = events.to_events(done)
    assert final["type"] == "result" and final["subtype"] == "error_max_turns"
    assert final["usage"] == {
        "input_tokens": 3,
        "output_tokens": 4,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
    }


def _outcome(text: str | None) -> RunResult:
    return termination.run_result(
        {
            "subtype": "success",
            "result": text,
            "num_turns": 3,
            "total_cost_usd": 0.25,
            "usage": {"input_tokens": 10, "output_tokens": 5},
            "session_id": "s" * 36,
        }
    )


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=6000))
def test_termination_log_is_always_bounded_valid_json(text: str) -> None:
    data = termination.encode_bounded(_outcome(text))
    assert len(data) <= runtime.TERMINATION_MESSAGE_MAX_BYTES
    parsed = RunResult.model_validate(json.loads(data))
    assert parsed.num_turns == 3 and parsed.session_id == "s" * 36
    kept = parsed.text or ""
    assert text.startswith(kept.removesuffix(termination.ELLIPSIS))


def test_termination_log_keeps_a_short_text_whole() -> None:
    data = termination.encode_bounded(_outcome("all done"))
    assert json.loads(data)["text"] == "all done"
    assert json.loads(data)["numTurns"] == 3  # camelCase, like RunResult in status


def test_termination_log_cuts_multibyte_and_escaped_text() -> None:
    for text in ("€" * 5000, '"\\\n' * 3000, "\U0001f600" * 2000):
        data = termination.encode_bounded(_outcome(text))
        assert len(data) <= runtime.TERMINATION_MESSAGE_MAX_BYTES
        assert len(data) > runtime.TERMINATION_MESSAGE_MAX_BYTES - 16  # cut, not emptied
        assert json.loads(data)["text"].endswith(termination.ELLIPSIS)


def test_run_result_without_a_result_is_a_runner_error() -> None:
    outcome = termination.run_result(None, "CLI did not start")
    assert outcome.subtype == "error_runner" and outcome.text == "CLI did not start"


def test_saved_session_survives_round_trip_and_damage(tmp_path: Path) -> None:
    path = tmp_path / "runner" / "main.json"
    assert load_saved(path) == SavedSession()
    saved = SavedSession(session_id="0b9f-aa", num_turns=4, messages=2, total_cost_usd=0.1)
    save(path, saved)
    assert load_saved(path) == saved
    path.write_text("{torn")
    assert load_saved(path) == SavedSession()


def test_speaking_order() -> None:
    names = ["a", "b", "c"]
    assert speaking_order(names, None, None) == names
    assert speaking_order(names, "b", None) == ["b", "a", "c"]
    assert speaking_order(names, None, ["c", "a"]) == ["c", "a"]
    with pytest.raises(KeyError):
        speaking_order(names, "z", None)
    assert relay("a", "hi").endswith("hi") and "agent a" in relay("a", "hi")


def test_json_logs_scrub_the_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    from corral.runner.jsonlog import REDACTED, JsonFormatter, log_event

    monkeypatch.setenv(runtime.ENV_API_KEY, "sk-ant-very-secret-1234")
    records: list[str] = []
    formatter = JsonFormatter("sess", "ns")

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(formatter.format(record))

    logger = logging.getLogger("corral.test.scrub")
    logger.addHandler(Capture())
    logger.propagate = False
    logger.setLevel(logging.INFO)
    log_event(logger, "key is sk-ant-very-secret-1234", header="x-api-key: sk-ant-very-secret-1234")
    line = json.loads(records[0])
    assert "sk-ant-very-secret-1234" not in records[0]
    assert line["msg"] == f"key is {REDACTED}" and line["session"] == "sess"
    assert line["namespace"] == "ns" and line["level"] == "info"


def test_an_ephemeral_result_out_of_bounds_is_clamped_so_the_operator_takes_it() -> None:
    """The operator refuses a result it could not write to status (it would lose it)."""
    from corral.api.v1alpha1 import MAX_COST_USD, MAX_TOKENS, MAX_TURNS

    sdk_result = {
        "subtype": "success",
        "result": "done",
        "num_turns": 2**70,
        "total_cost_usd": float("inf"),
        "usage": {"input_tokens": 10**20, "output_tokens": -5},
    }
    encoded = termination.encode_bounded(termination.run_result(sdk_result))
    parsed = RunResult.model_validate_json(encoded)  # as the operator's parse_result does
    assert parsed.text == "done"
    assert parsed.num_turns == MAX_TURNS and parsed.total_cost_usd == MAX_COST_USD
    assert (parsed.usage.input_tokens, parsed.usage.output_tokens) == (MAX_TOKENS, 0)
