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

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from corral.cluster import images, netns, pki, process
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
        "--v=1",
    ]


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


def _cgroup_dirs(node: NodeLayout, unified: bool = False) -> list[Path]:
    """The node's cgroup root in each v1 hierarchy (and the v2 one the kubelet also uses)."""
    base = Path("/sys/fs/cgroup")
    return [
        child / node.cgroup_root.lstrip("/")
        for child in sorted(base.iterdir())
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


def _cgroup_pids(node: NodeLayout) -> set[int]:
    pids: set[int] = set()
    for directory in _cgroup_dirs(node, unified=True):
        if directory.is_dir():
            for procs in directory.rglob("cgroup.procs"):
                try:
                    pids.update(int(p) for p in procs.read_text().split())
                except (OSError, ValueError):
                    continue
    return pids


def _our_shims(node: NodeLayout) -> list[int]:
    """containerd-shim processes serving our containerd (they name its address)."""
    address = str(node.containerd_socket)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"containerd-shim-runc-v2") and address.encode() in argv:
            found.append(int(entry.name))
    return found


def _kill_all(pids: set[int] | list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue


def _unmount_under(root: Path) -> None:
    """Unmount whatever containerd and the kubelet mounted under `root`, deepest first."""
    prefix = str(root.resolve()) + "/"
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix):
            mounts.append(point)
    for point in sorted(set(mounts), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def down(cluster: Layout, log: Log = _say) -> None:
    """Stop every process of the node and remove its namespaces, cgroups and mounts."""
    node = NodeLayout(cluster)
    for component in (LOCAL_PATH, KUBE_ROUTER, KUBE_PROXY, KUBELET):
        if process.stop(cluster.pid_file(component.name), component.binary()):
            log(f"stopped {component.name}")
    # The pods' processes, by our cgroup subtree; then the shims of our containerd.
    for _ in range(20):
        pids = _cgroup_pids(node)
        if not pids:
            break
        _kill_all(pids)
        time.sleep(0.25)
    _kill_all(_our_shims(node))
    for component in (CONTAINERD, RELAY):
        if process.stop(cluster.pid_file(component.name), component.binary()):
            log(f"stopped {component.name}")
    cluster.egress_socket.unlink(missing_ok=True)
    _unmount_under(node.dir)
    for name in (node.wiring.outside_netns, node.wiring.node_netns):
        if netns.delete(name):
            log(f"removed network namespace {name}")
    for directory in _cgroup_dirs(node, unified=True):
        if not directory.is_dir():
            continue
        children = [p for p in directory.rglob("*") if p.is_dir()]
        for child in [*sorted(children, key=lambda p: len(p.parts), reverse=True), directory]:
            try:
                child.rmdir()
            except OSError as error:
                log(f"warning: could not remove cgroup {child}: {error}")


def leftovers(cluster: Layout) -> list[str]:
    """What of the node is still there (after `down` nothing should be)."""
    node = NodeLayout(cluster)
    found = [
        f"network namespace {n}"
        for n in (node.wiring.node_netns, node.wiring.outside_netns)
        if netns.exists(n)
    ]
    found += [f"cgroup {d}" for d in _cgroup_dirs(node, unified=True) if d.exists()]
    root = str(cluster.root.resolve())
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                argv = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if root in argv:
                found.append(f"process {entry.name}: {argv.replace(chr(0), ' ')[:120]}")
    mounts = Path("/proc/self/mountinfo").read_text()
    found += [
        f"mount {line.split()[4]}"
        for line in mounts.splitlines()
        if line.split()[4].startswith(root + "/")
    ]
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
