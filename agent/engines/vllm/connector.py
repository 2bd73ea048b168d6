"""The llumctl KV connector: vLLM V1's public plugin point, loaded by module path.

    KVTransferConfig(kv_connector="LlumConnector",
                     kv_connector_module_path="agent.engines.vllm.connector",
                     kv_role="kv_both",
                     kv_connector_extra_config={"socket_dir": DIR})

vLLM builds one copy in the scheduler (EngineCore process) and one per worker; each
delegates to `SchedulerSide` or `WorkerSide`, which serve the instance on unix sockets in
DIR (`sched.sock`, `worker.sock`). No vLLM source is patched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)

from agent.engines.vllm.priority import lower_thread_priority
from agent.engines.vllm.sched_side import SchedulerSide
from agent.engines.vllm.worker_side import WorkerSide


@dataclass
class LlumConnectorMetadata(KVConnectorMetadata):
    """Scheduler -> worker, once per step."""

    # Staged-KV copies: {"mig": migration id, "first": first block index, "ids": dst blocks}.
    loads: list[dict[str, Any]] = field(default_factory=list)
    # vLLM ids of stopped requests whose kept blocks may now be freed.
    releases: list[str] = field(default_factory=list)


def socket_paths(socket_dir: str) -> tuple[str, str]:
    return os.path.join(socket_dir, "sched.sock"), os.path.join(socket_dir, "worker.sock")


class LlumConnector(KVConnectorBase_V1):
    def __init__(self, vllm_config: Any, role: KVConnectorRole, kv_cache_config: Any = None):
        super().__init__(vllm_config, role, kv_cache_config)
        extra = vllm_config.kv_transfer_config.kv_connector_extra_config or {}
        sched_path, worker_path = socket_paths(extra["socket_dir"])
        block_size = vllm_config.cache_config.block_size
        num_blocks = kv_cache_config.num_blocks
        self._sched: SchedulerSide | None = None
        self._worker: WorkerSide | None = None
        # Applied at the first step, from the thread that runs steps: by then vLLM's I/O
        # threads (requests in, outputs out) run, and they keep their priority.
        self._nice_pending = int(extra.get("engine_nice", 0))
        if role == KVConnectorRole.SCHEDULER:
            min_step_s = float(extra.get("min_step_ms", 0.0)) / 1000
            self._sched = SchedulerSide(sched_path, block_size, num_blocks, min_step_s)
        else:
            self._worker = WorkerSide(worker_path, num_blocks)

    def _apply_nice(self) -> None:
        if self._nice_pending:
            lower_thread_priority(self._nice_pending)
            self._nice_pending = 0

    # ---- worker side ---------------------------------------------------------------
    def register_kv_caches(self, kv_caches: dict[str, Any]) -> None:
        assert self._worker is not None
        self._worker.register_kv_caches(kv_caches)

    def start_load_kv(self, forward_context: Any, **kwargs: Any) -> None:
        self._apply_nice()
        meta = self._get_connector_metadata()
        assert self._worker is not None and isinstance(meta, LlumConnectorMetadata)
        self._worker.note_releases(meta.releases)
        if meta.loads:
            self._worker.load(meta.loads)

    def wait_for_layer_load(self, layer_name: str) -> None:
        return

    def save_kv_layer(self, layer_name: str, kv_layer: Any, attn_metadata: Any, **kw: Any) -> None:
        return

    def wait_for_save(self) -> None:
        return

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        assert self._worker is not None
        return self._worker.take_finished_sending(), None

    # ---- scheduler side ------------------------------------------------------------
    def bind_kv_cache_manager(self, kv_cache_manager: Any) -> None:
        super().bind_kv_cache_manager(kv_cache_manager)
        assert self._sched is not None
        self._sched.kv_cache_manager = kv_cache_manager

    def on_new_request(self, request: Any) -> None:
        assert self._sched is not None
        self._sched.on_new_request(request)

    def get_num_new_matched_tokens(
        self, request: Any, num_computed_tokens: int
    ) -> tuple[int, bool]:
        assert self._sched is not None
        return self._sched.get_num_new_matched_tokens(request, num_computed_tokens)

    def update_state_after_alloc(self, request: Any, blocks: Any, num_external_tokens: int) -> None:
        assert self._sched is not None
        self._sched.update_state_after_alloc(request, blocks, num_external_tokens)

    def build_connector_meta(self, scheduler_output: Any) -> KVConnectorMetadata:
        assert self._sched is not None
        self._apply_nice()
        loads, releases = self._sched.build_meta()
        return LlumConnectorMetadata(loads=loads, releases=releases)

    def request_finished(
        self, request: Any, block_ids: list[int]
    ) -> tuple[bool, dict[str, Any] | None]:
        assert self._sched is not None
        return self._sched.request_finished(request, block_ids), None

    def has_pending_push_work(self) -> bool:
        # Keeps an otherwise idle engine stepping until kept blocks are released.
        return self._sched is not None and self._sched.has_pending_release()
