"""`virnucpro predict`: records -> frames -> work units -> workers -> ordered writer.

This module plans a run (models, devices, the fingerprint that says what the run is), owns
the output directory's state (refuse, resume or start), and hands the units to
`engine.run_units` (or `ray_engine.run_units_ray`), whose results the `outputs.PredictWriter`
writes in input order. Every finished unit is saved under `OUTPUT/.virnucpro/` (a shard keeps
them in `OUTPUT/units/` for `merge`), so a killed run started again continues.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from virnucpro import __version__, outputs, shards
from virnucpro.batching import WorkUnit, iter_units
from virnucpro.engine import RunStats, finished_units, run_units
from virnucpro.errors import InputError, OutputError, VirnucproError
from virnucpro.frames import RecordFrames, iter_record_frames
from virnucpro.reader import read_records
from virnucpro.worker import UnitResult, WorkerConfig

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
    shard: tuple[int, int] | None = None  # (I, N): score only shard I of N (1 <= I <= N)
    engine: str = "local"  # "local" | "ray"; both write the same bytes
    ray_address: str | None = None  # None: start a local Ray instance
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
    fingerprint: str  # this run in its output directory (a shard's includes I/N)
    run_fingerprint: str  # the whole run: all its shards share it, a single run has no other


@dataclass(frozen=True)
class UnitStream:
    """The work units of a run, optionally only one shard's, with their records.

    Plain data, so it can be iterated again (merge) or elsewhere (a Ray task)."""

    inputs: tuple[str, ...]
    chunk_size: int
    unit_frames: int
    shard: tuple[int, int] | None = None

    def __iter__(self) -> Iterator[tuple[WorkUnit, list[RecordFrames]]]:
        records = iter_record_frames(read_records(list(self.inputs)), self.chunk_size)
        units = iter_units(records, self.unit_frames)
        return units if self.shard is None else shards.select_shard(units, self.shard)


# ------------------------------------------------------------------ planning
def _resolve_models(cfg: PredictConfig, chunk_size: int, *,
                    classifier: bool = True) -> dict[str, Any]:
    """The models a run loads; `classifier=False` for embedding only (train)."""
    from virnucpro.hub import resolve_classifier, resolve_model

    kw = {"offline": cfg.offline, "progress": cfg.progress}
    models = {
        "dnabert": resolve_model(cfg.dnabert, "dnabert", cache_dir=cfg.models_dir, verify=True,
                                 **kw),
        "esm": resolve_model(cfg.esm, "esm", cache_dir=cfg.models_dir, verify=True, **kw),
    }
    if classifier:
        models["classifier"] = resolve_classifier(cfg.classifier, cfg.model_type,
                                                  models_dir=cfg.models_dir, **kw)
    return models


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
            classifier_path=str(models["classifier"].path) if "classifier" in models else None,
            device=str(device),
            dtype=str(dtype).removeprefix("torch."), dnabert_budget=dna_budget,
            esm_budget=esm_budget, threads=threads, save_embeddings=cfg.save_embeddings))
    return tuple(configs)


def _trained_chunk_size(path: Path) -> int | None:
    """The chunk size a classifier made by `virnucpro train` records (None for others)."""
    from virnucpro.classifier import INFO_FILE

    try:
        return int(json.loads((Path(path) / INFO_FILE).read_text())["chunk_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def plan_run(cfg: PredictConfig) -> RunPlan:
    """Resolve models and devices, identify the inputs and fingerprint the run."""
    from virnucpro.devices import describe_device

    _check_config(cfg)
    models = _resolve_models(cfg, cfg.chunk_size or cfg.model_type)
    trained = _trained_chunk_size(models["classifier"].path)
    chunk_size = cfg.chunk_size or trained or cfg.model_type
    if trained and trained != chunk_size:
        log.warning("the classifier was trained on %d bp chunks; this run cuts %d bp chunks",
                    trained, chunk_size)
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
    run_fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    # A shard is a run of its own in its directory, and a part of the run it merges into.
    fingerprint = run_fingerprint if cfg.shard is None else hashlib.sha256(
        f"{run_fingerprint} shard {cfg.shard[0]}/{cfg.shard[1]}".encode()).hexdigest()
    devices = [describe_device(d) for d in dict.fromkeys(w.device for w in workers)]
    return RunPlan(workers, chunk_size, model_records, devices, inputs, params, fingerprint,
                   run_fingerprint)


def _check_config(cfg: PredictConfig) -> None:
    """Settings that cannot work together. Stdin can be read once, and only here: not
    again by merge, nor by a Ray task."""
    if cfg.engine not in ("local", "ray"):
        raise VirnucproError(f"engine {cfg.engine!r} is not one of local, ray")
    if "-" in cfg.inputs and cfg.shard is not None:
        raise InputError("--shard cannot read stdin ('-'): merge must read the inputs again")
    if "-" in cfg.inputs and cfg.engine == "ray":
        raise InputError("--engine ray cannot read stdin ('-'): Ray tasks read the inputs")


# ------------------------------------------------------------------ output directory state
STATE_DIR = ".virnucpro"
STATE_FILE = "state.json"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise OutputError(f"{path}: cannot read ({exc}); use --force to start over") from exc


def units_home(cfg: PredictConfig) -> Path:
    """Where scored units are saved (`engine.unit_path`): the state directory, removed when
    the run finishes; for a shard, its output directory, where `merge` reads them."""
    return cfg.output_dir if cfg.shard else cfg.output_dir / STATE_DIR


def prepare_output(cfg: PredictConfig, plan: RunPlan) -> set[int] | None:
    """Check the output directory; returns the finished unit indexes to reuse (resume),
    or None when the directory already holds this very run, finished."""
    out, state, units = cfg.output_dir, cfg.output_dir / STATE_DIR, units_home(cfg) / "units"
    if cfg.force:
        shutil.rmtree(state, ignore_errors=True)
        shards.remove_shard_files(out)
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
        units.mkdir(parents=True, exist_ok=True)
        done = finished_units(units.parent)
        log.info("resuming the unfinished run in %s: %d work units already done", out, len(done))
        return done
    if finished is not None:
        if finished.get("fingerprint") == plan.fingerprint and "-" not in cfg.inputs:
            return None
        raise OutputError(f"{out}: {other}")
    present = [p.name for p in [*outputs.predict_paths(out).values(),
                                *shards.shard_paths(out).values()] if p.exists()]
    if present:
        raise OutputError(f"{out}: already holds {', '.join(present)}; use --force to "
                          "overwrite")
    if cfg.resume:
        log.info("--resume: %s holds no unfinished run; starting a new one", out)
    for d in (state, units):
        d.mkdir(parents=True, exist_ok=True)
    outputs.write_json(state / STATE_FILE, {"fingerprint": plan.fingerprint,
                                             "version": __version__})
    return set()


# ------------------------------------------------------------------ entry point
def _log_plan(plan: RunPlan) -> None:
    for d in plan.devices:
        log.info("device %s: %s, compute capability %s", d["device"], d["name"],
                 d.get("compute_capability") or "n/a")
    for w in plan.workers:
        log.info("worker on %s: %s, DNABERT-S batch %d tokens, ESM-2 batch %d tokens, "
                 "%d threads", w.device, w.dtype, w.dnabert_budget, w.esm_budget, w.threads)


def _run_record(cfg: PredictConfig, plan: RunPlan, stats: RunStats, counts: dict[str, Any],
                wall: float) -> dict[str, Any]:
    stages: dict[str, Any] = {"read_and_translate": {"seconds": round(stats.read_seconds, 3)}}
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


def _run_engine(cfg: PredictConfig, plan: RunPlan, home: Path, done: set[int],
                consume: Callable[[list[RecordFrames], UnitResult], None]) -> RunStats:
    """Score the run's units (only its shard's, if it is one) on the chosen engine."""
    if cfg.engine == "ray":
        from virnucpro.ray_engine import run_units_ray

        # Ray tasks may run in another directory: give them absolute paths.
        inputs = tuple(str(Path(p).resolve()) for p in cfg.inputs)
        stream = UnitStream(inputs, plan.chunk_size, cfg.unit_frames, cfg.shard)
        return run_units_ray(plan.workers, stream, state=home, done=done, consume=consume,
                             progress=cfg.progress, address=cfg.ray_address)
    stream = UnitStream(cfg.inputs, plan.chunk_size, cfg.unit_frames, cfg.shard)
    return run_units(plan.workers, iter(stream), state=home, done=done, consume=consume,
                     progress=cfg.progress)


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
    # A shard's own files cover its records; its features stay in its units, for merge.
    writer = outputs.PredictWriter(cfg.output_dir, state / "tmp", cfg.threshold,
                                   cfg.save_embeddings and cfg.shard is None)
    consumed: list[int] = []

    def consume(records: list[RecordFrames], r: UnitResult) -> None:
        writer.add(records, r.scores, r.embeddings)
        consumed.append(r.index)

    try:
        stats = _run_engine(cfg, plan, units_home(cfg), done, consume)
    except BaseException:
        writer.abort()
        raise
    record = _run_record(cfg, plan, stats, writer.counts(), time.perf_counter() - t0)
    if cfg.shard is not None:
        shards.write_shard_record(cfg.output_dir, plan.run_fingerprint, cfg.shard, consumed)
    writer.finish(record)
    shutil.rmtree(state, ignore_errors=True)
    log.info("%d sequences: %s; outputs in %s", record["counts"]["sequences"],
             ", ".join(f"{v} {k}" for k, v in record["counts"]["predictions"].items()),
             cfg.output_dir)
    return record
