"""cluster.toml: the one file that describes a cluster, parsed into frozen dataclasses.

Every validation error names the key path and, when the file has it, the line:
`cluster.toml:12: hosts[1].ssh_port: expected an integer, got "abc"`.
`llumctl up` without a file uses `default_local_cluster()`: this machine, no SSH.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llumctl.config_lines import format_path, locate_line
from llumctl.errors import ConfigError
from llumctl.policy.params import PolicyParams
from llumctl.policy.registry import POLICY_NAMES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENGINES = ("vllm", "sim")
# Host names become instance ids and file names: keep them to a safe alphabet.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
# Host names, IPv4 and IPv6 addresses (or an ~/.ssh/config alias of that shape).
_ADDRESS_RE = re.compile(r"^[A-Za-z0-9_.:%-]{1,253}$")
LOCAL = "local"
TINY_MODEL = "tiny"


@dataclass(frozen=True)
class InstanceSpec:
    """A group of identical instances on one host."""

    engine: str
    count: int = 1
    # "cpu", "cuda:0", ...; empty = the agent picks.
    device: str = ""
    # Passed through to the engine, on top of [model].engine_args.
    engine_args: dict[str, Any] = field(default_factory=dict)
    # Served model name for these instances; empty = [model].name.
    model: str = ""


@dataclass(frozen=True)
class HostSpec:
    """One machine running one agent. `address = "local"` means this machine, no SSH."""

    name: str
    address: str
    ssh_user: str | None = None
    ssh_port: int | None = None
    # Key file; None = ~/.ssh/config, the SSH agent and the default key files.
    ssh_key: str | None = None
    # Interpreter that creates the agent's virtualenv.
    python: str = "python3"
    # An existing Python environment (prefix with bin/python): only the agent is added.
    python_env: str | None = None
    # Empty = ~/.llumctl on remote hosts, $LLUMCTL_HOME/hosts/<name> on the local one.
    workdir: str = ""
    agent_port: int = 7100
    # Address the controller uses to reach this agent; defaults to `address`.
    advertise: str | None = None
    devices: tuple[str, ...] = ()
    # Most instances the agent may run (scale-up included); 0 = max(16, configured count).
    max_instances: int = 0
    instances: tuple[InstanceSpec, ...] = ()
    # Extra environment for the agent and its engines (e.g. VLLM_CPU_KVCACHE_SPACE).
    env: dict[str, str] = field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        return self.address == LOCAL

    @property
    def agent_host(self) -> str:
        if self.advertise:
            return self.advertise
        return "127.0.0.1" if self.is_local else self.address


@dataclass(frozen=True)
class ControllerSpec:
    # "local" or the name of a host in [[hosts]].
    host: str = LOCAL
    bind: str = "127.0.0.1"
    port: int = 8000
    # Address agents and the CLI use to reach the controller; defaults to bind/host address.
    advertise: str | None = None
    # Client API keys for the OpenAI endpoint; empty = no key needed.
    api_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelSpec:
    # Name clients put in the OpenAI `model` field.
    name: str = TINY_MODEL
    # HF id or local path; "tiny" = the random-weight model `llumctl model gen` writes.
    path: str = TINY_MODEL
    dtype: str = "auto"
    max_model_len: int = 0
    engine_args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    controller: ControllerSpec
    model: ModelSpec
    hosts: tuple[HostSpec, ...]
    policy: str = "llumnix"
    policy_params: dict[str, Any] = field(default_factory=dict)
    # Where it came from ("<default>" for the embedded local cluster).
    source: str = "<default>"

    def host(self, name: str) -> HostSpec:
        for h in self.hosts:
            if h.name == name:
                return h
        raise ConfigError(f"unknown host {name!r} (hosts: {', '.join(h.name for h in self.hosts)})")


# ---- parsing ---------------------------------------------------------------------------


class _Ctx:
    """Builds error messages that name the file, line and key path."""

    def __init__(self, source: str, text: str) -> None:
        self.source = source
        self.text = text

    def error(self, path: tuple[str | int, ...], message: str) -> ConfigError:
        line = locate_line(self.text, path)
        where = f"{self.source}:{line}" if line else self.source
        return ConfigError(f"{where}: {format_path(path)}: {message}")


def load_cluster(path: str | Path) -> ClusterConfig:
    """Read and validate a cluster file."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"cluster file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read cluster file {p}: {exc}") from None
    return parse_cluster(text, source=str(path))


def parse_cluster(text: str, source: str = "cluster.toml") -> ClusterConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: malformed TOML: {exc}") from None
    return _cluster(_Ctx(source, text), data)


