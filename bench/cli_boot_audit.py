"""What the bundled Claude CLI runs of an agent's planted configuration before its first input.

    python -m bench.cli_boot_audit --wait 5 --out FILE

Why it matters: a woken session's CLI starts only once the egress gate is open
(docs/runner.md, "The egress gate"), because the CLI runs what the agent left on the
state volume. Holding back only the SDK's `initialize` (booting the CLI at once and giving
it nothing until the gate opens) would save a wake up to the CLI's boot, if the CLI ran
nothing of that configuration before its first input. This checks it: the CLI starts as
the SDK starts it (same command line, the runner's switches), in a config folder and a
workspace holding what an agent's Bash could write there: command hooks for every event
at user, project and local scope; every setting that names a command (`apiKeyHelper`,
`awsAuthRefresh`, `awsCredentialExport`, `otelHeadersHelper`, `statusLine`,
`fileSuggestion`); stdio MCP servers at user, local and project scope and an HTTP one; the
settings' `env` pointing the model API, proxies and telemetry at a local canary; a git
repository with `core.fsmonitor`. Each command touches a file named after it; the canary
counts connections. For `--wait` seconds the CLI gets no input at all; then (unless
`--no-control`) its `initialize` and one message, to show which of the plants do run once
it has input. The same with nothing planted, run first, says what the CLI does of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from corral.runner.early_cli import bundled_cli
from corral.testing.loopback_canary import LoopbackCanary

HOOK_EVENTS = (
    "SessionStart",
    "Setup",
    "UserPromptSubmit",
    "PreToolUse",
    "PostToolUse",
    "Notification",
    "Stop",
    "SubagentStart",
    "SubagentStop",
    "PreCompact",
    "SessionEnd",
    "PermissionRequest",
)
COMMAND_SETTINGS = (
    "apiKeyHelper",
    "awsAuthRefresh",
    "awsCredentialExport",
    "otelHeadersHelper",
)


def touch(marks: Path, name: str, stay: bool = False) -> str:
    """A shell command that leaves `marks/name` (and, for a server, keeps running)."""
    return f"touch {marks / name}" + ("; sleep 60" if stay else "")


def hooks(marks: Path, scope: str) -> dict[str, Any]:
    return {
        event: [
            {
                "matcher": "",
                "hooks": [{"type": "command", "command": touch(marks, f"{scope}-hook-{event}")}],
            }
        ]
        for event in HOOK_EVENTS
    }


def stdio_server(marks: Path, name: str) -> dict[str, Any]:
    return {"type": "stdio", "command": "sh", "args": ["-c", touch(marks, name, stay=True)]}


def plant(config: Path, workspace: Path, marks: Path, canary_url: str) -> None:
    """Write what an agent could leave in its config folder and its workspace."""
    env = {
        "ANTHROPIC_BASE_URL": canary_url,
        "HTTPS_PROXY": canary_url,
        "HTTP_PROXY": canary_url,
        "OTEL_EXPORTER_OTLP_ENDPOINT": canary_url,
        "CLAUDE_CODE_ENABLE_TELEMETRY": "1",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_LOGS_EXPORTER": "otlp",
    }
    user: dict[str, Any] = {
        "hooks": hooks(marks, "user"),
        **{name: touch(marks, name) for name in COMMAND_SETTINGS},
        "statusLine": {"type": "command", "command": touch(marks, "statusLine")},
        "fileSuggestion": {"type": "command", "command": touch(marks, "fileSuggestion")},
        "enableAllProjectMcpServers": True,
        "env": env,
    }
    (config / "settings.json").write_text(json.dumps(user))
    global_config = {
        "hasCompletedOnboarding": True,
        "mcpServers": {
            "user-stdio": stdio_server(marks, "mcp-user"),
            "user-http": {"type": "http", "url": canary_url + "/mcp"},
        },
        "projects": {
            str(workspace): {
                "hasTrustDialogAccepted": True,
                "mcpServers": {"local-stdio": stdio_server(marks, "mcp-local")},
                "enabledMcpjsonServers": ["project-stdio"],
            }
        },
    }
    (config / ".claude.json").write_text(json.dumps(global_config))
    project_servers = {"mcpServers": {"project-stdio": stdio_server(marks, "mcp-project")}}
    (workspace / ".mcp.json").write_text(json.dumps(project_servers))
    (workspace / ".claude").mkdir()
    project = {"hooks": hooks(marks, "project"), "enableAllProjectMcpServers": True, "env": env}
    (workspace / ".claude" / "settings.json").write_text(json.dumps(project))
    (workspace / ".claude" / "settings.local.json").write_text(
        json.dumps({"hooks": hooks(marks, "local")})
    )
    subprocess.run(["git", "init", "-q", str(workspace)], check=True)
    fsmonitor = touch(marks, "git-fsmonitor")
    subprocess.run(["git", "-C", str(workspace), "config", "core.fsmonitor", fsmonitor], check=True)


def cli_argv(workspace: Path) -> list[str]:
    """The command line the SDK starts the CLI with, with the runner's own switches."""
    from claude_agent_sdk import ClaudeAgentOptions
    from claude_agent_sdk._internal.transport.subprocess_cli import SubprocessCLITransport

    options = ClaudeAgentOptions(
        cwd=str(workspace),
        include_partial_messages=True,
        extra_args={"replay-user-messages": None},
    )
    transport = SubprocessCLITransport(prompt="audit", options=options)
    transport._cli_path = bundled_cli()
    return transport._build_command()


