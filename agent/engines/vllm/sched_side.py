"""Scheduler side of the llumctl KV connector (runs inside vLLM's EngineCore process).

It is the llumlet's eyes and one hand in the scheduler:
- tracks every request (arrival order, status, block ids, computed tokens) and publishes a
  snapshot after every scheduling step to subscribers on a local socket;
- stops a running request for migration at the end of the steps already scheduled for it
  ("hold" with "cap": it ends there like any request at its length limit, so no step's
  token for it is lost), keeps the stopped request's blocks, and frees them when the
  llumlet says the last copy is done ("release");
- on a migrated-in request, reports the staged blocks as an external cache hit and plans
  the copy of the staged KV into the blocks vLLM allocated for it.
The llumlet's own request id rides in `kv_transfer_params["llumctl_key"]`, because vLLM
suffixes the request ids it is given.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

from agent.engines.vllm.wire import recv_frame, send_frame, serve_unix

log = logging.getLogger(__name__)

KEY = "llumctl_key"
MIGRATION = "llumctl_mig"
STAGED_TOKENS = "llumctl_staged_tokens"


def params_of(request: Any) -> dict[str, Any]:
    return getattr(request, "kv_transfer_params", None) or {}


def prefill_backlog(row: dict[str, Any]) -> int:
    """Tokens a running request's snapshot row still has to prefill.

    Snapshots are taken while vLLM builds a step, before it advances `computed`: a
    decoding request then lacks exactly its last sampled token, one being prefilled
    (a new prompt, or a recompute after preemption) lacks more, and that prefill is
    what the step in progress computes (its first chunk, when chunked)."""
    missing = row["tokens"] - row["computed"]
    return missing if missing > 1 else 0


# A snapshot that only shows progress waits this long after the last one sent; one whose
# requests (by id and status) or held blocks changed goes at once. Measured on one
# decoding request (~7 ms steps): the push thread was ~7% of the engine process's samples
# when it sent every step's snapshot.
PROGRESS_PUSH_INTERVAL_S = 0.02
# How often an idle engine's free-block count is re-read (see `_refresh_free`).
IDLE_REFRESH_S = 0.05


def _shape(snapshot: dict[str, Any]) -> tuple[Any, ...]:
    """What in a snapshot the instance must see without delay: which requests the
    engine has and in which state (a stop, a preemption, a finish), and what it holds."""
    requests = tuple((row["id"], row["status"]) for row in snapshot.get("requests", ()))
    return requests, tuple(snapshot.get("held", ()))


class SchedulerSide:
    def __init__(
        self, socket_path: str, block_size: int, num_total_blocks: int, min_step_s: float = 0.0
    ) -> None:
        self.block_size = block_size
        self.min_step_s = min_step_s
        self._last_step_at = 0.0
        self.num_total_blocks = num_total_blocks
        self.kv_cache_manager: Any = None
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._requests: dict[str, Any] = {}  # vLLM id -> Request
        self._admitted: dict[str, int] = {}
        self._num_admitted = 0
        self._held_keys: set[str] = set()
        self._held: dict[str, tuple[str, list[int]]] = {}  # key -> (vLLM id, kept blocks)
        # key -> output tokens the stopped request had sampled when it ended: the llumlet
        # waits for all of them to reach the client before it cuts (the step in flight at
        # the stop still delivers its token).
        self._held_outputs: dict[str, int] = {}
        self._to_release: list[str] = []
        self._computed_at_match: dict[str, int] = {}
        self._loaded: set[str] = set()
        self._loads: list[dict[str, Any]] = []
        # Preemptions counted from each request's own counter at every step (a preemption
        # lasts at least one step, so none is missed between two snapshots).
        self._preemptions_seen: dict[str, int] = {}
        self._num_preemptions = 0
        self._snapshot: dict[str, Any] = {
            "seq": 0, "free": num_total_blocks, "total": num_total_blocks, "requests": [],
            "held": {}, "held_outputs": {}, "preemptions": 0,
        }  # fmt: skip
        serve_unix(socket_path, self._handle)

    # ---- vLLM hooks ----------------------------------------------------------------
    def on_new_request(self, request: Any) -> None:
        with self._lock:
            self._num_admitted += 1
            self._requests[request.request_id] = request
            self._admitted[request.request_id] = self._num_admitted

    def get_num_new_matched_tokens(self, request: Any, num_computed: int) -> tuple[int, bool]:
        params = params_of(request)
        if MIGRATION not in params or request.request_id in self._loaded:
            return 0, False
        # Never the whole prompt: vLLM must compute at least the last token itself. Not
        # rounded to blocks: the staged partial block spares the first step recomputing up
        # to a block's worth of tokens over the whole context (the stall's largest part).
        staged = min(int(params.get(STAGED_TOKENS, 0)), request.num_tokens - 1)
        self._computed_at_match[request.request_id] = num_computed
        return max(0, staged - num_computed), False

    def update_state_after_alloc(self, request: Any, blocks: Any, num_external: int) -> None:
        if num_external <= 0:
            return
        block_ids = blocks.get_block_ids()[0]
        computed = self._computed_at_match.pop(request.request_id, 0)
        first = computed // self.block_size
        last = -(-(computed + num_external) // self.block_size)  # with a partial last block
        self._loaded.add(request.request_id)
        self._loads.append(
            {"mig": params_of(request)[MIGRATION], "first": first, "ids": block_ids[first:last]}
        )

    def build_meta(self) -> tuple[list[dict[str, Any]], list[str]]:
        if self.min_step_s > 0:
            self._pace()
        loads, self._loads = self._loads, []
        with self._lock:
            releases, self._to_release = self._to_release, []
        self._publish()
        return loads, releases

    def _pace(self) -> None:
        """Stretch back-to-back steps to `min_step_s` (build_meta runs once per step; after
        an idle gap the step starts at once)."""
        wait = self._last_step_at + self.min_step_s - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self._last_step_at = time.monotonic()

    def request_finished(self, request: Any, block_ids: list[int]) -> bool:
        """True = keep the blocks (a request stopped for migration)."""
        rid = request.request_id
        key = params_of(request).get(KEY)
        with self._lock:
            self._requests.pop(rid, None)
            self._admitted.pop(rid, None)
            self._loaded.discard(rid)
            is_held = bool(block_ids) and key in self._held_keys and request.is_finished()
            if is_held and key is not None:
                self._held_keys.discard(key)
                self._held[key] = (rid, list(block_ids))
                self._held_outputs[key] = request.num_output_tokens
        self._publish()
        return is_held

    def has_pending_release(self) -> bool:
        return bool(self._to_release)

    # ---- snapshot ------------------------------------------------------------------
    def _request_row(self, rid: str, request: Any) -> dict[str, Any]:
        try:
            block_ids = list(self.kv_cache_manager.get_block_ids(rid)[0])
        except (KeyError, AttributeError, IndexError):
            block_ids = []
        status = request.status.name
        return {
            "id": rid,
            "key": params_of(request).get(KEY, rid),
            "status": status,
            "blocks": block_ids,
            "computed": request.num_computed_tokens,
            "prompt": request.num_prompt_tokens,
            "tokens": request.num_tokens,
            "preemptions": request.num_preemptions,
            "seq": self._admitted.get(rid, 0),
        }

    def _publish(self) -> None:
        if self.kv_cache_manager is None:
            return
        free = self.kv_cache_manager.block_pool.get_num_free_blocks()
        with self._lock:
            rows = [self._request_row(rid, r) for rid, r in self._requests.items()]
            seen = {row["id"]: row["preemptions"] for row in rows}
            for rid, count in seen.items():
                self._num_preemptions += max(0, count - self._preemptions_seen.get(rid, 0))
            self._preemptions_seen = seen
            self._snapshot = {
                "seq": self._snapshot["seq"] + 1,
                "free": free,
                "total": self.num_total_blocks,
                "requests": rows,
                "held": {k: ids for k, (_, ids) in self._held.items()},
                "held_outputs": dict(self._held_outputs),
                "preemptions": self._num_preemptions,
            }
            self._cond.notify_all()

    # ---- control socket ------------------------------------------------------------
    def _handle(self, conn: socket.socket) -> None:
        try:
            while True:
                header, _ = recv_frame(conn)
                if header["op"] == "subscribe":
                    self._push_snapshots(conn)
                    return
                send_frame(conn, {"id": header.get("id"), **self._command(header)})
        except (ConnectionError, OSError):
            pass
        finally:
            conn.close()

    def _command(self, header: dict[str, Any]) -> dict[str, Any]:
        op, key = header["op"], header.get("key", "")
        with self._lock:
            if op == "hold":
                self._held_keys.add(key)
                return {"ok": True, "capped": bool(header.get("cap")) and self._cap(key)}
            if op == "unhold":
                self._held_keys.discard(key)
                return {"ok": True}
            if op == "release":
                self._held_keys.discard(key)
                held = self._held.pop(key, None)
                self._held_outputs.pop(key, None)
                if held is not None:
                    self._to_release.append(held[0])
                return {"ok": True, "released": held is not None}
        return {"ok": False, "error": f"unknown op {op}"}

    def _cap(self, key: str) -> bool:
        """End the running request `key` once the steps already scheduled for it are done.

        EngineCore applies an abort that arrives during a step before it takes that step's
        outputs (`EngineCore.step`): the step's token for the request would be computed
        and thrown away, and the client would wait a step longer at the splice. Lowering
        `max_tokens` makes the request end after that step like any request at its limit
        (the scheduler plans no step beyond it); its blocks are then held like an abort's.
        One attribute write from this thread: should it race the engine thread's update,
        the request ends a step earlier or later than planned, never before its next token,
        and every token it samples still reaches the client."""
        for request in self._requests.values():
            if params_of(request).get(KEY) == key and request.status.name == "RUNNING":
                in_flight = max(1, getattr(request, "num_output_placeholders", 0))
                limit = request.num_output_tokens + in_flight
                request.max_tokens = min(request.max_tokens, limit)
                return True
        return False

    def _push_snapshots(self, conn: socket.socket) -> None:
        """Send every new snapshot whose requests or held blocks changed at once, and one
        that only shows progress (tokens, blocks, free count) at most every
        `PROGRESS_PUSH_INTERVAL_S`: this thread takes the GIL from the engine's steps."""
        sent: dict[str, Any] = {}
        sent_shape = _shape(sent)
        sent_at = 0.0
        while True:
            with self._cond:
                while True:
                    wait = IDLE_REFRESH_S
                    if self._snapshot is not sent:
                        if _shape(self._snapshot) != sent_shape:
                            break
                        wait = sent_at + PROGRESS_PUSH_INTERVAL_S - time.monotonic()
                        if wait <= 0:
                            break
                    if not self._cond.wait(timeout=wait) and self._snapshot is sent:
                        self._refresh_free()
                sent = self._snapshot
                sent_shape = _shape(sent)
            send_frame(conn, sent)
            sent_at = time.monotonic()

    def _refresh_free(self) -> None:
        """Blocks freed after the last step (kept blocks released on an idle engine)
        change no request, so no step publishes them: refresh the free count alone."""
        if self.kv_cache_manager is None:
            return
        free = self.kv_cache_manager.block_pool.get_num_free_blocks()
        if free != self._snapshot["free"]:
            self._snapshot = {**self._snapshot, "seq": self._snapshot["seq"] + 1, "free": free}
