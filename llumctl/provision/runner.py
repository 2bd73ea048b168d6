"""The command runner seam: run a shell command on a host, put a file there.

`SSHRunner` does it over paramiko (see ssh.py for connecting), `LocalRunner` on this
machine (the embedded local cluster, no SSH). Tests of the pipeline's logic may record
commands with a fake runner; the bootstrap itself is tested against real sshd.

Commands are strings for a POSIX shell: every host name, path or value put into them must go
through `shell.quote` / `shell.qpath` first.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import paramiko

from llumctl.errors import ConnectionFailed, ProvisionError


@dataclass(frozen=True)
class RunResult:
    rc: int
    out: str
    err: str

    def check(self, what: str) -> str:
        """`out` if the command succeeded, else a ProvisionError naming `what` and stderr."""
        if self.rc != 0:
            tail = (self.err.strip() or self.out.strip()).splitlines()[-1:] or [f"exit {self.rc}"]
            raise ProvisionError(f"{what} failed (exit {self.rc}): {tail[0]}")
        return self.out


class CommandRunner(Protocol):
    """Where commands of one host run."""

    # Shown in messages ("user@host:port" or "local").
    target: str

    def run(self, command: str, timeout_s: float = 120.0) -> RunResult: ...

    def put_bytes(self, data: bytes, remote_path: str, mode: int = 0o644) -> None:
        """Write `data` to an absolute path on the host with `mode` (no umask window)."""
        ...

    def close(self) -> None: ...


class LocalRunner:
    target = "local"

    def run(self, command: str, timeout_s: float = 120.0) -> RunResult:
        try:
            proc = subprocess.run(
                ["/bin/sh", "-c", command],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise ProvisionError(f"local command timed out after {timeout_s:.0f} s") from None
        return RunResult(proc.returncode, proc.stdout, proc.stderr)

    def put_bytes(self, data: bytes, remote_path: str, mode: int = 0o644) -> None:
        path = Path(remote_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)

    def close(self) -> None:
        pass


class SSHRunner:
    """Commands over an open paramiko connection (one per host, reused for every step)."""

    def __init__(self, client: paramiko.SSHClient, target: str) -> None:
        self.client = client
        self.target = target

    def run(self, command: str, timeout_s: float = 120.0) -> RunResult:
        try:
            _, stdout, stderr = self.client.exec_command(command, timeout=timeout_s)
            stdout.channel.shutdown_write()
            out = stdout.read().decode("utf-8", "replace")
            err = stderr.read().decode("utf-8", "replace")
            rc = stdout.channel.recv_exit_status()
        except TimeoutError:
            raise ProvisionError(
                f"command on {self.target} timed out after {timeout_s:.0f} s"
            ) from None
        except (paramiko.SSHException, OSError) as exc:
            raise ConnectionFailed(f"lost SSH connection to {self.target}: {exc}") from None
        return RunResult(rc, out, err)

    def put_bytes(self, data: bytes, remote_path: str, mode: int = 0o644) -> None:
        try:
            with self.client.open_sftp() as sftp:
                # Create empty with the final mode first so a secret is never world-readable.
                with sftp.open(remote_path, "wb") as f:
                    f.chmod(mode)
                    f.write(data)
        except (paramiko.SSHException, OSError) as exc:
            raise ProvisionError(f"cannot write {remote_path} on {self.target}: {exc}") from None

    def close(self) -> None:
        self.client.close()
