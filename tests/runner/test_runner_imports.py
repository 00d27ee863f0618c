"""The runner imports only what its path needs (issue 19): not the operator, kopf, the
Kubernetes client, or the SDK's MCP server stack; and the SDK still works as a whole."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

OPERATOR_DIR = Path(__file__).resolve().parents[2] / "operator"
# What a runner must never pay for at start-up.
FORBIDDEN = (
    "kopf",
    "kubernetes",
    "corral.controller",
    "corral.gateway",
    "corral.render",
    "mcp",
    "jsonschema",
    "yaml",
)


def loaded_after(code: str) -> set[str]:
    """The modules loaded in a fresh interpreter after `code`."""
    done = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(OPERATOR_DIR), "PATH": "/usr/bin:/bin"},
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_runner_start_path_imports_nothing_it_does_not_use() -> None:
    modules = loaded_after(
        "from corral.cli import build_parser\n"
        "build_parser(['runner'])\n"
        "import corral.runner.app, corral.runner.cli, corral.runner.session_file"
    )
    assert "claude_agent_sdk.client" in modules  # the check below means something
    leaked = sorted(m for m in modules if m.split(".")[0] in FORBIDDEN or m in FORBIDDEN)
    leaked += sorted(m for m in modules if any(m.startswith(f + ".") for f in FORBIDDEN))
    assert not leaked, leaked


def test_the_port_listens_before_the_heavy_imports() -> None:
    """`corral runner` binds its port (corral.runner.listener) having loaded only the
    command line and the pod contract: the kubelet's first readiness probe can come a
    tenth of a second after the process starts, and a refused one is a Warning Event."""
    modules = loaded_after(
        "from corral.cli import build_parser\n"
        "build_parser(['runner'])\n"
        "import corral.runner.listener, corral.api.runtime"
    )
    assert "corral.runner.listener" in modules
    heavy = ("pydantic", "aiohttp", "claude_agent_sdk", "corral.api.v1alpha1", "asyncio")
    assert not [m for m in heavy if m in modules], sorted(m for m in heavy if m in modules)


def test_http_server_is_imported_after_the_cli_is_started() -> None:
    """aiohttp (a tenth of a second and more) loads while the CLI boots, not before."""
    modules = loaded_after("import corral.runner.app, corral.runner.agent")
    assert "aiohttp" not in modules


# aiohttp's HTTP client: its connector builds two TLS contexts (every CA certificate) at import.
HTTP_CLIENT = ("aiohttp.client", "aiohttp.connector", "aiohttp.cookiejar", "aiohttp.tracing")


def test_http_server_loads_without_the_http_client() -> None:
    modules = loaded_after(
        "import corral.runner.app, corral.runner.http_api\n"
        "from corral.runner.web import web\n"
        "web.Application(); web.AppRunner"
    )
    assert "aiohttp.web" in modules  # the check below means something
    assert not sorted(set(HTTP_CLIENT) & modules)


# prometheus_client's text exposition and the HTTP server and WSGI it imports: /metrics only.
EXPOSITION = ("prometheus_client.exposition", "http.server", "wsgiref")


def test_metrics_are_kept_without_the_exposition_code() -> None:
    modules = loaded_after(
        "from corral.runner.metrics import RunnerMetrics\n"
        "m = RunnerMetrics(); m.busy.labels('a').set(1); m.tool('a', 'Bash')\n"
        "import corral.runner.app, corral.runner.http_api"
    )
    assert "prometheus_client.metrics" in modules
    assert not sorted(set(EXPOSITION) & modules)


def test_metrics_render_loads_the_exposition_code() -> None:
    code = (
        "from corral.runner.metrics import RunnerMetrics\n"
        "m = RunnerMetrics(); m.busy.labels('a').set(1)\n"
        "body, kind = m.render()\n"
        "assert b'corral_runner_busy{agent=\"a\"} 1.0' in body, body\n"
        "assert kind.startswith('text/plain'), kind\n"
        "import prometheus_client\n"
        "assert prometheus_client.REGISTRY and prometheus_client.Counter\n"
    )
    assert "prometheus_client.exposition" in loaded_after(code)


def test_activity_reports_need_no_aiohttp_client() -> None:
    modules = loaded_after(
        "import corral.runner.app, corral.runner.http_api, corral.runner.activity\n"
        "from corral.runner.activity import post_report\n"
    )
    assert "corral.runner.activity" in modules
    assert not sorted(set(HTTP_CLIENT) & modules)


def test_the_http_client_still_loads_on_first_use() -> None:
    modules = loaded_after(
        "import corral.runner.web\n"
        "import aiohttp\n"
        "from aiohttp import ClientSession, ClientTimeout, web\n"
        "from aiohttp.client import ClientSession as Direct\n"
        "assert ClientSession is Direct and ClientTimeout\n"
        "assert web is corral.runner.web.web\n"
        "assert aiohttp.__version__ == __import__('aiohttp.http').http.__version__\n"
        "assert aiohttp.hdrs.CONTENT_TYPE == 'Content-Type'\n"
    )
    assert set(HTTP_CLIENT) <= modules


def test_an_aiohttp_imported_first_is_left_alone() -> None:
    modules = loaded_after(
        "import aiohttp\nimport corral.runner.web as web\nassert web.web is aiohttp.web\n"
    )
    assert "aiohttp.connector" in modules


def test_the_rest_of_the_sdk_still_loads_on_first_use() -> None:
    modules = loaded_after(
        "import corral.runner.sdk\n"
        "import claude_agent_sdk\n"
        "import types\n"
        "from claude_agent_sdk import query\n"
        "assert not isinstance(query, types.ModuleType)  # the function, not its module\n"
        "from claude_agent_sdk import create_sdk_mcp_server, ClaudeSDKClient\n"
        "from claude_agent_sdk.client import ClaudeSDKClient as Direct\n"
        "assert ClaudeSDKClient is Direct\n"
        "assert claude_agent_sdk.create_sdk_mcp_server is create_sdk_mcp_server\n"
    )
    assert "mcp" in modules


def test_an_sdk_mcp_server_gets_the_real_bridge() -> None:
    code = (
        "import corral.runner.sdk\n"
        "import sys\n"
        "from claude_agent_sdk._internal import query\n"
        "from claude_agent_sdk import create_sdk_mcp_server\n"
        "server = create_sdk_mcp_server('tools', tools=[])\n"
        "bridge = query.SdkMcpBridge('tools', server['instance'])\n"
        "real = sys.modules['claude_agent_sdk._internal.sdk_mcp_bridge']\n"
        "assert type(bridge) is real.SdkMcpBridge, type(bridge)\n"
        "assert type(bridge).__module__ == real.__name__\n"
    )
    modules = loaded_after(code)
    assert "mcp.shared.memory" in modules


def test_an_sdk_imported_first_is_left_alone() -> None:
    modules = loaded_after(
        "import claude_agent_sdk\n"
        "import corral.runner.sdk as sdk\n"
        "assert sdk.ClaudeSDKClient is claude_agent_sdk.ClaudeSDKClient\n"
    )
    assert "mcp" in modules


def test_session_file_still_reads_yaml(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("pattern: LongRunning\nmodel: claude-x\n")
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from corral.runner.session_file import "
            "load_session; print(load_session(Path(sys.argv[1])).spec.model)",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(OPERATOR_DIR), "PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.strip() == "claude-x"


def test_process_age_counts_from_the_process_start() -> None:
    code = (
        "import time; time.sleep(0.3)\n"
        "from corral.runner.agent import process_age\n"
        "print(process_age())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(OPERATOR_DIR), "PATH": "/usr/bin:/bin"},
    )
    age = float(done.stdout.strip())
    assert 0.3 <= age < 60


def test_the_collector_is_off_while_the_runner_starts_and_on_when_it_serves(
    tmp_path: Path,
) -> None:
    """Start-up's imports run without the garbage collector; once the runner is set up,
    what they loaded is frozen and the collector is on again (a runner left without it
    would never free a reference cycle)."""
    session = tmp_path / "session.json"
    session.write_text('{"pattern": "LongRunning"}')
    code = (
        "import gc, json, sys\n"
        "import corral.runner.app as app, corral.runner.session_file as session_file\n"
        "seen = {}\n"
        "load = session_file.load_session\n"
        "def loading(path):\n"
        "    seen['loading'] = gc.isenabled()\n"
        "    return load(path)\n"
        "def serving(settings):\n"
        "    seen['serving'] = gc.isenabled()\n"
        "    seen['frozen'] = gc.get_freeze_count()\n"
        "    print(json.dumps(seen))\n"
        "    return 0\n"
        "session_file.load_session, app.run = loading, serving\n"
        "from corral.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    argv = ["runner", "--session", str(session), "--host", "127.0.0.1", "--port", "0"]
    argv += ["--workspace", str(tmp_path / "ws"), "--state-dir", str(tmp_path / "state")]
    argv += ["--termination-log", str(tmp_path / "t")]
    done = subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(OPERATOR_DIR), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["loading"] is False
    assert seen["serving"] is True
    assert seen["frozen"] > 10_000  # the modules start-up imported
