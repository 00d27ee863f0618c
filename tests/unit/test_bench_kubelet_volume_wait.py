"""bench.kubelet_volume_wait reads each pod's steps from the kubelet's own log lines."""

from __future__ import annotations

from bench.kubelet_volume_wait import steps_from_log

LOG = """\
I1205 08:07:31.055689   11668 kubelet.go:1909] "SyncPod enter" pod="default/v1" podUID="96c3"
I1205 08:07:31.057390 11668 vm.go:421] "Waiting for volumes to attach and mount" pod="default/v1"
I1205 08:07:31.108350   11668 dsw.go:318] "Added volume to desired state" pod="default/v1"
I1205 08:07:31.357716 11668 vm.go:482] "All volumes are attached and mounted" pod="default/v1"
I1205 08:07:31.445066   11668 krm.go:1351] "Created PodSandbox for pod" pod="default/v1"
I1205 08:07:31.500000   11668 kubelet.go:1909] "SyncPod enter" pod="default/other" podUID="1"
I1205 08:07:31.514240   11668 kubelet.go:1915] "SyncPod exit" pod="default/v1"
I1205 08:07:31.985000   11668 kubelet.go:1909] "SyncPod enter" pod="default/v1" podUID="96c3"
I1205 08:07:32.001000   11668 kubelet.go:1915] "SyncPod exit" pod="default/v1"
W1205 08:07:32.100000   11668 kubelet.go:1915] "SyncPod exit" pod="default/n1" podUID="2"
"""


def test_steps_are_milliseconds_after_the_first_sync_of_each_named_pod() -> None:
    steps = steps_from_log(LOG, ["v1", "n1"])
    assert steps == {
        "v1": {
            "waiting_for_volumes": 1.7,
            "volumes_mounted": 302.0,
            "sandbox_created": 389.4,
            "sync_exit": 458.6,  # the first exit, not a later sync's
        }
    }  # n1: a warning line and no `SyncPod enter`; `other` was not asked for
