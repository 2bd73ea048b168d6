"""Policy parameters: names and thresholds, in freeness units (blocks per request)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class PolicyParams:
    """Tunables shared by every policy; each policy uses the ones that apply to it."""

    # Migration: an instance is a source below this freeness (or when it has preempted
    # requests or is draining) ...
    migrate_out_threshold: float = -3.0
    # ... and a destination above this one (and with nothing preempted).
    migrate_in_threshold: float = 3.0
    # Pairs formed per policy tick, cluster-wide (per model group).
    max_pairs_per_tick: int = 8
    # Requests moved per pair per tick.
    requests_per_migration: int = 1
    # Migrations a single instance may run at once (in either role).
    max_migrations_per_instance: int = 2
    # A source moves its queued requests first, head of line first (they carry no KV: the
    # destination prefills them, as the source would have), then running ones; an
    # instance whose only movable requests are queued is a source too. The published
    # Llumnix's "EWF" migration; the paper moves running requests only (False).
    migrate_queued: bool = True
    # Queued requests a dispatch decision counts: "all" (each one's demand and +1 in B,
    # like a pending dispatch, as the published Llumnix's dispatch load: a new request
    # waits behind all of them) or "head" (the virtual usage of migration: only the
    # head-of-line request). Migration and scaling always use the head-of-line rule.
    dispatch_queued_demand: str = "all"
    # Step-aware dispatch (freeness policies; llumctl's addition, not in the paper): a
    # request skips instances whose engine step in progress prefills at least this many
    # prompt tokens (it would wait for the whole step) for the best-scoring instance not
    # in such a step that has physical room for it, when there is one. Freeness cannot
    # see a step: an instance prefilling one long prompt holds few requests and looks
    # freest. 0 turns it off.
    dispatch_avoid_prefill_tokens: int = 1024
    # Priority headroom: an instance holding high-priority requests reserves all but this
    # many tokens of KV for them (paper: ~1,600 tokens on a 13.6k-token A10 instance).
    high_priority_kv_budget_tokens: int = 1600
    # Auto-scaling band on the average freeness of a model group.
    scale_up_below: float = 10.0
    scale_down_above: float = 60.0
    scale_cooldown_s: float = 10.0
    min_instances: int = 1
    max_instances: int = 16
    is_scaling_enabled: bool = False

    def with_updates(self, updates: dict[str, Any]) -> PolicyParams:
        """A copy with `updates` applied; unknown keys or wrong types raise ValueError."""
        known = {f.name: f for f in fields(self)}
        coerced: dict[str, Any] = {}
        for key, value in updates.items():
            if key not in known:
                raise ValueError(f"unknown policy parameter {key!r}")
            current = getattr(self, key)
            coerced[key] = _coerce(key, value, type(current))
        return replace(self, **coerced)


def _coerce(key: str, value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{key} must be true or false, got {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be a {kind.__name__}, got {value!r}") from None
