"""`corral run -f TASK.yaml`: an Ephemeral session from a file, its progress and result."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text

from corral.client.aio import AsyncClient, to_manifest
from corral.client.errors import CorralError
from corral.client.sessions import Session, cost

if TYPE_CHECKING:
    from rich.console import Console


def load_task(path: str) -> dict[str, Any]:
    """The manifest in `path` (or stdin for `-`), made Ephemeral; named after the file
    (generateName) when it has no name."""
    import sys

    import yaml

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as error:
        raise CorralError(f"cannot read {path}: {error.strerror}", "check the path") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise CorralError(f"{path} is not valid YAML: {str(error)[:200]}", "fix it") from None
    manifest = to_manifest(document)
    spec = manifest["spec"]
    pattern = spec.setdefault("pattern", "Ephemeral")
    if pattern != "Ephemeral":
        raise CorralError(
            f"{path}: spec.pattern is {pattern!r}; run makes Ephemeral sessions",
            "set spec.pattern: Ephemeral (or omit it), or create it with kubectl apply",
        )
    meta = manifest["metadata"]
    if not meta.get("name") and not meta.get("generateName"):
        stem = "".join(c if c.isalnum() else "-" for c in Path(path).stem.lower()).strip("-")
        meta["generateName"] = (stem[:40] or "task") + "-"
    return manifest


def progress_line(session: Session) -> str:
    turns = "-" if session.num_turns is None else str(session.num_turns)
    return f"{session.ref}: {session.phase} · {turns} turns · {cost(session.total_cost_usd)}"


async def run_task(
    client: AsyncClient,
    path: str,
    namespace: str | None,
    wait: bool,
    remove: bool,
    timeout_seconds: float | None,
    out: Console,
) -> int:
    session = await client.create(load_task(path), namespace)
    out.print(f"{session.ref}: created")
    if not wait:
        return 0
    with out.status(progress_line(session)) as status:

        def show(current: Session) -> None:
            status.update(progress_line(current))
            if not out.is_terminal:
                out.print(progress_line(current))

        final = await client.wait(session.ref, timeout_seconds=timeout_seconds, on_change=show)
    result = final.result or {}
    if final.result_text:
        out.print(final.result_text, markup=False, soft_wrap=True)
    subtype = result.get("subtype") or final.explanation() or "no result"
    style = "green" if final.succeeded else "red"
    summary = (
        f" ({subtype}) · {result.get('numTurns', '-')} turns · {cost(result.get('totalCostUsd'))}"
    )
    out.print(Text(f"{final.ref}: {final.phase}", style=style) + Text(summary), soft_wrap=True)
    if remove:
        await client.delete(final.ref)
        out.print(f"{final.ref}: deleted")
    return 0 if final.succeeded else 1
