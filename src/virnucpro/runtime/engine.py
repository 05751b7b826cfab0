"""Running work units on worker processes: the same machinery for every command and device.

One child process per worker (`python -m virnucpro.runtime.serve`), also when there is only
one, so the caller's process keeps its settings, never imports torch, and a failed worker can
always be stopped. Parent and workers talk over pipes (`protocol.Channel`): a killed run
leaves no semaphore or shared-memory file behind, and a worker never re-imports the caller's
main module (a script without an `if __name__ == "__main__":` guard, `python -`, `-c`).

The workers first settle the run with this process (`Pool.begin`, then `Pool.settle`): each
reports its device, the run takes the best precision every device supports, every worker
loads its models (while this process still checks the inputs), each proposes the batch
budgets its device can take, and the run takes the smallest, so that a unit's numbers do not
depend on which worker scored it. A plan recorded by an earlier, interrupted run is reused as
it is.

Then a feeder thread reads records into units ahead of the models and hands each to the
worker with the fewest units in flight, so a faster device simply takes more; results come
back in unit order and each newly scored unit is saved, so a killed run started again reuses
it. The parent does no per-frame work: chunking, translation, scoring and rendering all
happen in the workers.
"""

from __future__ import annotations

import logging
import os
import queue
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from virnucpro.errors import VirnucproError
from virnucpro.progress import Progress
from virnucpro.runtime.batching import WorkUnit
from virnucpro.runtime.protocol import (
    Channel,
    Plan,
    Request,
    Settings,
    UnitResult,
    WorkerSpec,
    empty_result,
)
from virnucpro.runtime.units import load_unit

log = logging.getLogger(__name__)
T = TypeVar("T")
# How often a silent wait checks that every worker process is alive. A worker that dies closes
# its pipe, which the parent sees at once; this check is only the safety net, so it is rare:
# a parent waiting on slow devices wakes this seldom (each wake-up costs its CPU).
POLL_SECONDS = 5.0
STOP_SECONDS = 10.0  # how long finished workers get to exit before they are killed
PER_WORKER = 2  # units sent to a worker before its first result comes back
BACKEND = "virnucpro.runtime.worker:TorchBackend"  # what computes scores in a worker


