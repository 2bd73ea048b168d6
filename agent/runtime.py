"""One instance at run time: an engine, its request streams, its llumlet (both roles).

Engine-agnostic: the vLLM engine (own process, `python -m agent.instance`) and the sim
engine (hosted in-process by the agent) run under the same `Instance`, and
`agent.instance.create_app(instance)` serves either over the instance API.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import replace
from typing import Any

import aiohttp

from agent.engines.base import Engine, EngineOutput, EngineSpec
from agent.llumlet import RESUME_TIMEOUT_S, MigrationLimits, MigrationSource, RequestRecord
from agent.llumlet_in import MigrationDestination
from agent.streams import RequestStream, StreamRegistry
from agent.transfer import KvTransport, TcpTransport
from llumctl.errors import InputError, InstanceDraining, LlumctlError
from llumctl.protocol import (
    GenerateRequest,
    InstanceInfo,
    InstanceLoad,
    LoadReport,
    MigrationResult,
    bearer,
    to_json_dict,
)

log = logging.getLogger(__name__)

MIGRATION_MODES = ("live", "blocking", "recompute")
# How long one load report may wait for the controller. A report given up on is lost
# (the controller drops a body it had not read yet), and on a starved machine the
# controller can take seconds to read one: 2 s lost 77 reports in one benchmark run.
REPORT_TIMEOUT_S = 5.0
# A loaded instance's load changes at nearly every engine step; it reports a change at most
# every REPORT_MIN_INTERVAL_S and an unchanged load (a heartbeat) every REPORT_PERIOD_S.
# The policy loop runs every 0.2 s and dispatches count on requests sent since a report
# (the controller's pending dispatches), so reports faster than the policy buy nothing. At
# 0.05 / 0.1 s (the earlier defaults) 3 loaded instances sent up to 60 reports a second.
REPORT_MIN_INTERVAL_S = 0.2
REPORT_PERIOD_S = 1.0


class Instance:
    def __init__(
        self,
        instance_id: str,
        engine: Engine,
        secret: str,
        *,
        url: str = "",
        host: str = "127.0.0.1",
        transport: KvTransport | None = None,
        controller_url: str | None = None,
        report_period_s: float = REPORT_PERIOD_S,
        report_min_interval_s: float = REPORT_MIN_INTERVAL_S,
        migration_idle_timeout_s: float = 30.0,
        selector: str = "last-admitted",
    ) -> None:
        self.instance_id, self.engine, self.secret = instance_id, engine, secret
        self.url, self.host = url, host
        self.transport = transport or TcpTransport(secret, host)
        self.controller_url = controller_url
        self.report_period_s = report_period_s
        # Reports go out on change, but no more often than this: the load changes at
        # nearly every engine step, and the controller decodes every report.
        self.report_min_interval_s = report_min_interval_s
        self._report_failing = False
        self.selector = selector
        self.records: dict[str, RequestRecord] = {}
        # A request's record goes when its stream is forgotten (it served migration and
        # listing only), or a long-lived instance would keep every prompt it ever served.
        self.streams = StreamRegistry(on_forget=lambda rid: self.records.pop(rid, None))
        self.is_draining = False
        # The engine output iterator feeding each request's stream. A request resumed here
        # (its migration failed) gets a new one; the old attempt's runner may end later
        # and must not end the stream the new one feeds.
        self._feeders: dict[str, Any] = {}
        self.spec: EngineSpec | None = None
        self.kv_address = ""
        self._tasks: set[asyncio.Task[Any]] = set()
        self.destination = MigrationDestination(
            engine, self.streams, self.records, self.start_runner, migration_idle_timeout_s
        )
        self.source = MigrationSource(
            instance_id, engine, self.streams, self.records, self.transport, secret,
            self.start_runner, arriving=self.destination.arriving,
        )  # fmt: skip

    # ---- lifecycle -----------------------------------------------------------------
    async def start(self) -> EngineSpec:
        self.spec = await self.engine.start()
        self.kv_address = await self.transport.serve(self.destination.on_chunk)
        self.destination.start()
        self._spawn(self._report_loop())
        return self.spec

    async def shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.source.close()
        await self.transport.close()
        await self.engine.shutdown()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---- requests ------------------------------------------------------------------
    async def submit(self, request: GenerateRequest) -> RequestStream:
        if self.is_draining:
            raise InstanceDraining(f"instance {self.instance_id} is draining")
        prepared = await self.engine.prepare(request)
        stream = RequestStream(request.request_id, num_prompt_tokens=len(prepared.prompt_token_ids))
        self.streams.create(stream)
        self.records[request.request_id] = RequestRecord(request, prepared)
        self.start_runner(request.request_id, self.engine.generate(prepared))
        return stream

    def start_runner(self, request_id: str, outputs: Any) -> None:
        self._feeders[request_id] = outputs
        self._spawn(self._run(self.streams.get(request_id), outputs))

    async def _run(self, stream: RequestStream, outputs: Any) -> None:
        rid = stream.request_id
        try:
            async for out in outputs:
                self._append(stream, out)
                if out.finish_reason is not None:
                    # Close the engine's iterator before the stream ends, not when it is
                    # collected: until its code after the last output runs, the engine
                    # counts R as live, and a migration stopping R in that window resumed
                    # a finished request with no tokens left (seen once in a suite run).
                    await _close(outputs)
                    stream.finish(out.finish_reason)
                    return
            # Ended without a finish: stopped for migration; the llumlet ends the stream,
            # or resumed R here under a new runner.
            if self._feeders.get(rid) is outputs and rid not in self.source.migrating:
                stream.finish("abort")
        except LlumctlError as exc:
            if self._feeders.get(rid) is outputs:
                stream.fail(str(exc), exc.http_status)
        except Exception as exc:  # an engine bug must end the stream, not hang readers
            log.exception("request %s failed", rid)
            if self._feeders.get(rid) is outputs:
                stream.fail(f"engine error: {exc!r}", 500)
        finally:
            if self._feeders.get(rid) is outputs:
                del self._feeders[rid]

    @staticmethod
    def _append(stream: RequestStream, out: EngineOutput) -> None:
        last = len(out.token_ids) - 1
        for i, token_id in enumerate(out.token_ids):
            stream.append(token_id, out.text if i == last else "")

    async def abort(self, request_id: str) -> None:
        stream = self.streams.get(request_id)
        if stream.is_ended:
            return
        await self.engine.abort(request_id)

    def list_requests(self) -> list[dict[str, Any]]:
        rows = []
        for stream in self.streams.all():
            record = self.records.get(stream.request_id)
            state = stream.end.type.value if stream.end else "running"
            if stream.request_id in self.source.migrating and not stream.end:
                state = "migrating"
            rows.append(
                {
                    "request_id": stream.request_id,
                    "state": state,
                    "num_output_tokens": stream.next_index,
                    "priority": int(record.prepared.priority) if record else 0,
                }
            )
        return rows

    # ---- load ----------------------------------------------------------------------
    def load(self) -> InstanceLoad:
        spec = self.spec
        engine_load = self.engine.load()
        return InstanceLoad(
            instance_id=self.instance_id,
            num_total_blocks=spec.num_total_blocks if spec else 0,
            num_used_blocks=engine_load.num_used_blocks,
            running=engine_load.running,
            queued=engine_load.queued,
            num_preempted=engine_load.num_preempted,
            is_draining=self.is_draining,
            timestamp=time.time(),
            model=spec.model if spec else "default",
            block_size_tokens=spec.block_size_tokens if spec else 16,
            num_migrating_out=len(self.source.migrating),
            num_migrating_in=self.destination.num_incoming,
            num_prefill_tokens=engine_load.num_prefill_tokens,
        )

    def info(self) -> InstanceInfo:
        spec = self.spec
        return InstanceInfo(
            instance_id=self.instance_id,
            url=self.url,
            engine=spec.kind if spec else "",
            model=spec.model if spec else "",
            host=self.host,
            fingerprint=spec.fingerprint if spec else "",
            state="draining" if self.is_draining else "running",
            max_model_len=spec.max_model_len if spec else 0,
        )

    def report(self, tokens_per_s: float = 0.0) -> LoadReport:
        total = self.engine.load().num_preemptions_total
        return LoadReport(self.info(), self.load(), tokens_per_s, total)

    async def _report_loop(self) -> None:
        """Push the load to the controller on change and at least every report period."""
        last_sent, last_time, last_tokens = None, 0.0, 0
        # aiohttp, as the controller's relay: the push shares this process's cores with the
        # frontend that streams first tokens, and httpx costs several times its CPU.
        timeout = aiohttp.ClientTimeout(total=REPORT_TIMEOUT_S)
        async with aiohttp.ClientSession(headers=bearer(self.secret), timeout=timeout) as http:
            while True:
                await asyncio.sleep(min(self.report_min_interval_s, self.report_period_s))
                if not self.controller_url:
                    continue
                load = replace(self.load(), timestamp=0.0)
                now = time.monotonic()
                if load == last_sent and now - last_time < self.report_period_s:
                    continue
                tokens = self.engine.load().num_generated_tokens
                rate = (tokens - last_tokens) / (now - last_time) if last_time else 0.0
                last_sent, last_time, last_tokens = load, now, tokens
                await self._push(http, self.report(rate))

    async def _push(self, http: aiohttp.ClientSession, report: LoadReport) -> None:
        url = f"{self.controller_url}/internal/load"
        try:
            async with http.post(url, json=to_json_dict(report)) as response:
                await response.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            # Once per outage, not once per report (ten a second while the controller is down).
            if not self._report_failing:
                log.warning("load reports to %s failing: %r", self.controller_url, exc)
            self._report_failing = True
        else:
            if self._report_failing:
                log.info("load reports to %s delivered again", self.controller_url)
            self._report_failing = False

    # ---- migration -----------------------------------------------------------------
    async def migrate_out(self, body: dict[str, Any]) -> list[MigrationResult]:
        dst_url, dst_id = str(body.get("dst_url", "")), str(body.get("dst_instance_id", ""))
        mode = str(body.get("mode", "live"))
        if not dst_url or mode not in MIGRATION_MODES:
            raise InputError(f"migrate needs dst_url and a mode in {MIGRATION_MODES}")
        rids = [str(r) for r in body.get("request_ids") or []]
        for rid in rids:
            self.source.check(rid)
        if not rids:
            num = _count(body, "num_requests", 1)
            selector = str(body.get("selector", self.selector))
            queued_first = bool(body.get("queued_first", True))
            limit = None if body.get("max_num_blocks") is None else _count(body, "max_num_blocks")
            rids = self.source.pick(
                self.load(), num, selector, queued_first=queued_first, max_num_blocks=limit
            )
        limits = MigrationLimits(
            resume_timeout_s=_seconds(body, "resume_timeout_s", RESUME_TIMEOUT_S),
            stop_timeout_s=(
                None
                if body.get("debug_stop_timeout_s") is None
                else _seconds(body, "debug_stop_timeout_s", 0.0)
            ),
            pause_s=_seconds(body, "debug_pause_s", 0.0),
        )
        if limits.resume_timeout_s <= 0:
            raise InputError(f"resume_timeout_s must be positive, not {limits.resume_timeout_s!r}")
        jobs = [self.source.migrate(r, dst_url, dst_id, mode, limits) for r in rids]
        return list(await asyncio.gather(*jobs))


def _seconds(body: dict[str, Any], key: str, default: float) -> float:
    """A non-negative number of seconds in a request body, or InputError naming it."""
    value = body.get(key, default)
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or not math.isfinite(value) or value < 0:
        raise InputError(f"{key} must be a non-negative number of seconds, not {value!r}")
    return float(value)


def _count(body: dict[str, Any], key: str, default: int = 0) -> int:
    """A non-negative integer field of a request body, or InputError naming it."""
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"{key} must be a non-negative integer, not {value!r}")
    return value


async def _close(outputs: Any) -> None:
    """Close an engine's output iterator (an async generator has `aclose`). The request
    has finished: a failure while closing is logged, never turned into the request's."""
    aclose = getattr(outputs, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:
        log.exception("closing an engine's outputs after the last one failed")
