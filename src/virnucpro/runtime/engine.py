"""Running work units on worker processes: the same machinery for every command and device.

One spawned process per worker (`worker.worker_main`), also when there is only one, so the
caller's process keeps its settings and a failed worker can always be stopped. The workers
first settle the run with this process (`Pool.settle`): each reports its device, the run takes
the best precision every device supports, every worker loads its models, each proposes the
batch budgets its device can take, and the run takes the smallest, so that a unit's numbers
do not depend on which worker scored it. A plan recorded by an earlier, interrupted run is
reused as it is.

Then a feeder thread produces units ahead of the models (chunking and translation happen
there); workers pull them from one shared queue, so a faster device simply takes more; results
come back in unit order and each newly scored unit is saved, so a killed run started again
reuses it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from virnucpro.errors import VirnucproError
from virnucpro.progress import Progress
from virnucpro.runtime.batching import WorkUnit
from virnucpro.runtime.units import load_unit, save_unit
from virnucpro.runtime.worker import Settings, UnitResult, WorkerSpec, empty_result

log = logging.getLogger(__name__)
T = TypeVar("T")
POLL_SECONDS = 0.5  # how often a silent wait checks that every worker is alive
STOP_SECONDS = 10.0  # how long finished workers get to exit before they are terminated


@dataclass(frozen=True)
class Request:
    """What the user asked for that the workers settle: `None` budgets mean "auto"."""

    precision: str = "auto"
    dnabert_budget: int | None = None
    esm_budget: int | None = None
    device: str = "auto"  # as asked; the Ray engine places its actors by it
    workers: int | None = None
    threads: int | None = None
    compile: bool | None = None  # None: on CUDA devices only


@dataclass(frozen=True)
class Plan:
    """What a run settled: its Settings, and each worker's device and proposal."""

    settings: Settings
    threads: int
    workers: tuple[dict[str, Any], ...]

    def record(self) -> dict[str, Any]:
        """As state.json and run.json keep it (`plan_from_record` reads it back)."""
        return {**asdict(self.settings), "threads": self.threads, "workers": list(self.workers)}


def plan_from_record(record: dict[str, Any] | None) -> Plan | None:
    """The plan an earlier run recorded, or None."""
    if not record:
        return None
    try:
        settings = Settings(str(record["dtype"]), int(record["dnabert_budget"]),
                            int(record["esm_budget"]), bool(record.get("compile", False)))
        return Plan(settings, int(record["threads"]), tuple(record.get("workers", ())))
    except (KeyError, TypeError, ValueError):
        return None


# ------------------------------------------------------------------ the worker processes
class Pool:
    """The worker processes of a run and the queues they share."""

    def __init__(self, specs: tuple[WorkerSpec, ...],
                 target: Callable[..., None] | None = None) -> None:
        """`target`: the worker process's function (default `worker.worker_main`); a
        benchmark of the orchestration passes a stand-in with the same protocol."""
        import multiprocessing as mp

        from virnucpro.runtime.worker import worker_main

        ctx = mp.get_context("spawn")  # CUDA cannot be used after fork
        self.specs = specs
        self.tasks, self.results = ctx.Queue(), ctx.Queue()
        self.controls = [ctx.Queue() for _ in specs]
        self.procs = [ctx.Process(target=target or worker_main, daemon=True,
                                  args=(i, s, self.controls[i], self.tasks, self.results),
                                  name=f"virnucpro-worker-{i}")
                      for i, s in enumerate(specs)]
        for p in self.procs:
            p.start()
        self._checked = time.monotonic()

    def check_alive(self) -> None:
        """Fail at once, naming the device, if a worker process has died. A worker that
        failed reported why before it exited: that line is raised rather than the exit."""
        for spec, p in zip(self.specs, self.procs, strict=True):
            if p.exitcode is None:
                continue
            for _ in range(1000):  # what the dead worker said last is in the queue
                try:
                    message = self.results.get(timeout=0.2)
                except queue.Empty:
                    break
                self._raise_if_error(message)
            how = (f"was killed by signal {-p.exitcode}" if p.exitcode < 0
                   else f"exited with code {p.exitcode}")
            raise VirnucproError(f"the worker on {spec.device} {how}; run the same command "
                                 "again to resume")

    @staticmethod
    def _raise_if_error(message: tuple[str, int, Any]) -> None:
        if message[0] in ("error", "fatal"):
            raise message[2] if isinstance(message[2], VirnucproError) \
                else VirnucproError(message[2])

    def get(self) -> tuple[str, int, Any]:
        """The next message from a worker or the feeder; fails if a worker died (checked
        whenever the queue is quiet, and at least every POLL_SECONDS while it is not)."""
        while True:
            if time.monotonic() - self._checked > POLL_SECONDS:
                self.check_alive()
                self._checked = time.monotonic()
            try:
                message = self.results.get(timeout=POLL_SECONDS)
            except queue.Empty:
                self.check_alive()
                continue
            self._raise_if_error(message)
            return message

    def _gather(self, kind: str) -> list[Any]:
        """One `kind` message from every worker, in worker order."""
        got: dict[int, Any] = {}
        while len(got) < len(self.procs):
            k, index, payload = self.get()
            if k != kind:
                raise VirnucproError(f"worker protocol: expected {kind!r}, got {k!r}")
            got[index] = payload
        return [got[i] for i in range(len(self.procs))]

    def _tell(self, kind: str, payload: Any = None) -> None:
        for c in self.controls:
            c.put((kind, payload))

    def settle(self, request: Request, recorded: Plan | None) -> Plan:
        """Agree with the workers on one dtype and one set of budgets (see the module note)."""
        probes = self._gather("probe")
        start = settle_start(probes, request, recorded)
        self._tell("load", start)
        loaded = self._gather("loaded")
        self._tell("measure")
        plan = settle_plan(start, request, recorded, probes, loaded, self._gather("proposal"),
                           self.specs[0].threads)
        self._tell("go", plan.settings)
        return plan

    def close(self, ok: bool) -> None:
        """Stop the workers: on success they finish and exit; on failure they are
        terminated at once."""
        if ok:
            for _ in self.procs:
                self.tasks.put(None)
            deadline = time.monotonic() + STOP_SECONDS
            for p in self.procs:
                p.join(timeout=max(0.0, deadline - time.monotonic()))
        for p in self.procs:
            if p.is_alive():
                p.terminate()
        for p in self.procs:
            p.join(timeout=5)
        for q in (self.tasks, self.results, *self.controls):
            q.cancel_join_thread()  # never block the exit on undelivered messages
            q.close()