# ------------------------------------------------------------------ the worker processes
class Pool:
    """The worker processes of a run, one pipe pair each."""

    def __init__(self, specs: tuple[WorkerSpec, ...], backend: str = BACKEND,
                 pythonpath: str | None = None) -> None:
        """`backend`: "module:factory" of what scores in the workers (a benchmark of the
        orchestration passes a stand-in); `pythonpath`: where the workers find it."""
        self.specs = specs
        self.results: queue.Queue[tuple[str, int, Any]] = queue.Queue()
        self.in_flight = [0] * len(specs)
        self._free = threading.Condition()
        self._outboxes: list[queue.Queue[tuple[str, Any] | None]] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self._loader: threading.Thread | None = None
        self._probes: list[Any] | Exception = []
        env = dict(os.environ)
        if pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath,
                                                              env.get("PYTHONPATH")]))
        for i, spec in enumerate(specs):
            self._start(i, spec, backend, env)

    def _start(self, index: int, spec: WorkerSpec, backend: str, env: dict[str, str]) -> None:
        down_r, down_w = os.pipe()  # parent -> worker
        up_r, up_w = os.pipe()  # worker -> parent
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "virnucpro.runtime.serve", backend, str(down_r),
                 str(up_w)], pass_fds=(down_r, up_w), stdin=subprocess.DEVNULL, env=env)
        finally:
            os.close(down_r)
            os.close(up_w)
        channel = Channel(up_r, down_w)
        outbox: queue.Queue[tuple[str, Any] | None] = queue.Queue()
        for target, args in ((self._receive, (index, channel)), (self._send, (channel, outbox))):
            threading.Thread(target=target, args=args, daemon=True,
                             name=f"virnucpro-pipe-{index}").start()
        outbox.put(("spec", (index, spec)))
        self.procs.append(proc)
        self._outboxes.append(outbox)

    def _receive(self, index: int, channel: Channel) -> None:
        """Hand the worker's messages on; `exit` once its pipe closes (it ended, or died)."""
        try:
            while True:
                kind, payload = channel.recv()
                self.results.put((kind, index, payload))
        except Exception:  # EOF, or a message cut short by the worker's death
            self.results.put(("exit", index, None))
        finally:
            channel.close_receiving()  # each pipe end is closed by the thread that uses it

    @staticmethod
    def _send(channel: Channel, outbox: queue.Queue[tuple[str, Any] | None]) -> None:
        try:
            while (message := outbox.get()) is not None:
                channel.send(*message)
        except OSError:
            pass  # the worker has gone: its reader reports it
        channel.close_sending()  # the reader thread owns the other end

    def _failed(self, index: int) -> VirnucproError:
        """Why worker `index` is gone, naming its device."""
        proc, device = self.procs[index], self.specs[index].device
        try:
            code = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return VirnucproError(f"the worker on {device} stopped answering")
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        return VirnucproError(f"the worker on {device} {how}; run the same command again to "
                              "resume")

    def get(self) -> tuple[str, int, Any]:
        """The next message from a worker or the feeder; fails if a worker failed or died
        (a closed pipe says so at once; a process is also checked whenever the queue is quiet
        for POLL_SECONDS)."""
        while True:
            try:
                kind, index, payload = self.results.get(timeout=POLL_SECONDS)
            except queue.Empty:
                for i, proc in enumerate(self.procs):
                    if proc.poll() is not None:
                        raise self._failed(i) from None
                continue
            if kind in ("error", "fatal"):
                raise payload if isinstance(payload, VirnucproError) \
                    else VirnucproError(payload)
            if kind == "exit":
                raise self._failed(index)
            if kind == "result":
                with self._free:
                    self.in_flight[index] -= 1
                    self._free.notify()
            return kind, index, payload

    def submit(self, unit: Any, stop: threading.Event) -> bool:
        """Send a unit to the worker with the fewest in flight, waiting while each has
        PER_WORKER; False if `stop` was set meanwhile (`wake` says so at once)."""
        with self._free:
            while min(self.in_flight) >= PER_WORKER:
                if stop.is_set():
                    return False
                self._free.wait(timeout=POLL_SECONDS)
            k = self.in_flight.index(min(self.in_flight))
            self.in_flight[k] += 1
        self._outboxes[k].put(("unit", unit))
        return True

    def wake(self) -> None:
        """Wake a `submit` that waits for a free worker, so that it sees its `stop` now."""
        with self._free:
            self._free.notify_all()

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
        for box in self._outboxes:
            box.put((kind, payload))

    def begin(self, request: Request, recorded: Plan | None) -> None:
        """Let the workers load their models in the background (the caller meanwhile checks
        its inputs): gather the probes, then send the run's dtype and compile choice."""
        def load() -> None:
            try:
                self._probes = self._gather("probe")
                self._tell("load", settle_start(self._probes, request, recorded))
            except Exception as exc:  # raised again by `settle`
                self._probes = exc

        self._loader = threading.Thread(target=load, daemon=True, name="virnucpro-load")
        self._loader.start()

    def settle(self, request: Request, recorded: Plan | None) -> Plan:
        """Agree with the workers on one dtype and one set of budgets (see the module note)."""
        if self._loader is None:
            self.begin(request, recorded)
        assert self._loader is not None
        self._loader.join()
        if isinstance(self._probes, Exception):
            raise self._probes
        start = settle_start(self._probes, request, recorded)
        loaded = self._gather("loaded")
        self._tell("measure")
        plan = settle_plan(start, request, recorded, self._probes, loaded,
                           self._gather("proposal"), self.specs[0].threads)
        self._tell("go", plan.settings)
        return plan

    def close(self, ok: bool) -> None:
        """Stop the workers: on success they finish and exit; on failure they are killed
        at once."""
        for box in self._outboxes:
            if ok:
                box.put(("stop", None))
            box.put(None)
        deadline = time.monotonic() + (STOP_SECONDS if ok else 0)
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


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

    # Each unit's work and payload, until written. Not the unit: its records' text would stay
    # in memory while it is scored, and a local worker saves what it scores itself.
    pending: dict[int, tuple[int, Any]] = field(default_factory=dict)
    order: deque[int] = field(default_factory=deque)  # unit indexes, in the order fed
    seconds: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)


