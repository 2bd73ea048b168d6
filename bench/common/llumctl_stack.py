"""A llumctl cluster on this machine for benchmarks, through `llumctl up` / `llumctl down`
(the product path), in a private LLUMCTL_HOME so it never touches a user's cluster."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.common.engines import EngineShape
from bench.common.procs import ENGINE_ENV, free_port


@dataclass
class LlumctlCluster:
    home: Path
    url: str  # controller base URL (OpenAI endpoint at url + "/v1")
    secret: str
    controller_pid: int
    # One keep-alive client for status polls: `httpx.get` builds a client (and its TLS
    # context) per call, ~50 ms of CPU in the load generator's process each time, which
    # the 0.2 s state sampler then took from the load generator (measured: its process used
    # 8 CPU-s per run instead of 3, and its stall monitor doubled).
    _http: httpx.Client | None = field(default=None, init=False, repr=False)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}

    def set_policy(self, name: str, params: dict[str, Any] | None = None) -> None:
        body = {"name": name, "params": params or {}}
        r = httpx.put(f"{self.url}/api/policy", json=body, headers=self.headers, timeout=10)
        r.raise_for_status()

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", headers=self.headers, timeout=10).text

    def events(self, kind: str, since: int = 0) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"kind": kind, "since": since}
        r = httpx.get(f"{self.url}/api/events", params=params, headers=self.headers, timeout=10)
        r.raise_for_status()
        return list(r.json()["events"])

    def last_event_seq(self) -> int:
        r = httpx.get(f"{self.url}/api/events", params={"kind": "none"}, headers=self.headers)
        r.raise_for_status()
        return int(r.json()["last_seq"])

    def drain(self, instance: str) -> None:
        """New requests stop going to `instance` (it keeps running)."""
        body = {"instance": instance, "stop": False}
        r = httpx.post(f"{self.url}/api/drain", json=body, headers=self.headers, timeout=30)
        r.raise_for_status()

    def instance_ids(self) -> list[str]:
        return sorted(i["id"] for i in self.status()["instances"])

    def status(self) -> dict[str, Any]:
        if self._http is None:
            self._http = httpx.Client(headers=self.headers, timeout=60)
        r = self._http.get(f"{self.url}/api/status")
        r.raise_for_status()
        return dict(r.json())


def cluster_toml(instances: int, engine: str, shape: EngineShape, policy: str) -> str:
    args = json.dumps(shape.engine_args()) if engine == "vllm" else "{}"
    env = ", ".join(f'{k} = "{v}"' for k, v in ENGINE_ENV.items())
    model = 'name = "tiny"\npath = "tiny"' if engine == "vllm" else 'name = "sim"\npath = "sim"'
    # TOML inline tables are JSON-like except for `key = value`: convert the JSON object.
    inline = "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in json.loads(args).items())
    inline = inline + " }" if inline != "{ " else "{}"
    return (
        f'name = "bench"\n\n[controller]\nhost = "local"\nbind = "127.0.0.1"\n'
        f'port = {free_port()}\n\n[model]\n{model}\n\n[policy]\nname = "{policy}"\n\n'
        f'[[hosts]]\nname = "localhost"\naddress = "local"\nagent_port = {free_port()}\n'
        f"max_instances = {instances}\nenv = {{ {env} }}\n\n"
        f'[[hosts.instances]]\nengine = "{engine}"\ncount = {instances}\n'
        f"engine_args = {inline}\n"
    )


def up(home: Path, toml: str, timeout_s: float = 900.0) -> LlumctlCluster:
    home.mkdir(parents=True, exist_ok=True)
    path = home / "cluster.toml"
    path.write_text(toml)
    try:
        _llumctl(home, ["up", str(path), "--timeout", str(timeout_s)], timeout_s + 120)
    except BaseException:
        # A failed or interrupted `up` may have started the controller and agents already:
        # stop what its state file records before giving up.
        if (home / "state.json").exists():
            with contextlib.suppress(Exception):
                _llumctl(home, ["down", "--force"], 300)
        raise
    state = json.loads((home / "state.json").read_text())
    url = state.get("controller_url") or state["controller"]["url"]
    return LlumctlCluster(home, url.rstrip("/"), state["secret"], _controller_pid(state))


def down(cluster: LlumctlCluster) -> None:
    _llumctl(cluster.home, ["down", "--force"], 300)


def _llumctl(home: Path, args: list[str], timeout_s: float) -> None:
    env = {**os.environ, "LLUMCTL_HOME": str(home)}
    env.pop("LLUMCTL_STATE", None)
    cmd = [sys.executable, "-m", "llumctl.cli.main", *args]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    (home / f"llumctl-{args[0]}.log").write_text(out.stdout + out.stderr)
    if out.returncode != 0:
        raise RuntimeError(f"llumctl {args[0]} failed ({out.returncode}): {out.stderr[-1500:]}")


def _controller_pid(state: dict[str, Any]) -> int:
    controller = state.get("controller") or {}
    return int(controller.get("pid") or state.get("controller_pid") or 0)
