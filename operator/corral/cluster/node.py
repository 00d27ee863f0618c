"""A real node beside the KWOK ones: containerd, kubelet and pod networking on this machine.

`corral cluster up --real-node` starts, after the control plane:

* netrelay (host netns): the API server's port inside the node's namespace, and the API
  server's CONNECT proxy (egress selector) into it;
* containerd (Debian, node netns): CRI with runc, the cgroupfs driver, and the CNI
  bridge/host-local/loopback/portmap plugins;
* kubelet (our build, node netns): registers `corral-node`, cgroup v1, own cgroup root;
* kube-proxy (our build, node netns): iptables mode, Service IPs;
* kube-router (our build, node netns): firewall mode only, NetworkPolicy with iptables
  and ipset;
* local-path-provisioner (our build, host netns): PersistentVolumes as directories under
  the node's state;

and, as pods: CoreDNS (cluster DNS at 10.96.0.10, labelled `k8s-app: kube-dns`).
Images come from `images.py` and `runner_image.py` and are imported into containerd.

Everything the node makes lives under the cluster's state directory, in two network
namespaces and one cgroup subtree named after it, so `down` removes all of it and two
clusters on one machine do not meet. See docs/real-node.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from corral.cluster import cleanup, images, netns, pki, process
from corral.cluster.build import binary_path, ensure_built
from corral.cluster.layout import (
    CLUSTER_DNS_IP,
    REAL_NODE_IP,
    REAL_NODE_NAME,
    REAL_NODE_POD_CIDR,
    SERVICE_CIDR,
    Layout,
)
from corral.cluster.netrelay import HOST, Endpoint, Forward, RelayConfig
from corral.cluster.runner_image import project_images
from corral.cluster.versions import COMPONENTS as COMPONENTS_BY_NAME
from corral.cluster.versions import NODE_COMPONENTS

POD_GATEWAY = "10.245.0.1"
# The link between the node's namespace and the "outside" one, where test hosts live.
OUTSIDE_LINK_CIDR = "10.245.254.0/24"
NODE_LINK_IP = "10.245.254.1"
OUTSIDE_IP = "10.245.254.2"  # test servers bind here (e.g. the fake Anthropic API)
# More addresses of the outside namespace, for decoys a policy must keep pods away from.
PRIVATE_DECOY_IP = "192.168.254.3"
METADATA_DECOY_IP = "169.254.169.254"
NODE_LABEL = "corral.dev/real-node"
KUBELET_PORT = 10250
KUBELET_HEALTHZ_PORT = 10248
KUBE_PROXY_HEALTHZ_PORT = 10256
KUBE_ROUTER_HEALTH_PORT = 20244
CNI_BIN_DIR = Path("/usr/lib/cni")
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")
# Host programs the node needs; hack/node-deps.sh installs them from Debian packages.
HOST_TOOLS = {
    "containerd": "containerd",
    "containerd-shim-runc-v2": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "iptables": "iptables",
    "ipset": "ipset",
    "conntrack": "conntrack",
    "ip": "iproute2",
    "umoci": "umoci",
    "debootstrap": "debootstrap",
    "catatonit": "catatonit",
}
Log = Callable[[str], None]


class NodeError(RuntimeError):
    """The real node could not be brought up; the message says which part and why."""


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- where everything lives ----------------------------------------------------------------


@dataclass(frozen=True)
class NodeLayout:
    cluster: Layout

    @property
    def id(self) -> str:
        return hashlib.sha256(str(self.cluster.root.resolve()).encode()).hexdigest()[:8]

    @property
    def dir(self) -> Path:
        return self.cluster.root / "node"

    @property
    def wiring(self) -> netns.Wiring:
        return netns.Wiring(
            node_netns=f"corral-{self.id}",
            outside_netns=f"corral-{self.id}-out",
            node_ip=REAL_NODE_IP,
            pod_cidr=REAL_NODE_POD_CIDR,
            link_cidr=OUTSIDE_LINK_CIDR,
            node_link_ip=NODE_LINK_IP,
            outside_ip=OUTSIDE_IP,
            outside_extra_ips=(PRIVATE_DECOY_IP, METADATA_DECOY_IP),
        )

    @property
    def node_netns(self) -> Path:
        return netns.path(self.wiring.node_netns)

    @property
    def outside_netns(self) -> Path:
        return netns.path(self.wiring.outside_netns)

    @property
    def cgroup_root(self) -> str:
        return f"/corral-{self.id}"

    @property
    def containerd_dir(self) -> Path:
        return self.dir / "containerd"

    @property
    def containerd_socket(self) -> Path:
        return self.containerd_dir / "containerd.sock"

    @property
    def cni_conf_dir(self) -> Path:
        return self.dir / "cni" / "net.d"

    @property
    def kubelet_dir(self) -> Path:
        return self.dir / "kubelet"

    @property
    def pod_logs_dir(self) -> Path:
        """The kubelet's pod logs (not /var/log/pods: a neighbour node's kubelet would
        garbage-collect every pod directory there that it does not know)."""
        return self.dir / "pod-logs"

    @property
    def runc_root(self) -> Path:
        """runc's container state (not /run/containerd/runc, shared by every containerd)."""
        return self.containerd_dir / "runc"

    @property
    def task_dir(self) -> Path:
        """containerd's bundle of each task (sandboxes and containers), by namespace."""
        return self.containerd_dir / "state" / "io.containerd.runtime.v2.task"

    @property
    def volumes_dir(self) -> Path:
        """Where local-path-provisioner makes PersistentVolume directories."""
        return self.dir / "volumes"

    @property
    def relay_config(self) -> Path:
        return self.dir / "netrelay.json"

    @property
    def images_file(self) -> Path:
        """Which image archive (by cache key) each imported reference came from."""
        return self.dir / "images.json"

    def config(self, name: str) -> Path:
        return self.dir / "config" / name


