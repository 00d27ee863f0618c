"""The identity of one test run, shared by every conftest.py of the suite.

Namespaces of one run share a random prefix, and the run's operator watches only that
prefix. Kept in a module of its own because pytest registers each conftest.py as
`conftest` in turn: `from conftest import ...` would get whichever came last. Import
these from `testrun`.
"""

from __future__ import annotations

import uuid

RESTRICTED_LABELS = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
RUN_ID = uuid.uuid4().hex[:5]
NAMESPACE_PREFIX = f"t{RUN_ID}-"
OPERATOR_NAMESPACE = f"{NAMESPACE_PREFIX}corral-system"
