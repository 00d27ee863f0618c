"""Which session a connection to the egress proxy comes from: its source pod IP.

Fed by the gateway's informers (AgentSessions and the pods the operator made), beside the
routing Directory. A pod IP is reused once its pod has finished, so only pods that are not
Succeeded or Failed count, and an address claimed by two live pods identifies nobody.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from corral.gateway.egress_policy import DomainRule, EgressPolicy, policy_from_spec

JSON = dict[str, Any]
Key = tuple[str, str]
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True)
class Caller:
    namespace: str
    name: str  # the session
    uid: str
    pod: str
    policy: EgressPolicy


@dataclass
class _Pod:
    ips: tuple[str, ...]
    owner: str


@dataclass
class EgressIndex:
    # Domains every session may reach (e.g. the model API when it is not behind the gateway).
    extra_domains: Sequence[DomainRule] = ()
    _sessions: dict[str, tuple[Key, EgressPolicy]] = field(default_factory=dict)  # by UID
    _pods: dict[Key, _Pod] = field(default_factory=dict)  # (namespace, pod name)
    _by_ip: dict[str, set[Key]] = field(default_factory=dict)

    def on_session(self, kind: str, body: JSON) -> None:
        meta = body.get("metadata") or {}
        uid = str(meta.get("uid", ""))
        if kind == "DELETED":
            self._sessions.pop(uid, None)
            return
        key = (str(meta.get("namespace")), str(meta.get("name")))
        self._sessions[uid] = (key, policy_from_spec(body.get("spec"), self.extra_domains))

    def on_pod(self, kind: str, body: JSON) -> None:
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        self._forget(key)
        if kind == "DELETED":
            return
        status = body.get("status") or {}
        if status.get("phase") in TERMINAL_PHASES:
            return  # its address may already belong to another pod
        owners = [o.get("uid") for o in meta.get("ownerReferences") or () if o.get("controller")]
        ips = {str(ip.get("ip")) for ip in status.get("podIPs") or () if ip.get("ip")}
        if status.get("podIP"):
            ips.add(str(status["podIP"]))
        if not owners or not ips:
            return
        pod = _Pod(tuple(sorted(ips)), str(owners[0]))
        self._pods[key] = pod
        for ip in pod.ips:
            self._by_ip.setdefault(ip, set()).add(key)

    def _forget(self, key: Key) -> None:
        pod = self._pods.pop(key, None)
        if pod is None:
            return
        for ip in pod.ips:
            keys = self._by_ip.get(ip)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_ip[ip]

    def caller(self, ip: str) -> Caller | None:
        """The session whose live pod has this address; None for anyone else."""
        keys = self._by_ip.get(ip)
        if not keys or len(keys) != 1:
            return None
        (pod_key,) = keys
        pod = self._pods[pod_key]
        session = self._sessions.get(pod.owner)
        if session is None or session[0][0] != pod_key[0]:
            return None
        (namespace, name), policy = session
        return Caller(namespace, name, pod.owner, pod_key[1], policy)