NODE_IDENTITY = pki.ClientIdentity(
    f"node-{REAL_NODE_NAME}", f"system:node:{REAL_NODE_NAME}", ("system:nodes",)
)
KUBE_PROXY_IDENTITY = pki.ClientIdentity("kube-proxy", "system:kube-proxy")


# --- configuration files ---------------------------------------------------------------------


def relay_config(node: NodeLayout) -> RelayConfig:
    port = node.cluster.ports["apiserver"]
    return RelayConfig(
        forwards=[
            # Kubelet, kube-proxy and kube-router use 127.0.0.1:PORT in the node namespace;
            # pods reach the same listener at REAL_NODE_IP:PORT (the `kubernetes` Service).
            Forward(
                Endpoint(str(node.node_netns), "0.0.0.0", port), Endpoint(HOST, "127.0.0.1", port)
            )
        ],
        connect_socket=str(node.cluster.egress_socket),
        connect_netns=str(node.node_netns),
        allowed_cidrs=[f"{REAL_NODE_IP}/32", REAL_NODE_POD_CIDR],
        hosts={REAL_NODE_NAME: REAL_NODE_IP},
    )


def containerd_config(node: NodeLayout, sandbox_image: str) -> str:
    d = node.containerd_dir
    return f"""version = 2
root = "{d / "root"}"
state = "{d / "state"}"
[grpc]
  address = "{node.containerd_socket}"
[ttrpc]
  address = "{node.containerd_socket}.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d / "opt"}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  enable_selinux = false
  # The session's process has no CAP_SYS_RESOURCE here: never lower a container's OOM
  # score below containerd's own (Guaranteed pods ask for -997).
  restrict_oom_score_adj = true
  # Pod network namespaces under our state, not /var/run/netns.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{node.runc_root}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{node.cni_conf_dir}"
    max_conf_num = 1
"""


def cni_config(node: NodeLayout) -> str:
    conf = {
        "cniVersion": "0.4.0",
        "name": "corral",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "corral0",
                "isGateway": True,
                # No masquerade: nothing leaves the node's namespace, there is nowhere to go.
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": REAL_NODE_POD_CIDR, "gateway": POD_GATEWAY}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(node.dir / "cni" / "ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    return json.dumps(conf, indent=1)


def kubelet_config(node: NodeLayout) -> str:
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": "0.0.0.0",
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": KUBELET_HEALTHZ_PORT,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(node.cluster.certs.ca_cert)},
        },
        "authorization": {"mode": "Webhook"},
        # cgroup v1 on these machines, no systemd: the cgroupfs driver, and a cgroup root of
        # our own so that two nodes on one machine keep their pods apart.
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": node.cgroup_root,
        "failCgroupV1": False,
        "containerRuntimeEndpoint": f"unix://{node.containerd_socket}",
        "imageServiceEndpoint": f"unix://{node.containerd_socket}",
        "clusterDNS": [CLUSTER_DNS_IP],
        "clusterDomain": "cluster.local",
        # No host resolver for pods: names outside the cluster have nowhere to go.
        "resolvConf": "",
        "failSwapOn": False,
        "staticPodPath": "",
        "podLogsDir": str(node.pod_logs_dir),
        "maxPods": 110,
        # Thresholds a shared disk does not cross by accident; a pod's own ephemeral-storage
        # limit still evicts it.
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1Gi",
            "imagefs.available": "1Gi",
        },
        "evictionPressureTransitionPeriod": "10s",
        # Images are imported, never pulled: never garbage-collect them.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "nodeStatusReportFrequency": "10s",
        "syncFrequency": "10s",
    }
    return yaml.safe_dump(config)


