"""The daemons freeze their start-up heap so full collections skip it (llumctl/heap.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_freeze_startup_heap_moves_live_objects_out_of_collections() -> None:
    # In a child process: freezing is process-wide and cannot be undone for one test.
    code = textwrap.dedent(
        """
        import gc
        from llumctl.heap import freeze_startup_heap
        kept = [[i] for i in range(50_000)]
        assert gc.get_freeze_count() == 0
        frozen = freeze_startup_heap()
        assert frozen == gc.get_freeze_count() >= 50_000, frozen
        # What a full collection walks afterwards: only objects made since.
        assert sum(len(g) for g in (gc.get_objects(i) for i in range(3))) < 5_000
        print(frozen)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 50_000
