"""`virnucpro train`: a classifier for any chunk size, from viral and other FASTA files.

1. select: chunk and translate every input exactly as predict does; optionally keep only the
   frames whose protein lies inside a known CDS protein (as the original's training set did);
   balance the classes by down-sampling the larger one with a fixed seed. Only one keep-flag
   per frame is held.
2. embed: the kept frames, as work units, go through the same engine and worker as predict,
   in embed-only mode. Every unit is saved in a cache directory named by a fingerprint of
   everything that changes the features (inputs, chunk size, backbones, dtype, batch budgets,
   unit size, balancing seed), so a killed run resumes and a later train with another recipe
   reuses them; once the cache is complete no model is loaded at all.
3. fit: the original's recipe (train.py of VirNucPro): MLP with BatchNorm and dropout,
   SGD with momentum, StepLR, batch 32, early stopping on validation loss, 90/10 split.
4. save: the classifier in our format, with backbones, chunk size, recipe, metrics and data
   hashes in classifier.json, and the per-epoch history in history.tsv.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from virnucpro import __version__, files, outputs
from virnucpro.errors import InputError, OutputError
from virnucpro.fit import OTHER, VIRUS, FitResult, Recipe, fit, split_indices
from virnucpro.frames import RecordFrames, iter_record_frames
from virnucpro.models.classifier import INFO_FILE, WEIGHTS_FILE, ClassifierInfo, MLPClassifier
from virnucpro.reader import check_inputs, read_records
from virnucpro.runtime.batching import WorkUnit, iter_units
from virnucpro.runtime.engine import Job, RunStats, run_units
from virnucpro.runtime.plan import (
    RuntimeConfig,
    identity,
    input_record,
    model_paths,
    model_record,
    requested,
    resolve_models,
    worker_specs,
)
from virnucpro.runtime.protocol import Plan, UnitResult, empty_result, plan_from_record
from virnucpro.runtime.units import finished_units, load_unit
from virnucpro.selection import Selection, kept_records, read_cds_proteins, select_frames

log = logging.getLogger(__name__)

COMPLETE_FILE = "complete.json"  # in a features cache: every unit is there
STATE_FILE = "state.json"  # in a features cache: what it holds, and the settled plan


@dataclass(frozen=True)
class TrainConfig:
    """Every choice of a train run, as given on the command line (or by a caller)."""

    viral: tuple[str, ...]
    other: tuple[str, ...]
    model_dir: Path
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    chunk_size: int = 500
    cds_proteins: tuple[str, ...] = ()
    recipe: Recipe = field(default_factory=Recipe)
    features_dir: Path | None = None  # None: MODEL_DIR/features
    force: bool = False
    command_line: tuple[str, ...] = ()


# ------------------------------------------------------------------ selecting frames
def check_train_inputs(cfg: TrainConfig) -> None:
    """Fail before any work on inputs train cannot use."""
    for flag, paths in (("--viral", cfg.viral), ("--other", cfg.other)):
        if not paths:
            raise InputError(f"no {flag} input given")
        if "-" in paths:
            raise InputError(f"{flag} -: train reads its inputs twice, so stdin cannot be used")
    both = set(cfg.viral) & set(cfg.other)
    if both:
        raise InputError(f"{sorted(both)[0]}: given as both --viral and --other")
    check_inputs([*cfg.viral, *cfg.other, *cfg.cds_proteins])
    if cfg.chunk_size < 1:
        raise InputError(f"--chunk-size must be at least 1, got {cfg.chunk_size}")


def labelled_records(cfg: TrainConfig) -> Iterator[tuple[RecordFrames, int]]:
    """Every input record, chunked and translated as predict does, with its class."""
    viral = set(cfg.viral)
    for rf in iter_record_frames(read_records([*cfg.viral, *cfg.other]), cfg.chunk_size):
        yield rf, VIRUS if rf.record.source in viral else OTHER


# ------------------------------------------------------------------ planning
@dataclass(frozen=True)
class EmbedPlan:
    """Which features a run needs and where they are cached, settled before any model loads."""

    paths: dict[str, str]  # the model files the workers load
    models: dict[str, dict[str, Any]]
    inputs: dict[str, list[dict[str, Any]]]
    params: dict[str, Any]
    fingerprint: str
    cache: Path


def plan_embedding(cfg: TrainConfig) -> EmbedPlan:
    """Resolve backbones, identify the inputs and fingerprint the features (as predict
    does: settings as asked; how "auto" came out is recorded in the cache)."""
    models = resolve_models(cfg.runtime)
    params = {"chunk_size": cfg.chunk_size, "balance_seed": cfg.recipe.seed,
              **requested(cfg.runtime)}
    model_records = {k: model_record(m) for k, m in models.items()}
    inputs = {"viral": [input_record(p) for p in cfg.viral],
              "other": [input_record(p) for p in cfg.other],
              "cds_proteins": [input_record(p) for p in cfg.cds_proteins]}
    fingerprint = files.fingerprint(identity(
        params, {k: [(i["size"], i["sha256"]) for i in v] for k, v in inputs.items()},
        model_records))
    root = cfg.features_dir or cfg.model_dir / outputs.FEATURES_DIR
    return EmbedPlan(model_paths(models), model_records, inputs, params, fingerprint,
                     Path(root) / fingerprint[:16])


# ------------------------------------------------------------------ embedding
@dataclass
class Features:
    """The training frames: features, classes and where each came from."""

    x: np.ndarray  # [n, dnabert_dim + esm_dim] float32
    y: np.ndarray  # [n] int64, VIRUS or OTHER
    frame_ids: list[str]
    seq_ids: list[str]
    units: int = 0
    units_embedded: int = 0  # scored by a model in this run (the rest came from the cache)
    stats: RunStats = field(default_factory=RunStats)


class _Collector:
    """Puts each unit's features, in unit order, into one preallocated array."""

    def __init__(self, n: int, viral: set[str]) -> None:
        self.f = Features(np.empty((0, 0), np.float32), np.empty(n, np.int64), [], [])
        self.n, self.viral, self.pos = n, viral, 0

    def __call__(self, group: list[RecordFrames], result: UnitResult) -> None:
        frames = [(f.id, rf) for rf in group for fs in rf.frames for f in fs]
        self.f.units += 1
        self.f.units_embedded += bool(result.worker)
        if not frames:
            return
        x = result.embeddings
        assert x is not None and len(x) == len(frames), "features do not match the frames"
        if self.pos == 0:
            self.f.x = np.empty((self.n, x.shape[1]), np.float32)
        end = self.pos + len(frames)
        self.f.x[self.pos:end] = x
        for i, (fid, rf) in enumerate(frames, self.pos):
            self.f.y[i] = VIRUS if rf.record.source in self.viral else OTHER
            self.f.frame_ids.append(fid)
            self.f.seq_ids.append(rf.record.id)
        self.pos = end


