"""Fixtures of the SSH tests: two real sshd "hosts" on loopback (see ssh_hosts.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.ssh.ssh_hosts import SshEnv, keygen, sshd_binary, start_sshd


@pytest.fixture(scope="module")
def ssh_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshEnv]:
    sshd_binary()
    root = tmp_path_factory.mktemp("ssh")
    home = root / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    key = keygen(root / "client_key")
    wrong = keygen(root / "wrong_key")
    hosts = []
    try:
        for name in ("hosta", "hostb"):
            hosts.append(start_sshd(name, root / name, [key]))
        yield SshEnv(home, key, wrong, hosts)
    finally:
        for h in hosts:
            h.stop()
