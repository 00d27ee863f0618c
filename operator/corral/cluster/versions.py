"""Pinned versions of the upstream components of the local cluster, and how to build each.

Every component is built from its Go module with the Go toolchain on the machine; nothing
prebuilt is downloaded. Bump a version here and the cache key changes with it.
"""

from __future__ import annotations

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

    @property
    def key(self) -> str:
        return f"{self.name}-{self.version}"


def _kubernetes() -> Component:
    v = KUBERNETES_VERSION
    major, minor = v.lstrip("v").split(".")[:2]
    replaces = "\n".join(
        f"\tk8s.io/{m} => k8s.io/{m} {KUBERNETES_STAGING_VERSION}"
        for m in KUBERNETES_STAGING_MODULES
    )
    go_mod = (
        "module corral.dev/build/kubernetes\n\ngo 1.24\n\n"
        f"require k8s.io/kubernetes {v}\n\nreplace (\n{replaces}\n)\n"
    )
    commands = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kubelet")
    tools = (
        "//go:build tools\n\npackage tools\n\nimport (\n"
        + "".join(f'\t_ "k8s.io/kubernetes/cmd/{c}"\n' for c in commands)
        + ")\n"
    )
    stamp = [
        f"-X k8s.io/component-base/version.gitVersion={v}",
        f"-X k8s.io/component-base/version.gitMajor={major}",
        f"-X k8s.io/component-base/version.gitMinor={minor}",
        "-X k8s.io/component-base/version.gitTreeState=clean",
        f"-X k8s.io/client-go/pkg/version.gitVersion={v}",
        f"-X k8s.io/client-go/pkg/version.gitMajor={major}",
        f"-X k8s.io/client-go/pkg/version.gitMinor={minor}",
    ]
    return Component(
        name="kubernetes",
        version=v,
        binaries=commands,
        wrapper_go_mod=go_mod,
        wrapper_files={"tools.go": tools},
        build_packages=tuple(f"k8s.io/kubernetes/cmd/{c}" for c in commands),
        ldflags=tuple(stamp),
        tags=("selinux", "notest"),
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


COMPONENTS: dict[str, Component] = {c.name: c for c in (_etcd(), _kubernetes(), _kwok(), _helm())}