def kube_proxy_config(node: NodeLayout) -> str:
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(node.cluster.kubeconfig(KUBE_PROXY_IDENTITY))},
        "mode": "iptables",
        "clusterCIDR": REAL_NODE_POD_CIDR,
        "hostnameOverride": REAL_NODE_NAME,
        "bindAddress": "0.0.0.0",
        "healthzBindAddress": f"127.0.0.1:{KUBE_PROXY_HEALTHZ_PORT}",
        "metricsBindAddress": "127.0.0.1:10249",
        "nodePortAddresses": ["primary"],
        # conntrack limits are the host's (only the initial namespace may set them).
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    }
    return yaml.safe_dump(config)


# --- command lines ---------------------------------------------------------------------------


def _python() -> str:
    """This environment's interpreter under one name, whichever script runs: the relay is
    recognised by its argv[0] (pytest and the `corral` script may name it differently)."""
    stable = Path(sys.prefix) / "bin" / "python3"
    return str(stable) if stable.exists() else sys.executable


def relay_argv(node: NodeLayout) -> list[str]:
    return [_python(), "-m", "corral.cluster.netrelay", str(node.relay_config)]


def containerd_argv(node: NodeLayout) -> list[str]:
    return [_which("containerd"), "--config", str(node.config("containerd.toml"))]


def kubelet_argv(node: NodeLayout) -> list[str]:
    return [
        str(binary_path("kubelet")),
        f"--config={node.config('kubelet.yaml')}",
        f"--kubeconfig={node.cluster.kubeconfig(NODE_IDENTITY)}",
        f"--root-dir={node.kubelet_dir}",
        f"--cert-dir={node.dir / 'kubelet-pki'}",
        f"--hostname-override={REAL_NODE_NAME}",
        f"--node-ip={REAL_NODE_IP}",
        f"--node-labels={NODE_LABEL}=true",
        # CORRAL_KUBELET_V=4 logs every probe run and why (see docs/real-node.md).
        f"--v={kubelet_verbosity(os.environ)}",
        *kubelet_feature_gates(os.environ),
    ]


def kubelet_verbosity(environ: Mapping[str, str]) -> int:
    """The kubelet's log level: $CORRAL_KUBELET_V (0 to 10), else 1."""
    value = environ.get("CORRAL_KUBELET_V", "1")
    if not value.isdigit() or int(value) > 10:
        raise ValueError(f"CORRAL_KUBELET_V must be a log level from 0 to 10, not {value!r}")
    return int(value)


FEATURE_GATE = re.compile(r"[A-Z][A-Za-z0-9]*=(true|false)")


def kubelet_feature_gates(environ: Mapping[str, str]) -> list[str]:
    """`--feature-gates` from $CORRAL_KUBELET_FEATURE_GATES (`Name=true,Other=false`), to try a
    kubelet feature on the real node (docs/real-node.md); none by default."""
    value = environ.get("CORRAL_KUBELET_FEATURE_GATES", "")
    if not value:
        return []
    if not all(FEATURE_GATE.fullmatch(gate) for gate in value.split(",")):
        raise ValueError(
            "CORRAL_KUBELET_FEATURE_GATES must be Name=true or Name=false, comma-separated "
            f"(e.g. EventedPLEG=true), not {value!r}"
        )
    return [f"--feature-gates={value}"]


def kube_proxy_argv(node: NodeLayout) -> list[str]:
    return [
        str(binary_path("kube-proxy")),
        f"--config={node.config('kube-proxy.yaml')}",
        "--v=1",
    ]


def kube_router_argv(node: NodeLayout) -> list[str]:
    return [
        str(binary_path("kube-router")),
        f"--kubeconfig={node.cluster.kubeconfig(pki.ADMIN)}",
        f"--hostname-override={REAL_NODE_NAME}",
        # Firewall (NetworkPolicy) only: the CNI bridge routes, kube-proxy serves Services.
        "--run-firewall=true",
        "--run-router=false",
        "--run-service-proxy=false",
        "--enable-cni=false",
        "--enable-pod-egress=false",
        "--enable-ipv6=false",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        f"--health-port={KUBE_ROUTER_HEALTH_PORT}",
        "--metrics-port=0",
        "--iptables-sync-period=1m",
        "--v=1",
    ]


def local_path_argv(node: NodeLayout, helper_image: str) -> list[str]:
    return [
        str(binary_path("local-path-provisioner")),
        "start",
        f"--kubeconfig={node.cluster.kubeconfig(pki.ADMIN)}",
        f"--config={node.config('local-path.json')}",
        f"--helper-pod-file={node.config('local-path-helper-pod.yaml')}",
        f"--helper-image={helper_image}",
        "--namespace=local-path-storage",
        "--service-account-name=local-path-provisioner-service-account",
        "--configmap-name=local-path-config",
    ]


