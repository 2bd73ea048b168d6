"""Scheduling stalls of the benchmark process itself, so a timing can be told apart from them.

On the shared 2-core VMs this project runs on, a process can go unscheduled for 0.2-9 s
while vLLM engines run (a plain 5 ms sleeper sees it). A client-side timing (the token gap
at a migration's splice) that overlaps such a stall measures the VM, not llumctl: the
benchmarks record the overlap and repeat the measurement instead of reporting it.
"""

from __future__ import annotations

import threading
import time

TICK_S = 0.005
# A wake-up later than this counts as a stall (normal jitter here is well below it).
MIN_STALL_S = 0.02


class StallMonitor:
    """A daemon thread that sleeps TICK_S at a time and records every late wake-up."""

    def __init__(self) -> None:
        self.stalls: list[tuple[float, float]] = []  # (start, end) on time.perf_counter
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="stall-monitor", daemon=True)

    def __enter__(self) -> StallMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=1)

    def _watch(self) -> None:
        before = time.perf_counter()
        while not self._stop.is_set():
            time.sleep(TICK_S)
            now = time.perf_counter()
            if now - before - TICK_S > MIN_STALL_S:
                self.stalls.append((before + TICK_S, now))
            before = now

    def stalled_s(self, start: float, end: float) -> float:
        """Seconds of recorded stall inside [start, end]."""
        return sum(max(0.0, min(e, end) - max(s, start)) for s, e in self.stalls)

    def total_s(self) -> float:
        return sum(e - s for s, e in self.stalls)

    def longest_s(self) -> float:
        return max((e - s for s, e in self.stalls), default=0.0)
