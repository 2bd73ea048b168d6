"""The instance API of a real vLLM instance process: auth, bad input, attach, reports."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request

from tests.vllm.vllm_helpers import body, follow, prompt_ids, wait_tokens, wait_until

pytestmark = pytest.mark.vllm


@pytest.fixture
async def http(vllm_instances):
    async with httpx.AsyncClient(headers=vllm_instances[0].headers, timeout=300) as client:
        yield client


async def test_calls_without_the_secret_get_401(vllm_instances):
    inst = vllm_instances[0]
    async with httpx.AsyncClient(timeout=30) as anon:
        assert (await anon.get(f"{inst.url}/load")).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        resp = await anon.post(f"{inst.url}/generate", json=body("x", [5], 2), headers=wrong)
        assert resp.status_code == 401


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (body("long", prompt_ids(2040, 1), 100), "exceeds the model context"),
        (body("neg", [5, 6], 0), "max_tokens"),
        ({"request_id": "both", "prompt": "hi", "prompt_token_ids": [5]}, "exactly one"),
        ({"request_id": "vocab", "prompt_token_ids": [999999]}, "prompt_token_ids"),
        ({"prompt": "no id"}, "request_id"),
    ],
    ids=["too-long", "max-tokens", "two-prompts", "vocab", "no-id"],
)
async def test_bad_generate_input_is_a_400_with_one_line(vllm_instances, http, payload, needle):
    resp = await http.post(f"{vllm_instances[0].url}/generate", json=payload)
    assert resp.status_code == 400
    message = resp.json()["error"]["message"]
    assert needle in message and "\n" not in message


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"num_requests": "two"}, "num_requests"),
        ({"max_num_blocks": -1}, "max_num_blocks"),
        ({"mode": "teleport"}, "mode"),
        ({"resume_timeout_s": "soon"}, "resume_timeout_s"),
        ({"resume_timeout_s": 0}, "resume_timeout_s"),
        ({"debug_pause_s": -1}, "debug_pause_s"),
        ({"debug_stop_timeout_s": "never"}, "debug_stop_timeout_s"),
    ],
    ids=["count", "room", "mode", "timeout-text", "timeout-zero", "pause", "stop-timeout"],
)
async def test_bad_migrate_input_is_a_400_with_one_line(vllm_instances, http, extra, needle):
    src, dst = vllm_instances
    payload = {"dst_url": dst.url, "dst_instance_id": dst.instance_id, **extra}
    resp = await http.post(f"{src.url}/migrate", json=payload)
    assert resp.status_code == 400, resp.text
    message = resp.json()["error"]["message"]
    assert needle in message and "\n" not in message


async def test_bad_json_and_unknown_request(vllm_instances, http):
    url = vllm_instances[0].url
    resp = await http.post(f"{url}/generate", content=b"{not json")
    assert resp.status_code == 400
    assert (await http.get(f"{url}/requests/nope/stream")).status_code == 404
    assert (await http.post(f"{url}/requests/nope/abort")).status_code == 404
    assert (await http.get(f"{url}/requests/nope/stream?from=x")).status_code == 400


async def test_text_prompt_and_attach_at_an_index(vllm_instances, http):
    url = vllm_instances[0].url
    req = {"request_id": "attach", "prompt": "the and of bada", "sampling": {
        "max_tokens": 12, "temperature": 0.0, "ignore_eos": True}}  # fmt: skip
    whole = await follow(http, url, req)
    assert whole.indexes == list(range(12))
    lines = []
    async with http.stream("GET", f"{url}/requests/attach/stream", params={"from": 7}) as r:
        async for line in r.aiter_lines():
            if line.strip():
                lines.append(json.loads(line))
    assert [e["index"] for e in lines[:-1]] == list(range(7, 12))
    assert [e["token_id"] for e in lines[:-1]] == whole.tokens[7:]
    assert lines[-1]["type"] == "finished" and lines[-1]["num_output_tokens"] == 12


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_load_reports_follow_the_report_target(vllm_instances, http):
    """A real HTTP receiver gets LoadReports (with a running request in them)."""
    inst = vllm_instances[0]
    reports: list[dict] = []
    app = FastAPI()

    @app.post("/internal/load")
    async def load(request: Request) -> dict:
        assert request.headers["authorization"] == f"Bearer {inst.secret}"
        reports.append(await request.json())
        return {}

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        target = {"url": f"http://127.0.0.1:{port}"}
        assert (await http.put(f"{inst.url}/report-target", json=target)).status_code == 200
        task = asyncio.create_task(
            follow(http, inst.url, body("reported", prompt_ids(50, 3), 1500))
        )
        await wait_tokens(http, inst.url, "reported", 3)

        async def seen() -> bool:
            return any(
                [r["request_id"] for r in rep["load"]["running"]] == ["reported"] for rep in reports
            )

        await wait_until(seen, "a report with the running request", timeout_s=30)
        await http.post(f"{inst.url}/requests/reported/abort")
        await task
        assert (await http.put(f"{inst.url}/report-target", json={"url": None})).status_code == 200
        assert reports[-1]["info"]["instance_id"] == inst.instance_id
        assert reports[-1]["info"]["engine"] == "vllm"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_min_step_ms_goes_to_the_connector_and_bad_values_are_refused(tmp_path):
    from agent.engines.vllm.params import build_engine_args
    from llumctl.errors import InputError

    args = build_engine_args("m", {"min_step_ms": 3, "block_size": 32}, str(tmp_path))
    extra = args.kv_transfer_config.kv_connector_extra_config
    assert extra == {"socket_dir": str(tmp_path), "min_step_ms": 3.0}
    assert not hasattr(args, "min_step_ms") and args.block_size == 32
    for bad in (-1, "fast", True):
        with pytest.raises(InputError, match="min_step_ms must be a number >= 0"):
            build_engine_args("m", {"min_step_ms": bad}, str(tmp_path))


def test_worker_runs_in_core_only_on_cpu_hosts_that_share_cores(tmp_path):
    from agent.engines.vllm.params import build_engine_args, worker_in_core

    shared = {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    assert worker_in_core(True, {}, shared)
    assert not worker_in_core(False, {}, shared)  # GPU: vLLM's own choice
    assert not worker_in_core(True, {}, {})  # one engine, pinned threads: vLLM's "mp"
    assert not worker_in_core(True, {"distributed_executor_backend": "mp"}, shared)
    assert not worker_in_core(True, {"tensor_parallel_size": 2}, shared)
    assert (
        build_engine_args("m", {}, str(tmp_path), in_core=True).distributed_executor_backend
        == "uni"
    )
    assert build_engine_args("m", {}, str(tmp_path)).distributed_executor_backend is None


def test_instances_sharing_cores_have_no_separate_worker_process(vllm_instances):
    # Under each instance process, one vLLM engine-core process and no worker process
    # busy-waiting on a shared-memory queue beside it (params.worker_in_core).
    for inst in vllm_instances:
        titles = [_title(pid) for pid in _descendants(inst.pid)]
        assert [t for t in titles if t.startswith("VLLM::")] == ["VLLM::EngineCore"], titles


def test_instance_froze_its_start_up_heap_before_serving(vllm_instances):
    # Full collections over the engine's ~670,000 start-up objects stopped every stream of
    # the instance for ~0.5 s; the process freezes them once the engine has loaded.
    import re

    for inst in vllm_instances:
        found = re.findall(r"froze (\d+) start-up objects", inst.log_path.read_text())
        assert found and int(found[0]) > 100_000, inst.log_path


@pytest.mark.parametrize("key", ["engine_nice", "group_nice"])
def test_nices_default_to_10_on_shared_cores_and_are_checked(tmp_path, key):
    from agent.engines.vllm import params
    from llumctl.errors import InputError

    def extra(args: dict, in_core: bool) -> dict:
        built = params.build_engine_args("m", args, str(tmp_path), in_core=in_core)
        return dict(built.kv_transfer_config.kv_connector_extra_config)

    assert params.SHARED_CORES_ENGINE_NICE == params.SHARED_CORES_GROUP_NICE == 10
    assert extra({}, True)[key] == 10
    assert extra({key: 0}, True)[key] == 0
    assert key not in extra({}, False)  # GPU or own cores: untouched
    assert extra({key: 5}, False)[key] == 5
    for bad in (20, -1, 2.5, "x"):
        with pytest.raises(InputError, match=f"{key} must be"):
            params.build_engine_args("m", {key: bad}, str(tmp_path), in_core=True)


def test_instance_runs_in_a_cpu_group_of_lower_priority(vllm_instances):
    # Each instance leads its own session, so its processes form one autogroup, and nice
    # only orders threads within a group: the instance lowers the whole group's priority,
    # so the controller's relay and other instances' APIs are not queued behind its engine.
    # The test's own group is its terminal's, or the default one (the kernel prints nothing
    # for it) when no process above the test started a session, as in some CI containers.
    own_group = Path("/proc/self/autogroup").read_text()
    for inst in vllm_instances:
        group = Path(f"/proc/{inst.pid}/autogroup").read_text()
        assert group.split()[1:] == ["nice", "10"], group
        assert group != own_group  # the test's own group is not touched


async def test_engine_steps_run_at_lower_priority_than_the_io_threads(vllm_instances, http):
    # After a step, the engine core's main thread (steps, compute) runs at nice 10, and
    # the threads vLLM started for its I/O with the instance process stay at 0.
    inst = vllm_instances[0]
    body = {"request_id": "nice-check", "prompt_token_ids": [5, 6], "sampling": {"max_tokens": 2}}
    async with http.stream("POST", f"{inst.url}/generate", json=body, headers=inst.headers) as r:
        assert r.status_code == 200
        await r.aread()
    (core,) = [p for p in _descendants(inst.pid) if _title(p).startswith("VLLM::EngineCore")]
    nice = {int(t.name): _nice(core, int(t.name)) for t in Path(f"/proc/{core}/task").iterdir()}
    assert nice[core] == 10, nice
    assert 0 in nice.values(), nice


def _nice(pid: int, tid: int) -> int:
    stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])  # field 19 of stat(5)


def _descendants(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += [int(child), *_descendants(int(child))]
    return found


def _title(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ").strip()


def test_vllm_detokenizes_only_for_stop_strings():
    from agent.engines.vllm.params import to_vllm_sampling
    from llumctl.protocol import SamplingParams

    plain = to_vllm_sampling(SamplingParams(max_tokens=5), 0, {})
    with_stop = to_vllm_sampling(SamplingParams(max_tokens=5, stop=("x",)), 0, {})
    assert plain.detokenize is False and with_stop.detokenize is True


async def test_paced_engine_steps_last_at_least_min_step_ms(vllm_instances, http):
    # The shared pair runs paced (conftest): one request decodes one token per step, so
    # 300 tokens cannot come faster than 299 steps (a floor from sleeping, not a speed claim).
    from tests.conftest import INSTANCE_ENGINE_ARGS

    min_step_s = float(INSTANCE_ENGINE_ARGS["min_step_ms"]) / 1000
    url = vllm_instances[0].url
    start = asyncio.get_running_loop().time()
    trace = await follow(http, url, body("paced", prompt_ids(8, 21), 300))
    elapsed = asyncio.get_running_loop().time() - start
    assert len(trace.tokens) == 300
    assert elapsed >= 299 * min_step_s, elapsed


async def test_load_reports_a_prompt_while_it_is_prefilled_and_nothing_while_decoding(
    vllm_instances, http
):
    """Step-aware dispatch reads `num_prefill_tokens`: the prompt tokens the step in
    progress computes. Real vLLM: a 1,900-token prompt shows while its prefill step runs
    (polled, a ~0.1-0.3 s window; up to 4 prompts, each new so no prefix-cache hit), and
    a decoding request shows none (vLLM's snapshot lacks exactly its last token)."""
    from agent.engines.vllm.sched_side import prefill_backlog
    from tests.vllm.vllm_helpers import load_of

    url = vllm_instances[0].url
    assert (await load_of(http, url)).get("num_prefill_tokens", 0) == 0
    seen: list[int] = []

    async def poll(done: asyncio.Event) -> None:
        while not done.is_set():
            seen.append((await load_of(http, url)).get("num_prefill_tokens", 0))
            await asyncio.sleep(0.002)

    for attempt in range(4):
        done = asyncio.Event()
        poller = asyncio.create_task(poll(done))
        await follow(http, url, body(f"prefill-{attempt}", prompt_ids(1900, 40 + attempt), 2))
        done.set()
        await poller
        if max(seen) > 0:
            break
    assert 1800 <= max(seen) <= 1900, seen
    # Decoding: a long paced request, sampled once it produced tokens.
    task = asyncio.create_task(follow(http, url, body("decoding", prompt_ids(300, 50), 200)))
    await wait_tokens(http, url, "decoding", 5)
    assert (await load_of(http, url)).get("num_prefill_tokens", 0) == 0
    await task
    assert prefill_backlog({"tokens": 301, "computed": 300}) == 0
    assert prefill_backlog({"tokens": 300, "computed": 0}) == 300


def test_vllm_statistics_are_off_unless_asked_for(tmp_path):
    # Nothing reads vLLM's per-step statistics in an instance; a user may turn them on.
    from agent.engines.vllm.params import build_engine_args

    assert build_engine_args("m", {}, str(tmp_path)).disable_log_stats is True
    args = build_engine_args("m", {"disable_log_stats": False}, str(tmp_path))
    assert args.disable_log_stats is False


def test_the_start_up_migration_warm_up_stops_its_request_cleanly(vllm_pair):
    """Each engine migrates a dummy request to itself at start; its stop gets every token
    the engine sampled before it (none left behind to wait for, no failure)."""
    for proc in vllm_pair:
        log = proc.log_path.read_text()
        assert "warm-up migration failed" not in log
        assert "cutting there" not in log