def _cache_state(plan: EmbedPlan) -> dict[str, Any]:
    """The cache's state.json (created for a new cache); checks the cache is the one this
    fingerprint names."""
    path = plan.cache / STATE_FILE
    hint = f"; delete {plan.cache} to recompute"
    recorded = files.read_json(path, error=OutputError, missing_ok=True, hint=hint)
    if recorded is None:
        (plan.cache / "units").mkdir(parents=True, exist_ok=True)
        recorded = {"fingerprint": plan.fingerprint, "params": plan.params,
                    "inputs": plan.inputs, "models": plan.models, "plan": None}
        files.write_json(path, recorded)
    if recorded.get("fingerprint") != plan.fingerprint:
        raise OutputError(f"{plan.cache}: holds features of other inputs; delete it")
    return recorded


def embed_frames(cfg: TrainConfig, plan: EmbedPlan, selection: Selection) -> Features:
    """Features of the kept frames: from the cache where saved, else from the workers."""
    n = int(selection.keep.sum())
    collect = _Collector(n, set(cfg.viral))
    units = iter_units(kept_records(labelled_records(cfg), selection.keep),
                       cfg.runtime.unit_frames)
    state = _cache_state(plan)
    recorded = plan_from_record(state.get("plan"))
    if (plan.cache / COMPLETE_FILE).is_file():
        log.info("all features are in the cache %s; no model is loaded", plan.cache)
        for unit, group in units:
            collect(group, _cached(plan.cache, unit))
        stats = RunStats(plan=recorded)
    else:
        stats = _embed(cfg, plan, units, collect, state, recorded)
        files.write_json(plan.cache / COMPLETE_FILE, {"units": collect.f.units, "frames": n})
    if collect.pos != n:
        raise OutputError(f"{plan.cache}: {collect.pos} cached frames, expected {n}; delete "
                          "it to recompute")
    collect.f.stats = stats
    return collect.f


def _embed(cfg: TrainConfig, plan: EmbedPlan, units: Iterator[tuple[WorkUnit, Any]],
           collect: _Collector, state: dict[str, Any], recorded: Plan | None) -> RunStats:
    done = finished_units(plan.cache)
    if done:
        log.info("features cache %s: %d units already done", plan.cache, len(done))
    specs = worker_specs(cfg.runtime, plan.paths, recorded=recorded)

    def on_settled(p: Plan) -> None:
        files.write_json(plan.cache / STATE_FILE, {**state, "plan": p.record()})

    job = Job(specs, cfg.runtime.request(), plan.cache, frozenset(done), recorded,
              need_features=True, progress=cfg.runtime.progress)
    return run_units(job, units, collect, on_settled)


def _cached(cache: Path, unit: WorkUnit) -> UnitResult:
    return load_unit(cache, unit) if unit.n_frames else empty_result(unit.index)


# ------------------------------------------------------------------ fitting
















# ------------------------------------------------------------------ outputs
def _check_model_dir(cfg: TrainConfig) -> None:
    out = cfg.model_dir
    present = [p.name for p in (out / WEIGHTS_FILE, out / INFO_FILE) if p.exists()]
    if present and not cfg.force:
        raise OutputError(f"{out}: already holds a classifier ({', '.join(present)}); use "
                          "--force to replace it (cached features are kept)")
    outputs.make_output_dir(out)


