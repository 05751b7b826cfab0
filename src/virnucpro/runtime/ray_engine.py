"""`--engine ray`: the same work units, scored by Ray actors anywhere in a cluster.

The driver (this process) is the same light pump as the local engine's parent: it reads
records into units and sends each unit's records to an actor, which chunks, translates,
scores and renders them (`serve.process_unit`, as a local worker does); rendered rows (and
features, when kept) come back. So the input and the output directory need to exist on the
driver only, and unit sequences cross the network once.

The actors plan on their own nodes, with the same handshake as the local worker processes
(`engine.Pool.settle`): each reports the device Ray gave it (one GPU per actor when the
cluster has GPUs, whatever the driver has; else CPUs), the run takes the best precision every
actor's device supports, each actor loads the models and proposes budgets from its own
device's memory, and the run takes the smallest. Each actor runs `worker.score_unit`, as the
local workers do, so the bytes written are the same. Ray is imported here only, when this
engine runs (`pip install 'virnucpro[ray]'`).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any, TypeVar

from virnucpro.errors import VirnucproError
from virnucpro.progress import Progress
from virnucpro.runtime.batching import WorkUnit
from virnucpro.runtime.engine import BACKEND, Job, RunStats, settle_plan, settle_start
from virnucpro.runtime.protocol import Plan, Settings, UnitResult, WorkerSpec, empty_result
from virnucpro.runtime.units import load_unit, save_unit

log = logging.getLogger(__name__)
T = TypeVar("T")
UNITS_PER_CALL = 4  # units an actor scores in one call
IN_FLIGHT_PER_ACTOR = 2  # calls sent to an actor before its first result comes back
WINDOW_PER_ACTOR = 3  # calls handed out and not yet written, per actor


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise VirnucproError("--engine ray needs Ray: pip install 'virnucpro[ray]'") from None
    return ray


def _connect(ray: Any, address: str | None) -> bool:
    """Join the cluster at `address`, or start a local Ray; True if this call started it.
    A Ray the caller already started (a notebook, a test) is used as it is."""
    if ray.is_initialized():
        return False
    try:
        # "local": without an address Ray would join the last cluster started on this host.
        ray.init(address=address or "local", include_dashboard=False,
                 logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"--ray-address {address}" if address else "a local Ray"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise VirnucproError(f"{where}: cannot start or join Ray ({first})") from None
    return True


class Scorer:
    """The actor: one worker on the device Ray gave it (`cuda:0` is its own GPU), the same
    backend and unit processing as a local worker's (`backend`: "module:factory", as
    `engine.Pool` takes it; a benchmark passes its stand-in)."""

    def __init__(self, spec: WorkerSpec, backend: str = BACKEND) -> None:
        import importlib

        import ray

        device = "cuda:0" if ray.get_gpu_ids() else "cpu"
        self.spec = replace(spec, device=device)
        module, _, name = backend.partition(":")
        self.backend = getattr(importlib.import_module(module), name)(self.spec)

    def probe(self) -> dict[str, Any]:
        import ray

        from virnucpro.runtime.serve import plain

        return plain({**self.backend.probe(), "node": ray.get_runtime_context().get_node_id()})

    def load(self, settings: Settings) -> dict[str, Any]:
        from virnucpro.runtime.serve import plain

        return plain(self.backend.load(settings))

    def propose(self) -> dict[str, int]:
        from virnucpro.runtime.serve import plain

        return plain(self.backend.propose())

    def go(self, settings: Settings) -> None:
        self.backend.go(settings)

    def score(self, unit: Any) -> UnitResult:
        from virnucpro.runtime.serve import process_unit

        process = getattr(self.backend, "process", None)  # a stand-in does it all itself
        if process is not None:
            return process(unit)
        import torch

        # Set in the calling thread too: the thread count is part of what fixes the bytes.
        torch.set_num_threads(self.spec.threads)
        result = process_unit(self.backend, self.spec, unit)
        self.backend.after_unit()
        return result

    def score_many(self, units: list[Any]) -> list[UnitResult]:
        return [self.score(unit) for unit in units]


# ------------------------------------------------------------------ planning on the cluster
def _actor_layout(ray: Any, job: Job) -> tuple[int, dict[str, Any], int]:
    """How many actors, the resources each asks Ray for, and their threads: one GPU each
    when the cluster has GPUs and the run may use them; else CPU actors, one per node that
    offers CPUs."""
    spec = job.specs[0]
    gpus = int(ray.cluster_resources().get("GPU", 0))
    wants_gpu = spec.device.startswith("cuda") or (job.request.device == "auto" and gpus > 0)
    if wants_gpu:
        if gpus < 1:
            raise VirnucproError("the run asks for GPUs but the Ray cluster has none; use "
                                 "--device cpu")
        n = job.request.workers or gpus
        return n, {"num_gpus": 1, "num_cpus": 1}, job.request.threads or 2
    cpus = sorted(int(n["Resources"].get("CPU", 0)) for n in ray.nodes()
                  if n.get("Alive") and n["Resources"].get("CPU", 0) >= 1)
    if not cpus:
        raise VirnucproError("the Ray cluster offers no CPU for actors")
    threads = job.request.threads or cpus[0]
    n = job.request.workers or len(cpus)
    return n, {"num_cpus": min(threads, cpus[0])}, threads


def _start_actors(ray: Any, job: Job) -> tuple[list[Any], int]:
    n, resources, threads = _actor_layout(ray, job)
    if job.request.threads is None and job.recorded is not None:
        threads = job.recorded.threads
    spec = replace(job.specs[0], threads=threads)
    log.info("Ray: %d actor(s), each %s", n,
             ", ".join(f"{v} {k.removeprefix('num_')}" for k, v in resources.items()))
    cls = ray.remote(**resources)(Scorer)
    return [cls.remote(spec, job.backend) for _ in range(n)], threads


def _settle(ray: Any, actors: list[Any], job: Job, threads: int) -> Plan:
    """The same agreement as `engine.Pool.settle`, with the actors."""
    probes = ray.get([a.probe.remote() for a in actors])
    start = settle_start(probes, job.request, job.recorded)
    loaded = ray.get([a.load.remote(start) for a in actors])
    proposals = ray.get([a.propose.remote() for a in actors])
    plan = settle_plan(start, job.request, job.recorded, probes, loaded, proposals, threads)
    ray.get([a.go.remote(plan.settings) for a in actors])
    return plan


# ------------------------------------------------------------------ scoring in order
def _cause(exc: BaseException) -> VirnucproError:
    """Our own error inside Ray's wrappers, or a one-line one for anything else."""
    seen: BaseException | None = exc
    while seen is not None:
        inner = getattr(seen, "cause", None)
        if isinstance(inner, BaseException):
            seen = inner
        elif isinstance(seen, VirnucproError):
            return type(seen)(str(seen).split("\n", 1)[0])
        else:
            seen = seen.__cause__
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
    return VirnucproError(f"a Ray actor failed: {first}")


