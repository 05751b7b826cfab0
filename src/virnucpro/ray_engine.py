"""`--engine ray`: the same work units, scored by a Ray Data pipeline.

Reading and translating run as a Ray CPU task that iterates the run's unit stream; an actor
pool scores the units, one actor per GPU (`num_gpus=1`), or CPU actors where the run plans no
GPU. Each actor holds the models (`worker.load_models`) and calls `worker.score_unit`, as the
local workers do. Results come back to this process in unit order and go to the same
`consume` that `engine.run_units` feeds, so the writer and the bytes it writes are the same:
same units, same batches, same thread count. Ray is imported here only, when this engine runs
(`pip install 'virnucpro[ray]'`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from virnucpro.batching import WorkUnit
from virnucpro.engine import Progress, RunStats, load_unit, save_unit
from virnucpro.errors import VirnucproError
from virnucpro.worker import (
    UnitResult,
    WorkerConfig,
    empty_result,
    load_models,
    release_free_memory,
    score_unit,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
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


# ------------------------------------------------------------------ the pipeline stages
def _read_units(_row: dict[str, Any], units: Iterable[tuple[WorkUnit, Any]],
                done: set[int]) -> Iterator[dict[str, Any]]:
    """The CPU task: read, translate and cut units; marks those no model needs to see."""
    it = iter(units)
    while True:
        t0 = time.perf_counter()
        item = next(it, None)
        if item is None:
            return
        unit, payload = item
        score = unit.n_frames > 0 and unit.index not in done
        yield {"item": (unit, payload, score, time.perf_counter() - t0)}


class _Scorer:
    """The actor: loads the models once, then scores the units it is given."""

    def __init__(self, cfg: WorkerConfig) -> None:
        self.cfg = cfg
        torch.set_num_threads(cfg.threads)
        with torch.inference_mode():
            self.models = load_models(cfg)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = np.empty(len(batch["item"]), dtype=object)
        # Set in the calling thread too: the thread count is part of what fixes the bytes.
        torch.set_num_threads(self.cfg.threads)
        with torch.inference_mode():
            for i, (unit, payload, score, read_s) in enumerate(batch["item"]):
                result = score_unit(self.models, unit) if score else None
                release_free_memory()
                # The driver needs the index and frame ids, not the sequences.
                stub = dataclasses.replace(unit, nucleotides=(), proteins=())
                out[i] = (stub, payload, result, read_s)
        return {"item": out}


def _actors(ray: Any, workers: tuple[WorkerConfig, ...]) -> tuple[WorkerConfig, int, dict]:
    """The actors' config, how many, and the resources each asks for."""
    cfg = workers[0]
    if cfg.device.startswith("cuda"):
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if gpus < 1:
            raise VirnucproError("the run plans GPU workers but the Ray cluster has no GPU; "
                                 "use --device cpu")
        # Ray shows each actor its own GPU only, as cuda:0.
        return dataclasses.replace(cfg, device="cuda:0"), min(len(workers), gpus), {"num_gpus": 1}
    # Ask for no more than the cluster has (one CPU goes to reading), or Ray would wait
    # forever for the last actor; torch still runs `cfg.threads` threads in each.
    cpus = float(ray.cluster_resources().get("CPU", 0))
    if cpus < 2:
        raise VirnucproError(f"the Ray cluster has {cpus:g} CPU; --engine ray needs 2 or more")
    return cfg, len(workers), {"num_cpus": min(cfg.threads, (cpus - 1) / len(workers))}


def _dataset(ray: Any, workers: tuple[WorkerConfig, ...], units: Iterable[tuple[WorkUnit, T]],
             done: set[int]) -> Any:
    cfg, n_actors, resources = _actors(ray, workers)
    log.info("Ray: %d actor(s) on %s, %s each", n_actors, cfg.device,
             ", ".join(f"{v} {k.removeprefix('num_')}" for k, v in resources.items()))
    ds = (ray.data.from_items([0])
          .flat_map(_read_units, fn_args=(units, done), num_cpus=1)
          .map_batches(_Scorer, fn_constructor_args=(cfg,), batch_size=1, batch_format="numpy",
                       compute=ray.data.ActorPoolStrategy(size=n_actors), **resources))
    ctx = ds.context  # this dataset's own settings
    ctx.execution_options.preserve_order = True  # results in unit order
    ctx.target_max_block_size = 1  # a block per unit, so that every actor gets some
    ctx.enable_fallback_to_arrow_object_ext_type = True  # units are Python objects: no warning
    ctx.enable_progress_bars = False  # we show our own
    return ds


def _cause(exc: BaseException) -> VirnucproError:
    """Our own error inside Ray's wrappers, or a one-line one for anything else."""
    seen: BaseException | None = exc
    while seen is not None:
        # Ray's RayTaskError(InputError) is an InputError too, but its message is a
        # traceback: the original is its `cause`.
        inner = getattr(seen, "cause", None)
        if isinstance(inner, BaseException):
            seen = inner
        elif isinstance(seen, VirnucproError):
            # Ray appends retry advice to the message; ours is its first line.
            return type(seen)(str(seen).split("\n", 1)[0])
        else:
            seen = seen.__cause__
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
    return VirnucproError(f"the Ray pipeline failed: {first}")


@contextlib.contextmanager
def _ray_data_quiet() -> Iterator[None]:
    """Ray Data logs each failure with its traceback, and we report it in one line; with
    -v (our log at DEBUG) its messages are left as they are."""
    logger = logging.getLogger("ray.data")
    level = logger.level
    if not log.isEnabledFor(logging.DEBUG):
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


# ------------------------------------------------------------------ entry point
def _rows(ds: Any) -> Iterator[tuple[WorkUnit, Any, UnitResult | None, float]]:
    """The pipeline's output in unit order; a failure in a task or an actor is raised
    here as our own one-line error."""
    rows = iter(ds.iter_rows())
    while True:
        try:
            row = next(rows, None)
        except Exception as exc:  # Ray wraps whatever failed in a task or an actor
            raise _cause(exc) from None
        if row is None:
            return
        yield row["item"]


def run_units_ray(workers: tuple[WorkerConfig, ...], units: Iterable[tuple[WorkUnit, T]], *,
                  state: Path, done: set[int], consume: Callable[[T, UnitResult], None],
                  progress: bool = False, address: str | None = None) -> RunStats:
    """`engine.run_units` on Ray: the same contract, except that `units` must be picklable
    and iterable in another process (a `predict.UnitStream`), since a Ray task reads it."""
    ray = _import_ray()
    started = _connect(ray, address)
    stats, bar, frames_done = RunStats(), Progress(progress), 0
    try:
        with _ray_data_quiet():
            for unit, payload, result, read_s in _rows(_dataset(ray, workers, units, done)):
                stats.read_seconds += read_s
                if result is not None:  # scored now; else empty, or done by an earlier run
                    save_unit(state, unit, result)
                    stats.add(result, unit.n_frames)
                elif unit.n_frames:
                    result = load_unit(state, unit)
                else:
                    result = empty_result(unit)
                consume(payload, result)
                frames_done += unit.n_frames
                bar.update(frames_done, frames_done, False, stats)
    finally:
        bar.close()
        if started:
            ray.shutdown()
    return stats
