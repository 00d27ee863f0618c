"""The parts of claude-agent-sdk the runner uses, imported without the SDK's MCP stack.

`import claude_agent_sdk` runs the package's `__init__`, which imports every public name and
with them `mcp` (its server, client and the types of every protocol version) and
`jsonschema`: about 0.5 CPU-seconds, a third of the runner's whole start, spent on
SDK-hosted MCP servers the runner never creates (`spec.mcpServers` are remote servers the
CLI itself connects to). So, before the first SDK import, `install()` puts in place:

- the package as a module whose submodules import as usual and whose other names load the
  real `__init__` on first use (corral.runner.lazy_package): nothing that asks for them breaks;
- the query's MCP bridge as a stand-in that imports the real one (and `mcp`) only when an
  SDK MCP server is used.

A process that already imported the SDK (a test run) keeps it as it is. The runner's modules
take every SDK name from here, so the order cannot go wrong.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types
from typing import Any

from corral.runner import lazy_package
from corral.runner.early_cli import SPAWN_OFFER

PACKAGE = "claude_agent_sdk"
BRIDGE = f"{PACKAGE}._internal.sdk_mcp_bridge"


def install() -> None:
    package = lazy_package.install(PACKAGE)
    if package is None:
        return
    # `client.py` does `from . import Transport`: give it without the whole __init__.
    from claude_agent_sdk._internal.transport import Transport

    package.Transport = Transport  # type: ignore[attr-defined]
    internal = sys.modules[f"{PACKAGE}._internal"]
    bridge_spec = importlib.machinery.PathFinder.find_spec(BRIDGE, list(internal.__path__))
    if bridge_spec is not None:
        sys.modules[BRIDGE] = _bridge_stand_in(bridge_spec)


def _bridge_stand_in(real: importlib.machinery.ModuleSpec) -> types.ModuleType:
    stand_in = types.ModuleType(BRIDGE, "Loads the real SDK MCP bridge when first used.")

    def real_module() -> types.ModuleType:
        if sys.modules.get(BRIDGE) is stand_in:
            module = importlib.util.module_from_spec(real)
            sys.modules[BRIDGE] = module
            assert real.loader is not None
            real.loader.exec_module(module)
        return sys.modules[BRIDGE]

    class SdkMcpBridge:
        def __new__(cls, *args: Any, **kwargs: Any) -> Any:
            return real_module().SdkMcpBridge(*args, **kwargs)

    def other_names(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(real_module(), name)

    stand_in.SdkMcpBridge = SdkMcpBridge  # type: ignore[attr-defined]
    setattr(stand_in, "__getattr__", other_names)  # noqa: B010 (a module's PEP 562 hook)
    stand_in.__spec__ = real
    return stand_in


install()

# ruff: noqa: E402 -- the imports below must follow install().
from claude_agent_sdk._internal.sessions import project_key_for_directory
from claude_agent_sdk._internal.transport import subprocess_cli
from claude_agent_sdk._internal.transport.subprocess_cli import SubprocessCLITransport
from claude_agent_sdk._version import __version__
from claude_agent_sdk.client import ClaudeSDKClient
from claude_agent_sdk.types import (
    AssistantMessage,
    ClaudeAgentOptions,
    HookContext,
    HookInput,
    HookJSONOutput,
    HookMatcher,
    McpServerConfig,
    Message,
    PermissionMode,
    RateLimitEvent,
    ResultMessage,
    StreamEvent,
    SystemMessage,
    SystemPromptCustom,
    SystemPromptPreset,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
    UserMessage,
)


class _AnyioWithOffers:
    """The SDK transport's `anyio`, whose `open_process` first asks the offer of the task
    that is starting a CLI (corral.runner.early_cli): the one place the SDK spawns it."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    async def open_process(self, command: Any, **kwargs: Any) -> Any:
        offer = SPAWN_OFFER.get()
        if offer is None:
            return await self._real.open_process(command, **kwargs)
        return await offer.open(self._real.open_process, command, **kwargs)


def _offer_spawns() -> None:
    names = vars(subprocess_cli)
    # An SDK that spawns another way just never offers: no CLI is started early then
    # (tests/runner/test_runner_early_cli.py says so).
    if "anyio" in names and not isinstance(names["anyio"], _AnyioWithOffers):
        names["anyio"] = _AnyioWithOffers(names["anyio"])


_offer_spawns()

__all__ = [
    "AssistantMessage",
    "ClaudeAgentOptions",
    "ClaudeSDKClient",
    "HookContext",
    "HookInput",
    "HookJSONOutput",
    "HookMatcher",
    "McpServerConfig",
    "Message",
    "PermissionMode",
    "RateLimitEvent",
    "ResultMessage",
    "StreamEvent",
    "SubprocessCLITransport",
    "SystemMessage",
    "SystemPromptCustom",
    "SystemPromptPreset",
    "TextBlock",
    "ToolResultBlock",
    "ToolUseBlock",
    "UserMessage",
    "__version__",
    "install",
    "project_key_for_directory",
]