def _results(ray: Any, actors: list[Any], job: Job, units: Iterable[tuple[Any, T]],
             ) -> Iterator[tuple[Any, T, UnitResult, bool]]:
    """(unit, payload, result, scored now) in unit order. Units go to the actors in calls of
    up to UNITS_PER_CALL (Ray's cost per call is shared by them). Each actor holds at most
    IN_FLIGHT_PER_ACTOR calls, and gets the next one as soon as one of its own is done
    (`ray.wait`), whatever unit the writer waits for; results wait their turn in a window of
    at most WINDOW_PER_ACTOR calls per actor."""
    credits = dict.fromkeys(range(len(actors)), IN_FLIGHT_PER_ACTOR)
    order: deque[tuple[list[tuple[Any, T, bool]], Any]] = deque()  # calls, in unit order
    running: dict[Any, int] = {}  # unfinished futures and their actor
    window = WINDOW_PER_ACTOR * len(actors)
    it = iter(units)
    exhausted = False
    while order or not exhausted:
        while not exhausted and len(order) < window and max(credits.values()) > 0:
            items, exhausted = _next_call(it, job)
            future = None
            sent = [unit for unit, _, send in items if send]
            if sent:
                k = max(credits, key=credits.__getitem__)
                credits[k] -= 1
                future = actors[k].score_many.remote(sent)
                running[future] = k
            if items:
                order.append((items, future))
        while order and (order[0][1] is None or order[0][1] not in running):
            items, future = order.popleft()
            try:
                scored = iter(ray.get(future) if future is not None else ())
            except Exception as exc:  # Ray wraps whatever failed in an actor
                raise _cause(exc) from None
            for unit, payload, send in items:
                if send:
                    yield unit, payload, next(scored), True
                else:
                    yield unit, payload, (
                        load_unit(job.home, unit, need_features=job.need_features)
                        if _needs_scoring(unit) else empty_result(unit.index)), False
        if running and (not order or order[0][1] in running):
            finished, _ = ray.wait(list(running), num_returns=1)
            for future in finished:
                credits[running.pop(future)] += 1


def _next_call(it: Iterator[tuple[Any, T]], job: Job,
               ) -> tuple[list[tuple[Any, T, bool]], bool]:
    """The next UNITS_PER_CALL units in order, each marked with whether it is sent to an actor
    (not one without frames, nor one an earlier run saved), and whether the input is
    exhausted."""
    items: list[tuple[Any, T, bool]] = []
    while len(items) < UNITS_PER_CALL:
        item = next(it, None)
        if item is None:
            return items, True
        unit, payload = item
        items.append((unit, payload, _needs_scoring(unit) and unit.index not in job.done))
    return items, False


def _needs_scoring(unit: Any) -> bool:
    return not (isinstance(unit, WorkUnit) and unit.n_frames == 0)


def run_units_ray(job: Job, units: Iterable[tuple[Any, T]],
                  consume: Callable[[T, UnitResult], None],
                  on_settled: Callable[[Plan], None] = lambda plan: None, *,
                  address: str | None = None) -> RunStats:
    """`engine.run_units` on Ray actors: the same contract and the same bytes."""
    ray = _import_ray()
    started = _connect(ray, address)
    bar, work_done = Progress(job.progress, job.total), 0
    actors: list[Any] = []
    try:
        actors, threads = _start_actors(ray, job)
        try:
            stats = RunStats(plan=_settle(ray, actors, job, threads))
        except Exception as exc:
            raise _cause(exc) from None
        on_settled(stats.plan)
        for unit, payload, result, scored in _results(ray, actors, job, units):
            if scored:
                save_unit(job.home, unit, result)
                stats.add(result)
            consume(payload, result)
            work_done += unit.work
            bar.update(work_done, stats.frames_scored, stats.frames_per_device)
    finally:
        bar.close()
        for a in actors:
            ray.kill(a)
        if started:
            ray.shutdown()
    return stats
