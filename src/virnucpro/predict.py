"""`virnucpro predict`: records -> frames -> work units -> workers -> ordered writer.

One code path for every device count: a feeder thread chunks and translates ahead of the
models; one worker per device runs `worker.worker_loop` (in a thread when there is one worker,
in spawned processes otherwise) and pulls units from a shared queue, so a fast device simply
takes more units; the main thread writes results in input order. Every finished unit is saved
under `OUTPUT/.virnucpro/`, so a killed run started again continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from virnucpro import __version__, outputs
from virnucpro.batching import WorkUnit, iter_units
from virnucpro.errors import OutputError, VirnucproError
from virnucpro.frames import RecordFrames, iter_record_frames
from virnucpro.reader import read_records
from virnucpro.worker import UnitResult, WorkerConfig, empty_result, worker_loop

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictConfig:
    """Every choice of a predict run, as given on the command line (or by a caller)."""

    inputs: tuple[str, ...]
    output_dir: Path
    model_type: int = 500
    chunk_size: int | None = None  # None: the model type
    classifier: str | None = None  # None: the published classifier of the model type
    dnabert: str = "zhihan1996/DNABERT-S"
    esm: str = "facebook/esm2_t36_3B_UR50D"
    models_dir: Path | None = None
    device: str = "auto"
    gpus: str | None = None
    workers: int | None = None
    dnabert_budget: int | None = None
    esm_budget: int | None = None
    precision: str = "auto"
    threshold: float = 0.5
    threads: int | None = None
    unit_frames: int = 2048
    resume: bool = False
    force: bool = False
    save_embeddings: bool = False
    offline: bool = False
    progress: bool = True
    command_line: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class RunPlan:
    """What a run will do, settled before any model is loaded."""

    workers: tuple[WorkerConfig, ...]
    chunk_size: int
    models: dict[str, dict[str, Any]]
    devices: list[dict[str, Any]]
    inputs: list[dict[str, Any]]
    params: dict[str, Any]  # every setting that changes results
    fingerprint: str


# ------------------------------------------------------------------ planning
def _resolve_models(cfg: PredictConfig, chunk_size: int) -> dict[str, Any]:
    from virnucpro.hub import resolve_classifier, resolve_model

    kw = {"offline": cfg.offline, "progress": cfg.progress}
    return {
        "dnabert": resolve_model(cfg.dnabert, "dnabert", cache_dir=cfg.models_dir, verify=True,
                                 **kw),
        "esm": resolve_model(cfg.esm, "esm", cache_dir=cfg.models_dir, verify=True, **kw),
        "classifier": resolve_classifier(cfg.classifier, cfg.model_type,
                                         models_dir=cfg.models_dir, **kw),
    }


def _model_record(m: Any) -> dict[str, Any]:
    return {"spec": m.spec, "path": str(m.path), "repo_id": m.repo_id, "revision": m.revision,
            "sha256": dict(sorted(m.sha256.items()))}


def _input_record(path: str) -> dict[str, Any]:
    """Identity of one input: size and sha256 (stdin cannot be identified, so never resumed)."""
    if path == "-":
        return {"path": "-", "size": None, "sha256": None}
    h = hashlib.sha256()
    p = Path(path)
    try:
        with p.open("rb") as fh:
            while block := fh.read(1 << 22):
                h.update(block)
    except OSError as exc:
        from virnucpro.errors import InputError

        raise InputError(f"{path}: cannot read input ({exc.strerror or exc})") from exc
    return {"path": str(p.resolve()), "size": p.stat().st_size, "sha256": h.hexdigest()}


def _worker_configs(cfg: PredictConfig, models: dict[str, Any]) -> tuple[WorkerConfig, ...]:
    import torch

    from virnucpro.devices import (
        DNABERT_BUDGET_BF16,
        DNABERT_BUDGET_DEFAULT,
        choose_dtype,
        default_esm_token_budget,
        select_devices,
    )
    from virnucpro.hub import models_info_params

    devices = select_devices(cfg.device, cfg.gpus)
    n_workers = cfg.workers or len(devices)
    if n_workers < 1:
        raise VirnucproError(f"--workers must be at least 1, got {n_workers}")
    on_cpu = devices[0].type == "cpu"
    threads = cfg.threads or (max(1, (os.cpu_count() or 1) // n_workers) if on_cpu else 2)
    configs = []
    for i in range(n_workers):
        device = devices[i % len(devices)]
        dtype = choose_dtype(device, cfg.precision)
        dna_budget = cfg.dnabert_budget or (
            DNABERT_BUDGET_BF16 if dtype == torch.bfloat16 else DNABERT_BUDGET_DEFAULT)
        esm_budget = cfg.esm_budget or default_esm_token_budget(
            device, dtype, models_info_params(models["esm"].path))
        configs.append(WorkerConfig(
            dnabert_dir=str(models["dnabert"].path), esm_dir=str(models["esm"].path),
            classifier_path=str(models["classifier"].path), device=str(device),
            dtype=str(dtype).removeprefix("torch."), dnabert_budget=dna_budget,
            esm_budget=esm_budget, threads=threads, save_embeddings=cfg.save_embeddings))
    return tuple(configs)


def plan_run(cfg: PredictConfig) -> RunPlan:
    """Resolve models and devices, identify the inputs and fingerprint the run."""
    from virnucpro.devices import describe_device

    chunk_size = cfg.chunk_size or cfg.model_type
    models = _resolve_models(cfg, chunk_size)
    workers = _worker_configs(cfg, models)
    w0 = workers[0]
    # Worker count and device index do not change results; dtype, device kind, batch
    # budgets (which set the padding) and unit size (which sets the batches) can.
    params = {
        "chunk_size": chunk_size, "threshold": cfg.threshold, "dtype": w0.dtype,
        "device_type": w0.device.split(":")[0], "dnabert_budget": w0.dnabert_budget,
        "esm_budget": w0.esm_budget, "unit_frames": cfg.unit_frames,
    }
    model_records = {k: _model_record(m) for k, m in models.items()}
    inputs = [_input_record(p) for p in cfg.inputs]
    identity = {"params": params, "inputs": [(i["size"], i["sha256"]) for i in inputs],
                "models": {k: m["sha256"] for k, m in model_records.items()}}
    fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    devices = [describe_device(d) for d in dict.fromkeys(w.device for w in workers)]
    return RunPlan(workers, chunk_size, model_records, devices, inputs, params, fingerprint)


# ------------------------------------------------------------------ output directory state
STATE_DIR = ".virnucpro"
STATE_FILE = "state.json"


def _unit_path(state: Path, index: int) -> Path:
    return state / "units" / f"{index:06d}.npz"


def _save_unit(state: Path, unit: WorkUnit, result: UnitResult) -> None:
    arrays: dict[str, np.ndarray] = {"scores": result.scores,
                                     "frame_ids": np.array(unit.frame_ids, dtype=str)}
    if result.embeddings is not None:
        arrays["features"] = result.embeddings
    path = _unit_path(state, unit.index)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _load_unit(state: Path, unit: WorkUnit) -> UnitResult:
    with np.load(_unit_path(state, unit.index)) as z:
        if tuple(z["frame_ids"]) != unit.frame_ids:
            raise OutputError(f"{_unit_path(state, unit.index)}: saved frames differ from the "
                              "input; rerun with --force")
        features = z.get("features")
        return UnitResult(unit.index, z["scores"], features)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise OutputError(f"{path}: cannot read ({exc}); use --force to start over") from exc


def prepare_output(cfg: PredictConfig, plan: RunPlan) -> set[int] | None:
    """Check the output directory; returns the finished unit indexes to reuse (resume),
    or None when the directory already holds this very run, finished."""
    out, state = cfg.output_dir, cfg.output_dir / STATE_DIR
    if cfg.force:
        shutil.rmtree(state, ignore_errors=True)
        for p in outputs.predict_paths(out).values():
            p.unlink(missing_ok=True)
    started = _read_json(state / STATE_FILE)
    finished = _read_json(outputs.predict_paths(out)["run"])
    other = ("holds a different run (other inputs or parameters); use --force to replace it, "
             "or choose another --output-dir")
    if started is not None:
        if started.get("fingerprint") != plan.fingerprint:
            raise OutputError(f"{out}: {other}")
        if "-" in cfg.inputs:
            raise OutputError(f"{out}: an unfinished run read stdin, which cannot be resumed; "
                              "use --force to start over")
        done = {int(p.name.split(".")[0]) for p in (state / "units").glob("[0-9]*.npz")}
        log.info("resuming the unfinished run in %s: %d work units already done", out, len(done))
        return done
    if finished is not None:
        if finished.get("fingerprint") == plan.fingerprint and "-" not in cfg.inputs:
            return None
        raise OutputError(f"{out}: {other}")
    present = [p.name for p in outputs.predict_paths(out).values() if p.exists()]
    if present:
        raise OutputError(f"{out}: already holds {', '.join(present)}; use --force to "
                          "overwrite")
    if cfg.resume:
        log.info("--resume: %s holds no unfinished run; starting a new one", out)
    (state / "units").mkdir(parents=True, exist_ok=True)
    outputs.write_json(state / STATE_FILE, {"fingerprint": plan.fingerprint,
                                             "version": __version__})
    return set()


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

    pending: dict[int, tuple[WorkUnit, list[RecordFrames]]] = field(default_factory=dict)
    frames_seen: int = 0
    seconds: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)


def _feed(units: Iterator[tuple[WorkUnit, list[RecordFrames]]], done: set[int], state: Path,
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
            feed.frames_seen += unit.n_frames
            if unit.n_frames == 0:
                pool.results.put(("result", empty_result(unit)))
            elif unit.index in done:
                pool.results.put(("result", _load_unit(state, unit)))
            else:
                pool.tasks.put(unit)
            n += 1
        pool.results.put(("fed", n))
    except VirnucproError as exc:
        pool.results.put(("fatal", exc))
    except Exception as exc:  # a bug: report it rather than hang the writer
        pool.results.put(("fatal", VirnucproError(f"reading input failed: {exc!r}")))


@dataclass
class _Stats:
    seconds: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    frames_scored: int = 0
    frames_per_device: dict[str, int] = field(default_factory=dict)

    def add(self, result: UnitResult, n_frames: int) -> None:
        for k, v in result.seconds.items():
            self.seconds[k] = self.seconds.get(k, 0.0) + v
        for k, v in result.tokens.items():
            self.tokens[k] = self.tokens.get(k, 0) + v
        self.frames_scored += n_frames
        self.frames_per_device[result.worker] = (
            self.frames_per_device.get(result.worker, 0) + n_frames)


def _execute(plan: RunPlan, units: Iterator[tuple[WorkUnit, list[RecordFrames]]],
             done: set[int], state: Path, writer: outputs.PredictWriter,
             progress: _Progress) -> tuple[_Stats, _Feed]:
    pool = _Pool(plan.workers)
    feed, stats = _Feed(), _Stats()
    slots = threading.Semaphore(2 * len(plan.workers) + 2)  # units in flight: bounds memory
    feeder = threading.Thread(target=_feed, args=(units, done, state, pool, slots, feed),
                              daemon=True)
    feeder.start()
    ready: dict[int, UnitResult] = {}
    next_index, n_units = 0, None
    try:
        while n_units is None or next_index < n_units:
            kind, payload = pool.get()
            if kind in ("fatal", "error"):
                raise payload if isinstance(payload, VirnucproError) else VirnucproError(payload)
            if kind == "ready":
                log.debug("worker on %s is ready", payload)
            elif kind == "fed":
                n_units = payload
            else:
                ready[payload.index] = payload
            while next_index in ready:
                result = ready.pop(next_index)
                unit, records = feed.pending.pop(next_index)
                if result.worker:  # scored in this run, not loaded from an earlier one
                    _save_unit(state, unit, result)
                    stats.add(result, unit.n_frames)
                writer.add(records, result.scores, result.embeddings)
                slots.release()
                next_index += 1
                progress.update(writer.frames_written, feed.frames_seen, n_units is not None,
                                stats)
    finally:
        feed.stop.set()
        pool.close()
    return stats, feed


# ------------------------------------------------------------------ progress
class _Progress:
    """A live line on stderr: frames scored of those read so far, per-device rate, ETA."""

    def __init__(self, enabled: bool) -> None:
        self.bar = None
        self.t0 = time.perf_counter()
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

    def update(self, done: int, seen: int, all_read: bool, stats: _Stats) -> None:
        if self.bar is None:
            return
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        rates = " ".join(f"{dev} {n / elapsed:.0f}/s"
                         for dev, n in sorted(stats.frames_per_device.items()))
        more = "" if all_read else " (still reading input)"
        self.bar.update(self.task, completed=done, total=seen if all_read else None,
                        description=rates + more)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


# ------------------------------------------------------------------ entry point
def _log_plan(plan: RunPlan) -> None:
    for d in plan.devices:
        log.info("device %s: %s, compute capability %s", d["device"], d["name"],
                 d.get("compute_capability") or "n/a")
    for w in plan.workers:
        log.info("worker on %s: %s, DNABERT-S batch %d tokens, ESM-2 batch %d tokens, "
                 "%d threads", w.device, w.dtype, w.dnabert_budget, w.esm_budget, w.threads)


def _run_record(cfg: PredictConfig, plan: RunPlan, stats: _Stats, feed: _Feed,
                counts: dict[str, Any], wall: float) -> dict[str, Any]:
    stages: dict[str, Any] = {"read_and_translate": {"seconds": round(feed.seconds, 3)}}
    for name, secs in stats.seconds.items():
        tok = stats.tokens.get(name)
        stages[name] = {"seconds": round(secs, 3),
                        "frames_per_s": round(stats.frames_scored / secs, 2) if secs else None}
        if tok is not None:
            stages[name] |= {"tokens": tok, "tokens_per_s": round(tok / secs, 1) if secs else None}
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()
              if k != "command_line"}
    return {
        "virnucpro_version": __version__, "command_line": list(cfg.command_line),
        "fingerprint": plan.fingerprint, "params": plan.params, "config": config,
        "models": plan.models, "inputs": plan.inputs, "devices": plan.devices,
        "workers": [asdict(w) for w in plan.workers], "counts": counts,
        "timing": {"wall_seconds": round(wall, 3), "frames_scored_this_run": stats.frames_scored,
                   "stages": stages},
        "python": sys.version.split()[0],
    }


def run_predict(cfg: PredictConfig) -> dict[str, Any]:
    """Run predict end to end and return what run.json records."""
    t0 = time.perf_counter()
    outputs.make_output_dir(cfg.output_dir)
    plan = plan_run(cfg)
    done = prepare_output(cfg, plan)
    if done is None:
        log.info("%s already holds this finished run; nothing to do (--force recomputes)",
                 cfg.output_dir)
        return _read_json(outputs.predict_paths(cfg.output_dir)["run"]) or {}
    _log_plan(plan)
    state = cfg.output_dir / STATE_DIR
    records = iter_record_frames(read_records(list(cfg.inputs)), plan.chunk_size)
    units = iter_units(records, cfg.unit_frames)
    writer = outputs.PredictWriter(cfg.output_dir, state / "tmp", cfg.threshold,
                                   cfg.save_embeddings)
    progress = _Progress(cfg.progress)
    try:
        stats, feed = _execute(plan, units, done, state, writer, progress)
    except BaseException:
        writer.abort()
        raise
    finally:
        progress.close()
    record = _run_record(cfg, plan, stats, feed, writer.counts(), time.perf_counter() - t0)
    writer.finish(record)
    shutil.rmtree(state, ignore_errors=True)
    log.info("%d sequences: %s; outputs in %s", record["counts"]["sequences"],
             ", ".join(f"{v} {k}" for k, v in record["counts"]["predictions"].items()),
             cfg.output_dir)
    return record