def settle_start(probes: list[dict[str, Any]], request: Request,
                 recorded: Plan | None) -> Settings:
    """What every worker loads with: the run's one precision, as an earlier run of this output
    recorded, else the best that every worker's device (its probe) supports; and whether the
    layers are compiled: as asked, else as recorded, else when every device is a GPU with a
    compiler toolchain. The budgets (0 here) are settled once the models are loaded."""
    from virnucpro.runtime.devices import common_precision

    caps = [None if p.get("compute_capability") is None
            else tuple(int(x) for x in str(p["compute_capability"]).split("."))
            for p in probes]
    if recorded is not None:
        dtype = recorded.settings.dtype
    else:
        dtype = common_precision(caps, request.precision)  # type: ignore[arg-type]
    if request.compile is not None:
        compile_layers = request.compile
    elif recorded is not None:
        compile_layers = recorded.settings.compile
    else:  # by default on GPUs, where each has what compiling needs (its probe says)
        compile_layers = (bool(caps) and None not in caps
                          and not any(p.get("compile_missing") for p in probes))
    return Settings(dtype, 0, 0, compile_layers)


def settle_plan(start: Settings, request: Request, recorded: Plan | None,
                probes: list[dict[str, Any]], loaded: list[dict[str, Any]],
                proposals: list[dict[str, int]], threads: int) -> Plan:
    """The run's plan, logged once: budgets as asked, else as an earlier run of this output
    recorded, else the smallest any worker proposed; each worker's probe, what compiling
    reported and its proposal."""
    def pick(name: str) -> int:
        asked = getattr(request, name)
        if asked is not None:
            return int(asked)
        if recorded is not None:
            return int(getattr(recorded.settings, name))
        return min(int(p[name]) for p in proposals)

    settings = replace(start, dnabert_budget=pick("dnabert_budget"),
                       esm_budget=pick("esm_budget"))
    workers = tuple({**p, **(c or {}), "proposed": q}
                    for p, c, q in zip(probes, loaded, proposals, strict=True))
    for w in workers:
        compiled = (f"layers compiled in {w['compile_seconds']:.1f} s" if w.get("compiled")
                    else "layers not compiled")
        if w.get("cpu_linears"):
            compiled += ", linears " + ", ".join(f"{name} {choice['kernel']}"
                                                 for name, choice in w["cpu_linears"].items())
        log.info("worker on %s (%s): %s, DNABERT-S batch %d tokens, ESM-2 batch %d tokens, "
                 "%d threads, %s", w["device"], w.get("name") or "?", settings.dtype,
                 settings.dnabert_budget, settings.esm_budget, threads, compiled)
    return Plan(settings, threads, workers)


# ------------------------------------------------------------------ feeding and results
@dataclass
class _Feed:
    """What the feeder thread shares with the writer."""

    pending: dict[int, tuple[WorkUnit, Any]] = field(default_factory=dict)
    order: deque[int] = field(default_factory=deque)  # unit indexes, in the order fed
    frames_seen: int = 0
    seconds: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)
    read_to: dict[int, int] = field(default_factory=dict)  # input bytes read up to each unit


@dataclass(frozen=True)
class _Saved:
    home: Path
    done: set[int]
    need_features: bool


