"""Pure translation of the AgentSession spec into claude-agent-sdk options for one agent."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from corral import __version__
from corral.api import runtime
from corral.api.v1alpha1 import AgentSessionSpec, AgentSpec
from corral.runner.layout import AgentPaths
from corral.runner.sdk import (
    ClaudeAgentOptions,
    McpServerConfig,
    SystemPromptCustom,
    SystemPromptPreset,
)
from corral.runner.sdk import PermissionMode as SdkPermissionMode

# Without a system prompt the SDK sends an empty one; Claude Code's own prompt is the
# sensible default for an agent that works in a workspace with tools.
# `snapshot: False`: by default the CLI records a session's prompt on its first request
# and a resumed session keeps sending that one; the spec's prompt must win after a spec
# change or a Hybrid wake, so the CLI builds it from the options every time.
CLAUDE_CODE_PROMPT: SystemPromptPreset = {
    "type": "preset",
    "preset": "claude_code",
    "snapshot": False,
}


def custom_prompt(text: str) -> SystemPromptCustom:
    return {"type": "custom", "prompt": text, "snapshot": False}


# The API's modes are a subset of the SDK's; the map fails loudly if the API grows one.
PERMISSION_MODES: dict[str, SdkPermissionMode] = {
    "default": "default",
    "acceptEdits": "acceptEdits",
    "plan": "plan",
    "bypassPermissions": "bypassPermissions",
}


def find_agent(spec: AgentSessionSpec, name: str) -> AgentSpec | None:
    return next((a for a in spec.agents or [] if a.name == name), None)


def mcp_servers(spec: AgentSessionSpec) -> dict[str, McpServerConfig]:
    servers: dict[str, McpServerConfig] = {}
    for server in spec.mcp_servers:
        if server.type == "sse":
            servers[server.name] = {"type": "sse", "url": server.url}
        else:
            servers[server.name] = {"type": "http", "url": server.url}
    return servers


# The CLI's cross-session inbox (a Unix socket under /tmp that takes user messages from
# any local process, no token needed) off: in a pod every message comes through the
# runner's API; one written there by a process in the pod started turns nobody asked for.
CLI_INBOX_SWITCH = "CLAUDE_CODE_HARBOR_KITE"
# Named on every request to the model API (the CLI's `x-client-app` header).
CLIENT_APP = f"corral/{__version__}"
# The CLI echoes each message back when it begins it, with the id it was sent with: how
# the runner tells its own message's answer from a turn the CLI began itself.
ECHO_MESSAGES: dict[str, str | None] = {"replay-user-messages": None}


def cli_env(paths: AgentPaths, extra: Mapping[str, str]) -> dict[str, str]:
    """Variables for the CLI on top of the runner's own environment."""
    return {
        "CLAUDE_CONFIG_DIR": str(paths.config_dir),
        runtime.ENV_DISABLE_TRAFFIC: "1",
        CLI_INBOX_SWITCH: "0",
        **extra,
    }


def build_options(
    spec: AgentSessionSpec,
    paths: AgentPaths,
    *,
    resume: str | None,
    env: Mapping[str, str],
    stderr: Callable[[str], None] | None = None,
) -> ClaudeAgentOptions:
    agent = find_agent(spec, paths.name)
    system_prompt = (agent.system_prompt if agent else None) or spec.system_prompt
    return ClaudeAgentOptions(
        model=(agent.model if agent else None) or spec.model or runtime.DEFAULT_MODEL,
        system_prompt=custom_prompt(system_prompt) if system_prompt else CLAUDE_CODE_PROMPT,
        max_turns=spec.max_turns,
        max_budget_usd=spec.max_budget_usd,
        allowed_tools=list(spec.allowed_tools),
        disallowed_tools=list(spec.disallowed_tools),
        permission_mode=PERMISSION_MODES[str(spec.permission_mode)],
        mcp_servers=mcp_servers(spec),
        cwd=str(paths.cwd),
        resume=resume,
        env=cli_env(paths, env),
        # Text deltas let HTTP clients see a reply as it is written.
        include_partial_messages=True,
        extra_args=dict(ECHO_MESSAGES),
        client_app=CLIENT_APP,
        stderr=stderr,
    )


# What a message can pick up from a changed spec: a CLI started with other values of
# these is restarted (resuming its session) before the next message.
RELOADABLE_OPTIONS = (
    "model",
    "system_prompt",
    "max_turns",
    "max_budget_usd",
    "allowed_tools",
    "disallowed_tools",
    "permission_mode",
    "mcp_servers",
)


def reload_key(options: ClaudeAgentOptions) -> tuple[object, ...]:
    return tuple(getattr(options, name) for name in RELOADABLE_OPTIONS)