def _which(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise NodeError(f"{name} was not found: run `bash hack/node-deps.sh`")
    return found


@dataclass(frozen=True)
class NodeComponent:
    name: str
    argv: Callable[[NodeLayout], list[str]]
    in_node_netns: bool
    # The program (argv[0]) by which a running process is recognised as ours.
    binary: Callable[[], str]
    # A readiness probe; None: the process being alive is enough.
    ready: Callable[[NodeLayout], bool] | None = None


def _containerd_ready(node: NodeLayout) -> bool:
    done = subprocess.run(
        ["ctr", "--address", str(node.containerd_socket), "version"],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def _healthz(port: int) -> Callable[[NodeLayout], bool]:
    def ready(node: NodeLayout) -> bool:
        return netns.http_status(node.node_netns, "127.0.0.1", port) == 200

    return ready


def _relay_ready(node: NodeLayout) -> bool:
    return node.cluster.egress_socket.exists()


def _built(name: str) -> Callable[[], str]:
    return lambda: str(binary_path(name))


RELAY = NodeComponent("node-netrelay", relay_argv, False, _python, _relay_ready)
CONTAINERD = NodeComponent(
    "node-containerd",
    containerd_argv,
    True,
    lambda: shutil.which("containerd") or "containerd",
    _containerd_ready,
)
KUBELET = NodeComponent(
    "node-kubelet", kubelet_argv, True, _built("kubelet"), _healthz(KUBELET_HEALTHZ_PORT)
)
KUBE_PROXY = NodeComponent(
    "node-kube-proxy",
    kube_proxy_argv,
    True,
    _built("kube-proxy"),
    _healthz(KUBE_PROXY_HEALTHZ_PORT),
)
KUBE_ROUTER = NodeComponent(
    "node-kube-router",
    kube_router_argv,
    True,
    _built("kube-router"),
    _healthz(KUBE_ROUTER_HEALTH_PORT),
)


def _local_path(node: NodeLayout) -> list[str]:
    return local_path_argv(node, images.busybox_image().ref)


LOCAL_PATH = NodeComponent("node-local-path", _local_path, False, _built("local-path-provisioner"))
COMPONENTS = (RELAY, CONTAINERD, KUBELET, KUBE_PROXY, KUBE_ROUTER, LOCAL_PATH)


def _pid(node: NodeLayout, component: NodeComponent) -> int | None:
    return process.running_pid(node.cluster.pid_file(component.name), component.binary())


def _start(node: NodeLayout, component: NodeComponent, deadline: float) -> None:
    if _pid(node, component) is not None:
        return
    argv = component.argv(node)
    log = node.cluster.log_file(component.name)
    target = node.node_netns if component.in_node_netns else None
    process.start(argv, node.cluster.pid_file(component.name), log, netns=target)
    while time.monotonic() < deadline:
        if _pid(node, component) is None:
            raise NodeError(
                f"{component.name} exited while starting. Last lines of {log}:\n"
                + process.log_tail(log)
            )
        if component.ready is None or component.ready(node):
            return
        time.sleep(0.25)
    raise NodeError(f"{component.name} did not become ready in time; see {log}")


def restart_component(
    node: NodeLayout,
    name: str,
    timeout: float = 120.0,
    down_seconds: float = 0.0,
    components: tuple[NodeComponent, ...] = COMPONENTS,
) -> float:
    """SIGKILL the node component `name` (e.g. "node-kubelet") and start it again with the
    same argv after `down_seconds`, as a crash and a supervisor's restart would; returns once
    it is ready again, with the seconds from the kill. A fault to survive, not a way to stop:
    nothing is cleaned up between the kill and the start."""
    by_name = {c.name: c for c in components}
    component = by_name.get(name)
    if component is None:
        raise NodeError(f"no node component {name!r}; one of {', '.join(sorted(by_name))}")
    started = time.monotonic()
    deadline = started + timeout
    pid = _pid(node, component)
    if pid is None:
        raise NodeError(f"{name} is not running; see {node.cluster.log_file(name)}")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _wait(f"{name} (pid {pid}) gone", lambda: _pid(node, component) is None, deadline)
    time.sleep(down_seconds)
    _start(node, component, deadline + down_seconds)
    return time.monotonic() - started


# --- bring-up steps --------------------------------------------------------------------------


def preflight() -> None:
    """Fail early, naming every missing host program and its Debian package."""
    missing = {tool: pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None}
    missing.update(
        {
            f"{CNI_BIN_DIR}/{p}": "containernetworking-plugins"
            for p in CNI_PLUGINS
            if not (CNI_BIN_DIR / p).exists()
        }
    )
    if not Path("/bin/busybox").exists():
        missing["/bin/busybox"] = "busybox-static"
    if missing:
        packages = " ".join(sorted(set(missing.values())))
        raise NodeError(
            f"the real node needs {', '.join(sorted(missing))} (Debian packages: {packages}). "
            "Run `bash hack/node-deps.sh` (apt-get install) and try again."
        )
    if os.geteuid() != 0:
        raise NodeError("the real node needs root (network namespaces, cgroups, containerd)")
    if not Path("/sys/fs/cgroup/memory").is_dir():
        raise NodeError(
            "no cgroup v1 memory controller at /sys/fs/cgroup/memory: this node setup uses the "
            "cgroupfs driver on cgroup v1 (the machines it was written for)"
        )


def node_images(with_runner: bool = True) -> list[images.ImageSpec]:
    specs = [
        images.pause_image(),
        images.busybox_image(),
        images.coredns_image(
            binary_path("coredns"), COMPONENTS_BY_NAME["coredns"].key.removeprefix("coredns-")
        ),
    ]
    if with_runner:
        specs += project_images()  # the runner and the operator
    return specs


def build(with_runner: bool = True, log: Log = _say) -> list[images.ImageSpec]:
    """Everything the node needs from the build cache: binaries first, then images."""
    ensure_built(NODE_COMPONENTS, log)
    specs = node_images(with_runner)
    for spec in specs:
        spec.ensure(log)
    return specs


def _issue_identities(node: NodeLayout) -> None:
    for identity in (NODE_IDENTITY, KUBE_PROXY_IDENTITY):
        node.cluster.certs.ensure_client(identity)
        node.cluster.write_kubeconfig(identity)


def _write_configs(node: NodeLayout, sandbox_image: str, helper_image: str) -> None:
    node.config("x").parent.mkdir(parents=True, exist_ok=True)
    node.cni_conf_dir.mkdir(parents=True, exist_ok=True)
    node.volumes_dir.mkdir(parents=True, exist_ok=True)
    node.relay_config.write_text(relay_config(node).to_json())
    node.config("containerd.toml").write_text(containerd_config(node, sandbox_image))
    (node.cni_conf_dir / "10-corral.conflist").write_text(cni_config(node))
    node.config("kubelet.yaml").write_text(kubelet_config(node))
    node.config("kube-proxy.yaml").write_text(kube_proxy_config(node))
    node.config("local-path.json").write_text(
        json.dumps(
            {
                "nodePathMap": [
                    {"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES", "paths": [str(node.volumes_dir)]}
                ]
            }
        )
    )
    node.config("local-path-helper-pod.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "helper-pod"},
                "spec": {
                    "priorityClassName": "system-node-critical",
                    "containers": [
                        {"name": "helper-pod", "image": helper_image, "imagePullPolicy": "Never"}
                    ],
                },
            }
        )
    )


