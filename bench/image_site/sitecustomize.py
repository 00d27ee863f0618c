"""Makes a benchmarked process import what the operator image holds, and nothing more.

On the PYTHONPATH of an operator process started by bench.operator_footprint, with
CORRAL_BENCH_ABSENT naming (comma-separated) the top-level modules of the packages the
tree's images/operator/requirements.txt leaves out: importing one fails as it would in the
image. kopf, for one, imports the kubernetes client's models whenever it can.
"""

import os
import sys

ABSENT = tuple(m for m in os.environ.get("CORRAL_BENCH_ABSENT", "").split(",") if m)


class _NotInTheImage:
    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.split(".", 1)[0] in ABSENT:
            raise ImportError(f"{name} is not in the operator image")


if ABSENT:
    sys.meta_path.insert(0, _NotInTheImage())
