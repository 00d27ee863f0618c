"""aiohttp's web server, imported without aiohttp's HTTP client.

`import aiohttp` runs its `__init__`, which imports the client and its connector; the
connector builds two TLS contexts at import time, loading every CA certificate: with the
client's other modules about 0.1 CPU-seconds, the largest single cost of the runner's
start, for a client the runner needs only for activity reports, after its agents start.
The server's modules do not need the client, so the package is put in place without its
`__init__` (corral.runner.lazy_package): `aiohttp.ClientSession` and the rest still load
on first use. A process that imported aiohttp already (a test run) keeps it as it is.
"""

from __future__ import annotations

from corral.runner import lazy_package

lazy_package.install("aiohttp", submodules_as_names=True, version_from_source=True)

# ruff: noqa: E402 -- the imports below must follow install().
from aiohttp import web
from aiohttp.http_websocket import WSMsgType

__all__ = ["WSMsgType", "web"]
