"""The runner image, built from images/runner/ without Docker.

`images/runner/Dockerfile` stays the recipe. This builder reads what the final stage
declares (ARG defaults, the Debian packages it installs, ENV, USER, EXPOSE, ENTRYPOINT)
and makes the same image from Debian packages and the project's wheel:

1. base layer: `debootstrap --variant=minbase` of the Dockerfile's Debian release with
   python3 (Debian's 3.11 instead of the python:3.11-slim image's own build) and the
   packages the Dockerfile installs; the runner user and its mount points;
2. app layer: a venv at /opt/corral with the corral wheel and its dependencies pinned by
   images/runner/constraints.txt (the SDK with its bundled CLI), byte-compiled;
3. config: the Dockerfile's ENV (plus PATH to the venv), USER, EXPOSE and ENTRYPOINT.

Both layers are cached: the base by its package list, the whole image by a hash of the
recipe and the sources of the wheel. The result is tagged `runtime.DEFAULT_RUNNER_IMAGE`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from corral.api import runtime
from corral.cluster.images import ImageConfig, ImageError, ImageSpec, Log, build_layout
from corral.cluster.paths import cache_dir

REPO = Path(__file__).resolve().parents[3]
RECIPE_DIR = REPO / "images" / "runner"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
VENV = "/opt/corral"
# What the Dockerfile's python base image brings and Debian's minbase lacks.
BASE_PACKAGES = ("python3", "python3-venv")
# Bump when the build steps below change in a way the inputs do not show.
BUILDER_VERSION = "1"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Recipe:
    """What the final stage of the Dockerfile declares."""

    suite: str
    args: dict[str, str] = field(default_factory=dict)
    packages: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    user: str = ""
    exposed: list[str] = field(default_factory=list)
    entrypoint: list[str] = field(default_factory=list)

    def expand(self, text: str) -> str:
        return re.sub(
            r"\$\{(\w+)\}|\$(\w+)", lambda m: self.args.get(m.group(1) or m.group(2), ""), text
        )


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    out = []
    for line in joined:
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _env_pairs(rest: str) -> dict[str, str]:
    pairs = {}
    for token in shlex.split(rest):
        name, _, value = token.partition("=")
        pairs[name] = value
    return pairs


def read_recipe(dockerfile: Path | None = None) -> Recipe:
    text = (dockerfile or RECIPE_DIR / "Dockerfile").read_text()
    global_args: dict[str, str] = {}
    stages: list[Recipe] = []
    for word, rest in _instructions(text):
        current = stages[-1] if stages else None
        if word == "ARG":
            name, _, default = rest.partition("=")
            (current.args if current else global_args)[name] = default
        elif word == "FROM":
            base = re.sub(r"\$\{(\w+)\}", lambda m: global_args.get(m.group(1), ""), rest)
            suite = base.split()[0].rsplit("-", 1)[-1]  # python:3.11-slim-bookworm -> bookworm
            stages.append(Recipe(suite=suite, args=dict(global_args)))
        elif current is None:
            continue
        elif word == "RUN":
            for match in re.finditer(r"apt-get install ([^&;|]+)", rest):
                current.packages += [p for p in match.group(1).split() if not p.startswith("-")]
        elif word == "ENV":
            current.env.update(_env_pairs(rest))
        elif word == "USER":
            current.user = current.expand(rest)
        elif word == "EXPOSE":
            current.exposed += rest.split()
        elif word == "ENTRYPOINT":
            current.entrypoint = json.loads(rest)
    if not stages:
        raise ImageError("images/runner/Dockerfile has no FROM")
    return stages[-1]


def _wheel_sources() -> list[Path]:
    files = [REPO / "pyproject.toml", REPO / "README.md"]
    for path in sorted((REPO / "operator").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            files.append(path)
    return files


def _hash(paths: list[Path], extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for path in paths:
        h.update(str(path.relative_to(REPO)).encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


def _run(argv: list[str], what: str, log: Log, env: dict[str, str] | None = None) -> None:
    log(f"[image] runner: {what}")
    done = subprocess.run(
        argv, capture_output=True, text=True, check=False, env=env or dict(os.environ)
    )
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-25:])
        raise ImageError(f"runner image: {what} failed (exit {done.returncode}):\n{tail}")


def _chroot(rootfs: Path, argv: list[str], what: str, log: Log) -> None:
    env = {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"}
    _run(["chroot", str(rootfs), *argv], what, log, env=env)


def _base_key(recipe: Recipe) -> str:
    packages = sorted({*BASE_PACKAGES, *recipe.packages})
    ids = (recipe.args.get("RUNNER_UID"), recipe.args.get("RUNNER_GID"))
    body = json.dumps([BUILDER_VERSION, recipe.suite, packages, ids])
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def base_rootfs(recipe: Recipe, log: Log) -> Path:
    """The debootstrapped base (cached): Debian, python3, the recipe's packages, the user."""
    final = cache_dir() / "images" / "rootfs" / f"runner-base-{_base_key(recipe)}"
    if (final / ".complete").exists():
        return final / "rootfs"
    if shutil.which("debootstrap") is None:
        raise ImageError(
            "debootstrap was not found: run `bash hack/node-deps.sh` to install the Debian "
            "packages the real node needs."
        )
    staging = final.with_name(final.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    rootfs = staging / "rootfs"
    packages = ",".join(sorted({*BASE_PACKAGES, *recipe.packages}))
    _run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={packages}",
            recipe.suite,
            str(rootfs),
            DEBIAN_MIRROR,
        ],
        f"debootstrap {recipe.suite} with {packages}",
        log,
    )
    uid, gid = recipe.args["RUNNER_UID"], recipe.args["RUNNER_GID"]
    home = recipe.env.get("HOME", runtime.HOME_DIR)
    _chroot(rootfs, ["groupadd", "--gid", gid, "corral"], "add the runner group", log)
    _chroot(
        rootfs,
        [
            "useradd",
            "--uid",
            uid,
            "--gid",
            gid,
            "--home-dir",
            home,
            "--no-create-home",
            "--shell",
            "/bin/bash",
            "corral",
        ],
        "add the runner user",
        log,
    )
    for directory in (home, runtime.STATE_DIR, runtime.SPEC_DIR):
        (rootfs / directory.lstrip("/")).mkdir(parents=True, exist_ok=True)
    for directory in (home, runtime.STATE_DIR):
        os.chown(rootfs / directory.lstrip("/"), int(uid), int(gid))
    # What a Docker build leaves out as well: package caches and the build host's resolver.
    for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for child in (rootfs / leftover).glob("*"):
            if child.is_file():
                child.unlink()
    (rootfs / "etc" / "resolv.conf").unlink(missing_ok=True)
    (rootfs / "etc" / "hostname").unlink(missing_ok=True)
    (staging / ".complete").write_text("ok\n")
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    return final / "rootfs"


