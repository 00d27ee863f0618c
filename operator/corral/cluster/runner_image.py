"""The project's images (runner, operator), built from images/<name>/ without Docker.

Each `images/<name>/Dockerfile` stays the recipe. This builder reads what its final stage
declares (ARG defaults, the Debian packages it installs, ENV, USER, EXPOSE, ENTRYPOINT,
CMD) and makes the same image from Debian packages and the project's wheel:

1. base layer: `debootstrap --variant=minbase` of the Dockerfile's Debian release with
   python3 (Debian's 3.11 instead of the python:3.11-slim image's own build) and the
   packages the Dockerfile installs, trimmed like Debian's slim images (no manuals,
   translations or package lists); the image's user and its mount points;
2. app layer: a venv at /opt/corral with the corral wheel and its dependencies, as the
   Dockerfile's build stage makes it (runner: every dependency; operator: corral without
   its declared dependencies, then requirements.txt; each at the version
   images/constraints.txt pins), byte-compiled;
3. config: the Dockerfile's ENV (plus PATH to the venv), USER, EXPOSE, ENTRYPOINT, CMD.

Both layers are cached: the base by its package list and user, the whole image by a hash
of the recipe and the sources of the wheel. The results are tagged
`runtime.DEFAULT_RUNNER_IMAGE` and `runtime.DEFAULT_OPERATOR_IMAGE`.
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
IMAGES_DIR = REPO / "images"
# The exact version of every runtime dependency, for both images (and the dev venv).
CONSTRAINTS = IMAGES_DIR / "constraints.txt"
RECIPE_DIR = IMAGES_DIR / "runner"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
VENV = "/opt/corral"
SITE_PACKAGES = f"{VENV}/lib/python3.11/site-packages"
# What the Dockerfile's python base image brings and Debian's minbase lacks.
BASE_PACKAGES = ("python3", "python3-venv")
# Bump when the build steps below change in a way the inputs do not show.
BUILDER_VERSION = "2"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What Debian's slim images leave out (copyright files stay).
SLIM_TRIM = ("usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian")


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
    cmd: list[str] = field(default_factory=list)
    base_image: str = ""

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


def debian_suite(image: str) -> str:
    """python:3.11-slim-bookworm[@sha256:...] -> bookworm."""
    return image.split("@", 1)[0].rsplit("-", 1)[-1]


def read_recipe(dockerfile: Path | None = None) -> Recipe:
    path = dockerfile or RECIPE_DIR / "Dockerfile"
    global_args: dict[str, str] = {}
    stages: list[Recipe] = []
    for word, rest in _instructions(path.read_text()):
        current = stages[-1] if stages else None
        if word == "ARG":
            name, _, default = rest.partition("=")
            (current.args if current else global_args)[name] = default
        elif word == "FROM":
            base = re.sub(r"\$\{(\w+)\}", lambda m: global_args.get(m.group(1), ""), rest)
            image = base.split()[0]
            stage = Recipe(suite=debian_suite(image), args=dict(global_args), base_image=image)
            stages.append(stage)
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
        elif word == "CMD":
            current.cmd = json.loads(rest)
    if not stages:
        raise ImageError(f"{path} has no FROM")
    return stages[-1]


@dataclass(frozen=True)
class Project:
    """What differs between the project's images beyond their Dockerfiles."""

    name: str  # images/<name>/
    title: str
    home: str
    shell: str
    owned_dirs: tuple[str, ...] = ()  # made in the base, owned by the image's user
    root_dirs: tuple[str, ...] = ()  # made in the base, owned by root

    @property
    def recipe_dir(self) -> Path:
        return IMAGES_DIR / self.name

    @property
    def dockerfile(self) -> Path:
        return self.recipe_dir / "Dockerfile"

    def recipe_file(self, name: str) -> Path | None:
        path = self.recipe_dir / name
        return path if path.is_file() else None


RUNNER = Project(
    name="runner",
    title="corral-runner",
    home=runtime.HOME_DIR,
    shell="/bin/bash",
    owned_dirs=(runtime.HOME_DIR, runtime.STATE_DIR),
    root_dirs=(runtime.SPEC_DIR,),
)
OPERATOR = Project(name="operator", title="corral-operator", home="/tmp", shell="/usr/sbin/nologin")


