"""`virnucpro predict`: records -> frames -> work units -> workers -> ordered writer.

This module plans a run (models, the worker processes, the fingerprint that says what the run
is), owns the output directory's state (refuse, resume or start), and hands the units to
`runtime.engine.run_units` (or `runtime.ray_engine.run_units_ray`), whose rendered rows the
`writer.PredictWriter` appends in input order. The workers start loading their models while
this process checks and hashes the inputs. Every finished unit is saved under
`OUTPUT/.virnucpro/` (a shard keeps them in `OUTPUT/units/` for `merge`), with the plan the
workers settled, so a killed run started again continues exactly as it began.
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from virnucpro import __version__, files, outputs
from virnucpro.commit import Switch, recover
from virnucpro.errors import InputError, OutputError, VirnucproError
from virnucpro.reader import InputSummary, ReadStats, validate_inputs
from virnucpro.regions import RegionParams
from virnucpro.runtime.engine import Job, Pool, RunStats, run_units, start_pool
from virnucpro.runtime.plan import (
    RuntimeConfig,
    check_runtime,
    identity,
    input_record,
    model_paths,
    model_record,
    requested,
    resolve_models,
    worker_specs,
)
from virnucpro.runtime.protocol import Plan, Render, UnitResult, plan_from_record
from virnucpro.runtime.units import UNITS_DIR, UnitStream, finished_units
from virnucpro.writer import PredictWriter

log = logging.getLogger(__name__)
STATE_FILE = "state.json"
VERDICT_KEYS = ("threshold", "min_region_length", "region_switch_prob")


@dataclass(frozen=True)
class PredictConfig:
    """Every choice of a predict run, as given on the command line (or by a caller)."""

    inputs: tuple[str, ...]
    output_dir: Path
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    model_type: int = 500
    chunk_size: int | None = None  # None: the model type
    classifier: str | None = None  # None: the published classifier of the model type
    threshold: float = 0.5
    regions: RegionParams = field(default_factory=RegionParams)
    resume: bool = False
    force: bool = False
    save_embeddings: bool = False
    shard: tuple[int, int] | None = None  # (I, N): score only shard I of N (1 <= I <= N)
    command_line: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunPlan:
    """What a run is, settled before any model is loaded."""

    chunk_size: int
    models: dict[str, dict[str, Any]]
    inputs: list[dict[str, Any]]
    params: dict[str, Any]  # every setting that changes results, as asked
    fingerprint: str  # this run in its output directory (a shard's includes I/N)
    run_fingerprint: str  # the whole run: all its shards share it, a single run has no other
    paths: dict[str, str]  # the model files the workers load


# ------------------------------------------------------------------ planning
def _trained_chunk_size(path: Path) -> int | None:
    """The chunk size a classifier made by `virnucpro train` records (None for others)."""
    path = Path(path)
    info = files.read_json(path / outputs.CLASSIFIER_INFO, missing_ok=True) \
        if path.is_dir() else None
    try:
        return int(info["chunk_size"]) if info else None
    except (KeyError, TypeError, ValueError):
        return None


def run_chunk_size(cfg: PredictConfig, models: dict[str, Any]) -> int:
    """The run's chunk size: as asked, else the one its classifier was trained on, else the
    model type's."""
    return cfg.chunk_size or _trained_chunk_size(models["classifier"].path) or cfg.model_type


def plan_run(cfg: PredictConfig, models: dict[str, Any] | None = None,
             summary: InputSummary | None = None) -> RunPlan:
    """Resolve models (unless given), identify the inputs (by the hashes the input check
    took, when given) and fingerprint the run."""
    _check_config(cfg)
    models = models or resolve_models(cfg.runtime, cfg.classifier, cfg.model_type)
    trained = _trained_chunk_size(models["classifier"].path)
    chunk_size = run_chunk_size(cfg, models)
    if trained and trained != chunk_size:
        log.warning("the classifier was trained on %d bp chunks; this run cuts %d bp chunks",
                    trained, chunk_size)
    # Worker count and devices do not change what a run is; how the workers settled
    # "auto" on this hardware is recorded beside the fingerprint (see runtime/plan.py).
    params = {"chunk_size": chunk_size, "threshold": cfg.threshold,
              "min_region_length": cfg.regions.min_region_length,
              "region_switch_prob": cfg.regions.switch_prob,
              "save_embeddings": cfg.save_embeddings, **requested(cfg.runtime)}
    model_records = {k: model_record(m) for k, m in models.items()}
    hashes = summary.sha256 if summary is not None else (None,) * len(cfg.inputs)
    inputs = [input_record(p, h) for p, h in zip(cfg.inputs, hashes, strict=True)]
    # The threshold and region settings only turn saved scores into calls: a finished run
    # rerun with other ones is re-thresholded, not recomputed (rethreshold.py).
    scored = {k: v for k, v in params.items() if k not in VERDICT_KEYS}
    run_fingerprint = files.fingerprint(identity(
        scored, [(i["size"], i["sha256"]) for i in inputs], model_records))
    # A shard is a run of its own in its directory, and a part of the run it merges into.
    fingerprint = run_fingerprint if cfg.shard is None else files.fingerprint(
        f"{run_fingerprint} shard {cfg.shard[0]}/{cfg.shard[1]}")
    paths = model_paths(models)
    return RunPlan(chunk_size, model_records, inputs, params, fingerprint, run_fingerprint,
                   paths)