class _History:
    """history.tsv, a row per epoch as it finishes, and the same line on the console."""

    def __init__(self, path: Path, max_epochs: int) -> None:
        self.fh = path.open("w", encoding="utf-8", newline="\n")
        self.fh.write(outputs.tsv_row(outputs.HISTORY_COLUMNS))
        self.max_epochs = max_epochs

    def __call__(self, row: dict[str, Any]) -> None:
        cells = [row["epoch"], *(outputs.format_metric(row[c])
                                 for c in outputs.HISTORY_COLUMNS[1:])]
        self.fh.write(outputs.tsv_row(cells))
        self.fh.flush()
        auroc = "n/a" if row["val_auroc"] is None else f"{row['val_auroc']:.4f}"
        log.info("epoch %d/%d: train loss %.4f, validation loss %.4f, accuracy %.4f, "
                 "AUROC %s (%.1fs)", row["epoch"], self.max_epochs, row["train_loss"],
                 row["val_loss"], row["val_accuracy"], auroc, row["seconds"])

    def close(self) -> None:
        self.fh.close()


def _meta(cfg: TrainConfig, plan: EmbedPlan, sel: Selection, feats: Features,
          split: tuple[np.ndarray, np.ndarray], result: FitResult,
          seconds: float) -> dict[str, Any]:
    """classifier.json's record of how the model was made."""
    stats = feats.stats
    return {
        "trained_by": f"virnucpro {__version__}",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "chunk_size": cfg.chunk_size,
        "backbones": plan.models,
        "embedding": {**{k: v for k, v in plan.params.items() if k != "balance_seed"},
                      "plan": stats.plan.record() if stats.plan is not None else None},
        "recipe": asdict(cfg.recipe),
        "metrics": {"validation": result.validation, "best_epoch": result.best_epoch,
                    "epochs_run": len(result.history), "stopped_early": result.stopped_early},
        "data": {"inputs": plan.inputs, "frames": sel.counts,
                 "split": {"train": len(split[0]), "validation": len(split[1])},
                 "features_fingerprint": plan.fingerprint},
        "training": {
            "command_line": list(cfg.command_line),
            "features_cache": str(plan.cache.resolve()),
            "units": feats.units, "units_embedded": feats.units_embedded,
            "units_from_cache": feats.units - feats.units_embedded,
            "frames_embedded": stats.frames_scored,
            "embed_seconds": {k: round(v, 3) for k, v in stats.seconds.items()
                              if k != "classifier"},  # embed-only: no classifier ran
            "wall_seconds": round(seconds, 3),
        },
    }


def save_trained(model: MLPClassifier, meta: dict[str, Any], model_dir: Path) -> None:
    """Write the classifier files beside each other first, then move them into place."""
    from virnucpro.models.classifier import save_classifier

    tmp = model_dir / f".train-{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    info = ClassifierInfo(model.hidden_layer.in_features, model.hidden_layer.out_features,
                          source="virnucpro train", sha256="", meta=meta)
    save_classifier(model, info, tmp)
    for name in (WEIGHTS_FILE, INFO_FILE):  # classifier.json last: it marks a whole model
        os.replace(tmp / name, model_dir / name)
    tmp.rmdir()


def _fit_device(cfg: TrainConfig) -> str:
    """Where the MLP is fitted: the first device the run may use."""
    from virnucpro.runtime.devices import parse_devices, visible_gpus

    return parse_devices(cfg.runtime.device, cfg.runtime.gpus, visible_gpus())[0]


def run_train(cfg: TrainConfig) -> dict[str, Any]:
    """Train end to end; returns what classifier.json records beyond the weights."""
    t0 = time.perf_counter()
    check_train_inputs(cfg)
    _check_model_dir(cfg)
    plan = plan_embedding(cfg)
    cds = read_cds_proteins(cfg.cds_proteins) if cfg.cds_proteins else None
    selection = select_frames(labelled_records(cfg), cds, cfg.recipe.seed)
    used = selection.counts["used"]
    log.info("training frames: %d viral, %d other (of %d and %d)", used["viral"],
             used["other"], selection.counts["all"]["viral"], selection.counts["all"]["other"])
    feats = embed_frames(cfg, plan, selection)
    split = split_indices(feats.seq_ids, cfg.recipe)
    history = _History(outputs.train_paths(cfg.model_dir)["history"], cfg.recipe.max_epochs)
    try:
        result = fit(feats.x, feats.y, split, cfg.recipe, _fit_device(cfg), history)
    finally:
        history.close()
    meta = _meta(cfg, plan, selection, feats, split, result, time.perf_counter() - t0)
    save_trained(result.model, meta, cfg.model_dir)
    v = result.validation
    log.info("best epoch %d: validation accuracy %.4f, F1 %s; classifier in %s",
             result.best_epoch, v["accuracy"], outputs.format_metric(v["f1"]), cfg.model_dir)
    return meta
