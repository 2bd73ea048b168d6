"""Messages shared by the controller, agents and instances (one definition, both sides).

Everything that crosses a process boundary is a dataclass here, serialised as JSON with
`to_json_dict` / `from_json_dict`. Policy views (`InstanceLoad`) are reused as they are.

Wire formats (details in docs/architecture.md):
- instance token streams are NDJSON, one `StreamEvent` per line;
- every control call carries `Authorization: Bearer <cluster secret>`.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from llumctl.policy.views import InstanceLoad, Priority, RequestLoad

T = TypeVar("T")

PROTOCOL_VERSION = 1
AUTH_HEADER = "Authorization"


def bearer(secret: str) -> dict[str, str]:
    """Headers carrying the cluster secret."""
    return {AUTH_HEADER: f"Bearer {secret}"}


@dataclass(frozen=True)
class SamplingParams:
    """The OpenAI sampling fields an instance understands."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    ignore_eos: bool = False

    def migration_refusal(self) -> str | None:
        """Why a request with these params cannot be live-migrated, or None if it can.

        Their state lives in the source engine and is not carried across the splice.
        """
        if self.n != 1:
            return "n>1"
        if self.seed is not None:
            return "seeded-sampling"
        if self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0:
            return "output-token-penalties"
        if self.stop:
            # The engine matches stop strings on the text it decoded itself; a resumed
            # request would miss one that spans the splice.
            return "stop-strings"
        return None


@dataclass(frozen=True)
class GenerateRequest:
    """Controller -> instance: start one request."""

    request_id: str
    # Exactly one of prompt / prompt_token_ids / messages (chat; the instance applies the
    # model's chat template).
    prompt: str | None = None
    prompt_token_ids: tuple[int, ...] | None = None
    messages: tuple[dict[str, Any], ...] | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    priority: Priority = Priority.NORMAL


class EventType(str, enum.Enum):
    TOKEN = "token"
    FINISHED = "finished"
    MIGRATED = "migrated"
    ERROR = "error"


@dataclass(frozen=True)
class StreamEvent:
    """One line of an instance's NDJSON token stream.

    `index` is the output-token index (0 = first generated token). A stream that ends with
    `migrated` continues on `to_url` by attaching at index `at`: the client's stream is
    spliced without gap or duplicate.
    """

    type: EventType
    index: int = -1
    token_id: int = -1
    # Text this token adds to the output (may be "" while a multi-byte char is incomplete).
    text: str = ""
    # finished
    finish_reason: str | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    # migrated
    to_instance: str | None = None
    to_url: str | None = None
    at: int = -1
    # error
    message: str | None = None
    status: int = 0


@dataclass(frozen=True)
class InstanceInfo:
    """What an instance is: reported with its load, listed by the controller."""

    instance_id: str
    # Base URL of the instance API (e.g. http://10.0.0.5:7100/instances/i-3).
    url: str
    # "vllm" or "sim"; "sim" is a simulated engine and is labelled so everywhere.
    engine: str
    model: str
    host: str = "localhost"
    device: str = ""
    agent_id: str = ""
    # Migration only pairs instances with equal fingerprints (model, dtype, block size, TP).
    fingerprint: str = ""
    # "starting", "running", "draining", "stopped", "failed".
    state: str = "running"
    max_model_len: int = 0


@dataclass(frozen=True)
class LoadReport:
    """Instance (llumlet) -> controller, on change and at least every report period."""

    info: InstanceInfo
    load: InstanceLoad
    # Tokens generated per second over the last report period.
    tokens_per_s: float = 0.0
    # Preemptions since the engine started (a counter; -1 = the engine does not count).
    num_preemptions_total: int = -1


@dataclass(frozen=True)
class MigrationResult:
    """Outcome of one request's migration, as the source llumlet reports it."""

    request_id: str
    src: str
    dst: str
    # "committed" or "aborted".
    status: str
    # Stable reason name when aborted (see agent/llumlet.py MigrationAbort).
    reason: str = ""
    mode: str = "live"
    # From the stop on the source to the resume on the destination.
    downtime_ms: float = 0.0
    num_stages: int = 0
    num_blocks: int = 0
    # Output tokens generated before the splice.
    at: int = 0


# ---- JSON conversion -------------------------------------------------------------------


def to_json_dict(obj: Any) -> Any:
    """Dataclasses, enums, tuples -> plain JSON values (infinite floats become strings)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_json_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (list, tuple)):
        return [to_json_dict(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): to_json_dict(v) for k, v in obj.items()}
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return str(obj)
    return obj


def from_json_dict(cls: type[T], data: Any) -> T:
    """Inverse of `to_json_dict` for the dataclasses of this module and llumctl.policy.

    Unknown keys are ignored (forward compatibility); a missing required key or a wrong
    type raises ValueError with the field name.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
    kwargs: dict[str, Any] = {}
    for name, hint in _field_hints(cls):
        if name in data:
            try:
                kwargs[name] = _convert(hint, data[name])
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{cls.__name__}.{name}: {exc}") from None
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"{cls.__name__}: {exc}") from None


@functools.cache
def _field_hints(cls: type) -> tuple[tuple[str, Any], ...]:
    """(name, resolved type) of a dataclass's fields. Cached: resolving string annotations
    is ~100 us a call, and the controller parses every relayed token event."""
    hints = typing.get_type_hints(cls)
    return tuple((f.name, hints[f.name]) for f in dataclasses.fields(cls))


def _convert(hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if value is None:
        return None
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value) if len(inner) == 1 else value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"expected a list, got {type(value).__name__}")
        item = args[0] if args else Any
        return tuple(_convert(item, v) for v in value)
    if origin is dict or hint is Any:
        return value
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return from_json_dict(hint, value)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint(value)
    if hint is float:
        if isinstance(value, str):
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true/false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        return value
    return value


__all__ = [
    "AUTH_HEADER",
    "PROTOCOL_VERSION",
    "EventType",
    "GenerateRequest",
    "InstanceInfo",
    "InstanceLoad",
    "LoadReport",
    "MigrationResult",
    "Priority",
    "RequestLoad",
    "SamplingParams",
    "StreamEvent",
    "bearer",
    "from_json_dict",
    "to_json_dict",
]