def _check_config(cfg: PredictConfig) -> None:
    """Settings that cannot work together. Stdin can be read once: not again by merge."""
    check_runtime(cfg.runtime)
    if not (math.isfinite(cfg.threshold) and 0 <= cfg.threshold <= 1):
        raise VirnucproError(f"--threshold must be a number from 0 to 1, got {cfg.threshold}")
    if "-" in cfg.inputs and cfg.shard is not None:
        raise InputError("--shard cannot read stdin ('-'): merge must read the inputs again")


# ------------------------------------------------------------------ output directory state
def _read_state(path: Path) -> dict[str, Any] | None:
    return files.read_json(path, error=OutputError, missing_ok=True,
                           hint="; use --force to start over")


def units_home(cfg: PredictConfig) -> Path:
    """Where scored units are saved (`runtime.units.unit_path`): the state directory,
    removed when the run finishes; for a shard, its output directory, where `merge` reads
    them."""
    return cfg.output_dir if cfg.shard else cfg.output_dir / outputs.STATE_DIR


def _different(out: Path, recorded: dict[str, Any] | None, plan: RunPlan) -> OutputError:
    """'holds a different run', naming the first setting that differs when one does."""
    why = "other inputs or models"
    old = (recorded or {}).get("params") or {}
    for key in plan.params:
        if key in old and old[key] != plan.params[key]:
            why = f"{key} {old[key]} there, {plan.params[key]} now"
            break
    return OutputError(f"{out}: holds a different run ({why}); use --force to replace it, "
                       "or choose another --output-dir")


@dataclass(frozen=True)
class Resume:
    """What an earlier run of this output left to reuse."""

    done: frozenset[int]
    plan: Plan | None


@dataclass(frozen=True)
class Finished:
    """The directory holds this very run, finished: its run.json."""

    record: dict[str, Any]


def prepare_output(cfg: PredictConfig, plan: RunPlan) -> Resume | Finished:
    """Check the output directory; returns what to reuse (resume), or the finished run it
    already holds."""
    from virnucpro import shards

    out, state = cfg.output_dir, cfg.output_dir / outputs.STATE_DIR
    units = units_home(cfg) / UNITS_DIR
    files.check_apart(cfg.inputs, shards.owned_paths(out))  # --force or not
    recover(out)  # a switch of finished files that a killed run left half done
    if cfg.force:
        shutil.rmtree(state, ignore_errors=True)
        shards.remove_shard_files(out)
        for p in outputs.predict_paths(out).values():
            p.unlink(missing_ok=True)
    started = _read_state(state / STATE_FILE)
    finished = _read_state(outputs.predict_paths(out)["run"])
    if started is not None:
        if started.get("fingerprint") != plan.fingerprint:
            raise _different(out, started, plan)
        if "-" in cfg.inputs:
            raise OutputError(f"{out}: an unfinished run read stdin, which cannot be resumed; "
                              "use --force to start over")
        units.mkdir(parents=True, exist_ok=True)
        done = finished_units(units.parent)
        log.info("resuming the unfinished run in %s: %d work units already done", out, len(done))
        return Resume(frozenset(done), plan_from_record(started.get("plan")))
    if finished is not None:
        if finished.get("fingerprint") != plan.fingerprint:
            raise _different(out, finished, plan)
        if "-" in cfg.inputs:
            raise OutputError(f"{out}: holds a finished run that read stdin, which cannot be "
                              "compared with this input; use --force to replace it")
        return Finished(finished)
    present = [p.name for p in [*outputs.predict_paths(out).values(),
                                *shards.shard_paths(out).values()] if p.exists()]
    if present:
        raise OutputError(f"{out}: already holds {', '.join(present)}; use --force to "
                          "overwrite")
    if cfg.resume:
        log.info("--resume: %s holds no unfinished run; starting a new one", out)
    for d in (state, units):
        d.mkdir(parents=True, exist_ok=True)
    _write_state(state, plan, None)
    return Resume(frozenset(), None)


def _write_state(state: Path, plan: RunPlan, settled: Plan | None) -> None:
    files.write_json(state / STATE_FILE, {
        "fingerprint": plan.fingerprint, "version": __version__, "params": plan.params,
        "plan": settled.record() if settled is not None else None})