def _wheels(work: Path, log: Log) -> Path:
    """The corral wheel and every dependency as wheels, the SDK pinned by constraints.txt."""
    wheels = work / "wheels"
    wheels.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    _run(
        [*pip, "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(REPO)],
        "build the corral wheel",
        log,
    )
    corral_wheel = next(wheels.glob("corral-*.whl"))
    _run(
        [
            *pip,
            "wheel",
            "--quiet",
            "--wheel-dir",
            str(wheels),
            "--constraint",
            str(RECIPE_DIR / "constraints.txt"),
            str(corral_wheel),
        ],
        "collect the dependency wheels",
        log,
    )
    return wheels


def runner_image(ref: str = runtime.DEFAULT_RUNNER_IMAGE) -> ImageSpec:
    recipe = read_recipe()
    recipe_files = sorted(p for p in RECIPE_DIR.iterdir() if p.is_file())
    key = _hash([*recipe_files, *_wheel_sources()], BUILDER_VERSION + _base_key(recipe) + ref)
    env = dict(recipe.env)
    env["PATH"] = f"{VENV}/bin:{SYSTEM_PATH}"
    config = ImageConfig(
        entrypoint=tuple(recipe.entrypoint),
        user=recipe.user,
        env=tuple(f"{k}={v}" for k, v in env.items()),
        exposed_ports=tuple(p if "/" in p else f"{p}/tcp" for p in recipe.exposed),
        labels={"org.opencontainers.image.title": "corral-runner"},
    )

    def build(work: Path, log: Log) -> Path:
        base = base_rootfs(recipe, log)
        wheels = _wheels(work, log)
        # The venv is made inside a copy of the base, then only /opt/corral becomes a layer.
        rootfs = work / "rootfs"
        _run(["cp", "-a", str(base), str(rootfs)], "copy the base rootfs", log)
        shutil.copytree(wheels, rootfs / "tmp" / "wheels")
        _chroot(rootfs, ["python3", "-m", "venv", VENV], "create the venv", log)
        _chroot(
            rootfs,
            [
                f"{VENV}/bin/pip",
                "install",
                "--quiet",
                "--no-cache-dir",
                "--no-index",
                "--find-links",
                "/tmp/wheels",
                "corral",
            ],
            "install corral and its dependencies",
            log,
        )
        site = f"{VENV}/lib/python3.11/site-packages"
        _chroot(rootfs, [f"{VENV}/bin/python", "-m", "compileall", "-q", site], "compileall", log)
        build_layout(
            work / "oci", "runner", [(base, "/"), (rootfs / VENV.lstrip("/"), VENV)], config
        )
        return work / "oci"

    return ImageSpec(name="runner", ref=ref, key=key, build=build)
