"""Bad input to `llumctl up` against real sshd: one clear line, non-zero exit, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ssh.ssh_hosts import SshEnv, free_port

pytestmark = pytest.mark.ssh


def cluster_file(path: Path, hosts: list[dict[str, object]]) -> Path:
    lines = []
    for h in hosts:
        lines.append("[[hosts]]")
        for key, value in h.items():
            lines.append(
                f"{key} = {value!r}".replace("'", '"')
                if isinstance(value, str)
                else f"{key} = {value}"
            )
        lines.append('[[hosts.instances]]\nengine = "sim"\ncount = 1')
    path.write_text("\n".join(lines) + "\n")
    return path


def assert_clean_failure(result, needle: str) -> None:  # type: ignore[no-untyped-def]
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "Traceback" not in out, out
    assert needle in out, out


def host_entry(env: SshEnv, port: int, key: Path, tmp: Path, **extra: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "name": "hosta",
        "address": "127.0.0.1",
        "ssh_port": port,
        "ssh_key": str(key),
        "workdir": str(tmp / "work"),
        "agent_port": free_port(),
    }
    entry.update(extra)
    return entry


def test_unknown_host_key_is_refused_without_the_flag(ssh_env: SshEnv, tmp_path: Path) -> None:
    host = ssh_env.hosts[0]
    f = cluster_file(tmp_path / "c.toml", [host_entry(ssh_env, host.port, ssh_env.key, tmp_path)])
    result = ssh_env.llumctl("up", str(f))
    assert_clean_failure(result, "unknown host key")
    assert "--accept-new-host-keys" in result.stdout
    known = ssh_env.home / ".ssh" / "known_hosts"
    assert not known.exists() or f":{host.port}]" not in known.read_text()
    # Nothing was started: no reachable host, so no controller and no state file.
    assert not (ssh_env.home / ".llumctl" / "state.json").exists()


def test_wrong_key_is_an_authentication_failure(ssh_env: SshEnv, tmp_path: Path) -> None:
    host = ssh_env.hosts[1]
    ssh_env.trust(host)
    f = cluster_file(
        tmp_path / "c.toml", [host_entry(ssh_env, host.port, ssh_env.wrong_key, tmp_path)]
    )
    assert_clean_failure(ssh_env.llumctl("up", str(f)), "authentication failed")


def test_unreachable_host(ssh_env: SshEnv, tmp_path: Path) -> None:
    f = cluster_file(tmp_path / "c.toml", [host_entry(ssh_env, free_port(), ssh_env.key, tmp_path)])
    assert_clean_failure(ssh_env.llumctl("up", str(f)), "connection refused")


def test_missing_key_file(ssh_env: SshEnv, tmp_path: Path) -> None:
    host = ssh_env.hosts[0]
    f = cluster_file(
        tmp_path / "c.toml", [host_entry(ssh_env, host.port, tmp_path / "nope", tmp_path)]
    )
    assert_clean_failure(ssh_env.llumctl("up", str(f)), "key file not found")


def test_malformed_toml_names_the_line(ssh_env: SshEnv, tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[[hosts]]\nname = "a"\nssh_port = \n')
    result = ssh_env.llumctl("up", str(f))
    assert_clean_failure(result, "malformed TOML")
    assert "line 3" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_wrong_type_names_key_path_and_line(ssh_env: SshEnv, tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[[hosts]]\nname = "a"\n\n[[hosts]]\nname = "b"\nssh_port = "22"\n')
    result = ssh_env.llumctl("up", str(f))
    assert_clean_failure(result, f"{f}:6: hosts[1].ssh_port: expected an integer")
    assert result.returncode == 2


def test_metacharacters_in_host_name_are_rejected(ssh_env: SshEnv, tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    f = tmp_path / "c.toml"
    f.write_text(f'[[hosts]]\nname = "a; touch {pwned}"\n')
    assert_clean_failure(ssh_env.llumctl("up", str(f)), "hosts[0].name")
    assert not pwned.exists()


def test_metacharacters_in_address_are_not_executed(ssh_env: SshEnv, tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    entry = host_entry(
        ssh_env, ssh_env.hosts[0].port, ssh_env.key, tmp_path, address=f"127.0.0.1;touch {pwned}"
    )
    f = cluster_file(tmp_path / "c.toml", [entry])
    result = ssh_env.llumctl("up", str(f))
    assert_clean_failure(result, "hosts[0].address: '127.0.0.1;touch")
    assert "is not a host name or IP address" in result.stderr
    assert not pwned.exists()


def test_metacharacters_in_paths_are_quoted_never_executed(ssh_env: SshEnv, tmp_path: Path) -> None:
    """A workdir and a python path full of shell syntax reach the host as literal strings."""
    host = ssh_env.hosts[0]
    ssh_env.trust(host)
    pwned = tmp_path / "pwned"
    workdir = f"{tmp_path}/w $(touch {pwned}) `touch {pwned}`; touch {pwned} && x"
    python = f"python3; touch {pwned}"
    entry = host_entry(ssh_env, host.port, ssh_env.key, tmp_path, workdir=workdir, python=python)
    f = cluster_file(tmp_path / "c.toml", [entry])
    result = ssh_env.llumctl("up", str(f))
    assert_clean_failure(result, "python not usable")
    assert not pwned.exists()
    # The work directory was created under its literal name.
    assert Path(workdir).is_dir()
    _down(ssh_env)


def test_missing_cluster(ssh_env: SshEnv, tmp_path: Path) -> None:
    for args in (["status"], ["down"], ["migrate", "r1", "--to", "x"], ["top", "--once"]):
        result = ssh_env.llumctl(*args, "--cluster", str(tmp_path / "none.json"))
        assert_clean_failure(result, "no cluster found")
        assert len(result.stderr.strip().splitlines()) == 1
        assert result.returncode == 2


def _down(env: SshEnv) -> None:
    """Stop whatever the test's `up` started (the local controller), by its recorded PID."""
    if (env.home / ".llumctl" / "state.json").exists():
        result = env.llumctl("down", "--force")
        assert result.returncode == 0, result.stdout + result.stderr
