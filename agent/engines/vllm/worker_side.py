"""Worker side of the llumctl KV connector (runs in the vLLM worker process).

It holds the engine's own KV tensors (one per attention layer, whatever their layout) and:
- reads full blocks of a running request by block id, for the llumlet, on a local socket
  (full blocks are immutable: KV is append-only, so reading them while the request keeps
  decoding is safe);
- keeps staged blocks of an incoming migration in memory until the migrated request is
  scheduled, then copies them into the blocks vLLM allocated (`start_load_kv`, before the
  forward pass that needs them);
- reports a stopped request's blocks as "sent" once the scheduler side says the last copy
  is done, so vLLM frees them.
Blocks are copied whole through the engine's own tensor views, so the code does not depend
on the attention backend's layout, only on both engines having the same one (fingerprint).
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any

from agent.engines.vllm.wire import recv_frame, send_frame, serve_unix

log = logging.getLogger(__name__)


class WorkerSide:
    def __init__(self, socket_path: str, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self._layers: list[tuple[str, Any]] = []
        self._block_dim = 0
        self._lock = threading.Lock()
        # migration id -> [(first staged block index, [per-layer tensors])]
        self._staged: dict[str, list[tuple[int, list[Any]]]] = {}
        self._to_release: set[str] = set()
        self._socket_path = socket_path

    def register_kv_caches(self, kv_caches: dict[str, Any]) -> None:
        self._layers = sorted(kv_caches.items())
        shape = self._layers[0][1].shape
        # The block axis is the one sized num_blocks (the first such, scanning from the left).
        self._block_dim = next(d for d, n in enumerate(shape) if n == self.num_blocks)
        serve_unix(self._socket_path, self._handle)

    def info(self) -> dict[str, Any]:
        tensor = self._layers[0][1]
        return {
            "num_layers": len(self._layers),
            "dtype": str(tensor.dtype),
            "shape": list(tensor.shape),
            "block_dim": self._block_dim,
            "bytes_per_block": self.bytes_per_block(),
        }

    def bytes_per_block(self) -> int:
        return sum(
            t.numel() // t.shape[self._block_dim] * t.element_size() for _, t in self._layers
        )

    # ---- block copies --------------------------------------------------------------
    def read_blocks(self, block_ids: list[int]) -> bytes:
        import torch

        index = torch.tensor(block_ids, dtype=torch.long)
        parts = [
            t.index_select(self._block_dim, index).contiguous().view(torch.uint8).numpy()
            for _, t in self._layers
        ]
        return b"".join(p.tobytes() for p in parts)

    def stage(self, migration_id: str, first: int, num: int, payload: bytes) -> None:
        import torch

        data = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
        tensors, offset = [], 0
        for _, t in self._layers:
            shape = list(t.shape)
            shape[self._block_dim] = num
            size = t.element_size()
            for n in shape:
                size *= n
            tensors.append(data[offset : offset + size].view(t.dtype).view(shape))
            offset += size
        if offset != len(payload):
            raise ValueError(f"staged payload has {len(payload)} bytes, expected {offset}")
        with self._lock:
            self._staged.setdefault(migration_id, []).append((first, tensors))

    def drop(self, migration_id: str) -> None:
        with self._lock:
            self._staged.pop(migration_id, None)

    def load(self, loads: list[dict[str, Any]]) -> None:
        """Copy staged blocks into a resumed request's new blocks (engine thread)."""
        import torch

        for plan in loads:
            with self._lock:
                chunks = self._staged.pop(plan["mig"], [])
            first, dst_ids = plan["first"], plan["ids"]
            for chunk_first, tensors in chunks:
                num = tensors[0].shape[self._block_dim]
                lo, hi = max(first, chunk_first), min(first + len(dst_ids), chunk_first + num)
                if lo >= hi:
                    continue
                index = torch.tensor(dst_ids[lo - first : hi - first], dtype=torch.long)
                for (_, dst), src in zip(self._layers, tensors, strict=True):
                    part = src.narrow(self._block_dim, lo - chunk_first, hi - lo)
                    dst.index_copy_(self._block_dim, index, part)

    def note_releases(self, releases: list[str]) -> None:
        self._to_release.update(releases)

    def take_finished_sending(self) -> set[str] | None:
        done, self._to_release = self._to_release, set()
        return done or None

    # ---- data socket ---------------------------------------------------------------
    def _handle(self, conn: socket.socket) -> None:
        try:
            while True:
                header, payload = recv_frame(conn)
                reply, body = self._command(header, payload)
                send_frame(conn, {"id": header.get("id"), **reply}, body)
        except (ConnectionError, OSError):
            pass
        finally:
            conn.close()

    def _command(self, header: dict[str, Any], payload: bytes) -> tuple[dict[str, Any], bytes]:
        op = header["op"]
        try:
            if op == "read":
                return {"ok": True}, self.read_blocks(header["ids"])
            if op == "stage":
                self.stage(header["mig"], header["first"], header["num"], payload)
            elif op == "drop":
                self.drop(header["mig"])
            elif op == "info":
                return {"ok": True, **self.info()}, b""
            else:
                return {"ok": False, "error": f"unknown op {op}"}, b""
        except (ValueError, RuntimeError, IndexError) as exc:
            log.warning("llumctl worker op %s failed: %s", op, exc)
            return {"ok": False, "error": str(exc)}, b""
        return {"ok": True}, b""