# ------------------------------------------------------------------ entry point
def _absolute(value: Any) -> Any:
    """A path as run.json keeps it: absolute when it names something on this machine (a
    hub id stays as given)."""
    if isinstance(value, Path) or (isinstance(value, str) and value and Path(value).exists()):
        return str(Path(value).resolve())
    return value


def _run_record(cfg: PredictConfig, plan: RunPlan, stats: RunStats, counts: dict[str, Any],
                wall: float, startup: float | None, settled: Plan | None) -> dict[str, Any]:
    stages: dict[str, Any] = {"read": {"seconds": round(stats.read_seconds, 3)}}
    for name, secs in stats.seconds.items():
        tok = stats.tokens.get(name)
        stages[name] = {"seconds": round(secs, 3),
                        "frames_per_s": round(stats.frames_scored / secs, 2) if secs else None}
        if tok is not None:
            stages[name] |= {"tokens": tok, "tokens_per_s": round(tok / secs, 1) if secs else None,
                             "padded_tokens": stats.tokens.get(f"{name}_padded")}
    config = {k: _absolute(v) for k, v in asdict(cfg).items()
              if k not in ("command_line", "inputs")}
    config["runtime"] = {k: _absolute(v) if k in ("dnabert", "esm", "models_dir") else v
                         for k, v in config["runtime"].items()}
    return {
        "virnucpro_version": __version__, "command_line": list(cfg.command_line),
        "fingerprint": plan.fingerprint, "params": plan.params, "config": config,
        "plan": settled.record() if settled is not None else None, "models": plan.models,
        "inputs": plan.inputs, "counts": counts,
        "timing": {"wall_seconds": round(wall, 3), "frames_scored_this_run": stats.frames_scored,
                   # from the start until every worker had its models loaded and settled
                   "startup_seconds": round(startup, 3) if startup is not None else None,
                   "peak_device_memory": stats.peak_memory, "stages": stages},
        "python": sys.version.split()[0],
    }


def render_settings(cfg: PredictConfig, chunk_size: int) -> Render:
    """How the workers (and re-thresholding, and merge) render this run's rows."""
    return Render(chunk_size, cfg.threshold, cfg.regions, cfg.save_embeddings)


def _specs(cfg: PredictConfig, chunk_size: int, paths: dict[str, str],
           recorded: Plan | None) -> Any:
    return worker_specs(cfg.runtime, paths, save_embeddings=cfg.save_embeddings,
                        recorded=recorded, render=render_settings(cfg, chunk_size))


def _run_engine(cfg: PredictConfig, plan: RunPlan, resume: Resume, total: int | None,
                consume: Callable[[Any, UnitResult], None],
                on_settled: Callable[[Plan], None], pool: Pool | None,
                read: ReadStats) -> RunStats:
    """Score the run's units (only its shard's, if it is one) on the chosen engine."""
    rt = cfg.runtime
    specs = _specs(cfg, plan.chunk_size, plan.paths, resume.plan)
    job = Job(specs, rt.request(), units_home(cfg), resume.done, resume.plan,
              need_features=cfg.save_embeddings, progress=rt.progress, total=total)
    # The input check read every regular input and checked its ids: not kept again here.
    checked = "-" not in cfg.inputs and all(i["sha256"] for i in plan.inputs)
    units = UnitStream(cfg.inputs, plan.chunk_size, rt.unit_frames, cfg.shard,
                       ids_checked=checked).units(read)
    if rt.engine == "ray":
        from virnucpro.runtime.ray_engine import run_units_ray

        return run_units_ray(job, units, consume, on_settled, address=rt.ray_address)
    return run_units(job, units, consume, on_settled, pool)


def run_predict(cfg: PredictConfig) -> dict[str, Any]:
    """Run predict end to end and return what run.json records. The output directory is
    locked while the run writes there; a run that fails before it saved anything leaves no
    directory behind that it created."""
    _check_config(cfg)
    created = not cfg.output_dir.exists()
    outputs.make_output_dir(cfg.output_dir)
    try:
        with files.DirLock(cfg.output_dir, outputs.LOCK_FILE):
            return _run_locked(cfg)
    except BaseException:
        if created and not any(p.name != outputs.STATE_DIR for p in cfg.output_dir.iterdir()) \
                and not finished_units(units_home(cfg)):
            shutil.rmtree(cfg.output_dir, ignore_errors=True)
        raise


def _check_inputs(cfg: PredictConfig, chunk_size: int) -> InputSummary:
    """The streaming pre-pass: a bad record anywhere in a regular file is found before any
    unit is scored or any state is written (stdin is checked as it is read); each file is
    hashed as it is read, and its chunks counted for the progress total."""
    t0 = time.perf_counter()
    summary = validate_inputs(cfg.inputs, chunk_size)
    if summary.files:
        log.info("inputs checked: %d records, %d bases in %d file%s (%.1f s)", summary.records,
                 summary.bases, summary.files, "" if summary.files == 1 else "s",
                 time.perf_counter() - t0)
    return summary


