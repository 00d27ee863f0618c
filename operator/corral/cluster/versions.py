"""Pinned versions of the upstream components of the local cluster, and how to build each.

Every component is built from its Go module with the Go toolchain on the machine; nothing
prebuilt is downloaded. Bump a version here and the cache key changes with it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

KUBERNETES_VERSION = "v1.34.4"
# k8s.io/kubernetes replaces its staging modules with local paths; a wrapper module pins
# each of them to the matching v0.x release instead.
KUBERNETES_STAGING_VERSION = "v0." + KUBERNETES_VERSION.split(".", 1)[1]
KUBERNETES_STAGING_MODULES = (
    "api",
    "apiextensions-apiserver",
    "apimachinery",
    "apiserver",
    "cli-runtime",
    "client-go",
    "cloud-provider",
    "cluster-bootstrap",
    "code-generator",
    "component-base",
    "component-helpers",
    "controller-manager",
    "cri-api",
    "cri-client",
    "csi-translation-lib",
    "dynamic-resource-allocation",
    "endpointslice",
    "externaljwt",
    "kms",
    "kube-aggregator",
    "kube-controller-manager",
    "kube-proxy",
    "kube-scheduler",
    "kubectl",
    "kubelet",
    "metrics",
    "mount-utils",
    "pod-security-admission",
    "sample-apiserver",
    "sample-cli-plugin",
    "sample-controller",
)
ETCD_VERSION = "v3.5.35"
KWOK_VERSION = "v0.7.0"
HELM_VERSION = "v3.20.2"
# The real node's add-ons (built only for `corral cluster up --real-node`).
COREDNS_VERSION = "v1.15.0"
# The newest kube-router/v2 the Go module proxy serves here (later tags are refused).
KUBE_ROUTER_VERSION = "v2.1.0"
# v0.0.31+ are refused by the module proxy or its checksum database here.
LOCAL_PATH_PROVISIONER_VERSION = "v0.0.30"
# CoreDNS plugins compiled in: what a cluster DNS that answers only for the cluster needs.
# No `forward`: names outside cluster.local get no answer (pods have no route out anyway).
COREDNS_PLUGINS = (
    "cache",
    "errors",
    "health",
    "kubernetes",
    "loadbalance",
    "log",
    "ready",
    "template",
)

CONTROL_PLANE = "control-plane"
NODE = "node"


@dataclass(frozen=True)
class Component:
    """One cache entry: a set of binaries built together from one Go module setup."""

    name: str
    version: str
    binaries: tuple[str, ...]
    # Either a `go install`-able package path (module@version), or a generated wrapper module.
    install_package: str | None = None
    wrapper_go_mod: str | None = None
    wrapper_files: dict[str, str] = field(default_factory=dict)
    build_packages: tuple[str, ...] = ()
    ldflags: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    # CONTROL_PLANE: built by `corral cluster build`; NODE: only for the real node.
    group: str = CONTROL_PLANE
    # Set when one version is built in more than one way (e.g. CoreDNS's plugin set).
    variant: str = ""

    @property
    def key(self) -> str:
        suffix = f"-{self.variant}" if self.variant else ""
        return f"{self.name}-{self.version}{suffix}"


def _kubernetes_wrapper(name: str, commands: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    """A module requiring k8s.io/kubernetes with its staging modules pinned, and a tools.go."""
    replaces = "\n".join(
        f"\tk8s.io/{m} => k8s.io/{m} {KUBERNETES_STAGING_VERSION}"
        for m in KUBERNETES_STAGING_MODULES
    )
    go_mod = (
        f"module corral.dev/build/{name}\n\ngo 1.24\n\n"
        f"require k8s.io/kubernetes {KUBERNETES_VERSION}\n\nreplace (\n{replaces}\n)\n"
    )
    tools = (
        "//go:build tools\n\npackage tools\n\nimport (\n"
        + "".join(f'\t_ "k8s.io/kubernetes/cmd/{c}"\n' for c in commands)
        + ")\n"
    )
    return go_mod, {"tools.go": tools}


def _kubernetes_stamp() -> tuple[str, ...]:
    v = KUBERNETES_VERSION
    major, minor = v.lstrip("v").split(".")[:2]
    return (
        f"-X k8s.io/component-base/version.gitVersion={v}",
        f"-X k8s.io/component-base/version.gitMajor={major}",
        f"-X k8s.io/component-base/version.gitMinor={minor}",
        "-X k8s.io/component-base/version.gitTreeState=clean",
        f"-X k8s.io/client-go/pkg/version.gitVersion={v}",
        f"-X k8s.io/client-go/pkg/version.gitMajor={major}",
        f"-X k8s.io/client-go/pkg/version.gitMinor={minor}",
    )


def _kubernetes() -> Component:
    # The kubelet is a node component (below): only the e2e suite's real node runs it, and
    # its build runs beside the other suites instead of before the first test.
    commands = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
    go_mod, files = _kubernetes_wrapper("kubernetes", commands)
    return Component(
        name="kubernetes",
        version=KUBERNETES_VERSION,
        binaries=commands,
        wrapper_go_mod=go_mod,
        wrapper_files=files,
        build_packages=tuple(f"k8s.io/kubernetes/cmd/{c}" for c in commands),
        ldflags=_kubernetes_stamp(),
        tags=("selinux", "notest"),
    )


def _kubernetes_node_command(command: str) -> Component:
    # Its own cache entry, so that the control plane's entry is not rebuilt for it; the Go
    # build cache shares every package they have in common.
    go_mod, files = _kubernetes_wrapper(command, (command,))
    return Component(
        name=command,
        version=KUBERNETES_VERSION,
        binaries=(command,),
        wrapper_go_mod=go_mod,
        wrapper_files=files,
        build_packages=(f"k8s.io/kubernetes/cmd/{command}",),
        ldflags=_kubernetes_stamp(),
        tags=("selinux", "notest"),
        group=NODE,
    )


def _etcd() -> Component:
    main = (
        'package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\n'
        "func main() { etcdmain.Main(os.Args) }\n"
    )
    go_mod = (
        "module corral.dev/build/etcd\n\ngo 1.24\n\n"
        f"require go.etcd.io/etcd/server/v3 {ETCD_VERSION}\n"
    )
    return Component(
        name="etcd",
        version=ETCD_VERSION,
        binaries=("etcd",),
        wrapper_go_mod=go_mod,
        wrapper_files={"main.go": main},
        build_packages=(".",),
    )


def _kwok() -> Component:
    return Component(
        name="kwok",
        version=KWOK_VERSION,
        binaries=("kwok",),
        install_package=f"sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}",
        ldflags=(f"-X sigs.k8s.io/kwok/pkg/consts.Version={KWOK_VERSION}",),
    )


def _helm() -> Component:
    return Component(
        name="helm",
        version=HELM_VERSION,
        binaries=("helm",),
        install_package=f"helm.sh/helm/v3/cmd/helm@{HELM_VERSION}",
        ldflags=(f"-X helm.sh/helm/v3/internal/version.version={HELM_VERSION}",),
    )


def _coredns() -> Component:
    # CoreDNS's own main imports all ~60 plugins (cloud DNS SDKs included); this one imports
    # only COREDNS_PLUGINS, which cuts the cold build by minutes.
    imports = "".join(f'\t_ "github.com/coredns/coredns/plugin/{p}"\n' for p in COREDNS_PLUGINS)
    main = (
        "package main\n\nimport (\n"
        '\t"github.com/coredns/coredns/coremain"\n'
        f"{imports})\n\nfunc main() {{ coremain.Run() }}\n"
    )
    go_mod = (
        "module corral.dev/build/coredns\n\ngo 1.26.0\n\n"
        f"require github.com/coredns/coredns {COREDNS_VERSION}\n"
    )
    return Component(
        name="coredns",
        version=COREDNS_VERSION,
        binaries=("coredns",),
        wrapper_go_mod=go_mod,
        wrapper_files={"main.go": main},
        build_packages=(".",),
        group=NODE,
        variant=hashlib.sha256(",".join(COREDNS_PLUGINS).encode()).hexdigest()[:8],
    )


def _kube_router() -> Component:
    module = "github.com/cloudnativelabs/kube-router/v2"
    return Component(
        name="kube-router",
        version=KUBE_ROUTER_VERSION,
        binaries=("kube-router",),
        install_package=f"{module}/cmd/kube-router@{KUBE_ROUTER_VERSION}",
        ldflags=(f"-X {module}/pkg/version.Version={KUBE_ROUTER_VERSION}",),
        group=NODE,
    )


def _local_path_provisioner() -> Component:
    return Component(
        name="local-path-provisioner",
        version=LOCAL_PATH_PROVISIONER_VERSION,
        binaries=("local-path-provisioner",),
        install_package=(
            f"github.com/rancher/local-path-provisioner@{LOCAL_PATH_PROVISIONER_VERSION}"
        ),
        ldflags=(f"-X main.VERSION={LOCAL_PATH_PROVISIONER_VERSION}",),
        group=NODE,
    )


COMPONENTS: dict[str, Component] = {
    c.name: c
    for c in (
        _etcd(),
        _kubernetes(),
        _kwok(),
        _helm(),
        _kubernetes_node_command("kubelet"),
        _kubernetes_node_command("kube-proxy"),
        _coredns(),
        _kube_router(),
        _local_path_provisioner(),
    )
}
CONTROL_PLANE_COMPONENTS = tuple(n for n, c in COMPONENTS.items() if c.group == CONTROL_PLANE)
NODE_COMPONENTS = tuple(n for n, c in COMPONENTS.items() if c.group == NODE)