def _feed(units: Iterator[tuple[Any, Any]], job: Job, pool: Pool, window: threading.Semaphore,
          feed: _Feed) -> None:
    """Read units ahead of the models; send each to a worker, or straight to the writer when
    an earlier run finished it (or it is a frame unit without frames)."""
    try:
        n = 0
        while True:
            t0 = time.perf_counter()
            item = next(units, None)
            feed.seconds += time.perf_counter() - t0
            if item is None:
                break
            window.acquire()  # released once more when the writer stops (`_collect`)
            if feed.stop.is_set():
                return
            unit, payload = item
            feed.pending[unit.index] = (unit.work, payload)
            feed.order.append(unit.index)
            if isinstance(unit, WorkUnit) and unit.n_frames == 0:
                pool.results.put(("saved", -1, empty_result(unit.index)))
            elif unit.index in job.done:
                result = load_unit(job.home, unit, need_features=job.need_features)
                pool.results.put(("saved", -1, result))
            elif not pool.submit(unit, feed.stop):
                return
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
    read_seconds: float = 0.0  # time the parent spent reading input into units (the feeder)
    plan: Plan | None = None  # what the workers settled (None: no worker ran)
    peak_memory: int | None = None  # the highest device memory peak of any worker (CUDA)

    def add(self, result: UnitResult) -> None:
        for k, v in result.seconds.items():
            self.seconds[k] = self.seconds.get(k, 0.0) + v
        for k, v in result.tokens.items():
            self.tokens[k] = self.tokens.get(k, 0) + v
        self.frames_scored += result.n_frames
        self.frames_per_device[result.worker] = (
            self.frames_per_device.get(result.worker, 0) + result.n_frames)
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
    total: int | None = None  # the work of all units (chunks, or frames), when known
    backend: str = BACKEND  # what scores in the workers (see Pool)
    pythonpath: str | None = None


def start_pool(job: Job) -> Pool:
    """The run's worker processes, started; they load their models once `begin` or
    `settle` tells them how. Each saves the units it scores in `job.home`."""
    specs = tuple(replace(s, units_home=str(job.home)) for s in job.specs)
    return Pool(specs, job.backend, job.pythonpath)


def run_units(job: Job, units: Iterator[tuple[Any, T]],
              consume: Callable[[T, UnitResult], None],
              on_settled: Callable[[Plan], None] = lambda plan: None,
              pool: Pool | None = None) -> RunStats:
    """Score every unit and hand each result, in unit order, to `consume` together with the
    payload the unit came with. `on_settled` hears the plan before any unit is scored (to
    record it for a resume). Units in `job.done` are loaded from `job.home`; each newly
    scored unit is saved there before `consume`. Unit indexes need not be consecutive (a
    shard skips the units of other shards). `pool`: workers already started (`start_pool`)."""
    pool = pool or start_pool(job)
    ok = False
    try:
        stats = RunStats(plan=pool.settle(job.request, job.recorded))
        on_settled(stats.plan)
        _collect(pool, job, units, consume, stats)
        ok = True
    finally:
        pool.close(ok)
    return stats


def _collect(pool: Pool, job: Job, units: Iterator[tuple[Any, T]],
             consume: Callable[[T, UnitResult], None], stats: RunStats) -> None:
    feed = _Feed()
    bar = Progress(job.progress, job.total)
    # Units handed out and not yet written: bounds the memory of results waiting their turn.
    window = threading.Semaphore(4 * len(job.specs) + 4)
    feeder = threading.Thread(target=_feed, args=(units, job, pool, window, feed),
                              daemon=True, name="virnucpro-feeder")
    feeder.start()
    ready: dict[int, UnitResult] = {}
    n_consumed, n_units, work_done = 0, None, 0
    try:
        while n_units is None or n_consumed < n_units:
            kind, _, message = pool.get()
            if kind == "fed":
                n_units = message
                continue
            ready[message.index] = message
            while feed.order and feed.order[0] in ready:
                index = feed.order.popleft()
                result = ready.pop(index)
                work, payload = feed.pending.pop(index)
                if result.worker:  # scored in this run, not loaded from an earlier one
                    if not result.stored:  # `start_pool` gives every worker the units' home
                        raise VirnucproError(f"worker protocol: unit {index} came back unsaved")
                    stats.add(result)
                consume(payload, result)
                window.release()
                n_consumed += 1
                work_done += work
                bar.update(work_done, stats.frames_scored, stats.frames_per_device)
    finally:
        feed.stop.set()  # and wake the feeder wherever it waits, so that it sees it now
        window.release()
        pool.wake()
        bar.close()
    stats.read_seconds = feed.seconds
