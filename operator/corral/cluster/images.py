"""Container images built without Docker: OCI layouts made with umoci, cached, imported.

There is no registry and no Docker engine here. An image is a list of directories, each
inserted as one layer (`umoci insert`), plus a config; the OCI layout is packed into a tar
that `ctr images import` loads into the node's containerd. Every image is cached under the
build cache, keyed by a hash of everything that goes into it, and rebuilt when missing.

The small images the node needs come from static binaries that Debian ships:

* pause (the pod sandbox): `catatonit -P` (package catatonit), a static init with a pause
  mode: it sleeps, reaps zombies and exits on SIGTERM, like the upstream pause binary;
* busybox (package busybox-static): a shell, `nc` and `wget` for local-path helper pods
  and network tests;
* coredns: our static build of CoreDNS.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from corral.cluster.cache_lock import building
from corral.cluster.paths import cache_dir

MARKER = ".complete.json"
CONTAINERD_NAME_ANNOTATION = "io.containerd.image.name"
PINNED_LABEL = "io.cri-containerd.pinned=pinned"
Log = Callable[[str], None]


class ImageError(RuntimeError):
    """An image could not be built or imported; the message says why."""


@dataclass(frozen=True)
class ImageConfig:
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    user: str | None = None
    env: tuple[str, ...] = ()  # "NAME=value"
    workdir: str | None = None
    exposed_ports: tuple[str, ...] = ()  # "8080/tcp"
    labels: dict[str, str] = field(default_factory=dict)

    def umoci_flags(self) -> list[str]:
        flags: list[str] = ["--os=linux", "--architecture=amd64"]
        flags += [f"--config.entrypoint={part}" for part in self.entrypoint]
        flags += [f"--config.cmd={part}" for part in self.cmd]
        if self.user:
            flags.append(f"--config.user={self.user}")
        flags += [f"--config.env={pair}" for pair in self.env]
        if self.workdir:
            flags.append(f"--config.workingdir={self.workdir}")
        flags += [f"--config.exposedports={port}" for port in self.exposed_ports]
        flags += [f"--config.label={k}={v}" for k, v in sorted(self.labels.items())]
        return flags

    def fingerprint(self) -> str:
        return json.dumps(
            [
                self.entrypoint,
                self.cmd,
                self.user,
                self.env,
                self.workdir,
                self.exposed_ports,
                sorted(self.labels.items()),
            ]
        )


def _run(argv: list[str], what: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ImageError(f"{what}: `{' '.join(argv[:3])} ...` failed:\n{done.stderr.strip()}")
    return done.stdout


def umoci() -> str:
    found = shutil.which("umoci")
    if found is None:
        raise ImageError(
            "umoci was not found: the node's images are built with it. Run "
            "`bash hack/node-deps.sh` (installs the Debian packages the real node needs)."
        )
    return found


def build_layout(
    layout: Path, tag: str, layers: Iterable[tuple[Path, str]], config: ImageConfig
) -> None:
    """An OCI layout at `layout` holding one image: one layer per (source dir/file, target)."""
    tool = umoci()
    shutil.rmtree(layout, ignore_errors=True)
    image = f"{layout}:{tag}"
    _run([tool, "init", "--layout", str(layout)], "umoci init")
    _run([tool, "new", "--image", image], "umoci new")
    for source, target in layers:
        _run([tool, "insert", "--image", image, str(source), target], f"umoci insert {target}")
    _run([tool, "config", "--image", image, *config.umoci_flags()], "umoci config")
    _run([tool, "gc", "--layout", str(layout)], "umoci gc")


def pack(layout: Path, ref: str, archive: Path) -> None:
    """A tar of the OCI layout that `ctr images import` names `ref` (full reference)."""
    index_path = layout / "index.json"
    index = json.loads(index_path.read_text())
    for manifest in index["manifests"]:
        manifest.setdefault("annotations", {})[CONTAINERD_NAME_ANNOTATION] = ref
    index_path.write_text(json.dumps(index))
    partial = archive.with_suffix(".partial")
    with tarfile.open(partial, "w") as tar:
        for child in sorted(layout.iterdir()):
            tar.add(child, arcname=child.name)
    partial.rename(archive)


def digest_files(paths: Iterable[Path], extra: str = "") -> str:
    """A short content hash of files (by relative name and bytes) and a string."""
    h = hashlib.sha256(extra.encode())
    for path in sorted(paths):
        h.update(str(path).encode())
        h.update(hashlib.sha256(path.read_bytes()).digest() if path.is_file() else b"-")
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class ImageSpec:
    """A cached image: `build(staging_dir) -> layout dir` runs only when the key is new."""

    name: str  # short name for the cache folder, e.g. "pause"
    ref: str  # full reference, e.g. corral.dev/pause:catatonit-0.1.7
    key: str
    build: Callable[[Path, Log], Path]

    @property
    def directory(self) -> Path:
        return cache_dir() / "images" / f"{self.name}-{self.key}"

    @property
    def archive(self) -> Path:
        return self.directory / "image.tar"

    def is_built(self) -> bool:
        try:
            marker = json.loads((self.directory / MARKER).read_text())
        except (OSError, ValueError):
            return False
        return (
            marker.get("ref") == self.ref
            and self.archive.is_file()
            and self.archive.stat().st_size == marker.get("size")
        )

    def ensure(self, log: Log) -> Path:
        if self.is_built():
            return self.archive
        with building(self.directory, f"[image] {self.ref}", log):
            if self.is_built():  # the one waited for may have built it
                return self.archive
            return self._build(log)

    def _build(self, log: Log) -> Path:
        started = time.monotonic()
        log(f"[image] {self.ref}: building")
        staging = self.directory.with_name(self.directory.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        work = Path(tempfile.mkdtemp(prefix=f"corral-image-{self.name}-"))
        try:
            layout = self.build(work, log)
            pack(layout, self.ref, staging / "image.tar")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        seconds = round(time.monotonic() - started, 1)
        size = (staging / "image.tar").stat().st_size
        marker = {"ref": self.ref, "size": size, "seconds": seconds}
        (staging / MARKER).write_text(json.dumps(marker, indent=1))
        shutil.rmtree(self.directory, ignore_errors=True)
        staging.rename(self.directory)
        log(f"[image] {self.ref}: built in {seconds:.0f}s ({size // 2**20} MiB)")
        # Older builds of the same image are of no further use once nobody imports them:
        # keep those of the last hour (another checkout on this machine may be importing).
        for stale in self.directory.parent.glob(f"{self.name}-*"):
            if stale == self.directory or stale.name.endswith((".partial", ".lock")):
                continue
            if time.time() - stale.stat().st_mtime > 3600:
                shutil.rmtree(stale, ignore_errors=True)
        return self.archive


def import_image(ctr_address: Path, archive: Path, ref: str) -> None:
    """Load an image archive into containerd's CRI namespace and pin it against GC."""
    ctr = ["ctr", "--address", str(ctr_address), "-n", "k8s.io"]
    _run([*ctr, "images", "import", str(archive)], f"import {ref}")
    _run([*ctr, "images", "label", ref, PINNED_LABEL], f"pin {ref}")


