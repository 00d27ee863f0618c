"""Tear-down of the local cluster: it finishes whatever vanishes under it, is idempotent,
never reaches into a neighbour's files or through a mount; ports lost to a neighbour are
chosen again."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.cluster import cleanup, control_plane, node, ports
from corral.cluster.layout import Layout

# --- vanishing cgroups -----------------------------------------------------------------------


def _vanish_when_read(fifos: dict[Path, Path], pid: int, stop: threading.Event) -> None:
    """As soon as one `cgroup.procs` FIFO is being read, remove the other cgroup (as the
    kernel does when a container exits), then hand the reader its pid."""
    while not stop.is_set():
        for fifo, other in fifos.items():
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as error:
                if error.errno in (errno.ENXIO, errno.ENOENT):  # no reader yet / removed
                    continue
                raise
            shutil.rmtree(other, ignore_errors=True)
            os.write(fd, f"{pid}\n".encode())
            os.close(fd)
            return
        time.sleep(0.005)


def test_the_cgroup_scan_finishes_when_a_cgroup_vanishes_during_it(tmp_path: Path) -> None:
    # Two pod cgroups, each with a container cgroup inside. Whichever pod is read first,
    # the other disappears at that moment: a walk that lists it first and enters it after
    # (pathlib's rglob did) raised FileNotFoundError and `corral cluster down` crashed.
    root = tmp_path / "corral-x" / "kubepods"
    fifos = {}
    for pod in ("pod-a", "pod-b"):
        container = root / pod / "c1"
        container.mkdir(parents=True)
        (container / "cgroup.procs").write_text("")
        os.mkfifo(root / pod / "cgroup.procs")
    for pod, other in (("pod-a", "pod-b"), ("pod-b", "pod-a")):
        fifos[root / pod / "cgroup.procs"] = root / other
    stop = threading.Event()
    vanisher = threading.Thread(target=_vanish_when_read, args=(fifos, 4242, stop), daemon=True)
    vanisher.start()
    try:
        pids = cleanup.cgroup_pids([tmp_path / "corral-x"])
    finally:
        stop.set()
        vanisher.join(timeout=5)
    assert pids == {4242}
    assert len([p for p in ("pod-a", "pod-b") if (root / p).exists()]) == 1


def test_cgroups_are_removed_deepest_first_and_a_busy_one_is_reported(tmp_path: Path) -> None:
    tree = tmp_path / "memory" / "corral-x"
    (tree / "kubepods" / "burstable" / "pod1").mkdir(parents=True)
    (tree / "kubepods" / "besteffort").mkdir(parents=True)
    busy = tree / "kubepods" / "guaranteed"
    busy.mkdir()
    (busy / "a-process-inside").write_text("")  # rmdir fails, as on a cgroup in use
    gone = tmp_path / "cpu" / "corral-x"  # already removed: nothing to do, no error
    kept = cleanup.remove_cgroups([tree, gone])
    assert kept == [busy, tree / "kubepods", tree]
    (busy / "a-process-inside").unlink()
    assert cleanup.remove_cgroups([tree, gone]) == []
    assert not tree.exists()


# --- mounts and the state directory -----------------------------------------------------------

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/root rw
90 22 0:50 / /state/dir/node/kubelet/pods/p/volumes/x rw - tmpfs tmpfs rw
91 22 0:51 / /state/dir/node/containerd/state/run/rootfs rw - overlay overlay rw
92 22 0:52 / /state/dir/with\\040space rw - tmpfs tmpfs rw
93 22 0:53 / /state/dir rw - tmpfs tmpfs rw
94 22 0:54 / /state/dir-other/node rw - tmpfs tmpfs rw
"""


def test_mounts_under_the_state_dir_deepest_first_never_the_dir_itself_or_a_neighbour() -> None:
    assert cleanup.mounts_under(Path("/state/dir"), MOUNTINFO) == [
        "/state/dir/node/kubelet/pods/p/volumes/x",
        "/state/dir/node/containerd/state/run/rootfs",
        "/state/dir/with space",
    ]


@pytest.fixture
def bind_mount(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("not the cluster's")
    point = tmp_path / "state" / "node" / "kubelet" / "pods" / "p" / "volumes" / "host"
    point.mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(outside), str(point)], check=True)
    try:
        yield outside, point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_removing_the_state_dir_never_deletes_through_a_mount(
    tmp_path: Path, bind_mount: tuple[Path, Path]
) -> None:
    outside, point = bind_mount
    state = tmp_path / "state"
    (state / "logs").mkdir()
    (state / "logs" / "etcd.log").write_text("x")
    problems = cleanup.remove_tree(state)
    assert problems == [f"mount {point}"]
    assert (outside / "precious").read_text() == "not the cluster's"
    assert not (state / "logs").exists()
    # Unmounted first (as `down` does), everything goes, the other side stays.
    assert cleanup.unmount_under(state) == []
    assert cleanup.remove_tree(state) == []
    assert not state.exists()
    assert (outside / "precious").exists()