def _wheel_sources() -> list[Path]:
    files = [REPO / "pyproject.toml", REPO / "README.md"]
    for path in sorted((REPO / "operator").rglob("*")):
        # Not what building the wheel leaves there (`corral.egg-info`): the first build in a
        # fresh tree would change the key it was built under, and the next run build again.
        by_products = any(
            part.endswith(".egg-info") or part == "__pycache__" for part in path.parts
        )
        if path.is_file() and not by_products and path.suffix != ".pyc":
            files.append(path)
    return files


def _hash(paths: list[Path], extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for path in paths:
        h.update(str(path.relative_to(REPO)).encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


def _run(argv: list[str], what: str, log: Log, env: dict[str, str] | None = None) -> None:
    log(f"[image] {what}")
    done = subprocess.run(
        argv, capture_output=True, text=True, check=False, env=env or dict(os.environ)
    )
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-25:])
        raise ImageError(f"image build: {what} failed (exit {done.returncode}):\n{tail}")


def _remove_staging(staging: Path) -> None:
    """Remove what an earlier build left. A debootstrap that was killed leaves its chroot's
    /proc mounted inside; no file under a mount can be removed, so the next build failed
    on it until someone unmounted it by hand."""
    inside = f"{staging}/"
    mounts = Path("/proc/self/mounts").read_text(encoding="utf-8").splitlines()
    points = [line.split()[1] for line in mounts if len(line.split()) > 1]
    for point in sorted((p for p in points if p.startswith(inside)), reverse=True):
        subprocess.run(["umount", "--lazy", point], check=False, capture_output=True)
    shutil.rmtree(staging, ignore_errors=True)


def _chroot(rootfs: Path, argv: list[str], what: str, log: Log) -> None:
    env = {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"}
    _run(["chroot", str(rootfs), *argv], what, log, env=env)


def _user_ids(recipe: Recipe) -> tuple[str, str]:
    return recipe.args["APP_UID"], recipe.args["APP_GID"]


def _base_key(project: Project, recipe: Recipe) -> str:
    packages = sorted({*BASE_PACKAGES, *recipe.packages})
    body = json.dumps(
        [
            BUILDER_VERSION,
            recipe.suite,
            packages,
            _user_ids(recipe),
            project.home,
            project.shell,
            project.owned_dirs,
            project.root_dirs,
        ]
    )
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def _slim(rootfs: Path) -> None:
    """What a Docker build of a slim image leaves out, and the build host's leftovers."""
    for leftover in ("var/cache/apt/archives", "var/lib/apt/lists", "var/cache/apt"):
        for child in (rootfs / leftover).glob("*"):
            if child.is_file():
                child.unlink()
    for directory in SLIM_TRIM:
        for child in (rootfs / directory).glob("*"):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    for doc in (rootfs / "usr/share/doc").glob("*"):
        if doc.is_dir() and not doc.is_symlink():
            for child in doc.iterdir():
                if child.name != "copyright":
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
    (rootfs / "etc" / "resolv.conf").unlink(missing_ok=True)
    (rootfs / "etc" / "hostname").unlink(missing_ok=True)


def _base_dir(project: Project, recipe: Recipe) -> Path:
    return cache_dir() / "images" / "rootfs" / f"{project.name}-base-{_base_key(project, recipe)}"


def base_is_built(project: Project) -> bool:
    """Whether the project's debootstrapped base is cached: a change to Corral's code then
    rebuilds only the image's venv layer."""
    return (_base_dir(project, read_recipe(project.dockerfile)) / ".complete").exists()


def base_rootfs(project: Project, recipe: Recipe, log: Log) -> Path:
    """The debootstrapped base (cached): Debian, python3, the recipe's packages, the user."""
    final = _base_dir(project, recipe)
    if (final / ".complete").exists():
        return final / "rootfs"
    if shutil.which("debootstrap") is None:
        raise ImageError(
            "debootstrap was not found: run `bash hack/node-deps.sh` to install the Debian "
            "packages the real node needs."
        )
    staging = final.with_name(final.name + ".partial")
    _remove_staging(staging)
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
        f"{project.name}: debootstrap {recipe.suite} with {packages}",
        log,
    )
    uid, gid = _user_ids(recipe)
    _chroot(rootfs, ["groupadd", "--gid", gid, "corral"], f"{project.name}: add the group", log)
    _chroot(
        rootfs,
        [
            "useradd",
            "--uid",
            uid,
            "--gid",
            gid,
            "--home-dir",
            project.home,
            "--no-create-home",
            "--shell",
            project.shell,
            "corral",
        ],
        f"{project.name}: add the user",
        log,
    )
    for directory in (*project.owned_dirs, *project.root_dirs):
        (rootfs / directory.lstrip("/")).mkdir(parents=True, exist_ok=True)
    for directory in project.owned_dirs:
        os.chown(rootfs / directory.lstrip("/"), int(uid), int(gid))
    _slim(rootfs)
    (staging / ".complete").write_text("ok\n")
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    return final / "rootfs"