def _cluster(ctx: _Ctx, data: dict[str, Any]) -> ClusterConfig:
    _known(ctx, (), data, {"name", "controller", "model", "hosts", "policy"})
    hosts_raw = _get(ctx, (), data, "hosts", list, [])
    if not hosts_raw:
        raise ctx.error(("hosts",), "at least one [[hosts]] entry is needed")
    hosts = tuple(
        _host(ctx, ("hosts", i), _table(ctx, ("hosts", i), h)) for i, h in enumerate(hosts_raw)
    )
    names = [h.name for h in hosts]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ctx.error(("hosts", i, "name"), f"duplicate host name {name!r}")
    controller = _controller(ctx, _get(ctx, (), data, "controller", dict, {}))
    if controller.host != LOCAL and controller.host not in names:
        raise ctx.error(("controller", "host"), f"no host named {controller.host!r} in [[hosts]]")
    policy_name, params = _policy(ctx, _get(ctx, (), data, "policy", dict, {}))
    return ClusterConfig(
        name=_get(ctx, (), data, "name", str, "llumctl"),
        controller=controller,
        model=_model(ctx, _get(ctx, (), data, "model", dict, {})),
        hosts=hosts,
        policy=policy_name,
        policy_params=params,
        source=ctx.source,
    )


def _host(ctx: _Ctx, path: tuple[str | int, ...], raw: dict[str, Any]) -> HostSpec:
    fields_ = set(HostSpec.__dataclass_fields__)
    _known(ctx, path, raw, fields_)
    name = _get(ctx, path, raw, "name", str, None)
    if name is None:
        raise ctx.error(path + ("name",), "missing (every host needs a name)")
    if not _NAME_RE.match(name):
        raise ctx.error(path + ("name",), f"{name!r} is not a valid name (letters, digits, . _ -)")
    insts = _get(ctx, path, raw, "instances", list, [])
    address = _get(ctx, path, raw, "address", str, name)
    if not _ADDRESS_RE.match(address):
        raise ctx.error(path + ("address",), f"{address!r} is not a host name or IP address")
    env = _get(ctx, path, raw, "env", dict, {})
    for key in env:
        if not key.isidentifier():
            raise ctx.error(path + ("env", key), "not an environment variable name")
    return HostSpec(
        name=name,
        address=address,
        ssh_user=_get(ctx, path, raw, "ssh_user", str, None),
        ssh_port=_port(ctx, path, raw, "ssh_port", None),
        ssh_key=_get(ctx, path, raw, "ssh_key", str, None),
        python=_get(ctx, path, raw, "python", str, "python3"),
        python_env=_get(ctx, path, raw, "python_env", str, None),
        workdir=_get(ctx, path, raw, "workdir", str, ""),
        agent_port=_required_port(ctx, path, raw, "agent_port", 7100),
        advertise=_get(ctx, path, raw, "advertise", str, None),
        devices=tuple(_str_list(ctx, path, raw, "devices")),
        max_instances=_get(ctx, path, raw, "max_instances", int, 0),
        instances=tuple(
            _instance(ctx, path + ("instances", i), _table(ctx, path + ("instances", i), r))
            for i, r in enumerate(insts)
        ),
        env={k: str(v) for k, v in env.items()},
    )


def _instance(ctx: _Ctx, path: tuple[str | int, ...], raw: dict[str, Any]) -> InstanceSpec:
    _known(ctx, path, raw, set(InstanceSpec.__dataclass_fields__))
    engine = _get(ctx, path, raw, "engine", str, None)
    if engine not in ENGINES:
        raise ctx.error(path + ("engine",), f"must be one of {', '.join(ENGINES)}, got {engine!r}")
    count = _get(ctx, path, raw, "count", int, 1)
    if count < 0:
        raise ctx.error(path + ("count",), f"must be >= 0, got {count}")
    return InstanceSpec(
        engine=engine,
        count=count,
        device=_get(ctx, path, raw, "device", str, ""),
        engine_args=_get(ctx, path, raw, "engine_args", dict, {}),
        model=_get(ctx, path, raw, "model", str, ""),
    )


def _controller(ctx: _Ctx, raw: dict[str, Any]) -> ControllerSpec:
    path: tuple[str | int, ...] = ("controller",)
    _known(ctx, path, raw, set(ControllerSpec.__dataclass_fields__))
    return ControllerSpec(
        host=_get(ctx, path, raw, "host", str, LOCAL),
        bind=_get(ctx, path, raw, "bind", str, "127.0.0.1"),
        port=_required_port(ctx, path, raw, "port", 8000),
        advertise=_get(ctx, path, raw, "advertise", str, None),
        api_keys=tuple(_str_list(ctx, path, raw, "api_keys")),
    )


