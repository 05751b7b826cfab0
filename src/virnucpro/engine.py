"""Running work units on workers: the same machinery for every command and device count.

A feeder thread produces units ahead of the models (chunking and translation happen there);
one worker per device runs `worker.worker_loop` (in a thread when there is one worker, in
spawned processes otherwise) and pulls units from a shared queue, so a faster device simply
takes more units; results come back in unit order. Each scored unit is saved in a state
directory, so a killed run started again reuses it.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from virnucpro.batching import WorkUnit
from virnucpro.errors import OutputError, VirnucproError
from virnucpro.worker import UnitResult, WorkerConfig, empty_result, worker_loop

log = logging.getLogger(__name__)
T = TypeVar("T")


# ------------------------------------------------------------------ saved units
def unit_path(state: Path, index: int) -> Path:
    return state / "units" / f"{index:06d}.npz"


def save_unit(state: Path, unit: WorkUnit, result: UnitResult) -> None:
    arrays: dict[str, np.ndarray] = {"scores": result.scores,
                                     "frame_ids": np.array(unit.frame_ids, dtype=str)}
    if result.embeddings is not None:
        arrays["features"] = result.embeddings
    path = unit_path(state, unit.index)
    # Written under a hidden name that the `[0-9]*.npz` scan for finished units cannot
    # match, then renamed: a run killed mid-write leaves no unit that looks finished.
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)


def finished_units(state: Path) -> set[int]:
    """Indexes of the units saved in `state` by `save_unit` (a resumed run reuses them)."""
    return {int(p.name.split(".")[0]) for p in (state / "units").glob("[0-9]*.npz")}


def load_unit(state: Path, unit: WorkUnit) -> UnitResult:
    with np.load(unit_path(state, unit.index)) as z:
        if tuple(z["frame_ids"]) != unit.frame_ids:
            raise OutputError(f"{unit_path(state, unit.index)}: saved frames differ from the "
                              "input; rerun with --force")
        features = z.get("features")
        return UnitResult(unit.index, z["scores"], features)


# ------------------------------------------------------------------ workers
class _Pool:
    """The workers of a run: one thread for one worker, spawned processes for more.

    Both kinds run `worker_loop` and talk through the same two queues.
    """

    def __init__(self, configs: tuple[WorkerConfig, ...]) -> None:
        self.configs = configs
        if len(configs) == 1:
            self.tasks: Any = queue.Queue()
            self.results: Any = queue.Queue()
            self.handles: list[Any] = [threading.Thread(
                target=worker_loop, args=(configs[0], self.tasks, self.results), daemon=True)]
        else:
            import multiprocessing as mp

            ctx = mp.get_context("spawn")  # CUDA cannot be used after fork
            self.tasks, self.results = ctx.Queue(), ctx.Queue()
            self.handles = [ctx.Process(target=worker_loop, args=(c, self.tasks, self.results),
                                        daemon=True) for c in configs]
        for h in self.handles:
            h.start()

    def get(self) -> tuple[str, Any]:
        """The next message from a worker or the feeder; fails if a worker died silently."""
        while True:
            try:
                return self.results.get(timeout=1.0)
            except queue.Empty:
                for c, h in zip(self.configs, self.handles, strict=True):
                    if not h.is_alive() and getattr(h, "exitcode", 0) not in (0, None):
                        raise VirnucproError(f"the worker on {c.device} died "
                                             f"(exit code {h.exitcode})") from None

    def close(self) -> None:
        for _ in self.handles:
            self.tasks.put(None)
        for h in self.handles:
            h.join(timeout=10)
            if h.is_alive() and hasattr(h, "terminate"):
                h.terminate()


@dataclass
class _Feed:
    """What the feeder thread shares with the writer."""

    pending: dict[int, tuple[WorkUnit, Any]] = field(default_factory=dict)
    order: deque[int] = field(default_factory=deque)  # unit indexes, in the order fed
    frames_seen: int = 0
    seconds: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)


def _feed(units: Iterator[tuple[WorkUnit, Any]], done: set[int], state: Path,
          pool: _Pool, slots: threading.Semaphore, feed: _Feed) -> None:
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
            feed.pending[unit.index] = (unit, records)
            feed.order.append(unit.index)
            feed.frames_seen += unit.n_frames
            if unit.n_frames == 0:
                pool.results.put(("result", empty_result(unit)))
            elif unit.index in done:
                pool.results.put(("result", load_unit(state, unit)))
            else:
                pool.tasks.put(unit)
            n += 1
        pool.results.put(("fed", n))
    except VirnucproError as exc:
        pool.results.put(("fatal", exc))
    except Exception as exc:  # a bug: report it rather than hang the writer
        pool.results.put(("fatal", VirnucproError(f"reading input failed: {exc!r}")))


@dataclass
class RunStats:
    seconds: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    frames_scored: int = 0
    frames_per_device: dict[str, int] = field(default_factory=dict)
    read_seconds: float = 0.0  # time spent reading and translating input (the feeder)

    def add(self, result: UnitResult, n_frames: int) -> None:
        for k, v in result.seconds.items():
            self.seconds[k] = self.seconds.get(k, 0.0) + v
        for k, v in result.tokens.items():
            self.tokens[k] = self.tokens.get(k, 0) + v
        self.frames_scored += n_frames
        self.frames_per_device[result.worker] = (
            self.frames_per_device.get(result.worker, 0) + n_frames)


def run_units(workers: tuple[WorkerConfig, ...], units: Iterator[tuple[WorkUnit, T]], *,
              state: Path, done: set[int], consume: Callable[[T, UnitResult], None],
              progress: bool = False) -> RunStats:
    """Score every unit on `workers` and hand each result, in unit order, to `consume`
    together with the payload the unit came with. Units in `done` are loaded from `state`
    (an earlier run scored them); each newly scored unit is saved there before `consume`.
    Unit indexes need not be consecutive (a shard skips the units of other shards)."""
    pool = _Pool(workers)
    feed, stats = _Feed(), RunStats()
    bar = Progress(progress)
    slots = threading.Semaphore(2 * len(workers) + 2)  # units in flight: bounds memory
    feeder = threading.Thread(target=_feed, args=(units, done, state, pool, slots, feed),
                              daemon=True)
    feeder.start()
    ready: dict[int, UnitResult] = {}
    n_consumed, n_units, frames_done = 0, None, 0
    try:
        while n_units is None or n_consumed < n_units:
            kind, message = pool.get()
            if kind in ("fatal", "error"):
                raise message if isinstance(message, VirnucproError) else VirnucproError(message)
            if kind == "ready":
                log.debug("worker on %s is ready", message)
            elif kind == "fed":
                n_units = message
            else:
                ready[message.index] = message
            while feed.order and feed.order[0] in ready:
                index = feed.order.popleft()
                result = ready.pop(index)
                unit, payload = feed.pending.pop(index)
                if result.worker:  # scored in this run, not loaded from an earlier one
                    save_unit(state, unit, result)
                    stats.add(result, unit.n_frames)
                consume(payload, result)
                slots.release()
                n_consumed += 1
                frames_done += unit.n_frames
                bar.update(frames_done, feed.frames_seen, n_units is not None, stats)
    finally:
        feed.stop.set()
        pool.close()
        bar.close()
    stats.read_seconds = feed.seconds
    return stats


# ------------------------------------------------------------------ progress
class Progress:
    """A live line on stderr: frames scored of those read so far, per-device rate, ETA.

    Without a live display (not a terminal, or --no-progress) the same facts go to the log
    once a minute, so long runs under a batch scheduler still show where they are."""

    LOG_EVERY = 60.0  # seconds between progress log lines without a live display

    def __init__(self, enabled: bool) -> None:
        self.bar = None
        self.t0 = self.logged = time.perf_counter()
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(TextColumn("[bold]frames"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TimeRemainingColumn(),
                                TextColumn("{task.description}"),
                                console=Console(stderr=True), transient=True)
            self.task = self.bar.add_task("", total=None)
            self.bar.start()

    def update(self, done: int, seen: int, all_read: bool, stats: RunStats) -> None:
        now = time.perf_counter()
        if self.bar is None and now - self.logged < self.LOG_EVERY:
            return
        elapsed = max(now - self.t0, 1e-9)
        rates = " ".join(f"{dev} {n / elapsed:.0f}/s"
                         for dev, n in sorted(stats.frames_per_device.items()))
        more = "" if all_read else " (still reading input)"
        if self.bar is None:
            self.logged = now
            log.info("%d of %d frames scored%s; frames/s: %s", done, seen, more,
                     rates or "n/a")
            return
        self.bar.update(self.task, completed=done, total=seen if all_read else None,
                        description=rates + more)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
