"""Agent configuration (the JSON file `llumctl up` writes; every key has a default)."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from llumctl.errors import ConfigError


@dataclass(frozen=True)
class AgentConfig:
    agent_id: str = "local"
    # Address the controller and peers use to reach this host.
    host: str = "127.0.0.1"
    port: int = 7100
    # Interface the agent and its instances listen on (default: `host`).
    bind: str = ""
    controller_url: str = ""
    secret: str = ""
    secret_file: str = ""
    devices: tuple[str, ...] = ()
    max_instances: int = 16
    workdir: Path = Path(".")
    heartbeat_s: float = 1.0
    # Extra environment for instance processes (e.g. VLLM_CPU_KVCACHE_SPACE).
    env: dict[str, str] = field(default_factory=dict)

    @property
    def advertise_host(self) -> str:
        return self.host

    def free_port(self) -> int:
        with socket.socket() as sock:
            sock.bind((self.bind or self.host, 0))
            return int(sock.getsockname()[1])


def agent_config(data: dict[str, Any]) -> AgentConfig:
    known = {f.name for f in fields(AgentConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown agent setting(s): {', '.join(unknown)}")
    values = dict(data)
    if not values.get("secret") and values.get("secret_file"):
        try:
            values["secret"] = Path(values["secret_file"]).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"secret_file: {exc.strerror}") from None
    if not values.get("secret"):
        raise ConfigError("the agent needs the cluster secret (secret or secret_file)")
    values["devices"] = tuple(str(d) for d in values.get("devices", ()))
    values["workdir"] = Path(values.get("workdir", "."))
    values.setdefault("bind", values.get("host", "127.0.0.1"))
    try:
        return AgentConfig(**values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None


def load_agent_config(path: str | Path, **overrides: Any) -> AgentConfig:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return agent_config(data)
