"""Opening SSH connections to hosts with paramiko, the way `ssh` would.

Honours ~/.ssh/config (HostName, User, Port, IdentityFile), the SSH agent and the default key
files; verifies host keys against ~/.ssh/known_hosts and refuses unknown ones unless the
operator passed --accept-new-host-keys (then they are added to known_hosts, like
`StrictHostKeyChecking=accept-new`). A changed host key is always refused.
Every paramiko/socket failure becomes one `ConnectionFailed` line.
"""

from __future__ import annotations

import getpass
import os
import socket
import threading
from pathlib import Path

import paramiko

from llumctl.config import HostSpec
from llumctl.errors import ConnectionFailed
from llumctl.provision.runner import SSHRunner

CONNECT_TIMEOUT_S = 10.0
# known_hosts is read-modified-written by parallel connections (see _save_host_keys).
_KNOWN_HOSTS_LOCK = threading.Lock()


class UnknownHostKey(paramiko.SSHException):  # type: ignore[misc]
    def __init__(self, hostname: str, key: paramiko.PKey) -> None:
        super().__init__(hostname)
        self.hostname = hostname
        self.fingerprint = f"{key.get_name()} {key.fingerprint}"


class _RefuseUnknown(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        raise UnknownHostKey(hostname, key)


def known_hosts_path() -> Path:
    return Path(os.path.expanduser("~/.ssh/known_hosts"))


def _ssh_config(alias: str) -> dict[str, object]:
    path = Path(os.path.expanduser("~/.ssh/config"))
    if not path.is_file():
        return {}
    try:
        return dict(paramiko.SSHConfig.from_path(str(path)).lookup(alias))
    except (OSError, paramiko.SSHException, ValueError) as exc:
        raise ConnectionFailed(f"cannot read {path}: {exc}") from None


def connect(host: HostSpec, accept_new_host_keys: bool = False) -> SSHRunner:
    """An `SSHRunner` on `host`, or ConnectionFailed with the reason in one line."""
    cfg = _ssh_config(host.address)
    hostname = str(cfg.get("hostname", host.address))
    port = host.ssh_port or int(str(cfg.get("port", 22)))
    user = host.ssh_user or str(cfg.get("user") or getpass.getuser())
    keys = [os.path.expanduser(host.ssh_key)] if host.ssh_key else _identity_files(cfg)
    target = f"{user}@{hostname}:{port}"
    if host.ssh_key and not os.path.isfile(keys[0]):
        raise ConnectionFailed(f"host {host.name}: key file not found: {host.ssh_key}")
    client = _client(accept_new_host_keys)
    try:
        client.connect(
            hostname,
            port=port,
            username=user,
            key_filename=keys or None,
            look_for_keys=not host.ssh_key,
            allow_agent=True,
            timeout=CONNECT_TIMEOUT_S,
            banner_timeout=CONNECT_TIMEOUT_S,
            auth_timeout=CONNECT_TIMEOUT_S,
        )
    except Exception as exc:  # every foreign failure becomes one line (translated below)
        client.close()
        raise ConnectionFailed(f"host {host.name} ({target}): {_reason(exc)}") from None
    if accept_new_host_keys:
        _save_host_keys(client)
    return SSHRunner(client, target)


def _identity_files(cfg: dict[str, object]) -> list[str]:
    files = cfg.get("identityfile") or []
    assert isinstance(files, list)
    return [os.path.expanduser(str(f)) for f in files if os.path.isfile(os.path.expanduser(str(f)))]


def _client(accept_new: bool) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    path = known_hosts_path()
    if accept_new:
        # load_host_keys (not system keys) so save_host_keys writes new keys back.
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
        client.load_host_keys(str(path))
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    else:
        if path.is_file():
            client.load_system_host_keys(str(path))
        client.set_missing_host_key_policy(_RefuseUnknown())
    return client


def _save_host_keys(client: paramiko.SSHClient) -> None:
    """Append the keys this connection accepted to known_hosts, as `ssh` does.

    `llumctl up` connects to its hosts in parallel, and every client read the file before
    the others added their keys: writing one client's view back would drop the others'
    (seen in CI: the second host's key lost, and every later command refused it). So the
    file is re-read under a lock and only missing keys are appended; lines paramiko cannot
    parse stay as the operator wrote them."""
    path = known_hosts_path()
    try:
        with _KNOWN_HOSTS_LOCK:
            on_file = paramiko.HostKeys(str(path)) if path.is_file() else paramiko.HostKeys()
            lines = []
            for hostname, keys in client.get_host_keys().items():
                known = on_file.lookup(hostname) or {}
                for key_type, key in keys.items():
                    if key_type not in known:
                        lines.append(f"{hostname} {key_type} {key.get_base64()}\n")
            if lines:
                with open(path, "a+", encoding="utf-8") as f:
                    f.seek(0)
                    text = f.read()
                    if text and not text.endswith("\n"):
                        lines.insert(0, "\n")
                    f.writelines(lines)
    except (OSError, paramiko.SSHException) as exc:
        raise ConnectionFailed(f"cannot update {path}: {exc}") from None


def _reason(exc: Exception) -> str:
    """One line for the operator, naming what to do where there is something to do."""
    if isinstance(exc, UnknownHostKey):
        return (
            f"unknown host key ({exc.fingerprint}); check it and rerun with "
            "--accept-new-host-keys to trust it"
        )
    if isinstance(exc, paramiko.BadHostKeyException):
        return (
            f"host key changed (got {exc.key.get_name()} {exc.key.fingerprint}); "
            f"refusing to connect (remove the old entry from {known_hosts_path()} if intended)"
        )
    if isinstance(exc, paramiko.PasswordRequiredException):
        return "the key file is encrypted; load it into ssh-agent"
    if isinstance(exc, paramiko.AuthenticationException):
        return "authentication failed (key not accepted)"
    if isinstance(exc, UnicodeError):
        return "invalid host name"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host name ({exc.strerror})"
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return "connection refused (is sshd running, is the port right?)"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return f"connection timed out after {CONNECT_TIMEOUT_S:.0f} s"
    if isinstance(exc, (paramiko.SSHException, OSError)):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"
