"""`corral.client`: talk to AgentSessions from Python with your own Kubernetes credentials.

Sessions are created, listed and watched through the API server; messages, interrupts
and transcripts go through the session gateway (docs/client.md).

    from corral.client import Client
    with Client() as corral:
        print(corral.ask("demo/chat", "hello").text)
"""

from corral.client.aio import AsyncClient, AsyncStream
from corral.client.errors import CorralError, NotFound
from corral.client.events import Event, Reply
from corral.client.sessions import Ref, Session
from corral.client.sync import Client, Stream

__all__ = [
    "AsyncClient",
    "AsyncStream",
    "Client",
    "CorralError",
    "Event",
    "NotFound",
    "Ref",
    "Reply",
    "Session",
    "Stream",
]
