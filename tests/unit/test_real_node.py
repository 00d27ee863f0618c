"""The real node's pure parts: its configuration files, the runner recipe, the relay."""

from __future__ import annotations

import asyncio
import json
import shutil
import tomllib
from pathlib import Path

import pytest
import yaml

from corral.api import runtime
from corral.cluster import node, process, runner_image
from corral.cluster.layout import REAL_NODE_IP, REAL_NODE_POD_CIDR, Layout, apiserver_argv
from corral.cluster.netrelay import HOST, Endpoint, Forward, Relay, RelayConfig
from corral.cluster.versions import COMPONENTS, CONTROL_PLANE_COMPONENTS, NODE, NODE_COMPONENTS


def layout(tmp_path: Path, real_node: bool = True) -> Layout:
    return Layout(
        root=tmp_path, ports={"apiserver": 6443, "etcd-client": 2379}, real_node=real_node
    )


def test_node_components_are_built_only_for_the_real_node() -> None:
    assert set(NODE_COMPONENTS) == {
        "kubelet",
        "kube-proxy",
        "coredns",
        "kube-router",
        "local-path-provisioner",
    }
    assert all(COMPONENTS[name].group == NODE for name in NODE_COMPONENTS)
    assert not set(NODE_COMPONENTS) & set(CONTROL_PLANE_COMPONENTS)
    assert "kubernetes" in CONTROL_PLANE_COMPONENTS


def test_the_api_server_of_a_real_node_cluster_advertises_the_node_side_address(
    tmp_path: Path,
) -> None:
    plain = apiserver_argv(layout(tmp_path, real_node=False))
    assert "--advertise-address=127.0.0.1" in plain
    assert not any(a.startswith("--egress-selector-config-file") for a in plain)
    real = apiserver_argv(layout(tmp_path))
    assert f"--advertise-address={REAL_NODE_IP}" in real
    assert "--bind-address=127.0.0.1" in real  # still only on the host's loopback
    assert f"--egress-selector-config-file={tmp_path / 'egress-selector.yaml'}" in real
    config = yaml.safe_load(layout(tmp_path).write_egress_selector_config().read_text())
    (selection,) = config["egressSelections"]
    assert selection["name"] == "cluster"
    assert selection["connection"]["transport"]["uds"]["udsName"] == str(tmp_path / "egress.sock")


def test_kubelet_uses_cgroupfs_on_v1_with_a_cgroup_root_of_its_own(tmp_path: Path) -> None:
    where = node.NodeLayout(layout(tmp_path))
    config = yaml.safe_load(node.kubelet_config(where))
    assert config["cgroupDriver"] == "cgroupfs"
    assert config["failCgroupV1"] is False
    assert config["cgroupRoot"] == f"/corral-{where.id}"
    assert config["clusterDNS"] == ["10.96.0.10"]
    assert config["resolvConf"] == ""  # no host resolver inside pods
    assert config["containerRuntimeEndpoint"] == f"unix://{where.containerd_socket}"
    # Pod logs in the state dir: a neighbour node's kubelet garbage-collects every pod
    # directory in a shared /var/log/pods that it does not know (kuberuntime_gc.go).
    assert config["podLogsDir"] == str(tmp_path / "node" / "pod-logs")
    other = node.NodeLayout(layout(tmp_path / "other"))
    assert other.id != where.id and other.wiring.node_netns != where.wiring.node_netns
    assert other.cgroup_root != where.cgroup_root
    assert other.wiring.outside_netns != where.wiring.outside_netns


def test_containerd_keeps_to_the_state_dir_and_never_lowers_oom_scores(tmp_path: Path) -> None:
    where = node.NodeLayout(layout(tmp_path))
    config = tomllib.loads(node.containerd_config(where, "corral.dev/pause:x"))
    assert config["root"].startswith(str(tmp_path)) and config["state"].startswith(str(tmp_path))
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == "corral.dev/pause:x"
    assert cri["restrict_oom_score_adj"] is True
    assert cri["netns_mounts_under_state_dir"] is True
    runc = cri["containerd"]["runtimes"]["runc"]
    assert runc["options"]["SystemdCgroup"] is False
    # runc's state too (its default, /run/containerd/runc, is every containerd's).
    assert runc["options"]["Root"] == str(tmp_path / "node" / "containerd" / "runc")


def test_the_pod_network_does_not_masquerade(tmp_path: Path) -> None:
    conf = json.loads(node.cni_config(node.NodeLayout(layout(tmp_path))))
    bridge, portmap = conf["plugins"]
    assert bridge["type"] == "bridge" and bridge["ipMasq"] is False
    assert bridge["ipam"]["ranges"] == [[{"subnet": REAL_NODE_POD_CIDR, "gateway": "10.245.0.1"}]]
    assert portmap["type"] == "portmap"


def test_the_relay_connects_only_into_the_nodes_own_ranges(tmp_path: Path) -> None:
    config = node.relay_config(node.NodeLayout(layout(tmp_path)))
    assert config.allowed_cidrs == [f"{REAL_NODE_IP}/32", REAL_NODE_POD_CIDR]
    assert config.hosts == {"corral-node": REAL_NODE_IP}
    (forward,) = config.forwards
    assert forward.target == Endpoint(HOST, "127.0.0.1", 6443)
    assert RelayConfig.from_json(config.to_json()) == config


def test_runner_recipe_is_read_from_the_dockerfile() -> None:
    recipe = runner_image.read_recipe()
    assert recipe.suite == "bookworm"
    assert {"tini", "git", "ca-certificates"} <= set(recipe.packages)
    assert recipe.user == f"{runtime.RUNNER_UID}:{runtime.RUNNER_GID}"
    assert recipe.env["HOME"] == runtime.HOME_DIR
    assert recipe.env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert recipe.exposed == [str(runtime.RUNNER_PORT)]
    assert recipe.entrypoint == ["/usr/bin/tini", "--"]
    assert recipe.cmd[:2] == ["corral", "runner"]


