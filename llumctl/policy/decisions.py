"""Decisions: what a policy returns and a shell (controller or simulator) carries out."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dispatch:
    """Send a new request to an instance."""

    request_id: str
    instance_id: str


@dataclass(frozen=True)
class Migrate:
    """Move requests from `src` to `dst`.

    With no `request_ids` the source llumlet picks `num_requests` candidates itself
    (see `migration.select_candidates`).
    """

    src: str
    dst: str
    num_requests: int = 1
    request_ids: tuple[str, ...] = ()
    # Why the pair was formed: "load", "preempted", "drain".
    reason: str = "load"
    # The source picks queued requests (no KV to copy) before running ones.
    queued_first: bool = True
    # The destination's free blocks in the view the pair was formed from: the source
    # passes over candidates that would not fit (None = no limit; the reserve decides).
    max_num_blocks: int | None = None


@dataclass(frozen=True)
class ScaleUp:
    """Start `num_instances` more instances of `model`."""

    model: str
    num_instances: int = 1


@dataclass(frozen=True)
class ScaleDown:
    """Drain an instance (infinite virtual usage), then stop it once empty."""

    instance_id: str


Decision = Dispatch | Migrate | ScaleUp | ScaleDown
