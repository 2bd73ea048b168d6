"""Controller configuration: where it listens, which policy it runs, what it may start.

Read from a TOML or JSON file (`python -m llumctl.controller --config FILE`) or built in
code by tests. Every field has a default, so an empty file is a valid controller.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomllib

from llumctl.errors import ConfigError
from llumctl.policy import POLICY_NAMES, PolicyParams


@dataclass(frozen=True)
class ModelTemplate:
    """How to start one more instance of a model when scaling up."""

    name: str
    # "vllm" or "sim" (simulated; labelled so everywhere).
    engine: str = "sim"
    engine_args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ControllerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    # Cluster secret: required on the control API, agent API and instance API.
    secret: str = ""
    # URL the agents and llumlets use to reach this controller (default http://host:port).
    public_url: str = ""
    policy: str = "llumnix"
    params: PolicyParams = field(default_factory=PolicyParams)
    # Period of the policy loop (migration pairing, scaling, liveness).
    policy_period_s: float = 0.2
    # An instance whose last load report is older than this is considered dead.
    report_timeout_s: float = 10.0
    # How long a request waits for an instance of its model before a 503.
    dispatch_timeout_s: float = 60.0
    # Models the controller may start instances of (auto-scaling, /api/scale).
    models: tuple[ModelTemplate, ...] = ()
    # Default max_tokens when a chat request gives none (completions default to 16).
    default_chat_max_tokens: int = 256
    # Client API keys for the OpenAI endpoints (empty: open). Separate from the secret.
    api_keys: tuple[str, ...] = ()
    # Size of the in-memory event log.
    max_events: int = 2000

    @property
    def url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"

    def template(self, model: str) -> ModelTemplate | None:
        return next((m for m in self.models if m.name == model), None)


def load_config(path: str | Path, **overrides: Any) -> ControllerConfig:
    """Read a TOML/JSON config; `overrides` (CLI flags) win over the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    section = data.get("controller", data)
    return config_from_dict({**section, **{k: v for k, v in overrides.items() if v is not None}})


def config_from_dict(data: dict[str, Any]) -> ControllerConfig:
    """Build a config from plain data; unknown keys and bad values raise ConfigError."""
    known = {f.name for f in fields(ControllerConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown controller setting(s): {', '.join(unknown)}")
    kwargs = dict(data)
    try:
        kwargs["params"] = PolicyParams().with_updates(dict(data.get("params", {})))
    except ValueError as exc:
        raise ConfigError(f"params: {exc}") from None
    kwargs["models"] = tuple(_template(m) for m in data.get("models", ()))
    kwargs["api_keys"] = tuple(str(k) for k in data.get("api_keys", ()))
    if kwargs.get("policy", "llumnix") not in POLICY_NAMES:
        raise ConfigError(f"policy: unknown {kwargs['policy']!r}; choose from {POLICY_NAMES}")
    try:
        return ControllerConfig(**kwargs)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None


def _template(item: Any) -> ModelTemplate:
    if isinstance(item, ModelTemplate):
        return item
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise ConfigError("models: each entry needs a 'name'")
    if item.get("engine", "sim") not in ("sim", "vllm"):
        raise ConfigError(f"models.{item['name']}.engine must be 'sim' or 'vllm'")
    return ModelTemplate(item["name"], item.get("engine", "sim"), dict(item.get("engine_args", {})))
