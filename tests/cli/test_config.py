"""cluster.toml parsing: examples load, every error names the key path and the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from llumctl.config import default_local_cluster, load_cluster, locate_line, parse_cluster
from llumctl.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_examples_load() -> None:
    gpu = load_cluster(EXAMPLES / "gpu-cluster.toml")
    assert [h.name for h in gpu.hosts] == ["gpu1", "gpu2"]
    assert gpu.controller.host == "gpu1"
    assert gpu.hosts[0].python_env == "/opt/vllm-env"
    assert [i.device for i in gpu.hosts[1].instances] == ["cuda:0", "cuda:1"]
    assert gpu.policy_params["is_scaling_enabled"] is True
    sim = load_cluster(EXAMPLES / "sim-cluster.toml")
    assert sum(i.count for i in sim.hosts[0].instances) == 16
    assert sim.hosts[0].is_local
    local = load_cluster(EXAMPLES / "local-cluster.toml")
    assert local.hosts[0].env["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_cluster(text, source="c.toml")
    return str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[[hosts]]\nname = "a"\nssh_port = "22"\n',
            'c.toml:3: hosts[0].ssh_port: expected an integer, got "22"',
        ),
        (
            '[[hosts]]\nname = "a"\n[[hosts]]\nname = "b"\nagent_port = 70000\n',
            "c.toml:5: hosts[1].agent_port: port out of range",
        ),
        (
            '[[hosts]]\nname = "a"\n[[hosts.instances]]\nengine = "gpu"\n',
            "c.toml:4: hosts[0].instances[0].engine: must be one of vllm, sim",
        ),
        (
            '[[hosts]]\nname = "a"\n[[hosts]]\nname = "b"\n[[hosts.instances]]\nengine = "sim"\n'
            '[[hosts.instances]]\nengine = "sim"\ncount = -1\n',
            "c.toml:9: hosts[1].instances[1].count: must be >= 0",
        ),
        ('[[hosts]]\nname = "a"\nsshport = 22\n', "c.toml:3: hosts[0].sshport: unknown key"),
        (
            '[policy]\nname = "fastest"\n[[hosts]]\nname = "a"\n',
            "c.toml:2: policy.name: unknown policy 'fastest'",
        ),
        (
            '[policy.params]\nmigrate_in_threshold = "high"\n[[hosts]]\nname = "a"\n',
            "c.toml:2: policy.params.migrate_in_threshold:",
        ),
        (
            '[controller]\nhost = "b"\n[[hosts]]\nname = "a"\n',
            "c.toml:2: controller.host: no host named 'b'",
        ),
        (
            '[[hosts]]\nname = "a"\n[[hosts]]\nname = "a"\n',
            "c.toml:4: hosts[1].name: duplicate host name 'a'",
        ),
        ('name = "x"\n', "hosts: at least one [[hosts]] entry is needed"),
        ('[[hosts]]\naddress = "h"\n', "c.toml:1: hosts[0].name: missing"),
        (
            '[[hosts]]\nname = "a"\nenv = { "A B" = "1" }\n',
            "hosts[0].env.A B: not an environment variable name",
        ),
    ],
)
def test_errors_name_key_path_and_line(text: str, expected: str) -> None:
    assert expected in error_of(text)


def test_malformed_toml_is_one_line_with_position() -> None:
    message = error_of('[[hosts]]\nname = "a\n')
    assert message.startswith("c.toml: malformed TOML:")
    assert "line 2" in message
    assert "\n" not in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cluster file not found"):
        load_cluster(tmp_path / "nope.toml")


def test_locate_line_dotted_keys_and_inline_tables() -> None:
    text = '[model]\nengine_args.x = 1\n[[hosts]]\nname = "a"\n[[hosts]]\nname = "b"  # comment\n'
    assert locate_line(text, ("model", "engine_args", "x")) == 2
    assert locate_line(text, ("hosts", 1, "name")) == 6
    assert locate_line(text, ("hosts", 1, "devices")) == 5  # falls back to the table header
    assert locate_line(text, ("controller",)) is None


def test_defaults() -> None:
    cfg = parse_cluster('[[hosts]]\nname = "gpu-1"\n')
    host = cfg.hosts[0]
    assert host.address == "gpu-1" and host.agent_port == 7100 and host.python == "python3"
    assert cfg.controller.port == 8000 and cfg.controller.api_keys == ()
    assert cfg.policy == "llumnix"


def test_default_local_cluster_picks_the_engine() -> None:
    with_vllm = default_local_cluster(has_vllm=True)
    assert with_vllm.hosts[0].is_local
    assert [(i.engine, i.count) for i in with_vllm.hosts[0].instances] == [("vllm", 2)]
    assert with_vllm.controller.port == 8000 and with_vllm.controller.bind == "127.0.0.1"
    assert default_local_cluster(has_vllm=False).hosts[0].instances[0].engine == "sim"