CGROUP_BASE = Path("/sys/fs/cgroup")


def _cgroup_dirs(node: NodeLayout, unified: bool = False) -> list[Path]:
    """The node's cgroup root in each v1 hierarchy (and the v2 one the kubelet also uses)."""
    try:
        hierarchies = sorted(CGROUP_BASE.iterdir())
    except OSError:
        return []
    return [
        child / node.cgroup_root.lstrip("/")
        for child in hierarchies
        if child.is_dir()
        and (unified or child.name != "unified")
        and (child / "cgroup.procs").exists()
    ]


def _make_cgroup_root(node: NodeLayout) -> None:
    for directory in _cgroup_dirs(node):
        directory.mkdir(exist_ok=True)


def _import_images(node: NodeLayout, specs: list[images.ImageSpec], log: Log) -> None:
    try:
        done: dict[str, str] = json.loads(node.images_file.read_text())
    except (OSError, ValueError):
        done = {}
    present = images.imported_refs(node.containerd_socket)
    for spec in specs:
        if done.get(spec.ref) == spec.key and spec.ref in present:
            continue
        started = time.monotonic()
        images.import_image(node.containerd_socket, spec.archive, spec.ref)
        log(f"[node] imported {spec.ref} in {time.monotonic() - started:.0f}s")
        done[spec.ref] = spec.key
        node.images_file.write_text(json.dumps(done, indent=1))