def _wheels(project: Project, work: Path, log: Log) -> Path:
    """The corral wheel and the dependency wheels the recipe asks for."""
    wheels = work / "wheels"
    wheels.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    _run(
        [*pip, "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(REPO)],
        f"{project.name}: build the corral wheel",
        log,
    )
    requirements = project.recipe_file("requirements.txt")
    if requirements is not None:
        wanted = ["--requirement", str(requirements)]
    else:
        wanted = [str(next(wheels.glob("corral-*.whl")))]
    wanted += ["--constraint", str(CONSTRAINTS)]
    _run(
        [*pip, "wheel", "--quiet", "--wheel-dir", str(wheels), *wanted],
        f"{project.name}: collect the dependency wheels",
        log,
    )
    return wheels


def _install(project: Project, rootfs: Path, log: Log) -> None:
    """The venv, as the Dockerfile's build stage makes it (wheels in /tmp/wheels)."""
    pip = [f"{VENV}/bin/pip", "install", "--quiet", "--no-cache-dir", "--no-index"]
    pip += ["--find-links", "/tmp/wheels"]
    _chroot(rootfs, ["python3", "-m", "venv", VENV], f"{project.name}: create the venv", log)
    requirements = project.recipe_file("requirements.txt")
    if requirements is None:
        _chroot(rootfs, [*pip, "corral"], f"{project.name}: install corral", log)
    else:
        shutil.copy(requirements, rootfs / "tmp" / "requirements.txt")
        _chroot(rootfs, [*pip, "--no-deps", "corral"], f"{project.name}: install corral", log)
        _chroot(
            rootfs,
            [*pip, "--requirement", "/tmp/requirements.txt"],
            f"{project.name}: install the operator's dependencies",
            log,
        )
        _chroot(
            rootfs,
            [f"{VENV}/bin/python", "-m", "pip", "uninstall", "-q", "-y", "pip", "setuptools"],
            f"{project.name}: drop pip from the venv",
            log,
        )
    _chroot(
        rootfs,
        [f"{VENV}/bin/python", "-m", "compileall", "-q", SITE_PACKAGES],
        f"{project.name}: compileall",
        log,
    )


def project_image(project: Project, ref: str) -> ImageSpec:
    recipe = read_recipe(project.dockerfile)
    recipe_files = sorted(p for p in project.recipe_dir.iterdir() if p.is_file())
    key = _hash(
        [*recipe_files, CONSTRAINTS, *_wheel_sources()],
        BUILDER_VERSION + _base_key(project, recipe) + ref,
    )
    env = dict(recipe.env)
    env["PATH"] = f"{VENV}/bin:{SYSTEM_PATH}"
    config = ImageConfig(
        entrypoint=tuple(recipe.entrypoint),
        cmd=tuple(recipe.cmd),
        user=recipe.user,
        env=tuple(f"{k}={v}" for k, v in env.items()),
        exposed_ports=tuple(p if "/" in p else f"{p}/tcp" for p in recipe.exposed),
        labels={"org.opencontainers.image.title": project.title},
    )

    def build(work: Path, log: Log) -> Path:
        base = base_rootfs(project, recipe, log)
        wheels = _wheels(project, work, log)
        # The venv is made inside a copy of the base, then only /opt/corral becomes a layer.
        rootfs = work / "rootfs"
        _run(["cp", "-a", str(base), str(rootfs)], f"{project.name}: copy the base", log)
        shutil.copytree(wheels, rootfs / "tmp" / "wheels")
        _install(project, rootfs, log)
        layers = [(base, "/"), (rootfs / VENV.lstrip("/"), VENV)]
        build_layout(work / "oci", project.name, layers, config)
        return work / "oci"

    return ImageSpec(name=project.name, ref=ref, key=key, build=build)


def runner_image(ref: str = runtime.DEFAULT_RUNNER_IMAGE) -> ImageSpec:
    return project_image(RUNNER, ref)


def operator_image(ref: str = runtime.DEFAULT_OPERATOR_IMAGE) -> ImageSpec:
    return project_image(OPERATOR, ref)


def project_images() -> list[ImageSpec]:
    """Both images, as `corral cluster up --real-node` imports them."""
    return [runner_image(), operator_image()]
