"""Real OpenSSH servers on loopback for the provisioning tests.

Each `SshHost` is its own `sshd` (own port, own host key, an authorized_keys holding a
client key generated here), started as a child process and stopped by its PID. The CLI
runs as a subprocess with HOME pointing at a temporary directory, so ~/.ssh/known_hosts
and ~/.llumctl belong to the test alone.

sshd missing is a failure with the install command, never a skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd")


def sshd_binary() -> str:
    found = shutil.which("sshd") or next((p for p in SSHD_CANDIDATES if os.path.exists(p)), None)
    if not found:
        pytest.fail(
            "sshd is not installed: run `apt-get install openssh-server` (bash .ci/setup does)"
        )
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: Path) -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "llumctl-test", "-f", str(path)],
        check=True,
    )
    return path


@dataclass
class SshHost:
    name: str
    port: int
    directory: Path
    proc: subprocess.Popen[bytes]
    host_key_pub: str

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_sshd(name: str, directory: Path, authorized: list[Path]) -> SshHost:
    directory.mkdir(parents=True, exist_ok=True)
    host_key = keygen(directory / "host_key")
    (directory / "authorized_keys").write_text(
        "".join(p.with_suffix(".pub").read_text() for p in authorized)
    )
    port = free_port()
    config = directory / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
        f"PidFile {directory / 'sshd.pid'}\nAuthorizedKeysFile {directory / 'authorized_keys'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\nLogLevel ERROR\n"
        "Subsystem sftp internal-sftp\nMaxSessions 50\nMaxStartups 50\n"
    )
    # sshd refuses to start without its privilege separation directory.
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    log = open(directory / "sshd.log", "wb")  # noqa: SIM115 (kept open for the process)
    proc = subprocess.Popen([sshd_binary(), "-D", "-e", "-f", str(config)], stdout=log, stderr=log)
    deadline = time.monotonic() + 15
    while True:
        if proc.poll() is not None:
            pytest.fail(f"sshd {name} exited: {(directory / 'sshd.log').read_text()[-500:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"sshd {name} did not listen on {port}")
            time.sleep(0.1)
    pub = (directory / "host_key.pub").read_text().split()
    return SshHost(name, port, directory, proc, f"{pub[0]} {pub[1]}")


@dataclass
class SshEnv:
    """Two sshd 'hosts', a client key they accept and one they do not, a private HOME."""

    home: Path
    key: Path
    wrong_key: Path
    hosts: list[SshHost]

    # Extra environment for the CLI (e.g. LLUMCTL_WHEEL pinning the installed version).
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        env = {**os.environ, **self.extra_env}
        env["HOME"] = str(self.home)
        env["LLUMCTL_HOME"] = str(self.home / ".llumctl")
        env.pop("SSH_AUTH_SOCK", None)  # only the key files named in the cluster file
        return env

    def trust(self, host: SshHost) -> None:
        """Record a host's key in known_hosts, as `ssh` would after a confirmed first login."""
        known = self.home / ".ssh" / "known_hosts"
        with known.open("a") as f:
            f.write(f"[127.0.0.1]:{host.port} {host.host_key_pub}\n")

    def llumctl(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "llumctl.cli.main", *args]
        return subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=timeout)
