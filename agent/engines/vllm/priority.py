"""CPU priorities of an instance on a host whose engines share cores (params.py,
`SHARED_CORES_ENGINE_NICE` and `SHARED_CORES_GROUP_NICE` say why).

Two levels, because Linux schedules in two: a thread's nice orders it against the other
threads of its *autogroup* only (with `kernel.sched_autogroup_enabled`, the default on
desktop and many server kernels, every session is one group), and the groups share the
cores by their own nice. An instance process starts its own session, so its engine's
lowered thread priority yields to the instance's API but not to the controller, the agent
or another instance's API; lowering the group's priority too does that.

Both calls only ever lower a priority (raising one needs privileges) and are idempotent.
"""

from __future__ import annotations

import errno
import logging
import os
import time

log = logging.getLogger(__name__)

AUTOGROUP_PATH = "/proc/self/autogroup"
# Unprivileged writes to an autogroup's nice are rate-limited system-wide (one per 100 ms):
# instances starting together retry for up to this long.
GROUP_RETRY_S = 2.0


def lower_thread_priority(nice: int) -> None:
    """Run the calling thread (the one running engine steps: scheduling and, in-core, the
    model's compute) at `nice`. Absolute and idempotent (both connector halves may call it
    from one thread)."""
    # On Linux, PRIO_PROCESS with who=0 is the calling thread, not the whole process.
    if nice > os.getpriority(os.PRIO_PROCESS, 0):
        os.setpriority(os.PRIO_PROCESS, 0, nice)


def lower_group_priority(nice: int, path: str = AUTOGROUP_PATH) -> int | None:
    """Set the nice of this process's autogroup (`path`, as in proc(5): "/autogroup-N nice
    K") to `nice` if it is lower; returns the group's nice afterwards, or None when the
    process has no autogroup of its own or the kernel refuses (logged: the instance runs
    on, unprioritised).

    Call it only from a process that leads its own session: the group is the session's,
    and a process started from a shell would otherwise lower the whole terminal's."""
    deadline = time.monotonic() + GROUP_RETRY_S
    while True:
        try:
            with open(path) as f:
                text = f.read()
            if not text:
                # The kernel prints nothing for the default (root) group: the process is in
                # no session's group, so there is no group of its own to lower.
                log.info("no CPU autogroup of this process's own; group priority left alone")
                return None
            current = int(text.split()[-1])
            if current >= nice:
                return current
            with open(path, "w") as f:
                f.write(f"{nice}\n")
            return nice
        except FileNotFoundError:
            return None  # a kernel built without autogroups
        except OSError as exc:
            if exc.errno == errno.EAGAIN and time.monotonic() < deadline:
                time.sleep(0.11)
                continue
            log.warning("could not lower this instance's CPU group priority: %s", exc)
            return None
        except (ValueError, IndexError):
            log.warning("unexpected contents of %s; CPU group priority left alone", path)
            return None
