"""What the fake Anthropic API answers: scripted replies and faults.

A test queues `Step`s; each Messages request takes the first step whose `match` fits.
Steps are pydantic models so the same shapes arrive over the admin HTTP endpoints.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Taken only by a request whose JSON body contains this substring (None: any request).
    match: str | None = None
    # How many requests this step answers before it leaves the script.
    times: int = Field(1, ge=1)


class StreamShape(BaseModel):
    """Timing and breakage of a streamed reply."""

    model_config = ConfigDict(extra="forbid")

    # Seconds to wait before each SSE event (a slow stream).
    event_delay: float = Field(0.0, ge=0, le=60)
    # Close the connection after this many events, before message_stop (a dropped stream).
    drop_after: int | None = Field(None, ge=0)


class ReplyUsage(BaseModel):
    """Token counts to report; None means estimate from the request and reply sizes."""

    model_config = ConfigDict(extra="forbid")

    input_tokens: int | None = Field(None, ge=0)
    output_tokens: int | None = Field(None, ge=0)
    cache_read_input_tokens: int = Field(0, ge=0)
    cache_creation_input_tokens: int = Field(0, ge=0)
    # Of the cache writes, those kept an hour (usage.cache_creation.ephemeral_1h_input_tokens).
    cache_creation_1h_input_tokens: int = Field(0, ge=0)
    # Server tool use (usage.server_tool_use), reported at the end of a reply.
    web_search_requests: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _hour_writes_are_writes(self) -> ReplyUsage:
        if self.cache_creation_1h_input_tokens > self.cache_creation_input_tokens:
            raise ValueError(
                "cache_creation_1h_input_tokens is part of cache_creation_input_tokens: "
                "at most as many"
            )
        return self


class TextStep(_Step):
    kind: Literal["text"] = "text"
    # `{last_user}` is replaced by the last user text of the request (an echo).
    text: str
    usage: ReplyUsage = Field(default_factory=ReplyUsage)
    stream: StreamShape = Field(default_factory=StreamShape)


class ToolUseStep(_Step):
    kind: Literal["tool_use"] = "tool_use"
    name: str
    input: dict[str, Any]
    # Optional text block before the tool call, as the real model often sends.
    text: str | None = None
    usage: ReplyUsage = Field(default_factory=ReplyUsage)
    stream: StreamShape = Field(default_factory=StreamShape)


class ErrorStep(_Step):
    """An HTTP error reply, e.g. 429 rate_limit_error, 500 api_error, 529 overloaded_error."""

    kind: Literal["error"] = "error"
    status: int = Field(..., ge=400, le=599)
    error_type: str | None = None
    message: str = "fake error"
    retry_after: float | None = Field(None, ge=0)


Step = Annotated[TextStep | ToolUseStep | ErrorStep, Field(discriminator="kind")]


class Script(BaseModel):
    """Body of `POST /_fake/script`: steps to append, and optionally a new default."""

    model_config = ConfigDict(extra="forbid")

    steps: list[Step] = Field(default_factory=list)
    default: TextStep | None = None
    replace: bool = False


ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def error_type_for(step: ErrorStep) -> str:
    return step.error_type or ERROR_TYPES.get(step.status, "api_error")


def text(value: str, **kwargs: Any) -> TextStep:
    """Shorthand for tests: `text("hi", match="...")`."""
    return TextStep(text=value, **kwargs)


def bash(command: str, **kwargs: Any) -> ToolUseStep:
    """A reply asking the CLI to run `command` with its Bash tool."""
    return ToolUseStep(name="Bash", input={"command": command, "description": "run"}, **kwargs)


def error(status: int, **kwargs: Any) -> ErrorStep:
    return ErrorStep(status=status, **kwargs)