def _early_pool(cfg: PredictConfig, chunk_size: int, paths: dict[str, str]) -> Pool | None:
    """Start the workers before the input check, so their models load meanwhile: with the
    plan an unfinished run here recorded, if any (the check then confirms it is this run).
    Not for the Ray engine, nor when the directory holds a finished run (nothing may need
    scoring)."""
    out = cfg.output_dir
    state = None if cfg.force else _read_state(out / outputs.STATE_DIR / STATE_FILE)
    if cfg.runtime.engine != "local" or (state is None and not cfg.force
                                         and outputs.predict_paths(out)["run"].exists()):
        return None
    recorded = plan_from_record((state or {}).get("plan"))
    specs = _specs(cfg, chunk_size, paths, recorded)
    pool = start_pool(Job(specs, cfg.runtime.request(), units_home(cfg)))
    pool.begin(cfg.runtime.request(), recorded)
    return pool


def _run_locked(cfg: PredictConfig) -> dict[str, Any]:
    from virnucpro import mqc, shards

    t0 = time.perf_counter()
    models = resolve_models(cfg.runtime, cfg.classifier, cfg.model_type)
    chunk_size = run_chunk_size(cfg, models)
    pool = _early_pool(cfg, chunk_size, model_paths(models))
    try:
        summary = _check_inputs(cfg, chunk_size)
        plan = plan_run(cfg, models, summary)
        found = prepare_output(cfg, plan)
    except BaseException:
        if pool is not None:
            pool.close(False)
        raise
    state = cfg.output_dir / outputs.STATE_DIR
    if isinstance(found, Finished):
        if pool is not None:
            pool.close(False)
        old = found.record.get("params", {})
        if all(old.get(k) == plan.params[k] for k in VERDICT_KEYS):
            log.info("%s already holds this finished run; nothing to do (--force recomputes)",
                     cfg.output_dir)
            shutil.rmtree(state, ignore_errors=True)  # what a killed re-threshold left
            return found.record
        from virnucpro.rethreshold import rethreshold

        record = rethreshold(cfg.inputs, cfg.output_dir, found.record,
                             render_settings(cfg, plan.chunk_size), cfg.shard)
        shutil.rmtree(state, ignore_errors=True)
        return record
    # A shard's own files cover its records; its features stay in its units, for merge.
    try:
        writer = PredictWriter(cfg.output_dir, state / "tmp",
                               replace(render_settings(cfg, plan.chunk_size),
                                       save_embeddings=cfg.save_embeddings and not cfg.shard),
                               partial_ok=cfg.shard is not None)
    except BaseException:
        if pool is not None:
            pool.close(False)
        raise
    consumed: list[int] = []
    startup: list[float] = []
    read = ReadStats()

    def consume(record: Any, r: UnitResult) -> None:
        writer.add(r.rendered, record, r.embeddings)
        consumed.append(r.index)

    def on_settled(p: Plan) -> None:
        startup.append(time.perf_counter() - t0)
        _write_state(state, plan, p)

    total = summary.chunks if summary.files == len(cfg.inputs) and cfg.shard is None else None
    try:
        stats = _run_engine(cfg, plan, found, total, consume, on_settled, pool, read)
    except BaseException:
        writer.abort()
        raise
    counts = {**writer.counts(), "rna_records": read.rna_records}
    record = _run_record(cfg, plan, stats, counts, time.perf_counter() - t0,
                         startup[0] if startup else None, stats.plan)
    if cfg.shard is not None:
        shards.write_shard_record(cfg.output_dir, plan.run_fingerprint, cfg.shard, consumed)
    switch = Switch(cfg.output_dir, remove=[state])  # all files at once (commit.py)
    mqc.write_mqc(cfg.output_dir, cfg.output_dir.resolve().name, counts["predictions"],
                  writer.histogram, switch)
    writer.finish(record, switch)
    _log_summary(record, cfg.output_dir)
    return record


def _log_summary(record: dict[str, Any], out: Path) -> None:
    """The one line a run ends with: sequences and their calls, frames, wall time, rate."""
    counts, timing = record["counts"], record["timing"]
    n, wall = counts["sequences"], timing["wall_seconds"]
    scored = timing["frames_scored_this_run"]
    log.info("done: %d sequence%s (%s), %d frames, %s wall, %.0f frames/s scored; outputs in %s",
             n, "" if n == 1 else "s",
             ", ".join(f"{v} {k}" for k, v in counts["predictions"].items()), counts["frames"],
             _hms(wall), scored / wall if wall else 0.0, out)


def _hms(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