def test_down_is_idempotent_and_sweeps_a_half_removed_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a crashed first run leaves: no cluster.json any more, a node directory, pid files.
    monkeypatch.setattr(node, "CGROUP_BASE", tmp_path / "cgroup")
    state = tmp_path / "state"
    (state / "pids").mkdir(parents=True)
    (state / "pids" / "node-kubelet.pid").write_text("999999999")
    (state / "node" / "containerd").mkdir(parents=True)
    assert control_plane.down(state) == []
    assert not state.exists()
    assert control_plane.down(state) == []


def test_down_never_sweeps_a_folder_of_other_clusters(tmp_path: Path) -> None:
    # CORRAL_STATE_DIR pointed one level too high: the clusters inside stay untouched.
    Layout(root=tmp_path / "cluster", ports={"apiserver": 1}).save()
    (tmp_path / "cluster" / "pids").mkdir()
    (tmp_path / "logs").mkdir()
    assert control_plane.down(tmp_path) == []
    assert (tmp_path / "cluster" / "cluster.json").exists()


# --- processes ------------------------------------------------------------------------------


def test_a_process_is_the_clusters_when_its_command_line_names_the_state_dir() -> None:
    root = Path("/state/dir")
    assert cleanup.mentions(["kubelet", "--root-dir=/state/dir/node/kubelet"], root)
    assert cleanup.mentions(["containerd", "--config", "/state/dir/node/config/c.toml"], root)
    assert cleanup.mentions(["etcd", "--data-dir=/state/dir"], root)
    assert not cleanup.mentions(["kubelet", "--root-dir=/state/dir-2/node/kubelet"], root)
    assert not cleanup.mentions(["kubelet", "--root-dir=/state"], root)


def test_kill_until_gone_kills_what_it_finds_but_never_its_caller() -> None:
    child = subprocess.Popen(["sleep", "60"])
    try:
        left = cleanup.kill_until_gone(lambda: {child.pid, os.getpid()}, timeout=10)
        assert left == set()
        assert not Path(f"/proc/{child.pid}").exists()  # killed and reaped
    finally:
        with contextlib.suppress(ProcessLookupError):
            child.kill()


def test_node_down_stops_a_kubelet_that_its_pid_file_does_not_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `node down` used to stop only the pids in its pid files, checked against the binary
    # path it computed again (from the cache dir, PATH, the venv): a kubelet started under
    # another path, or a lost pid file, and it kept running. It is found by what it is.
    monkeypatch.setattr(node, "CGROUP_BASE", tmp_path / "cgroup")
    root = tmp_path / "state"
    (root / "pids").mkdir(parents=True)
    (root / "pids" / "node-kubelet.pid").write_text(str(os.getpid()))  # a recycled pid
    kubelet = subprocess.Popen(["bash", "-c", f'exec -a "{root}/elsewhere/kubelet" sleep 60'])
    try:
        wait_until = time.monotonic() + 10
        while Path((cleanup.cmdline(kubelet.pid) or [""])[0]).name != "kubelet":
            assert time.monotonic() < wait_until, "the stand-in kubelet did not start"
            time.sleep(0.02)
        left = node.down(Layout(root=root, real_node=True), log=lambda _: None, delete_node=False)
        assert left == []
        assert kubelet.wait(timeout=10) in (-9, 0)  # SIGKILLed (0: reaped by `down` itself)
    finally:
        with contextlib.suppress(ProcessLookupError):
            kubelet.kill()


