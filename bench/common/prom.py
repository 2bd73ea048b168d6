"""Reading Prometheus text exposition (engine and controller /metrics) without a client."""

from __future__ import annotations

import re

import httpx

_LINE = re.compile(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)")


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of every sample of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        match = _LINE.match(line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total


def series(text: str, name: str, **labels: str) -> dict[str, float]:
    """Every sample of `name` whose labels include `labels`, keyed by its label text."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if not match or match.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            found[match.group(2) or ""] = float(match.group(3))
    return found


def counter_rise(before: str, after: str, name: str, **labels: str) -> float:
    """How much a counter rose between two scrapes, series by series. A series that went
    down was reset (its instance re-registered): its whole `after` value is the rise; a
    series gone from `after` (instance dropped) contributes nothing it had not shown."""
    old = series(before, name, **labels)
    return sum(
        value - old.get(key, 0.0) if value >= old.get(key, 0.0) else value
        for key, value in series(after, name, **labels).items()
    )


def scrape(url: str, headers: dict[str, str] | None = None) -> str:
    return httpx.get(f"{url}/metrics", headers=headers or {}, timeout=10).text
