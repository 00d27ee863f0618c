"""The files and ports of one local cluster, and the command line of each component."""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from corral.cluster import pki
from corral.cluster.build import binary_path

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
# Fake nodes: KWOK manages Node objects carrying this annotation and gives their pods IPs
# from a range nothing on this machine routes to (no packet is ever sent there).
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_POD_CIDR = "10.244.0.0/16"
# Pods annotated with this are left alone by KWOK, so tests can drive their status.
KWOK_CUSTOM_STATUS_ANNOTATION = "kwok.x-k8s.io/status"

# The real node (`corral cluster up --real-node`, see node.py) lives in network namespaces
# of its own: these addresses exist only there, never in the host's namespace.
REAL_NODE_NAME = "corral-node"
REAL_NODE_IP = "10.245.255.1"  # on the node namespace's loopback; the API server's address
REAL_NODE_POD_CIDR = "10.245.0.0/24"
CLUSTER_DNS_IP = "10.96.0.10"

ADMISSION_PLUGINS = (
    "NamespaceLifecycle,LimitRanger,ServiceAccount,PodSecurity,DefaultStorageClass,"
    "DefaultTolerationSeconds,NodeRestriction,Priority,RuntimeClass,StorageObjectInUseProtection,"
    "PersistentVolumeClaimResize,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,"
    "ValidatingAdmissionPolicy,ResourceQuota"
)


@dataclass
class Layout:
    root: Path
    ports: dict[str, int] = field(default_factory=dict)
    # Started for a real node: the API server advertises the node-side address and reaches
    # the kubelet and pods through the node's relay (an egress selector).
    real_node: bool = False

    @property
    def state_file(self) -> Path:
        return self.root / "cluster.json"

    @property
    def certs(self) -> pki.Pki:
        return pki.Pki(self.root / "pki")

    def log_file(self, component: str) -> Path:
        return self.root / "logs" / f"{component}.log"

    def pid_file(self, component: str) -> Path:
        return self.root / "pids" / f"{component}.pid"

    def kubeconfig(self, identity: pki.ClientIdentity) -> Path:
        return self.root / f"{identity.filename}.kubeconfig"

    @property
    def apiserver_url(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    @property
    def egress_socket(self) -> Path:
        """Where the node's relay takes the API server's connections to the cluster."""
        return self.root / "egress.sock"

    @property
    def egress_selector_config(self) -> Path:
        return self.root / "egress-selector.yaml"

    @property
    def audit_policy(self) -> Path:
        return self.root / "audit-policy.yaml"

    @property
    def audit_log(self) -> Path:
        """With a real node: what ServiceAccounts outside kube-system asked the API server
        (metadata only), e.g. to check the operator's RBAC against what it really used."""
        return self.root / "logs" / "audit.log"

    def write_audit_policy(self) -> Path:
        policy = {
            "apiVersion": "audit.k8s.io/v1",
            "kind": "Policy",
            "omitStages": ["RequestReceived"],
            "rules": [
                {"level": "None", "userGroups": ["system:serviceaccounts:kube-system"]},
                {"level": "Metadata", "userGroups": ["system:serviceaccounts"]},
                {"level": "None"},
            ],
        }
        self.audit_policy.write_text(yaml.safe_dump(policy))
        return self.audit_policy

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        data = {"root": str(self.root), "ports": self.ports, "realNode": self.real_node}
        self.state_file.write_text(json.dumps(data, indent=1))

    @classmethod
    def load(cls, root: Path) -> Layout | None:
        try:
            data = json.loads((root / "cluster.json").read_text())
        except (OSError, ValueError):
            return None
        return cls(
            root=root,
            ports={k: int(v) for k, v in data["ports"].items()},
            real_node=bool(data.get("realNode", False)),
        )

    def write_egress_selector_config(self) -> Path:
        config = {
            "apiVersion": "apiserver.k8s.io/v1beta1",
            "kind": "EgressSelectorConfiguration",
            "egressSelections": [
                {
                    "name": "cluster",
                    "connection": {
                        "proxyProtocol": "HTTPConnect",
                        "transport": {"uds": {"udsName": str(self.egress_socket)}},
                    },
                }
            ],
        }
        self.egress_selector_config.write_text(yaml.safe_dump(config))
        return self.egress_selector_config

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def write_kubeconfig(self, identity: pki.ClientIdentity) -> Path:
        """A self-contained kubeconfig (certs inlined) for one client identity."""
        certs = self.certs

        def b64(path: Path) -> str:
            return base64.b64encode(path.read_bytes()).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "corral",
                    "cluster": {
                        "server": self.apiserver_url,
                        "certificate-authority-data": b64(certs.ca_cert),
                    },
                }
            ],
            "users": [
                {
                    "name": identity.user,
                    "user": {
                        "client-certificate-data": b64(certs.cert(identity.filename)),
                        "client-key-data": b64(certs.key(identity.filename)),
                    },
                }
            ],
            "contexts": [
                {"name": "corral", "context": {"cluster": "corral", "user": identity.user}}
            ],
            "current-context": "corral",
        }
        path = self.kubeconfig(identity)
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path


