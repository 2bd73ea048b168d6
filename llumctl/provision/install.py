"""Getting this exact version of llumctl (which holds the agent) onto a host.

The wheel is built once from the source tree this CLI runs from (cached by a hash of the
sources), copied over SFTP and pip-installed into a virtualenv created with
`--system-site-packages` (so a host's vLLM/torch stay visible), or into the existing Python
environment the host entry names. A marker file with the wheel's hash makes a rerun a no-op.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import llumctl
from llumctl.errors import ProvisionError
from llumctl.provision.runner import CommandRunner
from llumctl.provision.shell import quote
from llumctl.provision.state import llumctl_home

MIN_PYTHON = (3, 10)


def source_root() -> Path | None:
    """The project directory this package was installed from (editable/source installs)."""
    root = Path(llumctl.__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() else None


def local_code_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a service this CLI starts on this machine, so that it runs the very
    llumctl the CLI runs: a source tree's directory goes first on PYTHONPATH. A checkout
    run as `python -m llumctl.cli.main` from its own directory is otherwise invisible to a
    service started in its work directory, which would run whatever llumctl the
    interpreter has installed, or fail to start. `base` holds the PYTHONPATH to keep
    (default: this process's)."""
    root = source_root()
    if root is None:  # an installed wheel: every process of this interpreter finds it
        return {}
    kept = (os.environ if base is None else base).get("PYTHONPATH", "")
    paths = [str(root), *(p for p in kept.split(os.pathsep) if p)]
    return {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}


def _sources_hash(root: Path) -> str:
    digest = hashlib.sha256()
    files = [root / "pyproject.toml"]
    for pkg in ("llumctl", "agent"):
        files.extend(sorted((root / pkg).rglob("*.py")))
    for f in files:
        digest.update(str(f.relative_to(root)).encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


def local_wheel() -> Path:
    """A wheel of this version of llumctl: $LLUMCTL_WHEEL, or built from the source tree."""
    env = os.environ.get("LLUMCTL_WHEEL")
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise ProvisionError(f"LLUMCTL_WHEEL={env}: no such file")
        return path
    root = source_root()
    if root is None:
        raise ProvisionError(
            "cannot find llumctl's source tree to build the agent wheel; set LLUMCTL_WHEEL"
        )
    out = llumctl_home() / "wheels" / _sources_hash(root)
    found = sorted(out.glob("llumctl-*.whl"))
    if found:
        return found[0]
    out.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(out),
        str(root),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    found = sorted(out.glob("llumctl-*.whl"))
    if proc.returncode != 0 or not found:
        last = (proc.stderr.strip().splitlines() or ["no wheel produced"])[-1]
        raise ProvisionError(f"building the llumctl wheel failed: {last}")
    return found[0]


def check_python(runner: CommandRunner, python: str) -> str:
    """The interpreter's version ("3.11"), or ProvisionError if missing or too old."""
    res = runner.run(
        f"{quote(python)} -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'", 30
    )
    if res.rc != 0:
        raise ProvisionError(f"python not usable: {quote(python)} (exit {res.rc})")
    version = res.out.strip()
    major, minor = (int(x) for x in version.split(".")[:2])
    if (major, minor) < MIN_PYTHON:
        raise ProvisionError(f"{python} is Python {version}; llumctl needs >= 3.10")
    return version


def install_agent(
    runner: CommandRunner, workdir: str, python: str, python_env: str | None, wheel: Path
) -> tuple[str, bool]:
    """Install the wheel on the host; returns (python of the agent env, whether it changed)."""
    if python_env:
        env_python = f"{python_env.rstrip('/')}/bin/python"
        runner.run(f"test -x {quote(env_python)}", 30).check(
            f"python_env {python_env} (no bin/python)"
        )
    else:
        venv = f"{workdir}/venv"
        env_python = f"{venv}/bin/python"
        if runner.run(f"test -x {quote(env_python)}", 30).rc != 0:
            cmd = f"{quote(python)} -m venv --system-site-packages {quote(venv)}"
            runner.run(cmd, 300).check("creating the virtualenv")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    marker = f"{workdir}/installed-wheel"
    current = runner.run(f"cat {quote(marker)} 2>/dev/null", 30).out.strip()
    if current == f"{digest} {env_python}":
        return env_python, False
    remote_wheel = f"{workdir}/{wheel.name}"
    runner.put_bytes(wheel.read_bytes(), remote_wheel, 0o644)
    pip = f"{quote(env_python)} -m pip install -q --disable-pip-version-check"
    # Same version number, new code during development: force the package itself, then let
    # pip add any missing dependency (already-present ones are kept as they are).
    runner.run(f"{pip} --no-deps --force-reinstall {quote(remote_wheel)}", 600).check("pip install")
    runner.run(f"{pip} {quote(remote_wheel)}", 600).check("pip install (dependencies)")
    runner.put_bytes(f"{digest} {env_python}\n".encode(), marker, 0o644)
    return env_python, True
