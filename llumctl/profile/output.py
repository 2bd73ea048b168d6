"""Writing a measured profile in the simulator's format (llumctl/sim/profile.py).

The file holds exactly the `LatencyProfile` keys, so `LatencyProfile.from_dict` (and the
`[profile]` table of a `llumctl sim` workload file) reads it unchanged. The measured
transfer rate belongs to the simulated cluster, not the profile: in TOML it is a comment
naming the `[cluster]` key to set; `--json` output carries it in full.
"""

from __future__ import annotations

import json
from typing import Any

from llumctl.profile.measure import SPEED_PROBE_SHAPE
from llumctl.sim.profile import LatencyProfile


def profile_text(result: dict[str, Any], suffix: str) -> str:
    profile = LatencyProfile.from_dict(result["profile"])  # validates before writing
    values = {k: getattr(profile, k) for k in result["profile"]}
    if suffix == ".json":
        return json.dumps(values, indent=2) + "\n"
    lines = [
        f"# Measured by `llumctl profile` against {result['url']} ({result['model']}).",
        f"# Loopback KV transfer rate: {result['transfer_gbps']:.2f} Gb/s "
        "(simulator: [cluster] migration_bandwidth_gbps).",
    ]
    if "speed_probe_ms" in result:
        prompt, out = SPEED_PROBE_SHAPE
        lines.append(
            f"# Speed probe: {result['speed_probe_ms']:.2f} ms per token for a lone "
            f"{prompt}-token prompt decoding {out} tokens (the machine's speed while profiling)."
        )
    points = result.get("co_located_points_ms")
    if points:
        lines.append(
            f"# co_located_slowdown measured over {len(points)} instances sharing one host "
            f"(simulator: [cluster] instances_per_host = {len(points)})."
        )
    if result.get("co_located_first_token_points_ms"):
        lines.append(
            "# co_located_first_token_ms: mean TTFT of a probe with 0, 1, ... neighbours "
            "busy, minus the first."
        )
    for key, value in values.items():
        lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: object) -> str:
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)