def etcd_argv(layout: Layout) -> list[str]:
    client = f"http://127.0.0.1:{layout.ports['etcd-client']}"
    peer = f"http://127.0.0.1:{layout.ports['etcd-peer']}"
    return [
        str(binary_path("etcd")),
        "--name=corral",
        f"--data-dir={layout.root / 'etcd'}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=corral={peer}",
        "--listen-metrics-urls=",
        # A test cluster: durability across power loss is not worth the fsync latency.
        "--unsafe-no-fsync",
        "--quota-backend-bytes=8589934592",
        "--log-level=warn",
    ]


def apiserver_argv(layout: Layout) -> list[str]:
    certs = layout.certs
    if layout.real_node:
        # Pods reach the API server (the `kubernetes` Service) at the node-side address,
        # where the node's relay forwards to this loopback port; the API server's own
        # connections to kubelets and pods go through the relay's CONNECT proxy.
        node_flags = [
            f"--advertise-address={REAL_NODE_IP}",
            f"--egress-selector-config-file={layout.egress_selector_config}",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            f"--audit-policy-file={layout.audit_policy}",
            f"--audit-log-path={layout.audit_log}",
            "--audit-log-maxsize=100",
            "--audit-log-maxbackup=1",
        ]
    else:
        node_flags = ["--advertise-address=127.0.0.1"]
    return [
        str(binary_path("kube-apiserver")),
        f"--etcd-servers=http://127.0.0.1:{layout.ports['etcd-client']}",
        "--bind-address=127.0.0.1",
        *node_flags,
        f"--secure-port={layout.ports['apiserver']}",
        f"--tls-cert-file={certs.cert('apiserver')}",
        f"--tls-private-key-file={certs.key('apiserver')}",
        f"--client-ca-file={certs.ca_cert}",
        "--authorization-mode=Node,RBAC",
        f"--enable-admission-plugins={ADMISSION_PLUGINS}",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={certs.path('service-account.pub')}",
        f"--service-account-signing-key-file={certs.key('service-account')}",
        f"--api-audiences={SERVICE_ACCOUNT_ISSUER}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        f"--kubelet-client-certificate={certs.cert(pki.APISERVER_KUBELET_CLIENT.filename)}",
        f"--kubelet-client-key={certs.key(pki.APISERVER_KUBELET_CLIENT.filename)}",
        "--allow-privileged=true",
        "--profiling=false",
        "--event-ttl=1h",
        "--v=1",
    ]


# KWOK-only clusters: how long the node controller waits for a node's heartbeat before it
# marks the node, and every pod on it, not ready. KWOK readies a pod once, when it starts it,
# and never again (a kubelet would put Ready back at its next status sync), so a control plane
# outage past the default 50 s (etcd down, the API server slow to come back) left pods
# Running and not ready for good: a chaos run on a slow machine saw 81 sessions Pending that
# way. Real-node clusters keep the default: tests/e2e/test_node_faults.py relies on it.
KWOK_NODE_MONITOR_GRACE = "10m"


def controller_manager_argv(layout: Layout) -> list[str]:
    certs = layout.certs
    kubeconfig = layout.kubeconfig(pki.CONTROLLER_MANAGER)
    node_grace = [f"--node-monitor-grace-period={KWOK_NODE_MONITOR_GRACE}"]
    if layout.real_node:
        node_grace = []
    return [
        str(binary_path("kube-controller-manager")),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={layout.ports['controller-manager']}",
        f"--service-account-private-key-file={certs.key('service-account')}",
        f"--root-ca-file={certs.ca_cert}",
        f"--cluster-signing-cert-file={certs.ca_cert}",
        f"--cluster-signing-key-file={certs.key('ca')}",
        "--use-service-account-credentials=true",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--leader-elect=false",
        "--profiling=false",
        *node_grace,
        "--v=1",
    ]


def scheduler_argv(layout: Layout) -> list[str]:
    kubeconfig = layout.kubeconfig(pki.SCHEDULER)
    return [
        str(binary_path("kube-scheduler")),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={layout.ports['scheduler']}",
        "--leader-elect=false",
        "--profiling=false",
        # A pod the scheduler found unschedulable waits for an event that may make it fit;
        # one missed across an API server restart (seen in the chaos runs: a Hybrid pod
        # whose claim bound meanwhile) would leave it waiting the default 5 minutes.
        "--pod-max-in-unschedulable-pods-duration=30s",
        "--v=1",
    ]


def kwok_argv(layout: Layout) -> list[str]:
    return [
        str(binary_path("kwok")),
        f"--kubeconfig={layout.kubeconfig(pki.ADMIN)}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
        f"--disregard-status-with-annotation-selector={KWOK_CUSTOM_STATUS_ANNOTATION}=custom",
        f"--cidr={KWOK_POD_CIDR}",
        "--node-ip=10.244.255.254",
        f"--server-address=127.0.0.1:{layout.ports['kwok']}",
        "--node-lease-duration-seconds=40",
    ]
