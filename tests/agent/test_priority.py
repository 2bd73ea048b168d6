"""Lowering an instance's CPU group priority (agent/engines/vllm/priority.py), through the
autogroup file it writes (the seam: a path in proc(5)'s format)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.engines.vllm.priority import lower_group_priority


def _group(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "autogroup"
    path.write_text(text)
    return path


def test_lowers_a_group_of_higher_priority(tmp_path: Path) -> None:
    path = _group(tmp_path, "/autogroup-601 nice 0\n")
    assert lower_group_priority(10, str(path)) == 10
    assert path.read_text() == "10\n"  # what the kernel takes: the nice alone


def test_never_raises_a_priority(tmp_path: Path) -> None:
    path = _group(tmp_path, "/autogroup-601 nice 15\n")
    assert lower_group_priority(10, str(path)) == 15
    assert path.read_text() == "/autogroup-601 nice 15\n"  # not written


def test_a_kernel_without_autogroups_is_left_alone(tmp_path: Path) -> None:
    assert lower_group_priority(10, str(tmp_path / "absent")) is None


def test_the_default_group_is_left_alone(tmp_path: Path, caplog) -> None:
    # The kernel prints nothing for a process in the default (root) group, one that no
    # session start moved out of it (as in some containers): not an error, nothing to lower.
    path = _group(tmp_path, "")
    with caplog.at_level(logging.INFO):
        assert lower_group_priority(10, str(path)) is None
    assert path.read_text() == ""  # not written
    assert "no CPU autogroup" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("text", ["/autogroup-601 nice many\n", "\n"])
def test_unexpected_contents_are_logged_not_raised(tmp_path: Path, text: str, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        assert lower_group_priority(10, str(_group(tmp_path, text))) is None
    assert "CPU group priority left alone" in caplog.text


def test_a_refused_write_is_logged_not_raised(tmp_path: Path, caplog) -> None:
    # A path that fails to open (here a directory) stands for one the kernel refuses.
    (tmp_path / "dir").mkdir()
    with caplog.at_level(logging.WARNING):
        assert lower_group_priority(10, str(tmp_path / "dir")) is None
    assert "could not lower" in caplog.text
