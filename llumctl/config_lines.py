"""Where a key of a TOML file is defined: `tomllib` gives values without positions, so
cluster.toml errors find their line by re-scanning table headers and keys here."""

from __future__ import annotations


def format_path(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(top level)"


def locate_line(text: str, path: tuple[str | int, ...]) -> int | None:
    """The line that defines `path` (or its longest defined prefix); None if not found.

    tomllib gives values without positions, so this re-scans the table headers and keys.
    It handles the shapes cluster files use (tables, arrays of tables, dotted keys).
    """
    arrays: dict[tuple[str | int, ...], int] = {}
    current: tuple[str | int, ...] = ()
    best_len, best_line = 0, None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if line.startswith("["):
            current = _header(line, arrays)
            full = current
        elif "=" in line:
            full = current + tuple(_keyparts(line.split("=", 1)[0]))
        else:
            continue
        n = _common(full, path)
        if n == len(full) and n > best_len:
            best_len, best_line = n, lineno
    return best_line


def _header(line: str, arrays: dict[tuple[str | int, ...], int]) -> tuple[str | int, ...]:
    is_array = line.startswith("[[")
    inner = line.strip("[] ")
    parts = _keyparts(inner)
    resolved: list[str | int] = []
    for i, part in enumerate(parts):
        resolved.append(part)
        # Inside an array of tables, a name means its latest entry (not for the name an
        # [[array]] header itself declares: that one gets a new entry below).
        is_declared = is_array and i == len(parts) - 1
        if tuple(resolved) in arrays and not is_declared:
            resolved.append(arrays[tuple(resolved)])
    if is_array:
        key = tuple(resolved)
        arrays[key] = arrays.get(key, -1) + 1
        # Sub-arrays of this entry start counting afresh.
        for other in [k for k in arrays if len(k) > len(key) and k[: len(key)] == key]:
            del arrays[other]
        return key + (arrays[key],)
    return tuple(resolved)


def _keyparts(key: str) -> list[str]:
    return [p.strip().strip("\"'") for p in key.split(".") if p.strip()]


def _common(a: tuple[str | int, ...], b: tuple[str | int, ...]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
