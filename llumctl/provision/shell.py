"""Shell quoting for commands sent to hosts: values never reach a shell unquoted."""

from __future__ import annotations

import shlex


def quote(value: str) -> str:
    return shlex.quote(value)


def qpath(path: str) -> str:
    """Quote a host path, keeping a leading `~/` meaning the remote user's home.

    `shlex.quote("~/x")` would stop the tilde from expanding, so the home part becomes
    "$HOME" (double-quoted, expanded by the remote shell) and the rest is quoted as usual.
    """
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        rest = path[2:]
        return '"$HOME"/' + shlex.quote(rest) if rest else '"$HOME"'
    return shlex.quote(path)


def join(*parts: str) -> str:
    """A command line from already-quoted parts."""
    return " ".join(parts)


def env_prefix(env: dict[str, str]) -> str:
    """`env K=V ...` with every value quoted (names are checked to be identifiers)."""
    if not env:
        return ""
    items = []
    for key, value in sorted(env.items()):
        if not key.isidentifier():
            raise ValueError(f"not an environment variable name: {key!r}")
        items.append(f"{key}={shlex.quote(value)}")
    return "env " + " ".join(items) + " "
