"""Messages shared by the controller, agents and instances (one definition, both sides).

Everything that crosses a process boundary is a dataclass here, serialised as JSON with
`to_json_dict` / `from_json_dict` (llumctl/jsonconv.py). Policy views (`InstanceLoad`) are
reused as they are.

Wire formats (details in docs/architecture.md):
- instance token streams are NDJSON, one `StreamEvent` per line;
- every control call carries `Authorization: Bearer <cluster secret>`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from llumctl.jsonconv import from_json_dict, to_compact_json_dict, to_json_dict
from llumctl.policy.views import InstanceLoad, Priority, RequestLoad

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
    # Why the instance failed (state "failed"): e.g. the engine's own last error line.
    failure: str = ""


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
    "to_compact_json_dict",
    "to_json_dict",
]
