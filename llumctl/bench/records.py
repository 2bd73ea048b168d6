"""What one benchmark request was, and what was measured for it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BenchRequest:
    """One request of a workload: when it is sent and how big it is."""

    # Seconds after the start of the run.
    arrival_s: float
    num_prompt_tokens: int
    num_output_tokens: int
    priority: int = 0


@dataclass(frozen=True)
class RequestRecord:
    """Measurements of one request (times in seconds; -1 when not reached)."""

    index: int
    arrival_s: float
    num_prompt_tokens: int
    # Output tokens asked for / received.
    num_output_tokens: int
    num_received_tokens: int
    priority: int
    ttft_s: float
    tpot_s: float
    e2e_s: float
    # The OpenAI response id (the cluster's request id), if the server sent one.
    response_id: str = ""
    error: str = ""
    # When each text chunk arrived, seconds after sending (only with the load generator's
    # `record_chunk_times`; vLLM streams one token a chunk).
    chunk_times_s: tuple[float, ...] = ()

    @property
    def is_ok(self) -> bool:
        return not self.error