def _feed(units: Iterator[tuple[WorkUnit, Any]], saved: _Saved, pool: Pool,
          slots: threading.Semaphore, feed: _Feed, read: Any) -> None:
    """Chunk and translate ahead of the models; send each unit to the workers, or straight
    to the writer when it has no frames or was finished by an earlier run."""
    try:
        n = 0
        while True:
            t0 = time.perf_counter()
            item = next(units, None)
            feed.seconds += time.perf_counter() - t0
            if item is None:
                break
            while not slots.acquire(timeout=0.5):
                if feed.stop.is_set():
                    return
            unit, records = item
            if read is not None:
                feed.read_to[unit.index] = read.bytes_done
            feed.pending[unit.index] = (unit, records)
            feed.order.append(unit.index)
            feed.frames_seen += unit.n_frames
            if unit.n_frames == 0:
                pool.results.put(("result", -1, empty_result(unit)))
            elif unit.index in saved.done:
                result = load_unit(saved.home, unit, need_features=saved.need_features)
                pool.results.put(("result", -1, result))
            else:
                pool.tasks.put(unit)
            n += 1
        pool.results.put(("fed", -1, n))
    except VirnucproError as exc:
        pool.results.put(("fatal", -1, exc))
    except Exception as exc:  # a bug: report it rather than hang the writer
        pool.results.put(("fatal", -1, VirnucproError(f"reading input failed: {exc!r}")))


@dataclass
class RunStats:
    seconds: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    frames_scored: int = 0
    frames_per_device: dict[str, int] = field(default_factory=dict)
    read_seconds: float = 0.0  # time spent reading and translating input (the feeder)
    plan: Plan | None = None  # what the workers settled (None: no worker ran)
    peak_memory: int | None = None  # the highest device memory peak of any worker (CUDA)

    def add(self, result: UnitResult, n_frames: int) -> None:
        for k, v in result.seconds.items():
            self.seconds[k] = self.seconds.get(k, 0.0) + v
        for k, v in result.tokens.items():
            self.tokens[k] = self.tokens.get(k, 0) + v
        self.frames_scored += n_frames
        self.frames_per_device[result.worker] = (
            self.frames_per_device.get(result.worker, 0) + n_frames)
        if result.peak_memory is not None:
            self.peak_memory = max(self.peak_memory or 0, result.peak_memory)


@dataclass(frozen=True)
class Job:
    """How one run uses the engine: its workers, what was asked, where units are saved."""

    specs: tuple[WorkerSpec, ...]
    request: Request
    home: Path  # units are saved in home/units
    done: frozenset[int] = frozenset()  # units an earlier run saved
    recorded: Plan | None = None  # the plan an earlier run of this output settled
    need_features: bool = False  # saved units must carry features
    progress: bool = False
    read: Any = None  # the reader's ReadStats (bytes read, of how many), for the progress bar
    worker: Callable[..., None] | None = None  # None: worker.worker_main (see Pool)


def run_units(job: Job, units: Iterator[tuple[WorkUnit, T]],
              consume: Callable[[T, UnitResult], None],
              on_settled: Callable[[Plan], None] = lambda plan: None) -> RunStats:
    """Score every unit and hand each result, in unit order, to `consume` together with the
    payload the unit came with. `on_settled` hears the plan before any unit is scored (to
    record it for a resume). Units in `job.done` are loaded from `job.home`; each newly
    scored unit is saved there before `consume`. Unit indexes need not be consecutive (a
    shard skips the units of other shards)."""
    pool = Pool(job.specs, job.worker)
    ok = False
    try:
        stats = RunStats(plan=pool.settle(job.request, job.recorded))
        on_settled(stats.plan)
        _collect(pool, job, units, consume, stats)
        ok = True
    finally:
        pool.close(ok)
    return stats


def _collect(pool: Pool, job: Job, units: Iterator[tuple[WorkUnit, T]],
             consume: Callable[[T, UnitResult], None], stats: RunStats) -> None:
    feed = _Feed()
    bar = Progress(job.progress)
    slots = threading.Semaphore(2 * len(job.specs) + 2)  # units in flight: bounds memory
    saved = _Saved(job.home, set(job.done), job.need_features)
    feeder = threading.Thread(target=_feed, args=(units, saved, pool, slots, feed, job.read),
                              daemon=True)
    feeder.start()
    ready: dict[int, UnitResult] = {}
    n_consumed, n_units, frames_done = 0, None, 0
    try:
        while n_units is None or n_consumed < n_units:
            kind, _, message = pool.get()
            if kind == "fed":
                n_units = message
            else:
                ready[message.index] = message
            while feed.order and feed.order[0] in ready:
                index = feed.order.popleft()
                result = ready.pop(index)
                unit, payload = feed.pending.pop(index)
                if result.worker:  # scored in this run, not loaded from an earlier one
                    save_unit(job.home, unit, result)
                    stats.add(result, unit.n_frames)
                consume(payload, result)
                slots.release()
                n_consumed += 1
                frames_done += unit.n_frames
                bar.update(frames_done, feed.frames_seen, n_units is not None,
                           stats.frames_per_device, _bytes(job.read, feed.read_to.pop(index, None)))
    finally:
        feed.stop.set()
        bar.close()
    stats.read_seconds = feed.seconds


def _bytes(read: Any, done: int | None) -> tuple[int, int] | None:
    """(input bytes behind the units handed on, input bytes in all), when the size is known."""
    if read is None or done is None or read.bytes_total is None:
        return None
    return done, read.bytes_total
