"""Import parts of a package without running its `__init__` until something needs it.

Some packages' `__init__` imports far more than the runner's start-up uses: the SDK's
imports the MCP server stack (corral.runner.sdk), aiohttp's imports its HTTP client, whose
connector builds two TLS contexts (loading every CA certificate) at import time
(corral.runner.web). `install` puts the package in `sys.modules` as a module object whose
submodules import as usual and whose first other name loads the real `__init__` into that
same object (PEP 562 `__getattr__`): code that asks for those names still gets them.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import types
from typing import Any

_VERSION_LINE = re.compile(r"""^__version__\s*=\s*["']([^"']+)["']""", re.MULTILINE)


def install(
    name: str, *, submodules_as_names: bool = False, version_from_source: bool = False
) -> types.ModuleType | None:
    """Put package `name` in place without its `__init__`; None (and nothing done) when it
    is imported already or not installed.

    `submodules_as_names`: a name that is a submodule is that submodule, not a reason to
    load `__init__` (the package's own `from . import hdrs`); only for a package whose
    `__init__` binds no submodule's name to anything else.
    `version_from_source`: set `__version__` from its `__init__`'s source, for submodules
    that import it (a dunder is never loaded through `__getattr__`).
    """
    if name in sys.modules:
        return None
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return None  # not installed: the imports that follow fail with the usual error
    package = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def load(attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        if submodules_as_names and importlib.util.find_spec(f"{name}.{attr}") is not None:
            return importlib.import_module(f"{name}.{attr}")
        vars(package).pop("__getattr__", None)
        loader.exec_module(package)  # the real __init__, into this same module object
        return getattr(package, attr)

    if version_from_source and spec.origin:
        with open(spec.origin, encoding="utf-8") as source:
            found = _VERSION_LINE.search(source.read())
        if found:
            package.__version__ = found.group(1)  # type: ignore[attr-defined]
    setattr(package, "__getattr__", load)  # noqa: B010 (a module's PEP 562 hook)
    sys.modules[name] = package
    return package
