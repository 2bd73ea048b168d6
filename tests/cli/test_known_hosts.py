"""known_hosts updates from `--accept-new-host-keys` when hosts connect in parallel."""

from __future__ import annotations

from pathlib import Path

import paramiko
import pytest

from llumctl.provision import ssh


def _accepting_client(hostname: str) -> paramiko.SSHClient:
    """A client as `connect` leaves it after accepting `hostname`'s new key."""
    client = ssh._client(accept_new=True)
    client.get_host_keys().add(hostname, "ecdsa-sha2-nistp256", paramiko.ECDSAKey.generate())
    return client


def test_parallel_connections_keep_every_new_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    known = tmp_path / ".ssh" / "known_hosts"
    known.parent.mkdir()
    # An entry paramiko does not parse must survive as written; no trailing newline.
    known.write_text("# the operator's comment\n[10.0.0.9]:22 ssh-unknown AAAA")
    # Both clients read the file before either saves (hosts bootstrapped at once).
    first, second = _accepting_client("[127.0.0.1]:2201"), _accepting_client("[127.0.0.1]:2202")
    ssh._save_host_keys(first)
    ssh._save_host_keys(second)
    ssh._save_host_keys(first)  # saving again adds nothing
    lines = known.read_text().splitlines()
    assert lines[:2] == ["# the operator's comment", "[10.0.0.9]:22 ssh-unknown AAAA"]
    assert len(lines) == 4
    on_file = paramiko.HostKeys(str(known))
    for client, host in ((first, "[127.0.0.1]:2201"), (second, "[127.0.0.1]:2202")):
        key = client.get_host_keys().lookup(host)["ecdsa-sha2-nistp256"]
        assert on_file.lookup(host)["ecdsa-sha2-nistp256"] == key