def _model(ctx: _Ctx, raw: dict[str, Any]) -> ModelSpec:
    path: tuple[str | int, ...] = ("model",)
    _known(ctx, path, raw, set(ModelSpec.__dataclass_fields__))
    mpath = _get(ctx, path, raw, "path", str, TINY_MODEL)
    return ModelSpec(
        name=_get(ctx, path, raw, "name", str, mpath),
        path=mpath,
        dtype=_get(ctx, path, raw, "dtype", str, "auto"),
        max_model_len=_get(ctx, path, raw, "max_model_len", int, 0),
        engine_args=_get(ctx, path, raw, "engine_args", dict, {}),
    )


def _policy(ctx: _Ctx, raw: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    path: tuple[str | int, ...] = ("policy",)
    _known(ctx, path, raw, {"name", "params"})
    name = _get(ctx, path, raw, "name", str, "llumnix")
    if name not in POLICY_NAMES:
        raise ctx.error(
            path + ("name",), f"unknown policy {name!r} (one of {', '.join(POLICY_NAMES)})"
        )
    params = _get(ctx, path, raw, "params", dict, {})
    for key, value in params.items():
        try:
            PolicyParams().with_updates({key: value})
        except ValueError as exc:
            raise ctx.error(path + ("params", key), str(exc)) from None
    return name, params


# ---- typed access ----------------------------------------------------------------------

_TYPE_NAMES = {str: "a string", int: "an integer", list: "a list", dict: "a table"}


def _get(
    ctx: _Ctx, path: tuple[str | int, ...], raw: dict[str, Any], key: str, kind: type, default: Any
) -> Any:
    if key not in raw:
        return default
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        shown = f'"{value}"' if isinstance(value, str) else repr(value)
        raise ctx.error(path + (key,), f"expected {_TYPE_NAMES[kind]}, got {shown}")
    return value


def _port(
    ctx: _Ctx, path: tuple[str | int, ...], raw: dict[str, Any], key: str, default: int | None
) -> int | None:
    port: int | None = _get(ctx, path, raw, key, int, default)
    if port is not None and not 1 <= port <= 65535:
        raise ctx.error(path + (key,), f"port out of range: {port}")
    return port


def _required_port(
    ctx: _Ctx, path: tuple[str | int, ...], raw: dict[str, Any], key: str, default: int
) -> int:
    port = _port(ctx, path, raw, key, default)
    assert port is not None  # a default was given
    return port


def _str_list(ctx: _Ctx, path: tuple[str | int, ...], raw: dict[str, Any], key: str) -> list[str]:
    items: list[str] = _get(ctx, path, raw, key, list, [])
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise ctx.error(path + (key, i), f"expected a string, got {item!r}")
    return items


def _table(ctx: _Ctx, path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ctx.error(path, f"expected a table, got {value!r}")
    return value


def _known(ctx: _Ctx, path: tuple[str | int, ...], raw: dict[str, Any], allowed: set[str]) -> None:
    for key in raw:
        if key not in allowed:
            raise ctx.error(path + (key,), f"unknown key (known: {', '.join(sorted(allowed))})")


# ---- the embedded default --------------------------------------------------------------


def default_local_cluster(
    has_vllm: bool, port: int = 8000, agent_port: int = 7100
) -> ClusterConfig:
    """This machine: controller + 2 instances of the tiny model (vllm-cpu if present, else sim)."""
    engine = "vllm" if has_vllm else "sim"
    env = {}
    if has_vllm:
        # Two engines share this machine's cores: one OpenMP pool each, sized to its share
        # (oversubscribed pools spin against each other and slow every decode step).
        threads = str(max(1, (os.cpu_count() or 2) // 2))
        env = {
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "VLLM_CPU_OMP_THREADS_BIND": "nobind",
            "OMP_NUM_THREADS": threads,
        }
    host = HostSpec(
        name="localhost",
        address=LOCAL,
        agent_port=agent_port,
        devices=("cpu",),
        instances=(InstanceSpec(engine=engine, count=2, device="cpu"),),
        env=env,
    )
    return ClusterConfig(
        name="local",
        controller=ControllerSpec(port=port),
        # vLLM's CPU backend: block size a multiple of 32, eager mode (no graph capture).
        model=ModelSpec(
            dtype="float32",
            max_model_len=2048,
            engine_args={"block_size": 32, "enforce_eager": True} if has_vllm else {},
        ),
        hosts=(host,),
    )