def imported_refs(ctr_address: Path) -> set[str]:
    ctr = ["ctr", "--address", str(ctr_address), "-n", "k8s.io"]
    return set(_run([*ctr, "images", "ls", "-q"], "list images").split())


# --- the node's small images -------------------------------------------------------------


def debian_package_version(package: str) -> str:
    out = _run(["dpkg-query", "-W", "-f=${Version}", package], f"version of {package}")
    return out.strip()


def tag_from_version(version: str) -> str:
    version = version.split(":", 1)[-1]  # no epoch
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in version)


def _file_layer(work: Path, files: dict[str, Path | str], mode: int = 0o755) -> Path:
    """A directory tree to insert at /: {path in image: source file, or symlink target}."""
    root = work / "layer"
    for target, source in files.items():
        dest = root / target.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(source, Path):
            shutil.copy2(source, dest)
            dest.chmod(mode)
        else:
            dest.symlink_to(source)
    return root


def pause_image() -> ImageSpec:
    binary = Path("/usr/bin/catatonit")
    version = debian_package_version("catatonit")
    config = ImageConfig(entrypoint=("/pause", "-P"), user="65535:65535")

    def build(work: Path, log: Log) -> Path:
        layer = _file_layer(work, {"/pause": binary})
        build_layout(work / "oci", "pause", [(layer, "/")], config)
        return work / "oci"

    return ImageSpec(
        name="pause",
        ref=f"corral.dev/pause:catatonit-{tag_from_version(version)}",
        key=digest_files([binary], config.fingerprint()),
        build=build,
    )


def busybox_image() -> ImageSpec:
    binary = Path("/bin/busybox")
    version = debian_package_version("busybox-static")
    config = ImageConfig(cmd=("sh",), env=("PATH=/bin",))

    def build(work: Path, log: Log) -> Path:
        applets = _run([str(binary), "--list"], "busybox --list").split()
        files: dict[str, Path | str] = {"/bin/busybox": binary}
        files.update({f"/bin/{a}": "busybox" for a in applets if a != "busybox"})
        layer = _file_layer(work, files)
        (layer / "tmp").mkdir()
        (layer / "tmp").chmod(0o1777)
        build_layout(work / "oci", "busybox", [(layer, "/")], config)
        return work / "oci"

    return ImageSpec(
        name="busybox",
        ref=f"corral.dev/busybox:{tag_from_version(version)}",
        key=digest_files([binary], config.fingerprint()),
        build=build,
    )


def coredns_image(binary: Path, version: str) -> ImageSpec:
    config = ImageConfig(entrypoint=("/coredns",), exposed_ports=("53/udp", "53/tcp"))

    def build(work: Path, log: Log) -> Path:
        layer = _file_layer(work, {"/coredns": binary})
        build_layout(work / "oci", "coredns", [(layer, "/")], config)
        return work / "oci"

    return ImageSpec(
        name="coredns",
        ref=f"corral.dev/coredns:{version}",
        key=digest_files([binary], config.fingerprint()),
        build=build,
    )