def test_operator_recipe_is_read_from_the_dockerfile() -> None:
    recipe = runner_image.read_recipe(runner_image.OPERATOR.dockerfile)
    assert recipe.suite == "bookworm"
    assert recipe.packages == ["tini"]
    assert recipe.user == f"{runtime.OPERATOR_UID}:{runtime.OPERATOR_GID}"
    assert recipe.entrypoint == ["/usr/bin/tini", "--", "corral"]
    assert recipe.cmd == ["operator"]
    spec = runner_image.operator_image()
    assert spec.ref == runtime.DEFAULT_OPERATOR_IMAGE
    assert spec.key != runner_image.runner_image().key


def test_runner_image_config_follows_the_recipe() -> None:
    spec = runner_image.runner_image()
    assert spec.ref == runtime.DEFAULT_RUNNER_IMAGE
    other = runner_image.runner_image("corral.dev/runner:other")
    assert other.key != spec.key  # the reference is part of the cache key


async def test_relay_forwards_and_its_connect_proxy_refuses_other_addresses(
    tmp_path: Path,
) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"echo:" + await reader.readline())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    socket_path = tmp_path / "connect.sock"
    relay = Relay(
        RelayConfig(
            forwards=[Forward(Endpoint(HOST, "127.0.0.1", 0), Endpoint(HOST, "127.0.0.1", port))],
            connect_socket=str(socket_path),
            connect_netns=HOST,
            allowed_cidrs=["127.0.0.1/32"],
            hosts={"the-node": "127.0.0.1"},
        )
    )
    await relay.start()
    try:
        forwarded = relay._servers[0].sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", forwarded)
        writer.write(b"hi\n")
        assert await reader.read() == b"echo:hi\n"
        writer.close()

        async def connect(authority: str) -> bytes:
            reader, writer = await asyncio.open_unix_connection(str(socket_path))
            writer.write(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            if b" 200 " in head:
                writer.write(b"via proxy\n")
                head += await reader.read()
            writer.close()
            return head

        assert (await connect(f"the-node:{port}")).endswith(b"echo:via proxy\n")
        assert (await connect(f"127.0.0.1:{port}")).endswith(b"echo:via proxy\n")
        # Anything outside the allowed ranges is refused before any packet is sent.
        assert b" 403 " in await connect(f"127.0.0.2:{port}")
        assert b" 403 " in await connect(f"example.invalid:{port}")
    finally:
        await relay.close()
        server.close()


def _sleeper(seconds: str) -> node.NodeComponent:
    sleep = shutil.which("sleep") or "/bin/sleep"
    return node.NodeComponent("node-sleeper", lambda _: [sleep, seconds], False, lambda: sleep)


def test_restart_component_kills_and_starts_again_with_the_same_argv(tmp_path: Path) -> None:
    layout = node.NodeLayout(Layout(root=tmp_path))
    sleeper = _sleeper("300")
    pid_file = layout.cluster.pid_file(sleeper.name)
    first = process.start(sleeper.argv(layout), pid_file, layout.cluster.log_file(sleeper.name))
    try:
        took = node.restart_component(layout, sleeper.name, timeout=10, components=(sleeper,))
        second = process.running_pid(pid_file, sleeper.binary())
        assert second is not None and second != first
        assert Path(f"/proc/{second}/cmdline").read_bytes().split(b"\0")[:2] == [
            sleeper.binary().encode(),
            b"300",
        ]
        assert process.running_pid(pid_file, sleeper.binary()) == second
        assert 0 <= took < 10
    finally:
        process.stop(pid_file, sleeper.binary(), grace_seconds=1)
    # The first one was SIGKILLed (not asked to stop): it is gone.
    assert not Path(f"/proc/{first}").exists() or b"Z" in Path(f"/proc/{first}/stat").read_bytes()


def test_restart_component_names_the_components_it_knows(tmp_path: Path) -> None:
    layout = node.NodeLayout(Layout(root=tmp_path))
    with pytest.raises(node.NodeError, match=r"node-containerd.*node-kubelet"):
        node.restart_component(layout, "kubelet")
    with pytest.raises(node.NodeError, match="node-sleeper is not running"):
        node.restart_component(layout, "node-sleeper", components=(_sleeper("1"),))


def test_the_kubelets_log_level_comes_from_the_environment() -> None:
    assert node.kubelet_verbosity({}) == 1
    assert node.kubelet_verbosity({"CORRAL_KUBELET_V": "4"}) == 4
    for bad in ("high", "-1", "11"):
        with pytest.raises(ValueError, match="CORRAL_KUBELET_V"):
            node.kubelet_verbosity({"CORRAL_KUBELET_V": bad})


def test_kubelet_feature_gates_come_from_the_environment_and_are_checked() -> None:
    assert node.kubelet_feature_gates({}) == []
    gates = {"CORRAL_KUBELET_FEATURE_GATES": "EventedPLEG=true,KubeletTracing=false"}
    assert node.kubelet_feature_gates(gates) == [
        "--feature-gates=EventedPLEG=true,KubeletTracing=false"
    ]
    for bad in ("EventedPLEG", "EventedPLEG=yes", "EventedPLEG=true,", "--v=9", "a=true"):
        with pytest.raises(ValueError, match=r"CORRAL_KUBELET_FEATURE_GATES.*Name=true"):
            node.kubelet_feature_gates({"CORRAL_KUBELET_FEATURE_GATES": bad})
