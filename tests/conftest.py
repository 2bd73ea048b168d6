"""Shared pytest fixtures (root of the test tree).

Fixtures for everyone:

- `tiny_model_dir` (session): path of a random-weight `tiny` Llama checkpoint (HF layout),
  generated once into ~/.cache/llumctl/models/tiny-0 and reused across runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_SEED = 0


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    from agent.models import cached_model

    return cached_model("tiny", TINY_SEED)
