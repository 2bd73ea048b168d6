"""The state file `up` writes and every other command reads (mode 0600: it holds the secret).

Location: `--cluster PATH`, else $LLUMCTL_STATE, else $LLUMCTL_HOME/state.json
(LLUMCTL_HOME defaults to ~/.llumctl). It names the controller URL, the cluster secret, the
cluster file and, per host, where its agent lives, so `down` and `logs` can find them.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llumctl.errors import ConfigError, InputError


def llumctl_home() -> Path:
    return Path(os.path.expanduser(os.environ.get("LLUMCTL_HOME", "~/.llumctl")))


def default_state_path() -> Path:
    env = os.environ.get("LLUMCTL_STATE")
    return Path(os.path.expanduser(env)) if env else llumctl_home() / "state.json"


def new_secret() -> str:
    return secrets.token_urlsafe(32)


@dataclass
class HostState:
    name: str
    # Absolute working directory on the host (agent config, secret, pid, logs).
    workdir: str
    agent_url: str
    agent_pid: int = 0
    instances: list[str] = field(default_factory=list)
    # How to reach it again (down, logs) without the cluster file.
    address: str = "local"
    ssh_user: str | None = None
    ssh_port: int | None = None
    ssh_key: str | None = None


@dataclass
class ClusterState:
    controller_url: str
    secret: str
    # Cluster file `up` used ("<default>" for the embedded local cluster).
    source: str = "<default>"
    # Where the controller runs: "local" or a host name, with its workdir and pid there.
    controller_host: str = "local"
    controller_workdir: str = ""
    controller_pid: int = 0
    hosts: list[HostState] = field(default_factory=list)

    def host(self, name: str) -> HostState:
        for h in self.hosts:
            if h.name == name:
                return h
        known = ", ".join(h.name for h in self.hosts) or "none"
        raise InputError(f"unknown host {name!r} (hosts: {known})")


def save_state(state: ClusterState, path: Path | None = None) -> Path:
    path = path or default_state_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        json.dump(asdict(state), f, indent=2)
    os.replace(tmp, path)
    return path


def load_state(path: Path | str | None = None, required: bool = True) -> ClusterState | None:
    """The state at `path` (or the default); ConfigError with a hint when missing/invalid."""
    p = Path(os.path.expanduser(str(path))) if path else default_state_path()
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        if not required:
            return None
        raise ConfigError(
            f"no cluster found ({p} does not exist); run `llumctl up` or pass --cluster STATE_FILE"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read cluster state {p}: {exc}") from None
    try:
        return _from_dict(data)
    except (TypeError, KeyError, AttributeError) as exc:
        raise ConfigError(f"cluster state {p} is not valid: {exc}") from None


def remove_state(path: Path | None = None) -> None:
    (path or default_state_path()).unlink(missing_ok=True)


def _from_dict(data: dict[str, Any]) -> ClusterState:
    hosts = [HostState(**h) for h in data.get("hosts", [])]
    return ClusterState(**{**data, "hosts": hosts})
