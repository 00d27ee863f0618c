"""Build the upstream cluster binaries from their Go modules into a versioned cache.

A cache entry counts only when its marker file names every binary with the size it had
when the build finished; anything else (an interrupted build, a deleted binary) is
rebuilt from scratch, never used.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path

from corral.cluster.cache_lock import building
from corral.cluster.paths import cache_dir
from corral.cluster.versions import COMPONENTS, CONTROL_PLANE_COMPONENTS, Component

MARKER = ".complete.json"
Log = Callable[[str], None]


class BuildError(RuntimeError):
    """A component could not be built; the message says why and what to do."""


def _stderr_log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def component_dir(component: Component) -> Path:
    return cache_dir() / "bin" / component.key


def is_built(component: Component) -> bool:
    directory = component_dir(component)
    try:
        marker = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return False
    sizes = marker.get("binaries", {})
    return all(
        name in sizes
        and (directory / name).is_file()
        and (directory / name).stat().st_size == sizes[name]
        for name in component.binaries
    )


def binary_path(name: str) -> Path:
    """Path of a built binary, by binary name (e.g. `kubectl`), whether built or not."""
    for component in COMPONENTS.values():
        if name in component.binaries:
            return component_dir(component) / name
    raise KeyError(f"no component builds {name!r}")


def ensure_built(names: Iterable[str] | None = None, log: Log = _stderr_log) -> None:
    """Build every named component (default: the control plane's) that has no cache entry,
    one after another. (Two at a time, tried in a cold run, took no less time: on 2 cores
    the builds are bound by compiling, not by module downloads.) Another process building
    the same component is waited for, not raced."""
    for name in names or CONTROL_PLANE_COMPONENTS:
        component = COMPONENTS[name]
        if is_built(component):
            continue
        with building(component_dir(component), f"[build] {component.key}", log):
            if not is_built(component):  # the one waited for may have built it
                build(component, log)


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise BuildError(
            "the Go toolchain was not found on PATH. Corral builds etcd, Kubernetes, KWOK and "
            "Helm from their Go modules: install Go 1.24 or newer (e.g. `apt-get install "
            "golang`) and run again."
        )
    return go


def build(component: Component, log: Log = _stderr_log) -> None:
    go = _go()
    final = component_dir(component)
    staging = final.with_name(final.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-mod=mod")
    started = time.monotonic()
    log(f"[build] {component.key}: building from Go modules (cold builds take minutes)")

    ldflags = " ".join(("-s", "-w", *component.ldflags))
    flags = ["-trimpath", "-v", "-ldflags", ldflags]
    if component.tags:
        flags += ["-tags", ",".join(component.tags)]

    if component.install_package:
        workdir = staging
        env["GOBIN"] = str(staging)
        _run_go([go, "install", *flags, component.install_package], workdir, env, component, log)
    else:
        workdir = cache_dir() / "src" / component.key
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        assert component.wrapper_go_mod is not None
        (workdir / "go.mod").write_text(component.wrapper_go_mod)
        for filename, text in component.wrapper_files.items():
            (workdir / filename).write_text(text)
        _run_go([go, "mod", "tidy"], workdir, env, component, log)
        out = str(staging) + os.sep
        _run_go(
            [go, "build", *flags, "-o", out, *component.build_packages],
            workdir,
            env,
            component,
            log,
        )

    sizes = {}
    for name in component.binaries:
        path = staging / name
        if not path.is_file():
            raise BuildError(f"{component.key}: the build finished but produced no {name}")
        sizes[name] = path.stat().st_size
    seconds = round(time.monotonic() - started, 1)
    marker = {"version": component.version, "binaries": sizes, "seconds": seconds}
    (staging / MARKER).write_text(json.dumps(marker, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    log(f"[build] {component.key}: done in {seconds:.0f}s -> {final}")


def _run_go(
    argv: list[str], workdir: Path, env: dict[str, str], component: Component, log: Log
) -> None:
    """Run a go command, reporting progress every 15 s and failing with its last lines."""
    tail: deque[str] = deque(maxlen=30)
    counted = [0]
    started = time.monotonic()
    done = threading.Event()

    def report() -> None:
        while not done.wait(15):
            elapsed = int(time.monotonic() - started)
            log(
                f"[build] {component.key}: {' '.join(argv[1:2])} running, "
                f"{counted[0]} packages so far, {elapsed // 60}m{elapsed % 60:02d}s"
            )

    reporter = threading.Thread(target=report, daemon=True)
    reporter.start()
    with subprocess.Popen(
        argv, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip())
            counted[0] += 1
        code = proc.wait()
    done.set()
    if code == 0:
        return
    output = "\n".join(tail)
    hint = ""
    if any(
        s in output
        for s in ("dial tcp", "no such host", "proxyconnect", "410 Gone", "404 Not Found")
    ):
        proxy = (
            env.get("GOPROXY")
            or subprocess.run(
                [argv[0], "env", "GOPROXY"], capture_output=True, text=True, check=False
            ).stdout.strip()
        )
        hint = f"\nThe Go module proxy could not serve a module (GOPROXY={proxy}): is it reachable?"
    raise BuildError(
        f"{component.key}: `{' '.join(argv[:2])}` failed (exit {code}):\n{output}{hint}"
    )
