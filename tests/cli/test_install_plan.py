"""The install step through the command-runner seam, with a runner that records commands.

(The same step runs for real against sshd in tests/ssh; this pins its decisions: skip
when the installed wheel's hash matches, reinstall when it does not, quote every path.)
"""

from __future__ import annotations

import hashlib
import shlex
from pathlib import Path

from llumctl.provision.install import install_agent
from llumctl.provision.runner import RunResult


class RecordingRunner:
    """Answers `cat` of the marker with `marker`; every other command succeeds."""

    target = "recorder"

    def __init__(self, marker: str = "", has_venv: bool = False) -> None:
        self.marker = marker
        self.has_venv = has_venv
        self.commands: list[str] = []
        self.files: dict[str, tuple[bytes, int]] = {}

    def run(self, command: str, timeout_s: float = 120.0) -> RunResult:
        self.commands.append(command)
        if command.startswith("cat "):
            return RunResult(0, self.marker, "")
        if command.startswith("test -x"):
            return RunResult(0 if self.has_venv else 1, "", "")
        return RunResult(0, "", "")

    def put_bytes(self, data: bytes, remote_path: str, mode: int = 0o644) -> None:
        self.files[remote_path] = (data, mode)

    def close(self) -> None:
        pass


def wheel(tmp_path: Path) -> Path:
    path = tmp_path / "llumctl-0.1.0-py3-none-any.whl"
    path.write_bytes(b"wheel bytes")
    return path


def test_fresh_host_gets_a_venv_and_the_wheel(tmp_path: Path) -> None:
    runner = RecordingRunner()
    workdir = "/srv/a b;c"
    python, changed = install_agent(runner, workdir, "python3", None, wheel(tmp_path))
    assert changed and python == f"{workdir}/venv/bin/python"
    venv_cmd = next(c for c in runner.commands if " -m venv " in c)
    assert shlex.split(venv_cmd) == [
        "python3",
        "-m",
        "venv",
        "--system-site-packages",
        f"{workdir}/venv",
    ]
    pips = [shlex.split(c) for c in runner.commands if " -m pip install " in c]
    assert len(pips) == 2 and all(
        p[0] == python and p[-1] == f"{workdir}/llumctl-0.1.0-py3-none-any.whl" for p in pips
    )
    assert "--force-reinstall" in pips[0] and "--no-deps" in pips[0]
    assert runner.files[f"{workdir}/llumctl-0.1.0-py3-none-any.whl"][0] == b"wheel bytes"
    marker = runner.files[f"{workdir}/installed-wheel"][0].decode()
    assert marker.startswith(hashlib.sha256(b"wheel bytes").hexdigest())


def test_same_wheel_is_a_no_op(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"wheel bytes").hexdigest()
    runner = RecordingRunner(marker=f"{digest} /w/venv/bin/python\n", has_venv=True)
    python, changed = install_agent(runner, "/w", "python3", None, wheel(tmp_path))
    assert (python, changed) == ("/w/venv/bin/python", False)
    assert not any("pip" in c or " -m venv " in c for c in runner.commands)
    assert runner.files == {}


def test_existing_env_gets_only_the_package(tmp_path: Path) -> None:
    runner = RecordingRunner(has_venv=True)
    python, changed = install_agent(runner, "/w", "python3", "/opt/vllm env/", wheel(tmp_path))
    assert changed and python == "/opt/vllm env/bin/python"
    assert not any(" -m venv " in c for c in runner.commands)
    assert all(shlex.split(c)[0] == python for c in runner.commands if " -m pip " in c)
