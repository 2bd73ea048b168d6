"""Which side a failed migration names: every abort path has a reason, and a failure of
the source's own engine is never blamed on the destination."""

from __future__ import annotations

import pytest

from agent.llumlet import MigrationAbort, abort_reason
from llumctl.errors import (
    AuthError,
    EngineError,
    InstanceDraining,
    MigrationError,
)


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (MigrationError("blocks gone", "preempted"), "preempted"),
        (MigrationError("destination: no seats", MigrationAbort.NO_ROOM), "no-room"),
        # The source's engine did not confirm the stop, or its connector op failed.
        (EngineError("engine did not confirm the stop of r"), "source-failed"),
        (InstanceDraining("draining"), "draining"),
        # Anything else came from talking to the destination.
        (AuthError("KV transfer peer rejected the cluster secret"), "dst-failed"),
    ],
)
def test_a_failed_migration_is_named_by_its_error_or_the_side_that_failed(exc, reason):
    assert abort_reason(exc) == reason
