"""One simulated engine instance: paged KV blocks, continuous batching, vLLM-like preemption.

Independent of any event loop or clock, so both the discrete-event simulator
(`llumctl.sim.cluster`) and the real-time simulated engine (`agent/engines/sim`) drive it.

API (all times are the caller's; the instance only returns durations):

    inst = SimInstance("i0", LatencyProfile())
    inst.add(SimRequest("r1", prompt_tokens=100, output_tokens=20))   # queue it (FCFS)
    result = inst.step()          # one engine step, or None when there is nothing to do
    result.duration_s             # how long the step takes on the profiled GPU
    result.started / finished / preempted / decoded   # what happened in the step
    inst.load(now)                # the `InstanceLoad` view for the policy

A step: (1) every running request needs a slot for its next token; a request whose KV
fills its last block needs a new block, and when blocks run out the latest-arrived running
request (lowest priority first) is preempted: its blocks are freed and it goes back to
the head of its queue to be recomputed; (2) if nothing was preempted, queued requests
are admitted in order (higher priority first, FCFS within) while the token budget, the
sequence limit and free blocks (minus a watermark) allow; the head of line blocks the
rest; (3) each admitted request is prefilled and yields its first token; each running
request decodes one token. State changes are applied when `step()` returns; the caller
delivers the outputs `duration_s` later.

Per-step cost is O(1) plus the requests that start, finish or are preempted: token
counts are derived from a step counter, and the blocks needed per step are counted by
the request's position inside its last block (16 residue classes).

Migration primitives: `reserve`/`unreserve` staging blocks on a destination,
`stop` (source keeps the blocks until `release`), `resume` on the destination. A request
resumed while every sequence seat is taken waits in the queue with its staged KV held, as
vLLM queues it, and joins without a prefill when it reaches a seat.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass

from llumctl.policy.views import InstanceLoad, Priority, RequestLoad
from llumctl.sim.profile import LatencyProfile

QUEUED, RUNNING, STOPPED, FINISHED = "queued", "running", "stopped", "finished"


class SimRequest:
    """A request as the simulator tracks it (mutable; one object across instances)."""

    __slots__ = (
        "request_id",
        "prompt_tokens",
        "output_tokens",
        "priority",
        "arrival_time",
        "num_generated",
        "state",
        "instance",
        "run_token",
        "join_step",
        "kv_at_join",
        "admitted_seq",
        "first_token_time",
        "finish_time",
        "preempted_at",
        "num_preemptions",
        "preemption_loss_s",
        "first_token_delay_s",
        "staged_blocks",
        "_load",
    )

    def __init__(
        self,
        request_id: str,
        prompt_tokens: int,
        output_tokens: int,
        priority: int = 0,
        arrival_time: float = 0.0,
    ) -> None:
        self.request_id = request_id
        self.prompt_tokens = prompt_tokens
        self.output_tokens = max(1, output_tokens)
        self.priority = priority
        self.arrival_time = arrival_time
        # Output tokens produced so far (kept up to date while not running).
        self.num_generated = 0
        self.state = QUEUED
        self.instance: SimInstance | None = None
        # Bumped on every admission/removal; stale finish-heap entries carry an old one.
        self.run_token = 0
        self.join_step = 0
        self.kv_at_join = 0
        self.admitted_seq = 0
        self.first_token_time: float | None = None
        self.finish_time: float | None = None
        self.preempted_at: float | None = None
        self.num_preemptions = 0
        self.preemption_loss_s = 0.0
        # Latency outside the engine from busy neighbours (llumctl/sim/hosts.py).
        self.first_token_delay_s = 0.0
        # Blocks of KV staged for it here while it waits, resumed, for a sequence seat.
        self.staged_blocks = 0
        self._load: RequestLoad | None = None

    @property
    def context_tokens(self) -> int:
        """Tokens a (re)computation has to prefill: prompt plus output so far."""
        return self.prompt_tokens + self.num_generated


@dataclass(slots=True)
class StepResult:
    """What one engine step did."""

    duration_s: float
    # Requests prefilled in this step (first token, or resumed after preemption).
    started: tuple[SimRequest, ...]
    # Requests that produced their last token in this step.
    finished: tuple[SimRequest, ...]
    # Requests preempted (blocks freed, back to the queue) at the start of this step.
    preempted: tuple[SimRequest, ...]
    # Requests that decoded one token in this step (not including `started`).
    decoded: tuple[SimRequest, ...]
    num_prefill_tokens: int


class SimInstance:
    """Scheduler and memory of one engine; see the module docstring."""

    def __init__(self, instance_id: str, profile: LatencyProfile, model: str = "default") -> None:
        self.instance_id = instance_id
        self.profile = profile
        self.model = model
        self.is_draining = False
        self._bs = profile.block_size_tokens
        self._step = 0
        self._running: list[SimRequest] = []
        # Running requests by (kv_at_join - join_step) mod block size.
        self._residue = [0] * self._bs
        self._finish_heap: list[tuple[int, int, int, SimRequest]] = []
        self._heap_seq = 0
        self._queues: dict[int, deque[SimRequest]] = {}
        self._num_queued = 0
        self._num_preempted_waiting = 0
        self._queue_version = 0
        self._queued_view: tuple[int, tuple[RequestLoad, ...]] = (-1, ())
        self._resident_tokens = 0
        self.num_used_blocks = 0
        # Blocks reserved for incoming migrations and held by stopped outgoing ones.
        self.num_staged_blocks = 0
        self._admitted = 0
        self.num_preempted_total = 0
        # Prompt tokens prefilled by the step `step()` returned last: the step in
        # progress, for a caller that runs it (reported for step-aware dispatch).
        self.num_prefill_tokens = 0

    # ---- queries ------------------------------------------------------------------
    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_queued(self) -> int:
        return self._num_queued

    @property
    def num_free_blocks(self) -> int:
        return self.profile.num_total_blocks - self.num_used_blocks - self.num_staged_blocks

    @property
    def is_idle(self) -> bool:
        return not self._running and not self._num_queued

    def running(self) -> list[SimRequest]:
        """Running requests in admission order (oldest first)."""
        return list(self._running)

    def queued(self) -> list[SimRequest]:
        """Queued requests in service order (head of line first)."""
        return [r for p in sorted(self._queues, reverse=True) for r in self._queues[p]]

    def kv_tokens(self, req: SimRequest) -> int:
        """Tokens of KV a running request holds now."""
        return req.kv_at_join + (self._step - req.join_step)

    def generated(self, req: SimRequest) -> int:
        """Output tokens a request has produced so far."""
        if req.state == RUNNING and req.instance is self:
            return self.kv_tokens(req) - req.prompt_tokens + 1
        return req.num_generated

    def blocks_of(self, req: SimRequest) -> int:
        """Blocks a running request holds, or a queued one needs."""
        if req.state == RUNNING and req.instance is self:
            return -(-self.kv_tokens(req) // self._bs)
        return -(-req.context_tokens // self._bs)

    # ---- queue --------------------------------------------------------------------
    def add(self, req: SimRequest, *, at_front: bool = False) -> None:
        """Queue a request (at the head of its priority's queue when `at_front`)."""
        req.state = QUEUED
        req.instance = self
        queue = self._queues.setdefault(req.priority, deque())
        if at_front:
            queue.appendleft(req)
        else:
            queue.append(req)
        self._num_queued += 1
        self._queue_version += 1
        if req.num_preemptions:
            self._num_preempted_waiting += 1

    def take_queued(self) -> list[SimRequest]:
        """Remove and return every queued request (e.g. to re-dispatch from a drain)."""
        taken = self.queued()
        self._queues.clear()
        self._num_queued = 0
        self._num_preempted_waiting = 0
        self._queue_version += 1
        for req in taken:
            req.instance = None
            self._drop_staged(req)
        return taken

    def remove_queued(self, req: SimRequest) -> None:
        """Take one queued request out of the queue (it migrates; it held no blocks)."""
        assert req.state == QUEUED and req.instance is self
        self._queues[req.priority].remove(req)
        self._num_queued -= 1
        self._queue_version += 1
        if req.num_preemptions:
            self._num_preempted_waiting -= 1
        req.state = STOPPED
        req.instance = None
        self._drop_staged(req)

    def _drop_staged(self, req: SimRequest) -> None:
        """Free the KV staged for a resumed request that leaves the queue (it moves on
        and is recomputed elsewhere)."""
        self.unreserve(req.staged_blocks)
        req.staged_blocks = 0

    def _head(self) -> SimRequest | None:
        for priority in sorted(self._queues, reverse=True):
            if self._queues[priority]:
                return self._queues[priority][0]
        return None

    def _pop_head(self) -> SimRequest:
        for priority in sorted(self._queues, reverse=True):
            if self._queues[priority]:
                req = self._queues[priority].popleft()
                self._num_queued -= 1
                self._queue_version += 1
                if req.num_preemptions:
                    self._num_preempted_waiting -= 1
                return req
        raise AssertionError("pop from an empty queue")

    # ---- running set ----------------------------------------------------------------
    def _join(self, req: SimRequest, kv_tokens: int, num_generated: int) -> None:
        """Put a request into the running set holding `kv_tokens` of KV."""
        req.state = RUNNING
        req.instance = self
        req.run_token += 1
        req.join_step = self._step
        req.kv_at_join = kv_tokens
        self._admitted += 1
        req.admitted_seq = self._admitted
        self._running.append(req)
        self._residue[(kv_tokens - self._step) % self._bs] += 1
        self._resident_tokens += kv_tokens
        finish_step = self._step + (req.output_tokens - num_generated)
        self._heap_seq += 1
        heapq.heappush(self._finish_heap, (finish_step, self._heap_seq, req.run_token, req))

    def _leave(self, req: SimRequest) -> int:
        """Take a request out of the running set; return its KV tokens."""
        kv = self.kv_tokens(req)
        req.num_generated = kv - req.prompt_tokens + 1
        req.run_token += 1
        if self._running and self._running[-1] is req:
            self._running.pop()
        else:
            self._running.remove(req)
        self._residue[(req.kv_at_join - req.join_step) % self._bs] -= 1
        self._resident_tokens -= kv
        return kv

    def _victim(self) -> SimRequest:
        """The request vLLM preempts first: lowest priority, latest arrival.

        The paper's engine (vLLM of 2023, FCFS) keeps its running list sorted by arrival
        time and preempts from the end, so a request that joined late because it was
        recomputed or migrated in keeps its place by age. Preempting it instead (it holds
        a long context) made the next recompute a long prefill step.
        """
        return max(self._running, key=lambda r: (-r.priority, r.arrival_time, r.admitted_seq))

    # ---- the step ---------------------------------------------------------------------
    def step(self) -> StepResult | None:
        """Run one engine step; None when there is nothing it can run now."""
        result = self._next_step()
        self.num_prefill_tokens = result.num_prefill_tokens if result is not None else 0
        return result

    def _next_step(self) -> StepResult | None:
        if not self._num_queued:
            return self._decode_only_step()
        self._join_staged_heads()
        if not self._running and not self._num_queued:
            return None
        preempted = self._allocate_decode_slots()
        decoded = tuple(self._running)
        num_decode = len(decoded)
        decode_ms = self.profile.decode_ms(num_decode, self._resident_tokens)
        self._step += 1
        self._resident_tokens += num_decode
        started: list[SimRequest] = []
        prefill_tokens = 0
        prefill_ms = 0.0
        if not preempted:
            started, prefill_tokens = self._admit(num_decode)
            prefill_ms = sum(self.profile.prefill_ms(r.context_tokens) for r in started)
        if not num_decode and not started and not prefill_tokens:
            # Only a queue that cannot be admitted now: idle until something frees room.
            return None
        for req in started:
            req.num_generated += 1
            self._join(req, req.context_tokens - 1, req.num_generated)
        finished = self._collect_finished()
        return StepResult(
            (decode_ms + prefill_ms) / 1000.0,
            tuple(started),
            finished,
            preempted,
            decoded,
            prefill_tokens,
        )

    def _decode_only_step(self) -> StepResult | None:
        """The common case, kept cheap: nothing queued, every running request decodes."""
        running = self._running
        if not running:
            return None
        needed = self._residue[(-self._step) % self._bs]
        profile = self.profile
        free = profile.num_total_blocks - self.num_used_blocks - self.num_staged_blocks
        preempted: tuple[SimRequest, ...] = ()
        if needed > free:
            preempted = self._allocate_decode_slots()
        else:
            self.num_used_blocks += needed
        num_decode = len(running)
        decode_ms = (
            profile.decode_base_ms
            + profile.decode_per_seq_ms * num_decode
            + profile.decode_per_token_ms * self._resident_tokens
        )
        self._step += 1
        self._resident_tokens += num_decode
        decoded = tuple(running)
        heap = self._finish_heap
        finished = self._collect_finished() if heap and heap[0][0] <= self._step else ()
        return StepResult(decode_ms / 1000.0, (), finished, preempted, decoded, 0)

    def _join_staged_heads(self) -> None:
        """Resumed requests at the head of the queue take the seats that came free: they
        decode in this step, as if resumed just before it."""
        while self._num_queued and len(self._running) < self.profile.max_num_seqs:
            head = self._head()
            if head is None or not head.staged_blocks:
                return
            self._pop_head()
            self._join_staged(head)

    def _allocate_decode_slots(self) -> tuple[SimRequest, ...]:
        """Give every running request room for its next token, preempting when short."""
        residue_class = (-self._step) % self._bs
        needed = self._residue[residue_class]
        free = self.num_free_blocks
        preempted: list[SimRequest] = []
        while needed > free and self._running:
            victim = self._victim()
            if (victim.kv_at_join - victim.join_step) % self._bs == residue_class:
                needed -= 1
            blocks = -(-self.kv_tokens(victim) // self._bs)
            self._leave(victim)
            self.num_used_blocks -= blocks
            free += blocks
            self.num_preempted_total += 1
            victim.num_preemptions += 1
            self.add(victim, at_front=True)
            preempted.append(victim)
        self.num_used_blocks += needed
        return tuple(preempted)

    def _admit(self, num_decode: int) -> tuple[list[SimRequest], int]:
        """Admit queued requests for prefill within the step's budgets."""
        profile = self.profile
        started: list[SimRequest] = []
        tokens = num_decode
        num_seqs = len(self._running)
        while self._num_queued and num_seqs < profile.max_num_seqs:
            head = self._head()
            assert head is not None
            if head.staged_blocks:
                self._pop_head()
                self._join_staged(head)
                num_seqs += 1
                continue
            context = head.context_tokens
            if started and tokens + context > profile.max_num_batched_tokens:
                break
            blocks = -(-context // self._bs)
            if self.num_free_blocks - blocks < profile.watermark_blocks:
                break
            self._pop_head()
            self.num_used_blocks += blocks
            tokens += context
            num_seqs += 1
            started.append(head)
        return started, tokens - num_decode

    def _collect_finished(self) -> tuple[SimRequest, ...]:
        heap = self._finish_heap
        finished: list[SimRequest] = []
        while heap and heap[0][0] <= self._step:
            _, _, token, req = heapq.heappop(heap)
            if token != req.run_token or req.instance is not self or req.state != RUNNING:
                continue
            kv = self._leave(req)
            self.num_used_blocks -= -(-kv // self._bs)
            req.state = FINISHED
            finished.append(req)
        return tuple(finished)

    # ---- migration primitives -----------------------------------------------------------
    def reserve(self, num_blocks: int) -> bool:
        """Reserve staging blocks for an incoming migration; False when there is no room."""
        if num_blocks > self.num_free_blocks:
            return False
        self.num_staged_blocks += num_blocks
        return True

    def unreserve(self, num_blocks: int) -> None:
        """Give back staging blocks (aborted migration, or a stopped request released)."""
        self.num_staged_blocks -= num_blocks
        assert self.num_staged_blocks >= 0

    def stop(self, req: SimRequest) -> int:
        """Stop a running request for migration; its blocks stay held (until `release`).

        Returns the number of blocks held.
        """
        assert req.state == RUNNING and req.instance is self
        kv = self._leave(req)
        blocks = -(-kv // self._bs)
        self.num_used_blocks -= blocks
        self.num_staged_blocks += blocks
        req.state = STOPPED
        return blocks

    def release(self, num_blocks: int) -> None:
        """Free the blocks a stopped request held."""
        self.unreserve(num_blocks)

    def resume(self, req: SimRequest, staged_blocks: int) -> None:
        """Start a migrated request whose KV was staged here: every token's but the last
        one's, the partial last block included, so it joins the next step's decode batch
        (its last token is what that step computes), as on a real instance. With every
        sequence seat taken it queues (behind what already waits), its KV held."""
        req.staged_blocks = staged_blocks
        if self.num_running >= self.profile.max_num_seqs:
            self.add(req)
            return
        self._join_staged(req)

    def _join_staged(self, req: SimRequest) -> None:
        self.unreserve(req.staged_blocks)
        req.staged_blocks = 0
        kv = req.context_tokens - 1
        self.num_used_blocks += -(-kv // self._bs)
        self._join(req, kv, req.num_generated)

    # ---- the policy's view -----------------------------------------------------------
    def load(
        self, now: float, *, num_migrating_out: int = 0, num_migrating_in: int = 0
    ) -> InstanceLoad:
        """This instance as the policy sees it (migration counts come from the caller)."""
        return InstanceLoad(
            instance_id=self.instance_id,
            num_total_blocks=self.profile.num_total_blocks,
            num_used_blocks=self.num_used_blocks + self.num_staged_blocks,
            running=tuple(self._running_load(r) for r in self._running),
            queued=self._queued_loads(),
            num_preempted=self._num_preempted_waiting,
            is_draining=self.is_draining,
            timestamp=now,
            model=self.model,
            block_size_tokens=self._bs,
            num_migrating_out=num_migrating_out,
            num_migrating_in=num_migrating_in,
            num_prefill_tokens=self.num_prefill_tokens,
        )

    def _running_load(self, req: SimRequest) -> RequestLoad:
        blocks = -(-(req.kv_at_join + self._step - req.join_step) // self._bs)
        cached = req._load
        if (
            cached is not None
            and cached.num_blocks == blocks
            and cached.admitted_seq == (req.admitted_seq)
        ):
            return cached
        load = RequestLoad(
            req.request_id, blocks, Priority(req.priority), admitted_seq=req.admitted_seq
        )
        req._load = load
        return load

    def _queued_loads(self) -> tuple[RequestLoad, ...]:
        version, loads = self._queued_view
        if version != self._queue_version:
            loads = tuple(
                RequestLoad(
                    r.request_id,
                    -(-r.context_tokens // self._bs),
                    Priority(r.priority),
                    is_decoding=False,
                    # As on a real instance: a request preempted once never migrates.
                    is_migratable=not r.num_preemptions,
                )
                for r in self.queued()
            )
            self._queued_view = (self._queue_version, loads)
        return loads
