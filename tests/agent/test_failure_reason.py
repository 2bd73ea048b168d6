"""The one line an agent reports for an instance that died: what `llumctl up` and
`llumctl status` show as the reason."""

from __future__ import annotations

import pydantic

from agent.engines.vllm.engine import one_line
from agent.hosting import last_error_line

ROOT_CAUSE_LOG = """\
INFO starting
Traceback (most recent call last):
  File "core.py", line 157, in __init__
ValueError: To serve at least one request with the model's max seq len (1024), 0.0 GiB
error: vLLM engine failed to start: Engine core initialization failed. See root cause above.
"""


def test_our_own_error_line_is_the_reason():
    log = "INFO loading\nerror: bad engine argument: min_step_ms must be a number >= 0\n"
    assert last_error_line(log) == "bad engine argument: min_step_ms must be a number >= 0"


def test_an_error_line_pointing_above_gives_way_to_the_exception_it_points_at():
    reason = last_error_line(ROOT_CAUSE_LOG)
    assert reason.startswith("ValueError: To serve at least one request")


def test_a_crash_without_our_error_line_gives_the_last_exception():
    log = "Traceback (most recent call last):\nRuntimeError: CPU out of memory\nINFO bye\n"
    assert last_error_line(log) == "RuntimeError: CPU out of memory"
    assert last_error_line("INFO nothing wrong here\n") == ""


class _Config(pydantic.BaseModel):
    max_model_len: int

    @pydantic.field_validator("max_model_len")
    @classmethod
    def _check(cls, value: int) -> int:
        raise ValueError(f"max_model_len ({value}) is greater than the model allows")


def test_a_pydantic_config_error_becomes_its_reasons_on_one_line():
    try:
        _Config(max_model_len=10**6)
    except pydantic.ValidationError as exc:
        text = one_line(exc)
    assert text == "Value error, max_model_len (1000000) is greater than the model allows"
    assert one_line(RuntimeError("two\n  lines")) == "two lines"