def test_the_files_a_node_keeps_outside_its_state_dir_are_its_own_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("SHIM_SOCKETS", "CNI_CACHE", "CONTAINER_LOG_LINKS"):
        (tmp_path / name).mkdir()
        monkeypatch.setattr(node, name, tmp_path / name)
    mine = node.NodeLayout(Layout(root=tmp_path / "state", real_node=True))
    bundle = mine.task_dir / "k8s.io" / ("a" * 64)
    bundle.mkdir(parents=True)
    shim = tmp_path / "SHIM_SOCKETS" / "d1"
    shim.write_text("")
    (tmp_path / "SHIM_SOCKETS" / "d2").write_text("")  # a neighbour's shim
    (bundle / "address").write_text(f"unix://{shim}\n")
    cni = tmp_path / "CNI_CACHE"
    (cni / f"corral-{'a' * 64}-eth0").write_text("{}")
    (cni / f"cni-loopback-{'a' * 64}-lo").write_text("{}")
    (cni / f"corral-{'b' * 64}-eth0").write_text("{}")  # a neighbour's pod
    links = tmp_path / "CONTAINER_LOG_LINKS"
    (links / "mine.log").symlink_to(mine.pod_logs_dir / "ns_pod_uid" / "c" / "0.log")
    (links / "theirs.log").symlink_to("/var/log/pods/ns_pod_uid/c/0.log")
    assert sorted(map(str, node.outside_files(mine))) == sorted(
        [
            str(shim),
            str(cni / f"corral-{'a' * 64}-eth0"),
            str(cni / f"cni-loopback-{'a' * 64}-lo"),
            str(links / "mine.log"),
        ]
    )


def test_a_unix_socket_is_the_kubelets_only_while_it_holds_it(tmp_path: Path) -> None:
    # The device-plugin socket has one path for every kubelet on the machine: `node down`
    # removes it only when its own kubelet was the one holding it.
    path = tmp_path / "kubelet.sock"
    with socket.socket(socket.AF_UNIX) as held:
        held.bind(str(path))
        held.listen()
        assert cleanup.holds_unix_socket(os.getpid(), path)
        assert not cleanup.holds_unix_socket(os.getpid(), tmp_path / "other.sock")
    assert not cleanup.holds_unix_socket(os.getpid(), path)  # closed: the file alone


# --- ports ----------------------------------------------------------------------------------


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock
    sock.close()


def test_a_taken_preferred_port_is_replaced(listener: socket.socket) -> None:
    taken = listener.getsockname()[1]
    chosen = ports.choose_ports({"apiserver": taken, "kwok": taken})
    assert taken not in chosen.values()
    assert chosen["apiserver"] != chosen["kwok"]


def test_the_port_base_sets_the_preferred_ports_and_is_checked() -> None:
    assert ports.preferred_ports({}) == ports.DEFAULT_PORTS
    assert list(ports.preferred_ports({ports.PORT_BASE_ENV: "30000"}).values()) == list(
        range(30000, 30006)
    )
    with pytest.raises(ValueError, match=ports.PORT_BASE_ENV):
        ports.preferred_ports({ports.PORT_BASE_ENV: "80"})


def test_a_port_is_ours_only_while_our_process_listens_on_it(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    assert ports.listens(os.getpid(), port)
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        assert not ports.listens(os.getpid(), other.getsockname()[1])  # bound, not listening


SERVER = """
import socket, sys, time
port = int(sys.argv[1])
s = socket.socket()
try:
    s.bind(("127.0.0.1", port))
except OSError:
    print(f"listen tcp 127.0.0.1:{port}: bind: address already in use", flush=True)
    sys.exit(1)
s.listen()
time.sleep(120)
"""


def test_a_component_that_loses_its_port_between_choice_and_bind_starts_on_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The race of two `up`s: the port is free when checked, a neighbour binds it just before
    # our process does. The component must come up on another port, recorded in cluster.json.
    monkeypatch.setattr(control_plane, "binary_path", lambda name: Path(sys.executable))
    neighbour = socket.socket()
    layout = Layout(root=tmp_path, ports=ports.choose_ports({"kwok": ports.any_free_port()}))
    layout.save()
    lost = layout.ports["kwok"]

    def argv(current: Layout) -> list[str]:
        if neighbour.fileno() != -1 and current.ports["kwok"] == lost:
            neighbour.bind(("127.0.0.1", lost))
            neighbour.listen()
        return [sys.executable, "-c", SERVER, str(current.ports["kwok"])]

    spec = control_plane.ComponentSpec("fake", "fake", argv, "kwok", None)
    try:
        moved = control_plane._start(layout, spec, time.monotonic() + 60)
        pid = control_plane._pid(layout, spec)
        assert moved and pid is not None
        assert layout.ports["kwok"] != lost
        assert ports.listens(pid, layout.ports["kwok"])
        saved = json.loads((tmp_path / "cluster.json").read_text())
        assert saved["ports"]["kwok"] == layout.ports["kwok"]
    finally:
        neighbour.close()
        from corral.cluster import process

        process.stop(layout.pid_file("fake"), sys.executable, grace_seconds=2)
