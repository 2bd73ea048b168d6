"""A detached long-running process on a host (the agent, the controller), tracked by PID.

Started with `setsid` so it has its own session (id = its PID) and survives the SSH
session; its PID goes to `<name>.pid` in the work directory. Stopping is by that PID and,
to leave nothing behind, by the PIDs still listed in its session (engine processes it
spawned, found by parent PID even when they start their own session). Nothing is ever
found or killed by name.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from llumctl.errors import ProvisionError
from llumctl.provision.runner import CommandRunner
from llumctl.provision.shell import env_prefix, quote


@dataclass
class Service:
    runner: CommandRunner
    # Absolute work directory on the host.
    workdir: str
    # "agent" or "controller": names the pid, config and log files.
    name: str

    def path(self, suffix: str) -> str:
        return f"{self.workdir}/{self.name}{suffix}"

    def pid(self) -> int:
        """PID from the pid file when that process is alive, else 0."""
        pidfile = quote(self.path(".pid"))
        res = self.runner.run(
            f'p=$(cat {pidfile} 2>/dev/null) && kill -0 "$p" 2>/dev/null && echo "$p"'
        )
        text = res.out.strip()
        return int(text) if res.rc == 0 and text.isdigit() else 0

    def read_config(self) -> bytes | None:
        res = self.runner.run(f"cat {quote(self.path('.json'))} 2>/dev/null")
        return res.out.encode() if res.rc == 0 else None

    def write_config(self, data: bytes) -> None:
        # 0600: controller and agent configs hold the cluster secret.
        self.runner.put_bytes(data, self.path(".json"), mode=0o600)

    def start(self, argv: list[str], env: dict[str, str]) -> int:
        """Start detached (stdin closed, output to <name>.log); returns its PID."""
        cmd = " ".join(quote(a) for a in argv)
        log, pidfile = quote(self.path(".log")), quote(self.path(".pid"))
        script = (
            # `cd && x &` would background a subshell holding the SSH channel open: keep
            # the `&` on the service command alone.
            f"cd {quote(self.workdir)} || exit 1; "
            f"{env_prefix(env)}setsid {cmd} >>{log} 2>&1 </dev/null & "
            f'p=$!; echo "$p" >{pidfile}; echo "$p"'
        )
        out = self.runner.run(script, timeout_s=30).check(f"starting {self.name}")
        try:
            return int(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise ProvisionError(f"starting {self.name}: no PID reported") from None

    def tree_pids(self, sid: int) -> list[int]:
        """PIDs of the session `sid` and of every descendant, even in a session of its own
        (engine processes are started with their own session by the agent)."""
        res = self.runner.run("ps -e -o pid=,ppid=,sid= 2>/dev/null")
        rows = [
            tuple(int(x) for x in line.split())
            for line in res.out.splitlines()
            if len(line.split()) == 3
        ]
        found = {pid for pid, _, s in rows if s == sid}
        grew = True
        while grew:
            more = {pid for pid, ppid, _ in rows if ppid in found and pid not in found}
            found |= more
            grew = bool(more)
        return sorted(found)

    def alive(self, pids: list[int]) -> list[int]:
        if not pids:
            return []
        listed = ",".join(str(int(p)) for p in pids)
        res = self.runner.run(f"ps -o pid=,stat= -p {listed} 2>/dev/null")
        # Zombies are gone already; they wait only for their (reaped) parent's exit status.
        return [
            int(line.split()[0])
            for line in res.out.splitlines()
            if line.split() and not line.split()[-1].startswith("Z")
        ]

    def wait_gone(self, pids: list[int], timeout_s: float) -> list[int]:
        deadline = time.monotonic() + timeout_s
        while True:
            left = self.alive(pids)
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.5)

    def stop(self, sid: int, known: list[int] | None = None, grace_s: float = 10.0) -> list[int]:
        """TERM then KILL the session's process tree (and `known` PIDs), by PID; returns the
        PIDs still alive (empty = nothing left)."""
        targets = sorted(set(self.tree_pids(sid)) | set(known or []))
        for signal, wait_s in (("TERM", grace_s), ("KILL", 5.0)):
            left = self.alive(targets)
            if not left:
                break
            self.runner.run(f"kill -{signal} {' '.join(str(p) for p in left)} 2>/dev/null; true")
            self.wait_gone(left, wait_s)
        left = self.alive(targets)
        if not left:
            self.runner.run(f"rm -f {quote(self.path('.pid'))}")
        return left

    def log_tail(self, lines: int = 200) -> str:
        res = self.runner.run(f"tail -n {int(lines)} {quote(self.path('.log'))} 2>/dev/null")
        return res.out