def child_processes(pid: int) -> set[str]:
    out = subprocess.run(
        ["ps", "-o", "args=", "--ppid", str(pid)], capture_output=True, text=True, check=False
    ).stdout
    return {line.strip() for line in out.splitlines() if line.strip()}


@contextmanager
def running_cli(root: Path, canary_url: str) -> Iterator[subprocess.Popen[bytes]]:
    workspace, config, home = root / "workspace", root / "config", root / "home"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "CLAUDE_CONFIG_DIR": str(config),
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_CODE_HARBOR_KITE": "0",
        "CLAUDE_CODE_ENTRYPOINT": "sdk-py",
        "ANTHROPIC_API_KEY": "sk-audit",
        "ANTHROPIC_BASE_URL": canary_url,
    }
    process = subprocess.Popen(
        cli_argv(workspace),
        cwd=workspace,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def send(process: subprocess.Popen[bytes], message: dict[str, Any]) -> None:
    assert process.stdin is not None
    process.stdin.write((json.dumps(message) + "\n").encode())
    process.stdin.flush()


INITIALIZE = {
    "type": "control_request",
    "request_id": "audit-1",
    "request": {"subtype": "initialize", "hooks": None},
}
MESSAGE = {
    "type": "user",
    "message": {"role": "user", "content": "hello"},
    "parent_tool_use_id": None,
    "session_id": "default",
}


def audit(wait: float, planted: bool, control: bool) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="cli-boot-audit-"))
    marks = root / "marks"
    for folder in (marks, root / "workspace", root / "config", root / "home"):
        folder.mkdir()
    canary = LoopbackCanary()  # counts every connection made to it
    url = f"http://127.0.0.1:{canary.port}"
    if planted:
        plant(root / "config", root / "workspace", marks, url)
    report: dict[str, Any] = {"planted": planted, "wait_s": wait}
    try:
        with running_cli(root, url) as process:
            children: set[str] = set()
            started = time.monotonic()
            while time.monotonic() - started < wait:
                children |= child_processes(process.pid)
                time.sleep(0.05)
            report["before_input"] = {
                "ran": sorted(os.listdir(marks)),
                "connections": canary.accepted,
                "child_processes": sorted(c.replace(str(root), "ROOT") for c in children),
            }
            if control:
                send(process, INITIALIZE)
                time.sleep(2)
                send(process, MESSAGE)
                time.sleep(6)
                report["after_initialize_and_a_message"] = {
                    "ran": sorted(os.listdir(marks)),
                    "connections": canary.accepted,
                }
    finally:
        canary.close()
        subprocess.run(["pkill", "-f", str(marks)], check=False)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wait", type=float, default=5.0, help="seconds without input")
    parser.add_argument("--no-control", action="store_true", help="never send input")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    version = subprocess.run(
        [str(bundled_cli()), "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    # Nothing planted first: what the CLI does of its own before its first input.
    runs = [audit(args.wait, planted, not args.no_control) for planted in (False, True)]
    report = {"cli": version, "runs": runs}
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
