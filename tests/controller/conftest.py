"""Controller fixtures: a real controller process on a free loopback port.

`controller_factory(**settings)` starts `python -m llumctl.controller` with a config built
from `settings` (ControllerConfig fields) and stops every process it started, by PID.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llumctl.controller.config import config_from_dict
from llumctl.controller.launch import ControllerProcess, free_port, spawn_controller
from tests.controller.cluster_helpers import SECRET, AgentProcess, spawn_agent


@pytest.fixture
def controller_factory(tmp_path: Path) -> Iterator[Callable[..., ControllerProcess]]:
    started: list[ControllerProcess] = []

    def start(**settings: object) -> ControllerProcess:
        settings.setdefault("secret", SECRET)
        settings.setdefault("port", free_port())
        config = config_from_dict(dict(settings))
        proc = spawn_controller(config, tmp_path / f"controller-{len(started)}")
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    started: list[AgentProcess] = []

    def start(controller_url: str, **settings: Any) -> AgentProcess:
        agent = spawn_agent(tmp_path / f"agent-{len(started)}", controller_url, **settings)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop()