def kubectl(node: NodeLayout, *args: str, stdin: str | None = None, check: bool = True) -> str:
    argv = [
        str(binary_path("kubectl")),
        f"--kubeconfig={node.cluster.kubeconfig(pki.ADMIN)}",
        *args,
    ]
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise NodeError(f"kubectl {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def _wait(what: str, check: Callable[[], bool], deadline: float, hint: str = "") -> None:
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise NodeError(f"{what} did not happen in time{': ' + hint if hint else ''}")


def _node_ready(node: NodeLayout) -> bool:
    out = kubectl(
        node,
        "get",
        "node",
        REAL_NODE_NAME,
        "-o",
        "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
        check=False,
    )
    return out.strip() == "True"


def _set_pod_cidr(node: NodeLayout) -> None:
    # No controller allocates pod CIDRs here; kube-router reads the node's podCIDR.
    current = kubectl(node, "get", "node", REAL_NODE_NAME, "-o", "jsonpath={.spec.podCIDR}")
    if not current.strip():
        patch = {"spec": {"podCIDR": REAL_NODE_POD_CIDR, "podCIDRs": [REAL_NODE_POD_CIDR]}}
        kubectl(node, "patch", "node", REAL_NODE_NAME, "-p", json.dumps(patch))


def _manifest(name: str, **values: str) -> str:
    """A manifest from manifests/, filled in; `$config_hash` is a hash of everything else,
    so that a pod template that carries it rolls out when its configuration changes."""
    from string import Template

    text = (Path(__file__).parent / "manifests" / name).read_text()
    digest = hashlib.sha256((text + json.dumps(values, sort_keys=True)).encode()).hexdigest()
    return Template(text).substitute(values, config_hash=digest[:16])


def _apply_addons(node: NodeLayout, coredns_image: str) -> None:
    kubectl(
        node,
        "apply",
        "-f",
        "-",
        stdin=_manifest(
            "coredns.yaml",
            image=coredns_image,
            node_name=REAL_NODE_NAME,
            cluster_dns=CLUSTER_DNS_IP,
        ),
    )
    kubectl(
        node,
        "apply",
        "-f",
        "-",
        stdin=_manifest("local-path.yaml"),
    )


def _coredns_ready(node: NodeLayout) -> bool:
    out = kubectl(
        node,
        "-n",
        "kube-system",
        "get",
        "deployment",
        "coredns",
        "-o",
        "jsonpath={.status.availableReplicas}",
        check=False,
    )
    return out.strip() not in ("", "0")


def up(cluster: Layout, timeout: float = 600.0, with_runner: bool = True, log: Log = _say) -> None:
    """Bring the node up beside a running control plane started with `real_node`."""
    if not cluster.real_node:
        raise NodeError("the control plane was not started for a real node (Layout.real_node)")
    started = time.monotonic()
    preflight()
    node = NodeLayout(cluster)
    specs = build(with_runner, log)
    by_name = {spec.name: spec for spec in specs}
    sandbox, helper = by_name["pause"].ref, by_name["busybox"].ref
    deadline = time.monotonic() + timeout
    _issue_identities(node)
    _write_configs(node, sandbox, helper)
    netns.create(node.wiring)
    _make_cgroup_root(node)
    _start(node, RELAY, deadline)
    _start(node, CONTAINERD, deadline)
    _import_images(node, specs, log)
    _start(node, KUBELET, deadline)
    _wait(
        f"node {REAL_NODE_NAME} Ready",
        lambda: _node_ready(node),
        deadline,
        f"see {cluster.log_file(KUBELET.name)}",
    )
    _set_pod_cidr(node)
    _start(node, KUBE_PROXY, deadline)
    _start(node, KUBE_ROUTER, deadline)
    _apply_addons(node, by_name["coredns"].ref)
    _start(node, LOCAL_PATH, deadline)
    _wait(
        "CoreDNS available",
        lambda: _coredns_ready(node),
        deadline,
        "kubectl -n kube-system describe pod -l k8s-app=kube-dns",
    )
    log(f"[node] {REAL_NODE_NAME} is up in {time.monotonic() - started:.0f}s")


# --- tear-down -------------------------------------------------------------------------------

# The programs of the node by the name they run under (argv[0]'s last part). A process with
# one of these names whose command line names the cluster's state directory is the node's,
# whatever its pid file says.
RELAY_PROGRAM = "corral.cluster.netrelay"  # run as `python3 -m corral.cluster.netrelay`
NODE_PROGRAMS = frozenset(
    {
        RELAY_PROGRAM,
        "containerd",
        "containerd-shim-runc-v2",
        "kubelet",
        "kube-proxy",
        "kube-router",
        "local-path-provisioner",
    }
)
AGENT_PROGRAMS = frozenset({"kubelet", "kube-proxy", "kube-router", "local-path-provisioner"})
AGENTS = (LOCAL_PATH, KUBE_ROUTER, KUBE_PROXY, KUBELET)
# What the node keeps outside its state directory, where containerd 1.6, libcni and the
# kubelet have fixed paths: each file there is named after one of the node's containers.
SHIM_SOCKETS = Path("/run/containerd/s")
CNI_CACHE = Path("/var/lib/cni/results")
CONTAINER_LOG_LINKS = Path("/var/log/containers")
# The kubelet's device-plugin socket has a fixed path whatever its root dir: every kubelet
# on the machine replaces it at start. `down` removes it only when its own kubelet held it.
DEVICE_PLUGIN_SOCKET = Path("/var/lib/kubelet/device-plugins/kubelet.sock")


def _is_node_process(node: NodeLayout, argv: list[str], programs: frozenset[str]) -> bool:
    if not argv:
        return False
    name = Path(argv[0]).name
    if name.startswith("python") and RELAY_PROGRAM in argv:
        name = RELAY_PROGRAM
    return name in programs and cleanup.mentions(argv, node.cluster.root)


def _programs(node: NodeLayout, programs: frozenset[str]) -> set[int]:
    return {
        pid for pid in cleanup.all_pids() if _is_node_process(node, cleanup.cmdline(pid), programs)
    }


def _node_pids(node: NodeLayout, netns_ids: set[str]) -> set[int]:
    """Every process of the node: in its namespaces, in its cgroups, or one of its programs."""
    pids = cleanup.cgroup_pids(_cgroup_dirs(node, unified=True))
    for pid in cleanup.all_pids():
        if cleanup.netns_of(pid) in netns_ids or _is_node_process(
            node, cleanup.cmdline(pid), NODE_PROGRAMS
        ):
            pids.add(pid)
    return pids


def _children(directory: Path) -> list[Path]:
    try:
        return list(directory.iterdir())
    except OSError:
        return []


def _container_ids(node: NodeLayout) -> set[str]:
    """Ids of the node's sandboxes and containers, from containerd's state on disk."""
    bundles = [bundle for ns in _children(node.task_dir) for bundle in _children(ns)]
    sandboxes = _children(node.containerd_dir / "root" / "io.containerd.grpc.v1.cri" / "sandboxes")
    return {entry.name for entry in [*bundles, *sandboxes]}


def outside_files(node: NodeLayout) -> list[Path]:
    """The node's files outside its state directory: shim sockets, libcni's cached results
    and the kubelet's links to container logs. Killed shims and pods torn down without
    CNI DEL leave them; each names one of this node's containers, never a neighbour's."""
    found: list[Path] = []
    for ns in _children(node.task_dir):
        for bundle in _children(ns):
            try:
                address = (bundle / "address").read_text().strip()
            except OSError:
                continue
            socket_path = Path(address.removeprefix("unix://"))
            if socket_path.parent == SHIM_SOCKETS and socket_path.exists():
                found.append(socket_path)
    ids = _container_ids(node)
    for entry in _children(CNI_CACHE):
        # `<network>-<sandbox id>-<interface>`: `corral-…-eth0` and `cni-loopback-…-lo`.
        if ids & set(entry.name.split("-")):
            found.append(entry)
    logs = str(node.pod_logs_dir) + "/"
    for link in _children(CONTAINER_LOG_LINKS):
        try:
            if os.readlink(link).startswith(logs):
                found.append(link)
        except OSError:
            continue
    return found


def _stop(node: NodeLayout, components: tuple[NodeComponent, ...], log: Log) -> None:
    for component in components:
        if process.stop(node.cluster.pid_file(component.name), component.binary(), 5.0):
            log(f"stopped {component.name}")


def _kill(what: str, find: Callable[[], set[int]], log: Log) -> None:
    left = cleanup.kill_until_gone(find)
    if left:
        raise NodeError(f"{what} still running after SIGKILL: pids {sorted(left)}")


def _remove_netns(node: NodeLayout, log: Log) -> None:
    for name in (node.wiring.outside_netns, node.wiring.node_netns):
        if netns.delete(name):
            log(f"removed network namespace {name}")


def _remove_cgroups(node: NodeLayout) -> None:
    roots = _cgroup_dirs(node, unified=True)
    for _ in range(20):
        kept = cleanup.remove_cgroups(roots)
        if not kept:
            return
        # A process that was still exiting (or one a dying shim forked): kill and retry.
        cleanup.kill_until_gone(lambda: cleanup.cgroup_pids(roots), timeout=2.0)
        time.sleep(0.25)
    raise NodeError(f"cgroups still in use: {', '.join(map(str, kept[:5]))}")


def _remove_outside_files(node: NodeLayout) -> None:
    for path in outside_files(node):
        try:
            path.unlink()
        except FileNotFoundError:
            continue


def _delete_node_object(node: NodeLayout, log: Log) -> None:
    kubectl(
        node,
        "delete",
        "node",
        REAL_NODE_NAME,
        "--ignore-not-found",
        "--wait=false",
        "--request-timeout=15s",
    )
    log(f"deleted Node {REAL_NODE_NAME}")


def down(cluster: Layout, log: Log = _say, delete_node: bool = True) -> list[str]:
    """Stop every process of the node (agents, pods, shims, containerd, relay) and remove
    its mounts, network namespaces (and with them every iptables rule and ipset made in
    them), cgroups and the files it keeps outside the state directory; with `delete_node`,
    its Node object too. Each step runs even when an earlier one failed, and finds what is
    there rather than what `up` recorded, so a second run finishes what a first left.
    Returns what is still there: nothing, or the failures."""
    node = NodeLayout(cluster)
    netns_ids = {
        found
        for found in (cleanup.netns_id(node.node_netns), cleanup.netns_id(node.outside_netns))
        if found
    }
    failures: list[str] = []

    def step(what: str, action: Callable[[], None]) -> bool:
        try:
            action()
        except Exception as error:  # one failed step must not stop the others
            failures.append(f"{what}: {error}")
            log(f"warning: {what}: {error}")
            return False
        return True

    kubelets = _programs(node, frozenset({"kubelet"}))
    device_socket = any(cleanup.holds_unix_socket(pid, DEVICE_PLUGIN_SOCKET) for pid in kubelets)
    # The kubelet first: it would restart the containers killed next.
    step("stop the node agents", lambda: _stop(node, AGENTS, log))
    step(
        "kill the node agents",
        lambda: _kill("node agents", lambda: _programs(node, AGENT_PROGRAMS), log),
    )
    cgroups = _cgroup_dirs(node, unified=True)
    step("kill the pods", lambda: _kill("pods", lambda: cleanup.cgroup_pids(cgroups), log))
    step("stop containerd and the relay", lambda: _stop(node, (CONTAINERD, RELAY), log))
    step(
        "kill what is left of the node",
        lambda: _kill("node processes", lambda: _node_pids(node, netns_ids), log),
    )
    step("remove the egress socket", lambda: cluster.egress_socket.unlink(missing_ok=True))
    step("unmount", lambda: _raise_if(cleanup.unmount_under(node.dir), "still mounted"))
    step("remove the network namespaces", lambda: _remove_netns(node, log))
    step("remove the cgroups", lambda: _remove_cgroups(node))
    step("remove files outside the state directory", lambda: _remove_outside_files(node))
    if device_socket:
        step(
            "remove the kubelet's device-plugin socket",
            lambda: DEVICE_PLUGIN_SOCKET.unlink(missing_ok=True),
        )
    node_object_left = delete_node and not step(
        "delete the Node object", lambda: _delete_node_object(node, log)
    )
    left = leftovers(cluster, netns_ids)
    if node_object_left:
        left.append(f"Node {REAL_NODE_NAME} (the API server did not delete it)")
    # A failed step whose work got done anyway (a later step or the kernel finished it) is
    # no failure; with something left, every failure explains it.
    return [*failures, *left] if left else []


def _raise_if(left: list[str], what: str) -> None:
    if left:
        raise NodeError(f"{what}: {', '.join(left[:5])}")


def leftovers(cluster: Layout, netns_ids: set[str] | None = None) -> list[str]:
    """What of the node is still there (after `down` nothing should be): network
    namespaces, processes (in its namespaces `netns_ids`, its cgroups, or one of its
    programs naming its state directory), cgroups, mounts under the state directory,
    files outside it."""
    node = NodeLayout(cluster)
    ids = set(netns_ids or ())
    found = [
        f"network namespace {n}"
        for n in (node.wiring.node_netns, node.wiring.outside_netns)
        if netns.exists(n)
    ]
    cgroups = _cgroup_dirs(node, unified=True)
    found += [f"cgroup {d}" for d in cgroups if d.exists()]
    in_cgroups = cleanup.cgroup_pids(cgroups)
    protected = cleanup.protected_pids()
    for pid in cleanup.all_pids():
        if pid in protected:
            continue
        argv = cleanup.cmdline(pid)
        if (
            pid in in_cgroups
            or cleanup.netns_of(pid) in ids
            or _is_node_process(node, argv, NODE_PROGRAMS)
        ):
            found.append(f"process {pid}: {' '.join(argv)[:120]}")
    found += [f"mount {point}" for point in cleanup.mounts_under(cluster.root)]
    found += [f"file {path}" for path in outside_files(node)]
    return found


def is_up(cluster: Layout) -> bool:
    node = NodeLayout(cluster)
    return all(_pid(node, c) is not None for c in COMPONENTS) and _node_ready(node)


def status_lines(cluster: Layout) -> list[tuple[str, int | None, str]]:
    """(component, pid, state) of each node process."""
    node = NodeLayout(cluster)
    rows = []
    for component in COMPONENTS:
        pid = _pid(node, component)
        if pid is None:
            state = "stopped"
        elif component.ready is None or component.ready(node):
            state = "healthy"
        else:
            state = "unhealthy"
        rows.append((component.name, pid, state))
    return rows
