"""Migration: pair overloaded instances with free ones, and pick requests to move."""

from __future__ import annotations

import math
from collections.abc import Callable

from llumctl.policy.decisions import Migrate
from llumctl.policy.freeness import batch_size
from llumctl.policy.params import PolicyParams
from llumctl.policy.views import ClusterView, InstanceLoad, Priority, RequestLoad

Freeness = Callable[[InstanceLoad], float]

SELECTORS = ("last-admitted", "shortest", "longest")


def movable(inst: InstanceLoad, *, include_high: bool = False) -> list[RequestLoad]:
    """Running requests that may migrate: decoding, state carried, normal priority."""
    return [
        r
        for r in inst.running
        if r.is_decoding and r.is_migratable and (include_high or r.priority == Priority.NORMAL)
    ]


def movable_queued(inst: InstanceLoad, *, include_high: bool = False) -> list[RequestLoad]:
    """Queued requests that may migrate, head of line first: normal priority, state carried.

    A queued request holds no KV (a preempted one gave its blocks back), so moving it costs
    nothing but its prefill on the destination, which it would pay here too. It is the
    request that suffers from its instance's load, and its move frees nothing here but the
    queue it blocks: the published Llumnix's "EWF" (earliest waiting first) migration."""
    return [
        r
        for r in inst.queued
        if r.is_migratable and (include_high or r.priority == Priority.NORMAL)
    ]


def select_candidates(
    inst: InstanceLoad,
    num_requests: int,
    selector: str = "last-admitted",
    *,
    queued_first: bool = True,
    max_num_blocks: int | None = None,
) -> list[str]:
    """Requests a source llumlet moves, best first.

    With `queued_first`, queued requests come first, head of line first (see
    `movable_queued`); then running ones by `selector`. `last-admitted` is the paper's rule:
    the most recently admitted decoding request, which is usually the shortest, so the copy
    is small. A draining instance moves any priority. With `max_num_blocks` (the
    destination's free blocks when the pair was formed), a request whose blocks and one of
    growth would not fit there is passed over: its reserve would be refused (`no-room`).
    """
    if selector not in SELECTORS:
        raise ValueError(f"unknown migration selector {selector!r}; choose from {SELECTORS}")
    queued = movable_queued(inst, include_high=inst.is_draining) if queued_first else []
    pool = movable(inst, include_high=inst.is_draining)
    if selector == "last-admitted":
        pool.sort(key=lambda r: (-r.admitted_seq, r.request_id))
    elif selector == "shortest":
        pool.sort(key=lambda r: (r.num_blocks, -r.admitted_seq, r.request_id))
    else:
        pool.sort(key=lambda r: (-r.num_blocks, -r.admitted_seq, r.request_id))
    fits = [r for r in queued + pool if max_num_blocks is None or r.num_blocks < max_num_blocks]
    return [r.request_id for r in fits[:num_requests]]


def _is_source(inst: InstanceLoad, f: float, params: PolicyParams) -> bool:
    if inst.num_migrating_out >= params.max_migrations_per_instance:
        return False
    has_queued = params.migrate_queued and movable_queued(inst, include_high=inst.is_draining)
    if not has_queued and not movable(inst, include_high=inst.is_draining):
        return False
    return inst.is_draining or inst.num_preempted > 0 or f < params.migrate_out_threshold


def _is_destination(inst: InstanceLoad, f: float, params: PolicyParams) -> bool:
    return (
        not inst.is_draining
        and inst.num_preempted == 0
        and inst.num_migrating_in < params.max_migrations_per_instance
        and f > params.migrate_in_threshold
    )


def room_blocks(
    dst: InstanceLoad, f_dst: float, num_pending: int, params: PolicyParams, *, is_drain: bool
) -> int:
    """Blocks a request moved to `dst` may hold, one of growth included (the limit a source
    llumlet's `select_candidates` applies): as many as keep `dst` a destination, its
    freeness after the move still above `migrate_in_threshold`.

    Why not all its free blocks: a pair is formed on the last reports, and a request moved
    into the last of a destination's room leaves its own requests none to grow into, so
    they preempt there. That instance is then a source, and the move only relocated the
    pressure. Measured on the suite's memory-pressure workload (2026-11-30, four runs each,
    interleaved): 30-43 preemptions a run against 42-49 with all free blocks, and no
    `no-room` aborts against 11. A drain takes all free blocks: its requests must leave
    whatever it costs.
    """
    if is_drain:
        return max(0, dst.num_free_blocks)
    num_batch = batch_size(dst, num_pending)
    # F = spare / max(1, B), so spare is recovered from F; after the move B + 1 shares it.
    spare = f_dst * max(1, num_batch)
    room = math.floor(spare - params.migrate_in_threshold * (num_batch + 1))
    return max(0, min(dst.num_free_blocks, room))


def _fits_any(src: InstanceLoad, room: int, params: PolicyParams) -> bool:
    """Whether some request the source would move fits `room` (see `select_candidates`)."""
    include_high = src.is_draining
    queued = movable_queued(src, include_high=include_high) if params.migrate_queued else []
    return any(r.num_blocks < room for r in (*queued, *movable(src, include_high=include_high)))


def _reason(inst: InstanceLoad) -> str:
    if inst.is_draining:
        return "drain"
    return "preempted" if inst.num_preempted > 0 else "load"


def pair_migrations(view: ClusterView, params: PolicyParams, score: Freeness) -> list[Migrate]:
    """Pair the least free sources with the freest destinations, per model group.

    Several pairs per tick; an instance is in at most one pair per tick. Draining
    instances (freeness -inf) come first.
    """
    decisions: list[Migrate] = []
    for model in view.models():
        scored = [(score(inst), inst) for inst in view.of_model(model)]
        sources = sorted(
            ((f, i) for f, i in scored if _is_source(i, f, params)),
            key=lambda fi: (fi[0], fi[1].instance_id),
        )
        dests = sorted(
            ((f, i) for f, i in scored if _is_destination(i, f, params)),
            key=lambda fi: (-fi[0], fi[1].instance_id),
        )
        used: set[str] = set()
        for f_src, src in sources:
            if len(decisions) >= params.max_pairs_per_tick:
                return decisions
            if src.instance_id in used:
                continue
            for f_dst, dst in dests:
                if dst.instance_id in used or dst.instance_id == src.instance_id:
                    continue
                # Only move load downhill: a destination must be freer than its source.
                if not math.isinf(f_src) and f_dst <= f_src:
                    break
                num_pending = len(view.pending.get(dst.instance_id, ()))
                room = room_blocks(dst, f_dst, num_pending, params, is_drain=src.is_draining)
                if not _fits_any(src, room, params):
                    continue
                used.update((src.instance_id, dst.instance_id))
                decisions.append(
                    Migrate(
                        src.instance_id,
                        dst.instance_id,
                        num_requests=params.requests_per_migration,
                        reason=_reason(src),
                        queued_first=params.migrate_queued,
                        max_num_blocks=room,
                    )
                )
                break
    return decisions
